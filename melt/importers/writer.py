"""Streaming bundle writer for importers.

Importers hand over frames chunk by chunk. Each chunk is coerced and checked (:func:`row_problems`),
its bad rows are counted, and the good rows are buffered and spilled to part files. ``finish`` then
merges the parts of each signal into ``<signal>.parquet`` one part at a time under one unified
schema, dropping spans whose ``(trace_id, span_id)`` was already seen. Peak memory is therefore
about one chunk plus one part, not the whole export twice.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.bundle import TIME_COLUMNS, write_partitioned
from melt.core.errors import SourceError
from melt.core.progress import log
from melt.core.schema import PLAUSIBLE_TIMES, SIGNALS, row_problems, validate_frame
from melt.core.version import __version__
from melt.importers.bad_rows import BadRows
from melt.importers.columns import time_problems, to_utc
from melt.importers.sources import first_line

BUNDLE_FILES = (*(f"{s}.parquet" for s in SIGNALS), "truth.json", "import.json")


@dataclass
class ImportSummary:
    """What an import wrote, and what it skipped."""

    out: Path
    rows: dict[str, int]
    bad_rows: BadRows
    duplicate_spans: int
    seconds: float
    faults: int | None = None
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """A human summary, one item per line."""
        counts = ", ".join(f"{name}={count:,}" for name, count in self.rows.items()) or "nothing"
        faults = f", faults={self.faults}" if self.faults is not None else ""
        out = [f"wrote {self.out}: {counts}{faults} in {self.seconds:.1f}s"]
        if self.duplicate_spans:
            out.append(f"{self.duplicate_spans:,} duplicate span(s) dropped (same trace_id and span_id)")
        out.extend(self.notes)
        if self.bad_rows.count:
            out.extend(self.bad_rows.summary().splitlines())
        return out


class BundleWriter:
    """Collects validated chunks per signal and writes a bundle directory.

    Args:
        out: the bundle directory; existing bundle files there are an error unless ``force``.
        bad_rows: where rejected rows are counted.
        chunk_rows: rows buffered per signal before a part file is written.
        chunk_mib: or this many MiB of buffered columns, whichever comes first (log lines are wide).
        force: replace an existing bundle at ``out``.
        quiet: no progress on stderr.
        partitioned: write each frame as hive partitions by date and service (docs/data-format.md).
    """

    def __init__(self, out: str | Path, bad_rows: BadRows, *, chunk_rows: int = 200_000, chunk_mib: float = 32.0,
                 force: bool = False, quiet: bool = False, partitioned: bool = False) -> None:
        self.out = Path(out)
        self.partitioned = partitioned
        existing = [name for name in BUNDLE_FILES if (self.out / name).exists()]
        if existing and not force:
            raise SourceError(f"{self.out} already holds a bundle ({', '.join(existing)}); "
                              "choose another --out or pass --force to replace it")
        if self.out.exists() and not self.out.is_dir():
            raise SourceError(f"--out {self.out} is a file, not a directory")
        self._replaced = existing  # removed only once the new bundle is ready to be written (finish)
        self._made_out = not self.out.exists()
        self.bad_rows = bad_rows
        self.chunk_rows = chunk_rows
        self.chunk_bytes = chunk_mib * 2**20
        self.quiet = quiet
        self._parts = self.out / ".import-parts"
        shutil.rmtree(self._parts, ignore_errors=True)
        self._parts.mkdir(parents=True)
        self._buffers: dict[str, list[pd.DataFrame]] = {name: [] for name in SIGNALS}
        self._buffered: dict[str, int] = dict.fromkeys(SIGNALS, 0)
        self._buffered_bytes: dict[str, float] = dict.fromkeys(SIGNALS, 0.0)
        self._files: dict[str, list[Path]] = {name: [] for name in SIGNALS}
        self._duplicates = 0
        self._notes: list[str] = []
        self._began = time.perf_counter()

    def note(self, text: str) -> None:
        """Record something the import left out on purpose (a file that is not data, a broken clock):
        printed with the summary and kept in ``import.json``."""
        self._notes.append(text)
        log(text, self.quiet, stage="melt import")

    def add(self, signal: str, frame: pd.DataFrame, source: str | pd.Series, lines: pd.Series | None = None,
            problems: pd.Series | None = None) -> int:
        """Check one chunk of ``signal`` rows from ``source``; keep the good ones, count the bad ones.

        Args:
            signal: metrics, logs, traces or events.
            frame: rows in the bundle's column names (see docs/data-format.md).
            source: the file the rows came from (or each row's file), for bad-row messages.
            lines: each row's line number in ``source`` (default: position + 1).
            problems: per-row reasons found by the importer's own conversions (``<NA>`` when fine).

        Returns:
            The number of good rows kept.
        """
        if len(frame) == 0:
            return 0
        frame = frame.reset_index(drop=True)
        lines = pd.Series(range(1, len(frame) + 1)) if lines is None else lines.reset_index(drop=True)
        good, problems, duplicates = checked_rows(signal, frame, problems)
        self.bad_rows.add_frame(source.reset_index(drop=True) if isinstance(source, pd.Series) else source,
                                lines, problems)
        self._duplicates += duplicates
        if len(good):
            self._buffers[signal].append(good)
            self._buffered[signal] += len(good)
            self._buffered_bytes[signal] += float(good.memory_usage(index=False).sum())
            if self._buffered[signal] >= self.chunk_rows or self._buffered_bytes[signal] >= self.chunk_bytes:
                self._spill(signal)
        return len(good)

    def add_records(self, signal: str, records: list[dict[str, Any]], source: str, *, time_unit: str) -> int:
        """Add row dicts (each with its source line under ``_line``) whose time column is epoch ``time_unit``.

        ``records`` is emptied, so a caller can keep filling the same list. A time a nanosecond
        timestamp cannot hold makes its row bad ("out of range"), as does one outside
        :data:`PLAUSIBLE_TIMES`.
        """
        if not records:
            return 0
        frame, lines, problems = records_frame(signal, records, time_unit=time_unit)
        records.clear()
        return self.add(signal, frame, source, lines, problems)

    def _spill(self, signal: str) -> None:
        import pyarrow.parquet as pq

        frame = pd.concat(self._buffers[signal], ignore_index=True)
        path = self._parts / f"{signal}-{len(self._files[signal]):05d}.parquet"
        pq.write_table(arrow_table(frame, signal), path)
        self._files[signal].append(path)
        self._buffers[signal], self._buffered[signal], self._buffered_bytes[signal] = [], 0, 0.0

    def abort(self) -> None:
        """Undo a failed import: its parts go, and so does ``out`` if the import made it and it is empty."""
        shutil.rmtree(self._parts, ignore_errors=True)
        if self._made_out and self.out.is_dir() and not any(self.out.iterdir()):
            self.out.rmdir()

    def finish(self, truth: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None) -> ImportSummary:
        """Merge the parts into the bundle, write ``truth.json`` and ``import.json``; return a summary."""
        import pyarrow.parquet as pq

        for signal in SIGNALS:
            if self._buffers[signal]:
                self._spill(signal)
        if any(self._files.values()):
            for name in self._replaced:  # the bundle --force replaces is kept until now
                if (self.out / name).is_dir():  # a partitioned frame
                    shutil.rmtree(self.out / name)
                else:
                    (self.out / name).unlink(missing_ok=True)
        rows = {signal: self._merge(signal, self._files[signal], pq) for signal in SIGNALS if self._files[signal]}
        shutil.rmtree(self._parts, ignore_errors=True)
        if not rows:
            bad = self.bad_rows
            if bad.count:
                raise SourceError(f"nothing was imported: every row was bad ({bad.count:,} bad row"
                                  f"{'s' if bad.count != 1 else ''}; first: {bad.first(3)})")
            raise SourceError("nothing was imported: the source holds no rows")
        if truth is not None:
            (self.out / "truth.json").write_text(json.dumps(truth, indent=2, sort_keys=True) + "\n")
        summary = ImportSummary(self.out, rows, self.bad_rows, self._duplicates, time.perf_counter() - self._began,
                                faults=len(truth["faults"]) if truth else None, notes=list(self._notes))
        record = {"melt_version": __version__, **(provenance or {}), "rows": rows,
                  "bad_rows": self.bad_rows.count, "bad_row_examples": self.bad_rows.examples,
                  "duplicate_spans": self._duplicates, "notes": self._notes}
        (self.out / "import.json").write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        return summary

    def _merge(self, signal: str, parts: list[Path], pq: Any) -> int:
        """Stream the parts of one signal into ``<signal>.parquet`` (one file, or hive partitions)
        under one unified schema."""
        schema = _unified_schema([pq.read_schema(p) for p in parts])
        counted = [0]

        def tables() -> Any:
            for table in self._aligned(signal, parts, schema, pq):
                counted[0] += table.num_rows
                yield table
                log(f"{signal}: {counted[0]:,} rows written", self.quiet, stage="melt import")

        if self.partitioned:
            write_partitioned(tables(), signal, self.out / f"{signal}.parquet")
            return counted[0]
        with pq.ParquetWriter(self.out / f"{signal}.parquet", schema, compression="zstd") as sink:
            for table in tables():
                sink.write_table(table)
        return counted[0]

    def _aligned(self, signal: str, parts: list[Path], schema: Any, pq: Any) -> Any:
        """Each part as a table of ``schema`` (missing columns as nulls; repeated spans dropped)."""
        import pyarrow as pa

        seen = self._first_spans(parts, pq) if signal == "traces" else None
        offset = 0
        for part in parts:
            table = pq.read_table(part)
            if seen is not None:
                keep = seen[offset: offset + table.num_rows]
                offset += table.num_rows
                table = table.filter(pa.array(keep))
            for name in schema.names:
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, schema.field(name).type))
            yield table.select(schema.names).cast(schema)

    def _first_spans(self, parts: list[Path], pq: Any) -> Any:
        """True for the first occurrence of each ``(trace_id, span_id)`` over all parts."""
        ids = pd.concat([pq.read_table(p, columns=["trace_id", "span_id"]).to_pandas() for p in parts],
                        ignore_index=True)
        repeated = ids.duplicated().to_numpy()
        self._duplicates += int(repeated.sum())
        return ~repeated


def records_frame(signal: str, records: list[dict[str, Any]], *,
                  time_unit: str) -> tuple[pd.DataFrame, pd.Series, pd.Series | None]:
    """Row dicts (each with its source line under ``_line``) as a frame whose time column, epoch
    ``time_unit`` in the dicts, is UTC; returns the frame, each row's line, and each row's time
    problem (``None`` when the frame has no time column)."""
    frame = pd.DataFrame.from_records(records)
    lines = frame.pop("_line")
    column = TIME_COLUMNS[signal]
    problems = None
    if column in frame.columns:
        raw = frame[column]
        frame[column] = to_utc(raw, time_unit)
        problems = time_problems(raw, frame[column], column, time_unit)
    return frame, lines, problems


def checked_rows(signal: str, frame: pd.DataFrame,
                 problems: pd.Series | None = None) -> tuple[pd.DataFrame, pd.Series, int]:
    """The checks every row passes where it enters melt (an import, ``melt serve``'s receiver).

    ``frame`` (index 0..n-1) is coerced leniently (:func:`row_problems`); a row is bad when a
    value cannot be read, a required value is null, or its time lies outside
    :data:`PLAUSIBLE_TIMES`. Spans repeating an earlier ``(trace_id, span_id)`` are dropped as
    duplicates, not counted as bad.

    Args:
        signal: metrics, logs, traces or events.
        frame: rows in the bundle's column names.
        problems: per-row reasons the caller's own conversions found (``<NA>`` when fine).

    Returns:
        The good rows (validated, :func:`validate_frame`), each input row's problem (``<NA>`` for a
        good row), and how many duplicate spans were dropped.
    """
    coerced, found = row_problems(signal, frame)
    problems = found if problems is None else problems.reset_index(drop=True).astype("string").fillna(found)
    time_column = TIME_COLUMNS[signal]
    if time_column in coerced.columns:
        times = coerced[time_column]
        implausible = times.notna() & ((times < PLAUSIBLE_TIMES[0]) | (times >= PLAUSIBLE_TIMES[1]))
        problems = problems.mask(problems.isna() & implausible, f"column '{time_column}' is not a plausible time "
                                 f"(before {PLAUSIBLE_TIMES[0].year} or from {PLAUSIBLE_TIMES[1].year})")
    good = coerced[problems.isna().to_numpy()]
    duplicates = 0
    if signal == "traces":
        repeated = good.duplicated(["trace_id", "span_id"]).to_numpy()
        duplicates = int(repeated.sum())
        good = good[~repeated]
    return validate_frame(signal, good, allow_empty=True), problems, duplicates


def arrow_table(frame: pd.DataFrame, signal: str) -> Any:
    """``frame`` as an arrow table; free-form columns (``attr.*``) whose values arrow cannot hold as
    one type (an attribute that is a number in one span and text in another, an integer beyond
    int64, text with lone surrogates) become text.

    Raises:
        SourceError: the rows cannot be stored even so (one line, naming the signal).
    """
    import pyarrow as pa

    try:
        return pa.Table.from_pandas(frame, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError, OverflowError, UnicodeError):
        pass
    plain = frame.copy()
    for name in plain.columns:
        if plain[name].dtype == object or isinstance(plain[name].dtype, pd.StringDtype):
            plain[name] = _text(plain[name])
    try:
        return pa.Table.from_pandas(plain, preserve_index=False)
    except (pa.ArrowException, ValueError, TypeError, OverflowError, UnicodeError) as exc:
        raise SourceError(f"cannot store the imported {signal} rows ({first_line(exc)})") from None


def _text(values: pd.Series) -> pd.Series:
    """Values as text that UTF-8 can hold (missing stays missing)."""
    def clean(value: Any) -> Any:
        if value is None or value is pd.NA or (isinstance(value, float) and value != value):
            return None
        text = value if isinstance(value, str) else json.dumps(value) if isinstance(value, dict | list) else str(value)
        return text.encode("utf-8", "replace").decode("utf-8")

    return pd.Series([clean(v) for v in values], index=values.index, dtype=object)


def _unified_schema(schemas: list[Any]) -> Any:
    """One schema for all parts of a signal; a column typed differently in two parts becomes text."""
    import pyarrow as pa

    try:
        return pa.unify_schemas(schemas, promote_options="permissive").remove_metadata()
    except (pa.ArrowException, TypeError, ValueError):
        pass
    types: dict[str, list[Any]] = {}
    for schema in schemas:
        for item in schema:
            types.setdefault(item.name, []).append(item.type)
    fields = []
    for name, kinds in types.items():
        known = {t for t in kinds if t != pa.null()}
        try:
            kind = pa.unify_schemas([pa.schema([(name, t)]) for t in kinds], promote_options="permissive").field(0).type
        except (pa.ArrowException, TypeError, ValueError):
            kind = pa.string() if known else pa.null()
        fields.append(pa.field(name, kind))
    return pa.schema(fields)
