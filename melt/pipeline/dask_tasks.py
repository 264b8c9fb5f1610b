"""What a Dask worker runs for :mod:`melt.pipeline.dask_run`: each task reads its own part of the
bundle (:mod:`melt.core.partitions`) and returns only what is small: a model, a part's scores, a
part's statistics in a fit by parts, a call table, a few flags.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from melt.core import partitions
from melt.core.bundle import TIME_COLUMNS, MeltBundle
from melt.core.detector import Detector, map_part
from melt.core.errors import PluginError
from melt.core.registry import LeftOut, get_plugin
from melt.core.schema import SIGNALS
from melt.core.settings import ReportSettings, Settings
from melt.pipeline.fitting import fit_detectors, score_all
from rca.graph import call_table


def frames_of(name: str) -> list[str]:
    detector = get_plugin(name).cls
    return [s for s in SIGNALS if s == detector.signal or s in detector.reads]


def fit_task(root: str, name: str, settings: Settings, cutoff: pd.Timestamp | None) -> dict[str, Any]:
    """Fit detector ``name`` on bundle ``root``'s rows before ``cutoff`` (all rows: ``None``), as
    :func:`fit_detectors` does: a detector with too little data, or whose fit raises, is a note."""
    import time

    began = time.perf_counter()
    frames = frames_of(name)
    if cutoff is None:
        train = partitions.bundle_of(root, {f: partitions.read_rows(root, f) for f in frames})
    else:
        train = partitions.before_part(root, frames, cutoff)
    notes: list[LeftOut] = []
    release_arrow_memory()
    try:
        models = fit_detectors(train, [name], settings, quiet=True, skipped=notes)
    except PluginError:
        return {"model": None, "notes": notes, "seconds": time.perf_counter() - began}
    return {"model": models[name], "notes": notes, "seconds": time.perf_counter() - began}


def score_task(root: str, fitted: dict[str, Any], part: tuple[str, Any],
               seen: pd.DatetimeIndex | None = None) -> dict[str, Any]:
    """Score one part of bundle ``root`` with ``fitted``'s model: ``("service", name)``,
    ``("trace", (shard, shards))`` or ``("whole", None)``; ``seen``: when the whole data has rows of
    the model's signal (:func:`melt.core.partitions.seen_seconds`), for a service's part."""
    import time

    model: Detector | None = fitted["model"]
    if model is None:
        return {"scores": None, "notes": [], "seconds": 0.0}
    began = time.perf_counter()
    frames = frames_of(model.name)
    kind, key = part
    if kind == "service":
        bundle = partitions.service_part(root, frames, key, seen=None if seen is None else {model.signal: seen})
    elif kind == "trace":
        bundle = partitions.shard_part(root, frames, *key)
    else:
        bundle = partitions.bundle_of(root, {f: partitions.read_rows(root, f) for f in frames})
    notes: list[LeftOut] = []
    if bundle.frame(model.signal).empty:
        return {"scores": None, "notes": notes, "seconds": time.perf_counter() - began}
    try:
        scores = score_all({model.name: model}, bundle, quiet=True, skipped=notes)
    except PluginError:
        scores = None
    del bundle
    release_arrow_memory()
    return {"scores": scores, "notes": notes, "seconds": time.perf_counter() - began}


def release_arrow_memory() -> None:
    """Hand the memory pyarrow's pool keeps for reuse back to the system: a worker reads part after
    part, and its memory limit counts what the pool holds."""
    import pyarrow as pa

    pa.default_memory_pool().release_unused()


def fit_summary(fitted: dict[str, Any]) -> dict[str, Any]:
    return {"notes": fitted["notes"], "seconds": fitted.get("seconds"), "fitted": fitted["model"] is not None,
            "tasks": fitted.get("tasks", [])}


def part_map_task(root: str, name: str, part: tuple[str, Any], cutoff: pd.Timestamp | None, detector: Detector,
                  step: int, early: Any = None) -> tuple[Any, float, int]:
    """One part's share of a round of ``detector``'s fit by parts (``("service", name)`` or
    ``("trace", (shard, shards))``), on its rows of the training split before ``cutoff`` (whole
    traces, as :func:`melt.core.partitions.before_part` keeps them; ``early`` is its trace list,
    read once): the round's result, the task's seconds and the part's rows of the detector's signal.

    The first round's failure comes back as the result, not raised: the client first checks that
    the parts hold enough rows to fit on at all (a fit on too little data may fail anyhow).
    """
    import time

    began = time.perf_counter()
    frames = frames_of(name)
    kind, key = part
    if kind == "trace":
        bundle = partitions.shard_part(root, frames, *key) if cutoff is None else \
            partitions.before_part(root, frames, cutoff, early=early, shard=key)
    else:
        bundle = partitions.service_part(root, frames, key) if cutoff is None else \
            partitions.before_part(root, frames, cutoff, key, early)
    rows = len(bundle.frame(detector.signal))
    try:
        result = map_part(detector, bundle, step)
    except Exception as exc:  # noqa: BLE001 - sent back for the client to weigh (see above)
        if step != 0:
            raise
        result = exc
    return result, time.perf_counter() - began, rows


def services_task(root: str, name: str) -> list[str]:
    return partitions.services_of(root, name)


def early_task(root: str, cutoff: pd.Timestamp) -> Any:
    return partitions.early_traces(root, cutoff)


def seen_task(root: str, name: str) -> pd.DatetimeIndex | None:
    return partitions.seen_seconds(root, name)


def time_range_task(root: str) -> tuple[pd.Timestamp, pd.Timestamp]:
    return partitions.time_range_of(root)


def calls_task(root: str, shard: int, shards: int) -> tuple[pd.DataFrame, list[str]]:
    """The call table (:func:`rca.graph.call_table`) of one shard of whole traces, and its services."""
    spans = partitions.shard_part(root, ["traces"], shard, shards).traces
    if spans is None or spans.empty:
        return call_table(None), []
    return call_table(spans), spans["service_name"].dropna().unique().tolist()


def active_task(root: str, name: str, service: str, windows: list[tuple[pd.Timestamp, pd.Timestamp]]) -> list[bool]:
    column = TIME_COLUMNS[name]
    times = partitions.service_rows(root, name, service, columns=[column])
    values = pd.DatetimeIndex(pd.to_datetime(times[column], utc=True)).sort_values()
    return [bool(values.searchsorted(start) < values.searchsorted(end)) for start, end in windows]


def forecast_task(root: str, candidates: list[dict[str, Any]], evidence: list[dict[str, Any]], origin: pd.Timestamp,
                  settings: ReportSettings) -> dict[str, Any] | None:
    """A report's forecast block, from the history of its metric's service read here."""
    from melt.reports.report_forecast import forecast_evidence, report_forecast

    item = forecast_evidence(candidates, evidence)
    if item is None or settings.forecast_horizon is None:
        return None
    rows = partitions.service_rows(root, "metrics", item["service"], [(origin - settings.forecast_history, origin)])
    return report_forecast(candidates, evidence, rows, origin, settings)


def page_task(root: str, services: list[str], evidence: list[dict[str, Any]], start: pd.Timestamp,
              incident: tuple[pd.Timestamp, pd.Timestamp], step: pd.Timedelta) -> dict[str, Any]:
    """An incident page's records drawn from rows (:func:`melt.reports.detail.drawn_rows`): the
    rows of ``services`` from ``start`` to the incident's end, read here, and the spans of the
    slowest spans' traces, for their children."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from melt.reports.detail import drawn_rows

    ranges = [(start, incident[1])]
    frames = {}
    for name in partitions.present_signals(root):
        got = [partitions.service_rows(root, name, service, ranges) for service in services]
        got = [g for g in got if g is not None and len(g)]
        frames[name] = pd.concat(got, ignore_index=True).sort_values(TIME_COLUMNS[name], kind="stable",
                                                                     ignore_index=True) if got else None
    bundle = partitions.bundle_of(root, {n: f for n, f in frames.items() if f is not None}) \
        if any(f is not None for f in frames.values()) else MeltBundle(validate=False)

    def family(trace_ids: list[str]) -> pd.DataFrame:
        return partitions.read_rows(root, "traces", ds.field("trace_id").isin(pa.array(trace_ids, type=pa.string())))

    return drawn_rows(bundle, evidence, services, start, incident, step, family)
