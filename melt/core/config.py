"""Configuration: typed defaults, YAML overrides, environment overrides, one-line errors.

:func:`load_settings` is what a run uses: the merged, checked configuration parsed into typed
sections (:mod:`melt.core.settings`). :func:`load_config` returns the checked nested dict it is
parsed from.

Every knob of every stage has a default in :mod:`melt.core.config_spec`; ``config.yaml`` at the
repository top level carries the same values with a comment each (``tests/test_config.py`` keeps
the two equal). Detector knobs live under ``detectors.<name>`` and are the detector's constructor
parameters, so they are checked against the plugin itself when it is built
(:func:`melt.core.registry.build_detector`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from melt.core.config_spec import (
    CHOICES,
    DEFAULTS,
    ENV_OVERRIDES,
    Duration,
    FreeMap,
    Nullable,
    check_value,
    default_config,
    lookup_spec,
    merge,
)
from melt.core.errors import ConfigError
from melt.core.settings import Settings

__all__ = ["CHOICES", "DEFAULTS", "ENV_OVERRIDES", "Duration", "FreeMap", "Nullable", "default_config",
           "default_settings", "get", "load_config", "load_settings"]


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults, then the YAML file at ``path`` (partial files are fine), then environment overrides.

    Without ``path``, ``./config.yaml`` is used when it exists.

    Raises:
        ConfigError: one line naming the file and the offending key.
    """
    import yaml

    env = os.environ if env is None else env
    config = default_config()
    if path is None and Path("config.yaml").is_file():
        path = "config.yaml"
    if path is not None:
        file = Path(path)
        if not file.is_file():
            raise ConfigError(f"config file not found: {file}")
        try:
            loaded = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{file}: not valid UTF-8 (byte {exc.start})") from None
        except OSError as exc:
            raise ConfigError(f"{file}: cannot read the config file ({exc.strerror or exc})") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{file}: not valid YAML{where}") from None
        merge(DEFAULTS, config, loaded, "", str(file))
    for variable, dotted in ENV_OVERRIDES.items():
        if variable in env:
            raw = env[variable]
            spec = lookup_spec(dotted)
            value: Any = raw
            if isinstance(spec, float):
                try:
                    value = float(raw)
                except ValueError:
                    raise ConfigError(f"environment: {variable} must be a number, got {raw!r}") from None
            elif dotted == "log_level":
                value = raw.upper()
            section = config
            *parents, leaf = dotted.split(".")
            for part in parents:
                section = section[part]
            section[leaf] = check_value(dotted, spec, value, f"environment {variable}")
    return config


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """:func:`load_config`, parsed into typed sections (:class:`melt.core.settings.Settings`)."""
    return Settings.parse(load_config(path, env))


def default_settings() -> Settings:
    """The built-in defaults, typed (no file, no environment)."""
    return Settings.parse(default_config())


def get(config: Mapping[str, Any], dotted: str) -> Any:
    """``get(config, "ensemble.threshold")``."""
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node
