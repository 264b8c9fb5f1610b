"""Typed settings: the configuration parsed and checked once, at load, into one frozen section per stage.

:func:`melt.core.config.load_config` merges the defaults, the YAML file and the environment and
checks every key's name and type. :class:`Settings` then turns the values into what the stages
use: durations become ``pandas.Timedelta``, regexes are compiled, paths are ``Path``, and every
number is checked against its range, with the key's path in the error. No stage parses a
config value again; each receives its own section (``settings.rca``, ``settings.ensemble``, ...).
Changes after load (command-line flags) go through :meth:`Settings.with_overrides`, which runs
the same checks.
"""

from __future__ import annotations

import copy
import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Self

import pandas as pd

from melt.core.config_spec import default_config, override
from melt.core.errors import ConfigError
from melt.core.timeutil import parse_duration


# ---------------------------------------------------------------- value checks
def _fail(key: str, problem: str) -> ConfigError:
    return ConfigError(f"config: key '{key}' {problem}")


def duration(value: Any, key: str) -> pd.Timedelta:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise _fail(key, str(exc)) from None


def optional_duration(value: Any, key: str) -> pd.Timedelta | None:
    return None if value is None else duration(value, key)


def number(value: Any, key: str, low: float | None = None, high: float | None = None, *,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite float in [low, high] (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(key, f"must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _fail(key, f"must be a finite number, got {value}")
    if low is not None and (value < low or (low_open and value == low)):
        raise _fail(key, f"must be {'>' if low_open else '>='} {low:g}, got {value:g}")
    if high is not None and (value > high or (high_open and value == high)):
        raise _fail(key, f"must be {'<' if high_open else '<='} {high:g}, got {value:g}")
    return value


def integer(value: Any, key: str, low: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(key, f"must be an integer, got {value!r}")
    if low is not None and value < low:
        raise _fail(key, f"must be >= {low}, got {value}")
    return value


def regex(value: Any, key: str, flags: int = 0, group: str | None = None) -> re.Pattern[str]:
    """A compiled regex; ``group``: a named group it must have (or, failing that, any group)."""
    try:
        compiled = re.compile(str(value), flags)
    except re.error as exc:
        raise _fail(key, f"is not a valid regex ({exc})") from None
    if group is not None and group not in compiled.groupindex and compiled.groups == 0:
        raise _fail(key, f"needs a group, e.g. (?P<{group}>...), got {value!r}")
    return compiled


def optional_regex(value: Any, key: str, flags: int = 0, group: str | None = None) -> re.Pattern[str] | None:
    return None if value in (None, "") else regex(value, key, flags, group)


def weights(values: Mapping[str, Any], key: str) -> Mapping[str, float]:
    """Non-negative finite weights by name."""
    return MappingProxyType({str(name): number(v, f"{key}.{name}", 0.0) for name, v in values.items()})


def optional_path(value: Any) -> Path | None:
    return None if value in (None, "") else Path(str(value))


def _frozen(values: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(copy.deepcopy(dict(values)))


# ---------------------------------------------------------------- sections
@dataclass(frozen=True)
class SynthSettings:
    """``melt generate`` (docs/synth.md)."""

    seed: int = 7
    services: int = 12
    endpoints_per_service: int = 3
    duration: pd.Timedelta = pd.Timedelta("2h")
    interval: pd.Timedelta = pd.Timedelta("1min")
    start: pd.Timestamp = pd.Timestamp("2026-01-05T00:00:00Z")
    requests_per_minute: float = 60.0
    faults: int = 3
    fault_types: tuple[str, ...] = ("latency", "error_burst", "cpu_saturation", "memory_leak", "network_delay",
                                    "pool_exhaustion", "bad_deploy", "packet_loss")
    fault_duration: pd.Timedelta = pd.Timedelta("10min")
    warmup_fraction: float = 0.4
    preset: str = "realistic"
    background_logs_per_minute: float = 20.0
    overlap: bool = False
    topology_file: Path | None = None

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "synth") -> SynthSettings:
        try:
            start = pd.Timestamp(v["start"])
        except (ValueError, TypeError) as exc:
            raise _fail(f"{key}.start", f"is not a time ({exc})") from None
        start = start.tz_convert("UTC") if start.tzinfo else start.tz_localize("UTC")
        return cls(
            seed=integer(v["seed"], f"{key}.seed", 0), services=integer(v["services"], f"{key}.services", 1),
            endpoints_per_service=integer(v["endpoints_per_service"], f"{key}.endpoints_per_service", 1),
            duration=duration(v["duration"], f"{key}.duration"), interval=duration(v["interval"], f"{key}.interval"),
            start=start,
            requests_per_minute=number(v["requests_per_minute"], f"{key}.requests_per_minute", 0.0, low_open=True),
            faults=integer(v["faults"], f"{key}.faults", 0), fault_types=tuple(str(t) for t in v["fault_types"]),
            fault_duration=duration(v["fault_duration"], f"{key}.fault_duration"),
            warmup_fraction=number(v["warmup_fraction"], f"{key}.warmup_fraction", 0.0, 1.0, high_open=True),
            preset=str(v["preset"]),
            background_logs_per_minute=number(v["background_logs_per_minute"], f"{key}.background_logs_per_minute", 0.0),
            overlap=bool(v["overlap"]), topology_file=optional_path(v["topology_file"]),
        )

    @classmethod
    def of(cls, **values: Any) -> SynthSettings:
        """The defaults with ``values`` in the config file's units (``duration="2h"``), parsed and checked."""
        section = default_config()["synth"]
        unknown = sorted(set(values) - set(section))
        if unknown:
            raise ConfigError(f"synth: unknown setting '{unknown[0]}' (known: {', '.join(section)})")
        return cls.parse(section | {k: v for k, v in values.items() if v is not None})


@dataclass(frozen=True)
class DetectSettings:
    """How ``melt detect`` and ``melt train`` fit the detectors."""

    train_fraction: float
    min_train_rows: int
    retrain_every: pd.Timedelta | None
    train_window: pd.Timedelta

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "detect") -> DetectSettings:
        return cls(train_fraction=number(v["train_fraction"], f"{key}.train_fraction", 0.0, 1.0, low_open=True),
                   min_train_rows=integer(v["min_train_rows"], f"{key}.min_train_rows", 1),
                   retrain_every=optional_duration(v["retrain_every"], f"{key}.retrain_every"),
                   train_window=duration(v["train_window"], f"{key}.train_window"))


@dataclass(frozen=True)
class EnsembleSettings:
    """Fusion of calibrated scores into alerts, and alerts into incidents (docs/rca.md)."""

    window: pd.Timedelta
    threshold: float
    combiner: str
    weights: Mapping[str, float]
    min_signals: int
    merge_gap: pd.Timedelta
    connect_hops: int
    min_alerts: int
    blip_factor: float
    settled_fraction: float

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "ensemble") -> EnsembleSettings:
        return cls(window=duration(v["window"], f"{key}.window"),
                   threshold=number(v["threshold"], f"{key}.threshold", 0.0, low_open=True),
                   combiner=str(v["combiner"]), weights=weights(v["weights"] or {}, f"{key}.weights"),
                   min_signals=integer(v["min_signals"], f"{key}.min_signals", 1),
                   merge_gap=duration(v["merge_gap"], f"{key}.merge_gap"),
                   connect_hops=integer(v["connect_hops"], f"{key}.connect_hops", 0),
                   min_alerts=integer(v["min_alerts"], f"{key}.min_alerts", 1),
                   blip_factor=number(v["blip_factor"], f"{key}.blip_factor", 0.0),
                   settled_fraction=number(v["settled_fraction"], f"{key}.settled_fraction", 0.0, 1.0))


@dataclass(frozen=True)
class RcaSettings:
    """Root-cause ranking (docs/rca.md)."""

    top_k: int
    pagerank_alpha: float
    lookback: pd.Timedelta
    bucket: pd.Timedelta
    weights: Mapping[str, float]
    evidence_weights: Mapping[str, float]
    noise_floor: Mapping[str, float]
    complaint_discount: float
    evidence_cap: float
    resource_metrics: re.Pattern[str]
    host_metrics: re.Pattern[str] | None
    topology_file: Path | None

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "rca") -> RcaSettings:
        return cls(top_k=integer(v["top_k"], f"{key}.top_k", 1),
                   pagerank_alpha=number(v["pagerank_alpha"], f"{key}.pagerank_alpha", 0.0, 1.0,
                                         low_open=True, high_open=True),
                   lookback=duration(v["lookback"], f"{key}.lookback"), bucket=duration(v["bucket"], f"{key}.bucket"),
                   weights=weights(v["weights"], f"{key}.weights"),
                   evidence_weights=weights(v["evidence_weights"], f"{key}.evidence_weights"),
                   noise_floor=weights(v["noise_floor"], f"{key}.noise_floor"),
                   complaint_discount=number(v["complaint_discount"], f"{key}.complaint_discount", 0.0, 1.0),
                   evidence_cap=number(v["evidence_cap"], f"{key}.evidence_cap", 0.0, low_open=True),
                   resource_metrics=regex(v["resource_metrics"], f"{key}.resource_metrics", re.IGNORECASE),
                   host_metrics=optional_regex(v["host_metrics"], f"{key}.host_metrics", re.IGNORECASE),
                   topology_file=optional_path(v["topology_file"]))


@dataclass(frozen=True)
class OpenAISettings:
    """An OpenAI-compatible endpoint (docs/report.md); the key is read from ``api_key_env`` at call time."""

    base_url: str | None
    model: str
    api_key_env: str
    timeout: float
    max_retries: int
    temperature: float

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "explain.openai") -> OpenAISettings:
        return cls(base_url=v["base_url"], model=str(v["model"]), api_key_env=str(v["api_key_env"]),
                   timeout=number(v["timeout"], f"{key}.timeout", 0.0, low_open=True),
                   max_retries=integer(v["max_retries"], f"{key}.max_retries", 0),
                   temperature=number(v["temperature"], f"{key}.temperature", 0.0, 2.0))


@dataclass(frozen=True)
class ExplainSettings:
    """Who writes the explanation, and how (docs/report.md)."""

    provider: str
    concurrency: int
    deadline: pd.Timedelta
    max_fact_tokens: int
    cache: bool
    cache_dir: Path | None
    keep_prompts: bool
    openai: OpenAISettings

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "explain") -> ExplainSettings:
        return cls(provider=str(v["provider"]), concurrency=integer(v["concurrency"], f"{key}.concurrency", 1),
                   deadline=duration(v["deadline"], f"{key}.deadline"),
                   max_fact_tokens=integer(v["max_fact_tokens"], f"{key}.max_fact_tokens", 1), cache=bool(v["cache"]),
                   cache_dir=optional_path(v["cache_dir"]), keep_prompts=bool(v["keep_prompts"]),
                   openai=OpenAISettings.parse(v["openai"], f"{key}.openai"))


@dataclass(frozen=True)
class WebhookSettings:
    """The ticketing webhook (docs/report.md); ``${env:X}`` in headers and vars is read at send time."""

    url: str | None
    payload: str
    headers: Mapping[str, Any]
    vars: Mapping[str, Any]
    timeout: float
    max_retries: int
    backoff: float
    idempotency_header: str

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "report.webhook") -> WebhookSettings:
        return cls(url=v["url"], payload=str(v["payload"]), headers=_frozen(v["headers"] or {}),
                   vars=_frozen(v["vars"] or {}), timeout=number(v["timeout"], f"{key}.timeout", 0.0, low_open=True),
                   max_retries=integer(v["max_retries"], f"{key}.max_retries", 0),
                   backoff=number(v["backoff"], f"{key}.backoff", 0.0),
                   idempotency_header=str(v["idempotency_header"]))


SINKS = ("files", "stdout", "webhook", "html")


@dataclass(frozen=True)
class ReportSettings:
    """Reports and where they go (docs/report.md)."""

    sinks: tuple[str, ...]
    max_evidence: int
    forecast_horizon: pd.Timedelta | None  # None: reports carry no forecast
    forecast_history: pd.Timedelta
    spool_dir: Path | None
    webhook: WebhookSettings

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "report") -> ReportSettings:
        unknown = [s for s in v["sinks"] if s not in SINKS]
        if unknown:
            raise _fail(f"{key}.sinks", f"has an unknown sink '{unknown[0]}' (use {', '.join(SINKS)})")
        horizon = optional_duration(v["forecast_horizon"], f"{key}.forecast_horizon")
        history = duration(v["forecast_history"], f"{key}.forecast_history")
        if horizon is not None and horizon <= pd.Timedelta(0):
            raise _fail(f"{key}.forecast_horizon", f"must be positive or null, got {v['forecast_horizon']!r}")
        if history <= pd.Timedelta(0):
            raise _fail(f"{key}.forecast_history", f"must be positive, got {v['forecast_history']!r}")
        return cls(sinks=tuple(v["sinks"]), max_evidence=integer(v["max_evidence"], f"{key}.max_evidence", 1),
                   forecast_horizon=horizon, forecast_history=history,
                   spool_dir=optional_path(v["spool_dir"]), webhook=WebhookSettings.parse(v["webhook"], f"{key}.webhook"))


@dataclass(frozen=True)
class TableSettings:
    """``melt import csv|parquet`` (docs/import.md)."""

    signal: str
    map: Mapping[str, str]
    wide: bool
    time_unit: str
    duration_unit: str
    service_from: str | None
    service_regex: re.Pattern[str] | None
    delimiter: str

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "import.table") -> TableSettings:
        return cls(signal=str(v["signal"]), map=_frozen({str(a): str(b) for a, b in (v["map"] or {}).items()}),
                   wide=bool(v["wide"]), time_unit=str(v["time_unit"]), duration_unit=str(v["duration_unit"]),
                   service_from=v["service_from"],
                   service_regex=optional_regex(v["service_regex"], f"{key}.service_regex", group="service"),
                   delimiter=str(v["delimiter"]))


@dataclass(frozen=True)
class NezhaSettings:
    """``melt import nezha`` (docs/import.md)."""

    subset: str
    fault_duration: pd.Timedelta
    service_regex: re.Pattern[str]
    max_clock_skew: pd.Timedelta

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "import.nezha") -> NezhaSettings:
        return cls(subset=str(v["subset"]), fault_duration=duration(v["fault_duration"], f"{key}.fault_duration"),
                   service_regex=regex(v["service_regex"], f"{key}.service_regex", group="service"),
                   max_clock_skew=duration(v["max_clock_skew"], f"{key}.max_clock_skew"))


@dataclass(frozen=True)
class ImportSettings:
    """``melt import`` (docs/import.md)."""

    chunk_rows: int
    chunk_mib: float
    bad_rows_shown: int
    table: TableSettings
    nezha: NezhaSettings

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "import") -> ImportSettings:
        return cls(chunk_rows=integer(v["chunk_rows"], f"{key}.chunk_rows", 1),
                   chunk_mib=number(v["chunk_mib"], f"{key}.chunk_mib", 0.0, low_open=True),
                   bad_rows_shown=integer(v["bad_rows_shown"], f"{key}.bad_rows_shown", 0),
                   table=TableSettings.parse(v["table"], f"{key}.table"), nezha=NezhaSettings.parse(v["nezha"], f"{key}.nezha"))


@dataclass(frozen=True)
class ServeSettings:
    """``melt serve``: the OTLP/HTTP receiver, its stored segments and the step loop (docs/serve.md)."""

    host: str
    port: int
    data_dir: Path
    db: Path  # default: <data_dir>/serve.db
    step: pd.Timedelta
    lateness: pd.Timedelta
    idle: pd.Timedelta
    retention: pd.Timedelta
    context: pd.Timedelta
    max_pending_mib: float
    commit_interval: pd.Timedelta
    sinks: tuple[str, ...]

    @classmethod
    def parse(cls, v: Mapping[str, Any], key: str = "serve") -> ServeSettings:
        data_dir = Path(str(v["data_dir"]))
        port = integer(v["port"], f"{key}.port", 0)
        if port > 65535:
            raise _fail(f"{key}.port", f"must be <= 65535, got {port}")
        sinks = tuple(str(s) for s in v["sinks"])
        unknown = [s for s in sinks if s not in SINKS]
        if unknown:
            raise _fail(f"{key}.sinks", f"unknown sink '{unknown[0]}' (known: {', '.join(SINKS)})")
        step = duration(v["step"], f"{key}.step")
        if step <= pd.Timedelta(0):
            raise _fail(f"{key}.step", "must be longer than 0")
        return cls(host=str(v["host"]), port=port, data_dir=data_dir,
                   db=optional_path(v["db"]) or data_dir / "serve.db", step=step,
                   lateness=duration(v["lateness"], f"{key}.lateness"),
                   idle=duration(v["idle"], f"{key}.idle"),
                   retention=duration(v["retention"], f"{key}.retention"),
                   context=duration(v["context"], f"{key}.context"),
                   max_pending_mib=number(v["max_pending_mib"], f"{key}.max_pending_mib", 0.0, low_open=True),
                   commit_interval=duration(v["commit_interval"], f"{key}.commit_interval"),
                   sinks=sinks)


@dataclass(frozen=True)
class Settings:
    """Every section, typed. Build with :func:`melt.core.config.load_settings`."""

    log_level: str
    synth: SynthSettings
    detect: DetectSettings
    detectors: Mapping[str, Mapping[str, Any]]  # each detector's constructor parameters, checked when it is built
    ensemble: EnsembleSettings
    rca: RcaSettings
    explain: ExplainSettings
    report: ReportSettings
    imports: ImportSettings  # the file's `import:` section
    serve: ServeSettings
    raw: Mapping[str, Any] = field(repr=False, default_factory=dict)  # the checked dict it was parsed from

    @classmethod
    def parse(cls, config: Mapping[str, Any]) -> Settings:
        """Typed settings from the dict :func:`melt.core.config.load_config` returns."""
        return cls(log_level=str(config["log_level"]), synth=SynthSettings.parse(config["synth"]),
                   detect=DetectSettings.parse(config["detect"]), detectors=detector_sections(config["detectors"]),
                   ensemble=EnsembleSettings.parse(config["ensemble"]), rca=RcaSettings.parse(config["rca"]),
                   explain=ExplainSettings.parse(config["explain"]), report=ReportSettings.parse(config["report"]),
                   imports=ImportSettings.parse(config["import"]), serve=ServeSettings.parse(config["serve"]),
                   raw=_frozen(config))

    def with_overrides(self, overrides: Mapping[str, Any], source: str = "command line") -> Self:
        """A copy with dotted keys (``{"detect.retrain_every": "10m"}``) changed, checked as in a file.

        ``None`` values are skipped (a flag that was not given).
        """
        config = copy.deepcopy(dict(self.raw))
        for dotted, value in overrides.items():
            if value is not None:
                override(config, dotted, value, source)
        return type(self).parse(config)

    def __reduce__(self) -> tuple[Any, tuple[dict[str, Any]]]:
        """Pickled as the checked dict it was parsed from (``melt serve`` sends it to its step process)."""
        return type(self).parse, (copy.deepcopy(dict(self.raw)),)

    def detector_params(self, name: str) -> Mapping[str, Any]:
        """``detectors.<name>`` of the config (empty when the file does not set it)."""
        return self.detectors.get(name) or {}


def detector_sections(sections: Mapping[str, Any]) -> Mapping[str, Mapping[str, Any]]:
    """``detectors.<name>`` sections, each naming an installed detector and holding a mapping.

    The names are checked against the ``melt.detectors`` entry points without importing any plugin:
    a misspelled section (``detectors.zscroe``) would otherwise be ignored while the detector ran
    with its defaults. A plugin's own keys are checked when it is built.
    """
    from importlib.metadata import entry_points

    known = sorted({ep.name for ep in entry_points(group="melt.detectors")})
    for name, values in sections.items():
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=1)
            hint = f" (did you mean 'detectors.{close[0]}'?)" if close else f" (installed: {', '.join(known)})"
            raise _fail(f"detectors.{name}", f"names no installed detector{hint}")
        if values is not None and not isinstance(values, Mapping):
            raise _fail(f"detectors.{name}", f"must be a mapping of parameters, got {type(values).__name__}")
    return MappingProxyType({str(k): _frozen(v or {}) for k, v in sections.items()})


def section_names(settings_class: type) -> list[str]:
    """The field names of a settings section (for messages)."""
    return [f.name for f in fields(settings_class)]
