"""Built-in events detectors."""
