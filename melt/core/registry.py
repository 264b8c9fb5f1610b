"""Detector discovery through the ``melt.detectors`` entry-point group.

Built-in detectors register in melt's own ``pyproject.toml`` exactly as a third-party package
would, so there is one code path for both. Plugins that fail to import are recorded with the
reason instead of breaking discovery.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from melt.core.detector import Detector
from melt.core.errors import ConfigError, PluginError
from melt.core.schema import SIGNALS

GROUP = "melt.detectors"


@dataclass(frozen=True)
class PluginInfo:
    """A detector that loaded: its entry-point name, signal, source distribution and class."""

    name: str
    signal: str
    distribution: str
    target: str
    cls: type[Detector]


@dataclass(frozen=True)
class PluginFailure:
    """A detector entry point that could not be loaded, and why."""

    name: str
    distribution: str
    target: str
    reason: str


@lru_cache(maxsize=1)
def discover() -> tuple[dict[str, PluginInfo], tuple[PluginFailure, ...]]:
    """Load every entry point of :data:`GROUP`; returns (loaded by name, failures)."""
    loaded: dict[str, PluginInfo] = {}
    failures: list[PluginFailure] = []
    for ep in sorted(entry_points(group=GROUP), key=lambda e: e.name):
        distribution = ep.dist.name if ep.dist is not None else "?"
        try:
            cls = ep.load()
        except Exception as exc:  # any import-time error of third-party code is reported, not raised
            failures.append(PluginFailure(ep.name, distribution, ep.value, f"{type(exc).__name__}: {exc}".splitlines()[0]))
            continue
        if not (isinstance(cls, type) and issubclass(cls, Detector)):
            failures.append(PluginFailure(ep.name, distribution, ep.value, "not a subclass of melt.detector.Detector"))
            continue
        if cls.signal not in SIGNALS:
            failures.append(PluginFailure(ep.name, distribution, ep.value, f"unknown signal {cls.signal!r}"))
            continue
        if cls.name != ep.name:
            failures.append(
                PluginFailure(ep.name, distribution, ep.value, f"class name attribute {cls.name!r} differs from entry point")
            )
            continue
        if ep.name in loaded:
            failures.append(PluginFailure(ep.name, distribution, ep.value, f"name already taken by {loaded[ep.name].distribution}"))
            continue
        loaded[ep.name] = PluginInfo(ep.name, cls.signal, distribution, ep.value, cls)
    return loaded, tuple(failures)


def get_plugin(name: str) -> PluginInfo:
    """The loaded plugin ``name``, or a :class:`PluginError` saying why it is not available."""
    loaded, failures = discover()
    if name in loaded:
        return loaded[name]
    for failure in failures:
        if failure.name == name:
            raise PluginError(f"detector '{name}' failed to load: {failure.reason}")
    close = difflib.get_close_matches(name, list(loaded), n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (available: {', '.join(loaded) or 'none'})"
    raise PluginError(f"unknown detector '{name}'{hint}")


def requested_names(spec: str) -> list[str]:
    """Check ``--models`` before any data is read: ``[]`` for ``all``, else the known names asked for."""
    if spec.strip() == "all":
        return []
    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise PluginError("--models is empty: give 'all' or a comma-separated list of detector names")
    for name in names:
        get_plugin(name)
    return list(dict.fromkeys(names))


def resolve_models(spec: str, signals: list[str]) -> tuple[list[str], list[str]]:
    """Turn ``--models all|a,b`` into detector names.

    ``all`` picks every loaded detector whose signal the bundle has; returns (chosen, skipped with
    reason). A named detector whose signal the bundle lacks is skipped too, with its reason: a real
    collection often lacks a signal, and the other detectors still have work. Only when none is
    left is it an error.
    """
    loaded, _ = discover()
    if spec.strip() == "all":
        chosen = [name for name, info in loaded.items() if info.signal in signals]
        skipped = [f"{name} (no {info.signal})" for name, info in loaded.items() if info.signal not in signals]
        if not chosen:
            raise PluginError(f"no detector can run on this bundle (it has: {', '.join(signals) or 'nothing'})")
        return chosen, skipped
    names = requested_names(spec)
    absent = [name for name in names if get_plugin(name).signal not in signals]
    if len(absent) == len(names):
        info = get_plugin(names[0])
        raise PluginError(f"detector '{names[0]}' needs {info.signal} but the bundle has no {info.signal}.parquet"
                          if len(names) == 1 else
                          f"none of the detectors can run on this bundle (it has: {', '.join(signals) or 'nothing'})")
    return ([name for name in names if name not in absent],
            [f"{name} (no {get_plugin(name).signal})" for name in absent])


def build_detector(name: str, params: Mapping[str, Any] | None = None) -> Detector:
    """Instantiate detector ``name`` with config ``detectors.<name>``, checking keys and types."""
    info = get_plugin(name)
    defaults = info.cls.param_defaults()
    checked: dict[str, Any] = {}
    for key, value in (params or {}).items():
        if key not in defaults:
            close = difflib.get_close_matches(key, list(defaults), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(defaults) or 'none'})"
            raise ConfigError(f"config: unknown key 'detectors.{name}.{key}'{hint}")
        checked[key] = _check_param(f"detectors.{name}.{key}", defaults[key], value)
    return info.cls(**checked)


def _check_param(key: str, default: Any, value: Any) -> Any:
    """Type-check a detector parameter against the type of its default."""
    if default is None or value is None:
        return value
    ok = True
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int | float):
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if ok and isinstance(default, float):
            value = float(value)
        elif ok and isinstance(default, int) and isinstance(value, float) and not value.is_integer():
            ok = False
    elif isinstance(default, str):
        ok = isinstance(value, str)
    elif isinstance(default, list | tuple):
        ok = isinstance(value, list | tuple)
    elif isinstance(default, dict):
        ok = isinstance(value, dict)
    if not ok:
        raise ConfigError(f"config: key '{key}' must be {type(default).__name__}, got {type(value).__name__} {value!r}")
    return value
