"""MeltBundle: a directory of up to four parquet frames plus an optional ``truth.json``.

A frame is one file (``logs.parquet``) or a partitioned dataset of the same name: a directory of
hive partitions by date and service (``logs.parquet/date=2026-12-01/service=cart/part-0.parquet``),
the layout query engines and Dask read one partition at a time. The bundle is validated once,
where it enters melt (:func:`MeltBundle.read` or the constructor), so detectors and later stages can
rely on column names and dtypes.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.errors import BundleError
from melt.core.schema import SIGNALS, validate_frame

TIME_COLUMNS = {"metrics": "timestamp", "logs": "timestamp", "events": "timestamp", "traces": "start_time"}
SERVICE_OF = {"metrics": "service", "logs": "service", "events": "service", "traces": "service_name"}
PARTITION_KEYS = ("date", "service")  # hive keys of a partitioned frame, in directory order
COLUMN_ORDER = b"melt.columns"  # schema metadata of a partitioned frame: its columns in order


@dataclass
class MeltBundle:
    """The four MELT frames of one system over one period, each optional.

    Args:
        metrics: long-format metric points.
        logs: log lines.
        traces: spans.
        events: change events (deploys, config changes, restarts, scaling).
        truth: ground truth (``{"faults": [...]}``) when the data is labelled.
        validate: check and coerce every frame against :mod:`melt.core.schema`.
        seen: per frame, the whole seconds at which the data this bundle is one part of has rows,
            when it is a part (one service's rows, read on a Dask worker): what a part knows of
            the whole (:meth:`buckets`). ``None``: the bundle is the whole.
    """

    metrics: pd.DataFrame | None = None
    logs: pd.DataFrame | None = None
    traces: pd.DataFrame | None = None
    events: pd.DataFrame | None = None
    truth: dict[str, Any] | None = None
    validate: bool = field(default=True, repr=False)
    seen: dict[str, pd.DatetimeIndex] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.validate:
            for name in SIGNALS:
                frame = getattr(self, name)
                if frame is not None:
                    setattr(self, name, validate_frame(name, frame, allow_empty=(name == "events")))
        self.validate = False

    # ------------------------------------------------------------------ queries
    def signals(self) -> list[str]:
        """Names of the frames present (events may be present and empty)."""
        return [name for name in SIGNALS if getattr(self, name) is not None]

    def rows(self, name: str) -> int:
        """How many rows signal ``name`` holds (0 when it is absent)."""
        frame = getattr(self, name)
        return 0 if frame is None else len(frame)

    def frame(self, name: str) -> pd.DataFrame:
        """Return frame ``name`` or raise a one-line :class:`BundleError` if it is absent."""
        frame = getattr(self, name, None)
        if frame is None:
            raise BundleError(f"the bundle has no {name} (no {name}.parquet)")
        return frame

    def services(self) -> list[str]:
        """Every service named in any frame, sorted."""
        names: set[str] = set()
        for name in self.signals():
            column = "service_name" if name == "traces" else "service"
            names.update(self.frame(name)[column].dropna().unique().tolist())
        return sorted(names)

    def buckets(self, name: str, width: pd.Timedelta) -> pd.DatetimeIndex:
        """The ``width`` buckets in which frame ``name`` has rows: of the whole data when this bundle
        is a part of it (``seen``, for widths of whole seconds), else of its own rows."""
        seen = (self.seen or {}).get(name)
        if seen is not None and width % pd.Timedelta(seconds=1) == pd.Timedelta(0):
            return seen.floor(width).unique()
        return pd.DatetimeIndex(self.frame(name)[TIME_COLUMNS[name]]).floor(width).unique()

    def time_range(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        """Earliest and latest timestamp over all frames that carry one."""
        lows, highs = [], []
        for name in self.signals():
            column = TIME_COLUMNS[name]
            frame = self.frame(name)
            if column in frame.columns and len(frame):
                lows.append(frame[column].min())
                highs.append(frame[column].max())
        if not lows:
            raise BundleError("the bundle has no timestamps (no frame with rows)")
        return min(lows), max(highs)

    def slice_time(self, start: pd.Timestamp | None, end: pd.Timestamp | None) -> MeltBundle:
        """A new bundle with the rows in ``[start, end)``; whole traces are kept or dropped together,
        with the log lines they wrote.

        A trace counts at its first span's start, and so do its log lines: a slice that kept a
        trace's late spans but cut the lines they logged would show those spans as calls whose
        expected lines vanished.
        """
        trace_start = self._trace_starts()
        parts: dict[str, pd.DataFrame | None] = {}
        for name in SIGNALS:
            frame = getattr(self, name)
            if frame is None or TIME_COLUMNS[name] not in frame.columns:
                parts[name] = frame
                continue
            times = frame[TIME_COLUMNS[name]]
            if name == "traces" and trace_start is not None:
                times = frame["trace_id"].map(trace_start)
            elif name == "logs" and trace_start is not None and "trace_id" in frame.columns:
                times = frame["trace_id"].map(trace_start).fillna(times)
            keep = pd.Series(True, index=frame.index)
            if start is not None:
                keep &= times >= start
            if end is not None:
                keep &= times < end
            parts[name] = frame[keep].reset_index(drop=True)
        return MeltBundle(**parts, truth=self.truth, validate=False)

    def _trace_starts(self) -> pd.Series | None:
        """Each trace's earliest span start, by trace id; ``None`` without traces."""
        traces = self.traces
        if traces is None or traces.empty or not {"trace_id", "start_time"} <= set(traces.columns):
            return None
        return traces.groupby("trace_id", sort=False, observed=True)["start_time"].min()

    def union(self, other: MeltBundle) -> MeltBundle:
        """Rows of both bundles, frame by frame (e.g. a fault-free reference plus a lead-in period).

        Spans repeated in both (same trace and span id) and repeated metric points are kept once.
        """
        parts: dict[str, pd.DataFrame | None] = {}
        for name in SIGNALS:
            frames = [f for f in (getattr(self, name), getattr(other, name)) if f is not None]
            parts[name] = pd.concat(frames, ignore_index=True) if len(frames) == 2 else (frames[0] if frames else None)
        if parts["traces"] is not None:
            parts["traces"] = parts["traces"].drop_duplicates(["trace_id", "span_id"], ignore_index=True)
        if parts["metrics"] is not None:
            key = [c for c in ("timestamp", "service", "instance", "metric", "peer") if c in parts["metrics"].columns]
            parts["metrics"] = parts["metrics"].drop_duplicates(key, ignore_index=True)
        return MeltBundle(**parts, truth=self.truth, validate=False)

    # ------------------------------------------------------------------ I/O
    @classmethod
    def read(cls, path: str | Path, signals: list[str] | None = None) -> MeltBundle:
        """Read a bundle directory; ``signals`` limits which frames are loaded.

        Raises:
            BundleError: the directory is missing, holds no frame, or a frame is invalid.
        """
        root = cls.check_dir(path)
        frames: dict[str, pd.DataFrame] = {}
        for name in signals or SIGNALS:
            file = root / f"{name}.parquet"
            if file.is_dir():
                frames[name] = _read_partitioned(file, name)
            elif file.exists():
                frames[name] = _read_parquet(file)
        if not frames:
            raise BundleError(f"{root}: no frame found (expected any of {', '.join(f'{s}.parquet' for s in SIGNALS)})")
        truth = read_truth(root)
        try:
            return cls(**frames, truth=truth)
        except BundleError as exc:
            raise BundleError(f"{root}/{exc}") from None

    @staticmethod
    def check_dir(path: str | Path) -> Path:
        """``path`` as an existing directory, or a one-line :class:`BundleError`."""
        root = Path(path)
        if not root.exists():
            raise BundleError(f"bundle directory not found: {root}")
        if not root.is_dir():
            raise BundleError(f"not a bundle directory: {root}")
        return root

    def write(self, path: str | Path, force: bool = True, partitioned: bool = False) -> Path:
        """Write every present frame as parquet (zstd) and ``truth.json``; returns the directory.

        With ``partitioned``, each frame is a directory of hive partitions by date (UTC) and service.

        Raises:
            BundleError: ``path`` cannot be a directory (it is a file, lies under one, its name is
                too long, no permission), or, without ``force``, it already holds files.
        """
        root = Path(path)
        try:
            if not force and root.is_dir() and any(root.iterdir()):
                raise BundleError(f"{root} is not empty; choose another --out or pass --force to replace its bundle")
            root.mkdir(parents=True, exist_ok=True)
            for name in self.signals():
                target = root / f"{name}.parquet"
                if target.is_dir():  # an earlier write in the other layout is replaced
                    shutil.rmtree(target)
                elif partitioned and target.exists():
                    target.unlink()
                if partitioned:
                    _write_partitioned(self.frame(name), name, target)
                else:
                    self.frame(name).to_parquet(target, index=False, compression="zstd")
            if self.truth is not None:
                (root / "truth.json").write_text(json.dumps(self.truth, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise BundleError(f"cannot write the bundle to {root}: {exc.strerror or exc}") from None
        return root

    def summary(self) -> dict[str, int]:
        """Row count per present frame."""
        return {name: len(self.frame(name)) for name in self.signals()}


def check_output_dir(path: str | Path) -> Path:
    """``path`` as a directory that can be written, checked before any work is spent on its contents.

    Raises:
        BundleError: a part of the path is a file, a name is longer than the file system allows, or
            the nearest existing directory is not writable.
    """
    root = Path(path)
    ancestor = root
    while not os.path.exists(ancestor) and ancestor != ancestor.parent:  # os.path: False, not OSError, on a long name
        ancestor = ancestor.parent
    if not os.path.isdir(ancestor):
        raise BundleError(f"cannot write the bundle to {root}: {ancestor} is a file")
    try:
        longest = int(os.pathconf(ancestor, "PC_NAME_MAX"))
    except (OSError, ValueError, AttributeError):
        longest = 255
    too_long = [part for part in root.parts if len(part.encode()) > longest]
    if too_long:
        raise BundleError(f"cannot write the bundle to {root}: a name is longer than {longest} bytes")
    if not os.access(ancestor, os.W_OK):
        raise BundleError(f"cannot write the bundle to {root}: {ancestor} is not writable")
    return root


def read_truth(root: str | Path) -> dict[str, Any] | None:
    """Bundle ``root``'s ``truth.json``, or ``None`` without one.

    Raises:
        BundleError: the file is not valid JSON.
    """
    file = Path(root) / "truth.json"
    if not file.exists():
        return None
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{file}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def unreadable(path: Path, exc: BaseException, what: str = "parquet") -> BundleError:
    """The one-line error of a file pyarrow could not read (it raises several unrelated types)."""
    reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
    return BundleError(f"{path}: cannot read {what} ({reason})")


def _read_parquet(file: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(file)
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise unreadable(file, exc) from None


def _write_partitioned(frame: pd.DataFrame, name: str, target: Path) -> None:
    """One frame as hive partitions (:func:`write_partitioned`)."""
    import pyarrow as pa

    write_partitioned([pa.Table.from_pandas(frame, preserve_index=False)], name, target)


def write_partitioned(tables: Iterable[Any], name: str, target: Path) -> None:
    """pyarrow tables of frame ``name`` (one schema) as hive partitions ``date=YYYY-MM-DD/service=S``
    under ``target``, streamed table by table. The service key is restored from the path on read
    (a trace's service is its ``service_name``, kept in the files as well); the frame's column order
    is kept in the schema metadata."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    def keyed(table: Any) -> Any:
        order = json.dumps(table.schema.names).encode()
        date = pc.strftime(table[TIME_COLUMNS[name]], format="%Y-%m-%d")
        service = table[SERVICE_OF[name]].cast(pa.string())
        if "service" in table.column_names:
            table = table.drop_columns(["service"])
        table = table.append_column("date", date).append_column("service", service)
        return table.replace_schema_metadata({**(table.schema.metadata or {}), COLUMN_ORDER: order})

    schema = None

    def stream() -> Any:
        nonlocal schema
        for table in tables:
            table = keyed(table)
            schema = table.schema
            yield from table.to_batches()

    batches = stream()
    first = next(batches, None)
    if first is None:
        if schema is not None:  # an empty frame (no events yet) stays a present, empty frame
            import pyarrow.parquet as pq

            target.mkdir(parents=True, exist_ok=True)
            pq.write_table(schema.empty_table(), target / "part-0.parquet")
        return
    ds.write_dataset(itertools.chain([first], batches), target, schema=first.schema, format="parquet",
                     partitioning=list(PARTITION_KEYS), partitioning_flavor="hive",
                     file_options=ds.ParquetFileFormat().make_write_options(compression="zstd"),
                     existing_data_behavior="delete_matching", basename_template="part-{i}.parquet")


def _read_partitioned(directory: Path, name: str) -> pd.DataFrame:
    """A partitioned frame back in one table, in time order (stable: a partition keeps its order)."""
    import pyarrow.dataset as ds

    try:
        dataset = ds.dataset(directory, format="parquet", partitioning="hive")
        table = dataset.to_table()
    except Exception as exc:  # pyarrow raises several unrelated types for corrupt files
        raise unreadable(directory, exc, "the partitioned parquet dataset") from None
    return from_partitions(table.to_pandas(), name, dataset.schema.metadata)


def from_partitions(frame: pd.DataFrame, name: str, metadata: dict[bytes, bytes] | None,
                    whole: bool = True) -> pd.DataFrame:
    """Rows read from a partitioned frame as :meth:`MeltBundle.read` gives them: the service key back
    as a plain column (a trace's is its ``service_name``), no date key, the written column order
    (``whole``: all columns were read), in time order (stable: a partition keeps its order)."""
    if "service" in frame.columns:
        frame["service"] = frame["service"].astype(object)  # from the path: dictionary-encoded there
    frame = frame.drop(columns=["date"] + (["service"] if name == "traces" else []), errors="ignore")
    order = json.loads((metadata or {}).get(COLUMN_ORDER, b"[]"))
    if whole and set(order) == set(frame.columns):
        frame = frame[order]
    if TIME_COLUMNS[name] not in frame.columns:
        return frame
    return frame.sort_values(TIME_COLUMNS[name], kind="stable", ignore_index=True)
