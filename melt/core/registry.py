"""Detector discovery through the ``melt.detectors`` entry-point group.

Built-in detectors register in melt's own ``pyproject.toml`` exactly as a third-party package
would, so there is one code path for both. Plugins that fail to import are recorded with the
reason instead of breaking discovery.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

from melt.core.detector import Detector
from melt.core.errors import ConfigError, PluginError
from melt.core.schema import SIGNALS
from melt.core.timeutil import parse_duration

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
class LeftOut:
    """A detector a run left out, and the line that says why (printed, and kept in ``index.json``)."""

    detector: str
    text: str
    warn: bool = True  # a warning line; False for what is expected (``--models all`` on a bundle without logs)

    def __str__(self) -> str:
        return self.text


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


def resolve_models(spec: str, signals: list[str]) -> tuple[list[str], list[LeftOut]]:
    """Turn ``--models all|a,b`` into detector names.

    ``all`` picks every loaded detector whose signal the bundle has; returns (chosen, skipped with
    reason); a plugin that failed to import is one of the skipped (a warning), while naming it is an
    error (:func:`get_plugin`). A named detector whose signal the bundle lacks is skipped too, with its reason: a real
    collection often lacks a signal, and the other detectors still have work. Only when none is
    left is it an error.
    """
    loaded, failures = discover()
    if spec.strip() == "all":
        chosen = [name for name, info in loaded.items() if info.signal in signals]
        skipped = [LeftOut(name, f"{name} (no {info.signal})", warn=False)
                   for name, info in loaded.items() if info.signal not in signals]
        skipped += [LeftOut(f.name, f"{f.name} (failed to load from {f.distribution}: {f.reason})") for f in failures]
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
            [LeftOut(name, f"{name} (no {get_plugin(name).signal})") for name in absent])


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
        checked[key] = _check_param(f"detectors.{name}.{key}", defaults[key], value, info.cls.choices.get(key))
    return info.cls(**checked)


DEVICES = ("auto", "cpu", "cuda")
FRACTION_WORDS = ("fraction", "share", "alpha", "_rate")  # parameters that are a part of a whole: in [0, 1]


def _check_param(key: str, default: Any, value: Any, choices: tuple[str, ...] | None = None) -> Any:
    """Check a detector parameter against its default: the same type, and a value of the same kind.

    Beyond the type: a number is finite; an integer whose default is at least 1 stays at least 1
    (trees, epochs, windows), and one whose default is 0 stays non-negative (seeds); a float keeps
    its default's sign (0 may switch a floor off); a parameter named like a fraction, share, rate
    or alpha lies in [0, 1]; a string whose default is a duration must be one; ``device`` is auto,
    cpu or cuda[:n]; ``masks`` are [regex, token] pairs whose regexes compile; ``choices`` (the
    detector's :attr:`melt.core.detector.Detector.choices`) list the allowed strings.
    """
    if default is None and key.rsplit(".", 1)[-1] == "masks" and value is not None:
        return _check_masks(key, value)
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
    return _check_kind(key, default, value, choices)


def _check_kind(key: str, default: Any, value: Any, choices: tuple[str, ...] | None) -> Any:
    leaf = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise ConfigError(f"config: key '{key}' must be a finite number, got {value}")
        if any(word in leaf for word in FRACTION_WORDS) and not 0 <= value <= 1:
            raise ConfigError(f"config: key '{key}' must be in [0, 1], got {value}")
        if isinstance(default, int) and default >= 1 and value < 1:
            raise ConfigError(f"config: key '{key}' must be >= 1, got {value}")
        if default >= 0 and value < 0:
            raise ConfigError(f"config: key '{key}' must be >= 0, got {value}")
        return value
    if isinstance(value, str):
        if leaf == "device" and not (value in DEVICES or re.fullmatch(r"cuda:\d+", value)):
            raise ConfigError(f"config: key '{key}' must be one of {', '.join(DEVICES)} or cuda:N, got {value!r}")
        if choices and value not in choices:
            raise ConfigError(f"config: key '{key}' must be one of {', '.join(choices)}, got {value!r}")
        if isinstance(default, str) and _is_duration(default):
            try:
                parse_duration(value)
            except ValueError as exc:
                raise ConfigError(f"config: key '{key}': {exc}") from None
    return value


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except ValueError:
        return False
    return True


def _check_masks(key: str, value: Any) -> Any:
    """``[[regex, token], ...]``: each regex compiles."""
    if not isinstance(value, list | tuple):
        raise ConfigError(f"config: key '{key}' must be a list of [regex, token] pairs, got {value!r}")
    for number, pair in enumerate(value):
        if not isinstance(pair, list | tuple) or len(pair) != 2 or not all(isinstance(p, str) for p in pair):
            raise ConfigError(f"config: key '{key}' item {number} must be [regex, token], got {pair!r}")
        try:
            re.compile(pair[0])
        except re.error as exc:
            raise ConfigError(f"config: key '{key}' item {number}: {pair[0]!r} is not a valid regex ({exc})") from None
    return value
