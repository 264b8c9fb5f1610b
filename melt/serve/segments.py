"""Durable parquet segments of received rows: group commit, backpressure, retention, reads by event time.

``melt serve`` answers an OTLP sender only once its rows are on disk, so nothing acknowledged is
lost to a crash (OTLP/HTTP: a 200 tells the sender it may drop its copy). Writing one file per
request would cost an fsync each; instead a writer thread collects what arrives during
``commit_interval`` and writes one segment per signal (group commit, as databases do with their
log), then resolves the futures of every request in it.

A segment is ``<data_dir>/segments/<signal>/<seq>-<min_ns>-<max_ns>.parquet``: a sequence number
and the event-time bounds of its rows (nanoseconds since the epoch), so a read picks its files by
name and a restart needs no other index. Each is written under a temporary name, fsynced, renamed
into place and its directory fsynced: a segment either exists whole or not at all.

Pending (received, not yet written) data is bounded: over ``max_pending_bytes`` :meth:`submit`
raises :class:`Backpressure`, which the receiver answers with 429 and ``Retry-After`` (OTLP/HTTP:
"retryable", and the SDKs and the collector wait that long and send again).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa

from melt.core.bundle import TIME_COLUMNS, MeltBundle
from melt.core.progress import log
from melt.core.schema import SCHEMAS, SIGNALS, validate_frame
from melt.importers.writer import arrow_table
from melt.serve import compaction
from melt.serve.dedup import REQUESTS_KEY
from melt.serve.durable import fsync_path

SEGMENT_NAME = re.compile(r"^(?P<seq>\d+)-(?P<low>\d+)-(?P<high>\d+)(?P<compacted>\.c)?\.parquet$")
TEMP_SUFFIX = ".tmp"
RETRY_AFTER = (1.0, 30.0)
"""Bounds of the ``Retry-After`` advice, in seconds."""


class Backpressure(Exception):
    """More data is pending than the store may hold; the sender should retry after ``retry_after`` seconds."""

    def __init__(self, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Segment:
    """One segment file: its sequence number and the event-time bounds (ns) of its rows."""

    seq: int
    low: int
    high: int
    path: Path
    compacted: bool = False  # merged from smaller ones (:mod:`melt.serve.compaction`)


@dataclass
class _Pending:
    frames: dict[str, pd.DataFrame]
    future: Future[None]
    size: int
    keys: tuple[str, ...] = ()


class SegmentStore:
    """Received rows as parquet segments under ``data_dir/segments``; recovers existing ones on start.

    Args:
        data_dir: the directory (created if missing).
        retention: :meth:`sweep` deletes segments whose newest row is older than the newest row
            stored less this.
        commit_interval: how long the writer collects requests before writing them as one segment.
        max_pending_bytes: received data (pandas memory) not yet written above which
            :meth:`submit` refuses more.
        read_only: a reader beside the writing process (``melt serve``'s step process): it never
            writes or removes a temporary file, and :meth:`refresh` picks up the segments written
            since it looked.
        index_writes: keep the segments written in the index; a writer that never reads (``melt
            serve``'s receiver) does without, so its index does not grow with every segment.
    """

    def __init__(self, data_dir: Path, *, retention: pd.Timedelta, commit_interval: pd.Timedelta,
                 max_pending_bytes: int, read_only: bool = False, index_writes: bool = True) -> None:
        self.root = Path(data_dir) / "segments"
        self.retention = pd.Timedelta(retention)
        self.commit_interval = max(pd.Timedelta(commit_interval).total_seconds(), 0.0)
        self.max_pending_bytes = int(max_pending_bytes)
        self.read_only, self.index_writes = read_only, index_writes
        self._newest_written: int | None = None
        self._segments: dict[str, list[Segment]] = {signal: [] for signal in SIGNALS}
        self._schemas: dict[Path, pa.Schema] = {}  # each segment file's schema, read once
        self._lock = threading.Lock()  # the segment index
        self._wake = threading.Condition()  # the queue
        self._queue: list[_Pending] = []
        self._queued_since = 0.0
        self._pending = 0
        self._rows: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self._rate = 0.0  # bytes written per second, smoothed: the Retry-After advice
        self._thread: threading.Thread | None = None
        self._closing = False
        self._seq = self._recover()

    @classmethod
    def of(cls, serve: Any, *, read_only: bool = False, index_writes: bool = True) -> SegmentStore:
        """The store of ``melt serve``'s settings (``serve.data_dir``, ``retention``,
        ``commit_interval``, ``max_pending_mib``)."""
        return cls(serve.data_dir, retention=serve.retention, commit_interval=serve.commit_interval,
                   max_pending_bytes=int(serve.max_pending_mib * 2**20), read_only=read_only,
                   index_writes=index_writes)

    # ------------------------------------------------------------------ life cycle
    def _recover(self) -> int:
        """Index the segments on disk (a writer removes the temporary files of an interrupted
        write); the next seq."""
        last = 0
        for signal in SIGNALS:
            folder = self.root / signal
            folder.mkdir(parents=True, exist_ok=True)
            if not self.read_only:
                compaction.recover(folder)
                for path in [p for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX)]:
                    path.unlink(missing_ok=True)
            self._segments[signal] = _listed(folder)
            last = max([last, *(s.seq for s in self._segments[signal])])
        return last + 1

    def refresh(self) -> None:
        """Index the segments on disk now (a reader's view of what the writing process wrote since;
        a store that writes and indexes its own segments needs no refresh)."""
        if not self.read_only:
            return
        listed = {signal: _listed(self.root / signal) for signal in SIGNALS}
        with self._lock:
            self._segments = listed
        present = {s.path for segments in listed.values() for s in segments}
        for path in [p for p in self._schemas if p not in present]:
            del self._schemas[path]

    def start(self) -> None:
        """Start the group-commit writer thread."""
        if self.read_only:
            raise RuntimeError("a read-only segment store does not write")
        if self._thread is None:
            self._closing = False
            self._thread = threading.Thread(target=self._run, name="melt-segments", daemon=True)
            self._thread.start()

    def close(self) -> None:
        """Write what is pending, resolve its futures and stop the writer; later submits are refused."""
        with self._wake:
            self._closing = True
            self._wake.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._queue:  # submitted without a writer ever started
            self._commit(self._take())

    # ------------------------------------------------------------------ writing
    @property
    def pending_bytes(self) -> int:
        """Bytes (pandas memory of the frames) received and not yet in a segment."""
        return self._pending

    @property
    def newest_written(self) -> pd.Timestamp | None:
        """The newest event time this store has written (any signal) since it opened."""
        return None if self._newest_written is None else pd.Timestamp(self._newest_written, tz="UTC")

    @property
    def rows_written(self) -> dict[str, int]:
        """Rows written per signal since this store opened."""
        return dict(self._rows)

    def retry_after(self) -> float:
        """Seconds a refused sender should wait: the pending data at the recent write rate, bounded."""
        if self._rate <= 0:
            return RETRY_AFTER[0]
        return min(max(self._pending / self._rate, RETRY_AFTER[0]), RETRY_AFTER[1])

    def check_capacity(self) -> None:
        """Refuse early, before a request is decoded, when the store is already full.

        Raises:
            Backpressure: pending data is at or over ``max_pending_bytes``, or the store is closing.
        """
        if self._closing or self.read_only:
            raise Backpressure(RETRY_AFTER[0], "the receiver is shutting down")
        if self._pending >= self.max_pending_bytes:
            raise Backpressure(self.retry_after(), f"{self._pending / 2**20:.0f} MiB received and not yet written "
                                                   f"(limit {self.max_pending_bytes / 2**20:.0f} MiB)")

    def submit(self, frames: dict[str, pd.DataFrame], keys: Sequence[str] = ()) -> Future[None]:
        """Queue validated frames (signal -> rows in bundle columns, :mod:`melt.core.schema`).

        The future resolves once they are in a segment on disk (or fails with the write's error).
        ``keys`` (the requests' keys, :mod:`melt.serve.dedup`) are stored with them: in the
        metadata of the last segment their group commit writes, so a key on disk means all of its
        rows are.
        A batch is refused only when something is already pending, so one batch larger than the
        limit still gets through once the queue is empty.

        Raises:
            Backpressure: pending data would go over ``max_pending_bytes``, or the store is closing.
            ValueError: a frame of an unknown signal, or with a row that has no event time.
        """
        for signal, frame in frames.items():
            column = TIME_COLUMNS.get(signal)
            if column is None:
                raise ValueError(f"unknown signal {signal!r} (known: {', '.join(SIGNALS)})")
            if len(frame) and (column not in frame.columns or frame[column].isna().any()):
                raise ValueError(f"{signal}: every row needs its event time in '{column}'")
        frames = {signal: frame for signal, frame in frames.items() if len(frame)}
        size = sum(int(frame.memory_usage(index=False, deep=True).sum()) for frame in frames.values())
        future: Future[None] = Future()
        with self._wake:
            if self._closing or self.read_only:
                raise Backpressure(RETRY_AFTER[0], "the receiver is shutting down")
            if self._pending and self._pending + size > self.max_pending_bytes:
                raise Backpressure(self.retry_after(), f"{self._pending / 2**20:.0f} MiB received and not yet "
                                                       f"written (limit {self.max_pending_bytes / 2**20:.0f} MiB)")
            if not frames:
                future.set_result(None)
                return future
            if not self._queue:
                self._queued_since = time.monotonic()
            self._queue.append(_Pending(frames, future, size, tuple(keys)))
            self._pending += size
            self._wake.notify_all()
        return future

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._queue and not self._closing:
                    self._wake.wait()
                if not self._queue:
                    return
                deadline = self._queued_since + self.commit_interval
                while not self._closing and self._pending < self.max_pending_bytes // 2:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
                batch = self._take()
            self._commit(batch)

    def _take(self) -> list[_Pending]:
        batch, self._queue = self._queue, []
        return batch

    def _commit(self, batch: list[_Pending]) -> None:
        """Write ``batch`` as one segment per signal, then resolve its futures (or fail them all)."""
        began = time.perf_counter()
        size = sum(item.size for item in batch)
        keys = [key for item in batch for key in item.keys]
        try:
            signals = [signal for signal in SIGNALS if any(signal in item.frames for item in batch)]
            for signal in signals:
                frames = [item.frames[signal] for item in batch if signal in item.frames]
                self._write(signal, pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0],
                            keys if signal == signals[-1] else ())
        except Exception as exc:  # a full disk, a permission, an unstorable value: every request in it fails
            log(f"could not write a segment: {type(exc).__name__}: {exc}", stage="melt serve")
            with self._wake:
                self._pending -= size
            for item in batch:
                item.future.set_exception(exc)
            return
        seconds = max(time.perf_counter() - began, 1e-3)
        with self._wake:
            self._pending -= size
            self._rate = size / seconds if self._rate == 0 else 0.8 * self._rate + 0.2 * size / seconds
        for item in batch:
            item.future.set_result(None)

    def _write(self, signal: str, frame: pd.DataFrame, keys: Sequence[str] = ()) -> None:
        import pyarrow.parquet as pq

        times = frame[TIME_COLUMNS[signal]]
        low, high = int(times.min().value), int(times.max().value)
        seq, self._seq = self._seq, self._seq + 1
        folder = self.root / signal
        final = folder / f"{seq:012d}-{low}-{high}.parquet"
        temp = folder / f".{seq:012d}{TEMP_SUFFIX}"
        table = arrow_table(frame, signal)
        if keys:
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   REQUESTS_KEY: ",".join(keys).encode()})
        pq.write_table(table, temp, compression="zstd")
        fsync_path(temp)
        os.replace(temp, final)
        fsync_path(folder)
        if self.index_writes:
            with self._lock:
                self._segments[signal].append(Segment(seq, low, high, final))
        self._rows[signal] += len(frame)
        self._newest_written = high if self._newest_written is None else max(self._newest_written, high)

    # ------------------------------------------------------------------ reading
    def segments(self, signal: str) -> list[Segment]:
        """The segments of ``signal`` on disk, oldest first."""
        with self._lock:
            return list(self._segments[signal])

    def read(self, signal: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Rows of ``signal`` whose event time lies in ``[start, end)``, validated, in time order.

        Spans stored twice (a sender that retried after a timeout) are kept once.
        """
        import pyarrow.parquet as pq

        column = TIME_COLUMNS[signal]
        low, high = _ns(start), _ns(end)
        paths = [s.path for s in self.segments(signal) if not (s.high < low or s.low >= high)]
        filters = [(column, ">=", pd.Timestamp(low, tz="UTC")), (column, "<", pd.Timestamp(high, tz="UTC"))]
        try:  # one scan of all the files under their common schema: ten times one read per file
            frame = self._scan(paths, filters)
        except (pa.ArrowException, FileNotFoundError, TypeError, ValueError):
            # a segment swept while being read, or an attribute typed differently in two segments
            parts = []
            for path in paths:
                try:
                    parts.append(pq.read_table(path, filters=filters).to_pandas())
                except FileNotFoundError:
                    continue
            parts = [part for part in parts if len(part)]
            frame = pd.concat(parts, ignore_index=True) if parts else _empty(signal)
        if not len(frame):
            return _empty(signal)
        if signal == "traces":
            frame = frame.drop_duplicates(["trace_id", "span_id"], ignore_index=True)
        frame = frame.sort_values(column, kind="stable", ignore_index=True)
        return validate_frame(signal, frame, allow_empty=True)

    def _scan(self, paths: list[Path], filters: list[tuple[str, str, Any]]) -> pd.DataFrame:
        """The rows of ``paths`` that pass ``filters``, read as one dataset whose schema unites the
        files' (a column some files lack is null there). File schemas are read once and kept."""
        import pyarrow.dataset as ds
        import pyarrow.parquet as pq

        if not paths:
            return pd.DataFrame()
        for path in paths:
            if path not in self._schemas:
                self._schemas[path] = pq.read_schema(path)
        schema = pa.unify_schemas([self._schemas[p] for p in paths], promote_options="permissive")
        dataset = ds.dataset([str(p) for p in paths], schema=schema, format="parquet")
        return dataset.to_table(filter=pq.filters_to_expression(filters)).to_pandas()

    def bundle(self, start: pd.Timestamp, end: pd.Timestamp) -> MeltBundle:
        """Every signal ever received, rows in ``[start, end)``; a signal never received is absent."""
        frames = {signal: self.read(signal, start, end) for signal in SIGNALS if self.segments(signal)}
        return MeltBundle(**frames, validate=False)

    def max_time(self) -> pd.Timestamp | None:
        """The newest event time stored (any signal); ``None`` when nothing is."""
        with self._lock:
            highs = [s.high for segments in self._segments.values() for s in segments]
        return pd.Timestamp(max(highs), tz="UTC") if highs else None

    def min_time(self) -> pd.Timestamp | None:
        """The oldest event time stored (any signal); ``None`` when nothing is."""
        with self._lock:
            lows = [s.low for segments in self._segments.values() for s in segments]
        return pd.Timestamp(min(lows), tz="UTC") if lows else None

    def next_time(self, at: pd.Timestamp) -> pd.Timestamp | None:
        """About the first event time at or after ``at`` (from the segments' bounds: a segment that
        spans ``at`` counts from ``at``); ``None`` when nothing is stored from then on."""
        floor = _ns(at)
        with self._lock:
            starts = [max(s.low, floor) for segments in self._segments.values() for s in segments if s.high >= floor]
        return pd.Timestamp(min(starts), tz="UTC") if starts else None

    def recent_request_keys(self, seconds: float) -> list[tuple[str, float]]:
        """The request keys stored in the segments written in the last ``seconds`` (by file time),
        each with the age of its file in seconds."""
        import pyarrow.parquet as pq

        now = time.time()
        keys: list[tuple[str, float]] = []
        for signal in SIGNALS:
            for segment in _listed(self.root / signal):
                try:
                    age = now - segment.path.stat().st_mtime
                    if age > seconds:
                        continue
                    metadata = pq.read_schema(segment.path).metadata or {}
                except (OSError, pa.ArrowException):
                    continue
                if metadata.get(REQUESTS_KEY):
                    keys += [(key, max(age, 0.0)) for key in metadata[REQUESTS_KEY].decode().split(",")]
        return keys

    def compact(self, before: pd.Timestamp, every: pd.Timedelta | None = None, min_parts: int = 2) -> int:
        """Merge, per signal and per ``every`` of event time (by each segment's newest row), the
        segments not yet merged whose rows all lie before ``before`` (:mod:`melt.serve.compaction`);
        how many files were merged. One merge holds at most ``every`` of data, also after a backlog
        of many steps. Only the process that reads (the step process, or a store that both writes
        and reads) compacts."""
        cutoff = _ns(before)
        width = max(int(pd.Timedelta(every).value), 1) if every is not None else None
        merged = 0
        for signal in SIGNALS:
            folder = self.root / signal
            compaction.recover(folder)  # a merge a crash interrupted: finished or undone first
            with self._lock:
                parts = [s for s in self._segments[signal] if not s.compacted and s.high < cutoff]
            groups: dict[int, list[Segment]] = {}
            for part in parts:
                groups.setdefault(part.high // width if width else 0, []).append(part)
            for group in groups.values():
                if len(group) >= min_parts:
                    merged += self._merge(signal, folder, group)
        return merged

    def _merge(self, signal: str, folder: Path, parts: list[Segment]) -> int:
        seq, low, high = max(p.seq for p in parts), min(p.low for p in parts), max(p.high for p in parts)
        path = compaction.merge(folder, [p.path for p in parts], seq, low, high, TIME_COLUMNS[signal])
        gone = {p.path for p in parts}
        with self._lock:
            self._segments[signal] = sorted([s for s in self._segments[signal] if s.path not in gone]
                                            + [Segment(seq, low, high, path, compacted=True)], key=lambda s: s.seq)
        for path in gone:
            self._schemas.pop(path, None)
        return len(parts)

    def sweep(self) -> int:
        """Delete the segments whose newest row is older than ``max_time() - retention``; how many."""
        newest = self.max_time()
        if newest is None:
            return 0
        cutoff = _ns(newest - self.retention)
        with self._lock:
            old = {signal: [s for s in segments if s.high < cutoff] for signal, segments in self._segments.items()}
            for signal, segments in self._segments.items():
                self._segments[signal] = [s for s in segments if s.high >= cutoff]
        for segment in (s for segments in old.values() for s in segments):
            segment.path.unlink(missing_ok=True)
            self._schemas.pop(segment.path, None)
        return sum(len(segments) for segments in old.values())


def _listed(folder: Path) -> list[Segment]:
    """The segments in ``folder`` by their names, oldest first (temporary files are not segments)."""
    segments = []
    with os.scandir(folder) as entries:
        for entry in entries:
            match = SEGMENT_NAME.match(entry.name)
            if match:
                segments.append(Segment(int(match["seq"]), int(match["low"]), int(match["high"]), Path(entry.path),
                                        bool(match["compacted"])))
    return sorted(segments, key=lambda s: s.seq)


def _ns(stamp: pd.Timestamp) -> int:
    stamp = pd.Timestamp(stamp)
    return int((stamp if stamp.tzinfo else stamp.tz_localize("UTC")).value)


def _empty(signal: str) -> pd.DataFrame:
    """An empty frame of ``signal`` with its required columns in their dtypes."""
    columns = SCHEMAS[signal].required
    kinds = {"time": "datetime64[ns, UTC]", "str": "string", "float": "float64", "int": "Int64"}
    return validate_frame(signal, pd.DataFrame({c: pd.Series(dtype=kinds[k]) for c, k in columns.items()}),
                          allow_empty=True)


__all__ = ["Backpressure", "Segment", "SegmentStore"]
