"""The fleet manager."""
