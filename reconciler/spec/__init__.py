"""The task language."""
