"""melt: anomaly detection and root-cause ranking across metrics, events, logs and traces.

Importing ``melt`` is cheap on purpose: heavy libraries (torch, drain3, openai) are imported
inside the code that needs them, so ``melt --help`` stays fast.
"""

__version__ = "0.1.0"

from melt.errors import BundleError, ConfigError, MeltError, PluginError, SourceError  # noqa: E402

__all__ = ["__version__", "MeltError", "BundleError", "ConfigError", "PluginError", "SourceError"]
