"""Reading part of a bundle: one service's rows, a shard of whole traces, time ranges.

What a Dask worker reads (:mod:`melt.pipeline.dask_run`): a filter is pushed into pyarrow's dataset
scan, so a partitioned frame (``date=/service=`` directories) is pruned to the partitions it names
and a single file is read batch by batch; only the rows kept stay in memory. Rows keep the order
:meth:`MeltBundle.read` gives them, so a detector scores a part exactly as it scores those rows
within the whole bundle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from melt.core.bundle import SERVICE_OF, TIME_COLUMNS, MeltBundle, from_partitions, read_truth, unreadable
from melt.core.errors import BundleError
from melt.core.schema import SIGNALS

RowFilter = Callable[[pd.DataFrame], np.ndarray]  # rows of a batch to keep, for what pyarrow cannot filter
TimeRanges = Sequence[tuple[pd.Timestamp | None, pd.Timestamp | None]]  # [start, end) each, open ends allowed


def frame_path(root: str | Path, name: str) -> Path | None:
    """The file or partitioned directory of frame ``name``, or ``None`` when the bundle lacks it."""
    path = Path(root) / f"{name}.parquet"
    return path if path.exists() else None


def present_signals(root: str | Path) -> list[str]:
    """The frames bundle ``root`` holds, in :data:`SIGNALS` order."""
    return [name for name in SIGNALS if frame_path(root, name) is not None]


def _dataset(path: Path) -> Any:
    import pyarrow.dataset as ds

    try:
        if path.is_dir():
            return ds.dataset(path, format="parquet", partitioning="hive")
        return ds.dataset(path, format="parquet")
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise unreadable(path, exc) from None


def service_is(path: Path, name: str, service: str) -> Any:
    """The filter expression of ``service``'s rows: the partition key of a partitioned frame
    (whole directories are skipped), the service column of a single file."""
    import pyarrow.dataset as ds

    return ds.field("service" if path.is_dir() else SERVICE_OF[name]) == service


def time_in(name: str, ranges: TimeRanges) -> Any:
    """The filter expression of rows whose time lies in any of ``ranges`` (``[start, end)``, open ends allowed)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    column = ds.field(TIME_COLUMNS[name])
    combined = None
    for start, end in ranges:
        term = None
        if start is not None:
            term = column >= pa.scalar(pd.Timestamp(start).as_unit("ns"))
        if end is not None:
            before = column < pa.scalar(pd.Timestamp(end).as_unit("ns"))
            term = before if term is None else term & before
        if term is None:
            return None
        combined = term if combined is None else combined | term
    return combined


def read_rows(root: str | Path, name: str, where: Any = None, keep: RowFilter | None = None,
              columns: list[str] | None = None, keep_reads: list[str] | None = None) -> pd.DataFrame | None:
    """The rows of frame ``name`` that pass ``where`` (a pyarrow expression) and ``keep`` (applied to
    each batch as a pandas frame of the ``keep_reads`` columns, or all of them), in
    :meth:`MeltBundle.read`'s order; ``None`` without the frame. Only the rows kept are converted.

    ``columns`` reads only those columns (no schema check: for keys and times, not for detectors).

    Raises:
        BundleError: the frame cannot be read.
    """
    import pyarrow as pa

    path = frame_path(root, name)
    if path is None:
        return None
    dataset = _dataset(path)
    try:
        if keep is None:
            table = dataset.to_table(filter=where, columns=columns)
        else:
            parts = []
            for batch in dataset.to_batches(filter=where, columns=columns):
                rows = (batch.select(keep_reads) if keep_reads else batch).to_pandas()
                if "service" in rows.columns and path.is_dir():
                    rows["service"] = rows["service"].astype(object)
                parts.append(pa.Table.from_batches([batch.filter(pa.array(np.asarray(keep(rows), dtype=bool)))]))
            table = pa.concat_tables(parts, promote_options="permissive") if parts else dataset.schema.empty_table()
            if columns is not None:
                table = table.select([c for c in columns if c in table.column_names])
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise unreadable(path, exc) from None
    frame = table.to_pandas()
    return from_partitions(frame, name, dataset.schema.metadata, whole=columns is None) if path.is_dir() else frame


def bundle_of(root: str | Path, frames: dict[str, pd.DataFrame | None],
              seen: dict[str, pd.DatetimeIndex] | None = None) -> MeltBundle:
    """A validated bundle of ``frames`` read from ``root`` (its ``truth.json`` too); ``seen`` as
    :class:`MeltBundle` takes it, for a part."""
    try:
        return MeltBundle(**frames, truth=read_truth(root), seen=seen)
    except BundleError as exc:
        raise BundleError(f"{root}/{exc}") from None


def service_rows(root: str | Path, name: str, service: str, ranges: TimeRanges | None = None,
                 columns: list[str] | None = None) -> pd.DataFrame | None:
    """``service``'s rows of frame ``name`` (a trace's spans by their own service), within ``ranges``
    when given; ``None`` without the frame."""
    path = frame_path(root, name)
    if path is None:
        return None
    where = service_is(path, name, service)
    if ranges is not None:
        where = where & time_in(name, ranges)
    return read_rows(root, name, where, columns=columns)


def service_part(root: str | Path, names: Sequence[str], service: str, ranges: TimeRanges | None = None,
                 seen: dict[str, pd.DatetimeIndex] | None = None) -> MeltBundle:
    """``service``'s rows of frames ``names`` (:func:`service_rows`) as a bundle; ``seen`` (from
    :func:`seen_seconds`) tells it when the whole data has rows."""
    return bundle_of(root, {name: service_rows(root, name, service, ranges) for name in names}, seen)


def seen_seconds(root: str | Path, name: str) -> pd.DatetimeIndex | None:
    """The whole seconds at which frame ``name`` has rows (:attr:`MeltBundle.seen`), sorted;
    ``None`` without the frame."""
    column = TIME_COLUMNS[name]
    times = read_rows(root, name, columns=[column])
    if times is None:
        return None
    return pd.DatetimeIndex(pd.to_datetime(times[column], utc=True)).floor("s").unique().sort_values()


def trace_shard(ids: pd.Series, shard: int, shards: int) -> np.ndarray:
    """Whether each trace id falls in ``shard`` of ``shards`` (a hash that is the same in every process)."""
    hashed = pd.util.hash_array(ids.astype(str).to_numpy(dtype=object), categorize=True)
    return (hashed % np.uint64(shards)).astype(np.int64) == shard


def _in_shard(shard: int, shards: int) -> RowFilter:
    """The row filter of the rows of traces in ``shard`` (rows without a trace id are in none)."""
    def keep(rows: pd.DataFrame) -> np.ndarray:
        ids = rows["trace_id"]
        return ids.notna().to_numpy() & trace_shard(ids.fillna(""), shard, shards)

    return keep


def shard_part(root: str | Path, names: Sequence[str], shard: int, shards: int) -> MeltBundle:
    """The spans of the traces in ``shard`` and the log lines they wrote, of frames ``names``;
    a frame without a trace id is read whole."""
    keep = _in_shard(shard, shards)
    frames = {}
    for name in names:
        path = frame_path(root, name)
        if path is None:
            frames[name] = None
            continue
        has_ids = "trace_id" in _dataset(path).schema.names
        frames[name] = read_rows(root, name, keep=keep if has_ids else None, keep_reads=["trace_id"])
    return bundle_of(root, frames)


def services_of(root: str | Path, name: str) -> list[str]:
    """The services frame ``name`` holds rows of, sorted (a partitioned frame's from its directories)."""
    path = frame_path(root, name)
    if path is None:
        return []
    if path.is_dir():
        found = {p.name.partition("=")[2] for p in path.glob("date=*/service=*") if p.is_dir()}
        if found or not any(path.glob("date=*")):
            from urllib.parse import unquote

            return sorted(unquote(s) for s in found)
    column = SERVICE_OF[name]
    frame = read_rows(root, name, columns=[column])
    return sorted(frame[column].dropna().astype(str).unique().tolist()) if frame is not None else []


def time_range_of(root: str | Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    """:meth:`MeltBundle.time_range` of bundle ``root``, reading only the time columns.

    Raises:
        BundleError: no frame has a row.
    """
    lows, highs = [], []
    for name in present_signals(root):
        column = TIME_COLUMNS[name]
        times = read_rows(root, name, columns=[column])
        if times is not None and column in times.columns and len(times):
            values = pd.to_datetime(times[column], utc=True)
            lows.append(values.min())
            highs.append(values.max())
    if not lows:
        raise BundleError("the bundle has no timestamps (no frame with rows)")
    return min(lows), max(highs)


def early_traces(root: str | Path, cutoff: pd.Timestamp) -> Any:
    """The ids of the traces that start before ``cutoff`` (a pyarrow string array), or ``None``
    when the bundle has no traces: what :func:`before_part` keeps of traces and their lines."""
    import pyarrow as pa

    if frame_path(root, "traces") is None:
        return None
    starts = read_rows(root, "traces", time_in("traces", [(None, cutoff)]), columns=["trace_id"])
    return pa.array(pd.unique(starts["trace_id"].dropna().astype(str)), type=pa.string())


def before_part(root: str | Path, names: Sequence[str], cutoff: pd.Timestamp, service: str | None = None,
                early: Any = None, shard: tuple[int, int] | None = None) -> MeltBundle:
    """What ``MeltBundle.read(root).slice_time(None, cutoff)`` holds of frames ``names``, read without
    the rest: whole traces that start before ``cutoff``, with every line they logged, and the other
    rows before it (:meth:`MeltBundle.slice_time`'s rules). ``service`` keeps only its rows (a
    trace's spans by their own service); ``shard`` (of shards) only the traces of that shard and
    their lines (as :func:`shard_part`); ``early`` is :func:`early_traces`, when already read."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    if early is None and ("traces" in names or "logs" in names):
        early = early_traces(root, cutoff)
    frames: dict[str, pd.DataFrame | None] = {}
    for name in names:
        path = frame_path(root, name)
        if path is None:
            frames[name] = None
            continue

        def where(expression: Any, name: str = name, path: Path = path) -> Any:
            return expression if service is None else service_is(path, name, service) & expression

        keep = None if shard is None or "trace_id" not in _dataset(path).schema.names else _in_shard(*shard)
        if name == "traces":
            frames[name] = read_rows(root, name, where(ds.field("trace_id").isin(early)), keep=keep, keep_reads=["trace_id"])
            continue
        if keep is not None:  # a shard's lines: those of its traces that start before the cutoff
            frames[name] = read_rows(root, name, where(ds.field("trace_id").isin(early)), keep=keep, keep_reads=["trace_id"])
            continue
        if name == "logs" and early is not None and "trace_id" in _dataset(path).schema.names:
            logs = read_rows(root, name, where(time_in(name, [(None, cutoff)]) | ds.field("trace_id").isin(early)))
            # a line of a trace that starts at or after the cutoff goes with its trace
            others = logs["trace_id"].notna() & ~logs["trace_id"].astype(str).isin(set(early.to_pylist()))
            named = pd.unique(logs.loc[others, "trace_id"].astype(str))
            late = read_rows(root, "traces", ds.field("trace_id").isin(pa.array(named, type=pa.string())),
                             columns=["trace_id"]) if len(named) else None
            if late is not None and len(late):
                logs = logs[~(others & logs["trace_id"].astype(str).isin(set(late["trace_id"])))]
            frames[name] = logs.reset_index(drop=True)
            continue
        frames[name] = read_rows(root, name, where(time_in(name, [(None, cutoff)])))
    return bundle_of(root, frames)
