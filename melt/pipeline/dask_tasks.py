"""What a Dask worker runs for :mod:`melt.pipeline.dask_run`: each task reads its own part of the
bundle (:mod:`melt.core.partitions`) and returns only what is small: a model, a part's scores, a
part's statistics in a fit by parts, a call table, a few flags.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from melt.core import partitions
from melt.core.bundle import TIME_COLUMNS
from melt.core.detector import Detector, map_part
from melt.core.errors import PluginError
from melt.core.registry import LeftOut, get_plugin
from melt.core.schema import SIGNALS
from melt.core.settings import Settings
from melt.pipeline.fitting import fit_detectors, score_all
from rca.graph import call_table

ROWS = -2  # part_map_task's step that counts the part's rows of the detector's signal


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


def score_task(root: str, fitted: dict[str, Any], part: tuple[str, Any]) -> dict[str, Any]:
    """Score one part of bundle ``root`` with ``fitted``'s model: ``("service", name)``,
    ``("trace", (shard, shards))`` or ``("whole", None)``."""
    import time

    model: Detector | None = fitted["model"]
    if model is None:
        return {"scores": None, "notes": [], "seconds": 0.0}
    began = time.perf_counter()
    frames = frames_of(model.name)
    kind, key = part
    if kind == "service":
        bundle = partitions.service_part(root, frames, key)
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
    return {"notes": fitted["notes"], "seconds": fitted.get("seconds"), "fitted": fitted["model"] is not None}


def part_map_task(root: str, name: str, service: str, cutoff: pd.Timestamp | None, detector: Detector,
                  step: int) -> tuple[Any, float]:
    """One service's share of a round of ``detector``'s fit by parts, on its rows before ``cutoff``;
    :data:`ROWS` counts them."""
    import time

    began = time.perf_counter()
    bundle = partitions.service_part(root, frames_of(name), service, None if cutoff is None else [(None, cutoff)])
    result = len(bundle.frame(detector.signal)) if step == ROWS else map_part(detector, bundle, step)
    return result, time.perf_counter() - began


def services_task(root: str, name: str) -> list[str]:
    return partitions.services_of(root, name)


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


def service_rows_task(root: str, name: str, service: str, ranges: list[tuple[pd.Timestamp, pd.Timestamp]]) -> pd.DataFrame | None:
    return partitions.service_rows(root, name, service, ranges)
