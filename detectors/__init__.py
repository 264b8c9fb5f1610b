"""Built-in detector plugins, registered in melt's pyproject under ``melt.detectors``."""
