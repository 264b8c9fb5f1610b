"""melt: anomaly detection and root-cause ranking across metrics, events, logs and traces.

The names a plugin needs are importable from here and stay put when modules move::

    from melt import Detector, MeltBundle, empty_scores, PluginError

They live in :mod:`melt.core`, the bottom layer (docs/architecture.md). Importing ``melt`` is cheap
on purpose: the names load on first use (PEP 562), and heavy libraries (torch, drain3, openai) are
imported inside the code that needs them, so ``melt --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from melt.core.version import __version__

PUBLIC: dict[str, str] = {
    "Detector": "melt.core.detector",
    "empty_scores": "melt.core.detector",
    "SCORE_COLUMNS": "melt.core.detector",
    "MeltBundle": "melt.core.bundle",
    "SIGNALS": "melt.core.schema",
    "validate_frame": "melt.core.schema",
    "ScoreCalibrator": "melt.core.calibration",
    "effect_size_floor": "melt.core.calibration",
    "parse_duration": "melt.core.timeutil",
    "log": "melt.core.progress",
    "MeltError": "melt.core.errors",
    "BundleError": "melt.core.errors",
    "ConfigError": "melt.core.errors",
    "PluginError": "melt.core.errors",
    "NotFittedError": "melt.core.errors",
    "SourceError": "melt.core.errors",
}
"""Public name -> the core module that defines it."""

__all__ = ["__version__", *PUBLIC]


def __getattr__(name: str) -> Any:
    if name in PUBLIC:
        value = getattr(import_module(PUBLIC[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'melt' has no attribute {name!r}")
