"""Test aids."""
