"""Built-in logs detectors."""
