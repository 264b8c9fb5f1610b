"""Example melt plugin package."""
