"""What the configuration may hold: every key with its default and kind, the allowed choices, the
environment overrides, and the check of one value against its spec (one line naming the key).

:mod:`melt.core.config` reads files and the environment through it; :mod:`melt.core.settings`
turns the checked values into typed sections.
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from typing import Any

from melt.core.errors import ConfigError
from melt.core.timeutil import parse_duration


class Duration(str):
    """Marks a default that must parse as a duration ("5m")."""


class Nullable:
    """Marks a setting that may be ``None`` or a value of ``kind``; its default is ``default`` (``None``)."""

    def __init__(self, kind: type, default: Any = None) -> None:
        self.kind = kind
        self.default = default


class FreeMap(dict):
    """Marks a mapping whose keys are free (e.g. ensemble weights per detector name)."""


DEFAULTS: dict[str, Any] = {
    "log_level": "INFO",
    "synth": {
        "seed": 7,
        "services": 12,
        "endpoints_per_service": 3,
        "duration": Duration("2h"),
        "interval": Duration("1m"),
        "start": "2026-01-05T00:00:00Z",
        "requests_per_minute": 60.0,
        "faults": 3,
        "fault_types": ["latency", "error_burst", "cpu_saturation", "memory_leak", "network_delay",
                        "pool_exhaustion", "bad_deploy", "packet_loss"],
        "fault_duration": Duration("10m"),
        "warmup_fraction": 0.4,
        "preset": "realistic",
        "background_logs_per_minute": 20.0,
        "overlap": False,
        "topology_file": Nullable(str),
    },
    "detect": {
        "train_fraction": 0.35,
        "min_train_rows": 50,
        "retrain_every": Nullable(Duration),
        "train_window": Duration("2h"),
    },
    "detectors": FreeMap(),
    "ensemble": {
        "window": Duration("1m"),
        "threshold": 4.0,
        "combiner": "max",
        "weights": FreeMap({"zscore": 0.6, "iforest": 0.67, "lstm_ae": 0.45, "changepoint": 0.5}),
        "min_signals": 1,
        "merge_gap": Duration("3m"),
        "connect_hops": 2,
        "min_alerts": 2,
        "blip_factor": 1.5,
        "settled_fraction": 0.5,
    },
    "rca": {
        "top_k": 5,
        "pagerank_alpha": 0.85,
        "lookback": Duration("5m"),
        "bucket": Duration("1m"),
        "weights": {"anomaly": 0.7, "propagation": 0.1, "precedence": 0.1, "change": 0.1},
        "evidence_weights": {"resource": 1.0, "logs": 1.0, "reported": 1.0, "traces": 0.5, "calls": 1.0,
                             "symptoms": 0.02},
        "noise_floor": {"resource": 3.0, "logs": 0.0, "reported": 3.0, "traces": 3.0, "calls": 3.0, "symptoms": 3.0},
        "complaint_discount": 0.5,
        "evidence_cap": 20.0,
        "resource_metrics": "cpu|mem|thread|gc|heap|disk|fd|retrans",
        "host_metrics": r"^(?:node|host)|k8s\.node\.|^system\.",
        "topology_file": Nullable(str),
    },
    "explain": {
        "provider": "template",
        "concurrency": 4,
        "deadline": Duration("2m"),
        "max_fact_tokens": 1500,
        "cache": True,
        "cache_dir": Nullable(str),
        "keep_prompts": False,
        "openai": {
            "base_url": Nullable(str),
            "model": "gpt-4o-mini",
            "api_key_env": "OPENAI_API_KEY",
            "timeout": 30.0,
            "max_retries": 2,
            "temperature": 0.0,
        },
    },
    "report": {
        "sinks": ["files"],
        "max_evidence": 20,
        "forecast_horizon": Nullable(Duration, "30m"),
        "forecast_history": Duration("2d"),
        "spool_dir": Nullable(str),
        "webhook": {
            "url": Nullable(str),
            "payload": "generic",
            "headers": FreeMap(),
            "vars": FreeMap(),
            "timeout": 10.0,
            "max_retries": 3,
            "backoff": 0.5,
            "idempotency_header": "Idempotency-Key",
        },
    },
    "import": {
        "chunk_rows": 200_000,
        "chunk_mib": 32.0,
        "bad_rows_shown": 5,
        "table": {
            "signal": "metrics",
            "map": FreeMap(),
            "wide": False,
            "time_unit": "auto",
            "duration_unit": "ms",
            "service_from": Nullable(str),
            "service_regex": Nullable(str),
            "delimiter": ",",
        },
        "nezha": {
            "subset": "rca",
            "fault_duration": Duration("3m"),
            "service_regex": "^(?P<service>.+)-[^-]+-[^-]+$",
            "max_clock_skew": Duration("1d"),
        },
    },
    "serve": {
        "host": "127.0.0.1",
        "port": 4318,
        "data_dir": "melt-serve",
        "db": Nullable(str),
        "step": Duration("1m"),
        "lateness": Duration("30s"),
        "idle": Duration("30s"),
        "retention": Duration("2d"),
        "context": Duration("10m"),
        "max_pending_mib": 256.0,
        "commit_interval": Duration("200ms"),
        "sinks": ["files"],
    },
}

CHOICES: dict[str, tuple[str, ...]] = {
    "log_level": ("DEBUG", "INFO", "WARNING", "ERROR"),
    "synth.preset": ("easy", "realistic", "hard"),
    "ensemble.combiner": ("max", "mean", "weighted"),
    "explain.provider": ("template", "openai"),
    "import.table.signal": ("metrics", "logs", "traces", "events"),
    "import.table.time_unit": ("auto", "s", "ms", "us", "ns"),
    "import.table.duration_unit": ("ns", "us", "ms", "s"),
    "import.nezha.subset": ("rca", "normal"),
}

# The few operational settings that an environment variable may override.
ENV_OVERRIDES: dict[str, str] = {
    "MELT_THRESHOLD": "ensemble.threshold",
    "MELT_LOG_LEVEL": "log_level",
    "MELT_LLM_API_KEY_ENV": "explain.openai.api_key_env",
}


def _plain(spec: Any) -> Any:
    """The default value behind a spec marker."""
    if isinstance(spec, Nullable):
        return None if spec.default is None else _plain(spec.kind(spec.default))
    if isinstance(spec, Duration):
        return str(spec)
    if isinstance(spec, dict):
        return {k: _plain(v) for k, v in spec.items()}
    return copy.deepcopy(spec)


def default_config() -> dict[str, Any]:
    """A fresh nested dict of every default."""
    return _plain(DEFAULTS)


def check_value(key: str, spec: Any, value: Any, source: str) -> Any:
    def wrong(expected: str) -> ConfigError:
        return ConfigError(f"{source}: key '{key}' must be {expected}, got {type(value).__name__} {value!r}")

    if isinstance(spec, Nullable):
        if value is None:
            return None
        spec = spec.kind()
    if isinstance(spec, Duration):
        try:
            parse_duration(value)
        except ValueError as exc:
            raise ConfigError(f"{source}: key '{key}': {exc}") from None
        return str(value)
    if isinstance(spec, bool):
        if not isinstance(value, bool):
            raise wrong("true or false")
    elif isinstance(spec, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wrong("a number")
        value = float(value)
    elif isinstance(spec, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong("an integer")
    elif isinstance(spec, str):
        if not isinstance(value, str):
            raise wrong("a string")
    elif isinstance(spec, list):
        if not isinstance(value, list):
            raise wrong("a list")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{source}: key '{key}' must be one of {', '.join(CHOICES[key])}, got {value!r}")
    return value


def merge(spec: Mapping[str, Any], base: dict[str, Any], user: Any, prefix: str, source: str) -> None:
    if not isinstance(user, Mapping):
        where = f"section '{prefix.rstrip('.')}'" if prefix else "the top level"
        raise ConfigError(f"{source}: {where} must be a mapping, got {type(user).__name__}")
    for key, value in user.items():
        dotted = f"{prefix}{key}"
        if isinstance(spec, FreeMap):
            if not isinstance(value, Mapping | int | float | str | bool | list) and value is not None:
                raise ConfigError(f"{source}: key '{dotted}' has an unsupported value {value!r}")
            base[key] = copy.deepcopy(value)
            continue
        if key not in spec:
            close = difflib.get_close_matches(str(key), [str(k) for k in spec], n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (known: {', '.join(spec)})"
            raise ConfigError(f"{source}: unknown key '{dotted}'{hint}")
        child = spec[key]
        if isinstance(child, dict):
            merge(child, base[key], value if value is not None else {}, f"{dotted}.", source)
        else:
            base[key] = check_value(dotted, child, value, source)


def lookup_spec(dotted: str) -> Any:
    """The spec of ``dotted``; a key inside a free mapping (``detectors.teg.seed``) gets the
    mapping's, since its keys are checked where they are used (detector parameters when built)."""
    node: Any = DEFAULTS
    for part in dotted.split("."):
        if isinstance(node, FreeMap):
            return node
        node = node[part]
    return node


def override(config: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    """Set ``config[dotted]`` in place, checked against the spec as a file's value would be."""
    try:
        spec = lookup_spec(dotted)
    except (KeyError, TypeError):
        raise ConfigError(f"{source}: unknown key '{dotted}'") from None
    section = config
    *parents, leaf = dotted.split(".")
    for part in parents:
        section = section.setdefault(part, {})  # only a free mapping lacks a section of the key
        if not isinstance(section, dict):
            raise ConfigError(f"{source}: '{dotted}': '{part}' holds a value, not a section")
    section[leaf] = copy.deepcopy(value) if isinstance(spec, FreeMap) else check_value(dotted, spec, value, source)
