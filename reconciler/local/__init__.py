"""The local manager."""
