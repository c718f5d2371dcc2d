"""Helpers shared by several test packages: import them from here, never from another package's test module."""
