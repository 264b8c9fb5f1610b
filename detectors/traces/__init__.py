"""Built-in traces detectors."""
