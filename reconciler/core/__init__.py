"""The agent core."""
