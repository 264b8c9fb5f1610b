"""Built-in metrics detectors."""
