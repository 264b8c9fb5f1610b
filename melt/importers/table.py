"""Importer for generic CSV and parquet tables, driven by a column mapping.

One table becomes one frame of the bundle (``signal``). ``column_map`` renames source columns to
melt's (``pod=instance``); ``wide`` turns a table with one column per metric into the long format;
times may be ISO strings or epoch numbers in any unit; span durations may be ns, us, ms or s; and a
regex can derive the service from another column such as a pod name. See docs/import.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from melt.core.bundle import TIME_COLUMNS
from melt.core.errors import SourceError
from melt.core.progress import log, progress
from melt.core.schema import SCHEMAS, SIGNALS
from melt.core.settings import TableSettings
from melt.importers.columns import (
    DURATION_UNITS,
    TIME_UNITS,
    duration_ms,
    note_problems,
    service_names,
    split_level,
    time_problems,
    to_utc,
    unreadable,
    wide_to_long,
)
from melt.importers.sources import check_encoding, read_csv_chunks, read_parquet_chunks, source_files
from melt.importers.writer import BundleWriter

DELIMITER_NAMES = {"\\t": "\t", "tab": "\t", "\\x09": "\t"}
"""Spellings of a tab a shell makes easy (``--delimiter '\\t'``, ``--delimiter tab``)."""


@dataclass
class TableOptions:
    """How to read one generic table (the ``import.table`` section of config.yaml).

    Args:
        signal: the frame the rows become: metrics, logs, traces or events.
        column_map: source column -> melt column.
        wide: metrics only: every column other than timestamp/service/instance is one metric.
        time_unit: unit of epoch-number times (auto guesses from the magnitude); ISO strings always work.
        duration_unit: unit of span durations (ns, us, ms, s).
        service_from: source column to derive the service from (after renaming), e.g. ``instance``.
        service_regex: regex whose group ``service`` (or first group) is the service name.
        delimiter: CSV field separator: one character (``\\t`` or ``tab`` for a tab).
        encoding: CSV text encoding, a Python codec name (``utf-8``, ``latin-1``, ``cp1252``, ``utf-16``).
    """

    signal: str = "metrics"
    column_map: dict[str, str] = field(default_factory=dict)
    wide: bool = False
    time_unit: str = "auto"
    duration_unit: str = "ms"
    service_from: str | None = None
    service_regex: re.Pattern[str] | str | None = None
    delimiter: str = ","
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        self.delimiter = DELIMITER_NAMES.get(self.delimiter, self.delimiter)

    @classmethod
    def from_settings(cls, settings: TableSettings, encoding: str = "utf-8") -> TableOptions:
        return cls(signal=settings.signal, column_map=dict(settings.map), wide=settings.wide,
                   time_unit=settings.time_unit, duration_unit=settings.duration_unit,
                   service_from=settings.service_from, service_regex=settings.service_regex,
                   delimiter=settings.delimiter, encoding=encoding)

    def check(self) -> None:
        """Raise :class:`SourceError` for an option that cannot work."""
        if self.signal not in SIGNALS:
            raise SourceError(f"--signal must be one of {', '.join(SIGNALS)}, got {self.signal!r}")
        if self.time_unit not in TIME_UNITS:
            raise SourceError(f"--time-unit must be one of {', '.join(TIME_UNITS)}, got {self.time_unit!r}")
        if self.duration_unit not in DURATION_UNITS:
            raise SourceError(f"--duration-unit must be one of {', '.join(DURATION_UNITS)}, got {self.duration_unit!r}")
        if self.wide and self.signal != "metrics":
            raise SourceError("--wide only applies to --signal metrics")
        check_delimiter(self.delimiter)
        check_encoding(self.encoding)
        if self.service_regex:
            try:
                service_names(pd.Series(["x"]), self.service_regex)
            except (ValueError, Exception) as exc:  # re.error is a ValueError subclass only on newer Pythons
                raise SourceError(f"--service-regex: {exc}") from None


def import_table(src: str | Path, writer: BundleWriter, options: TableOptions, *, fmt: str = "csv",
                 quiet: bool = False) -> None:
    """Import every CSV (``fmt='csv'``) or parquet file under ``src`` as ``options.signal`` rows."""
    options.check()
    suffixes = (".csv", ".csv.gz", ".tsv", ".txt") if fmt == "csv" else (".parquet", ".pq")
    files = source_files(src, suffixes)
    for index, file in enumerate(progress(files, "import", quiet, total=len(files)), start=1):
        total = 0
        for chunk, lines in _chunks(file, fmt, options, writer):
            frame, lines, problems = convert_table(chunk, lines, options, str(file))
            total += writer.add(options.signal, frame, str(file), lines, problems)
        log(f"{file.name}: {total:,} {options.signal} rows ({index}/{len(files)} files)", quiet, stage="melt import")


def _chunks(file: Path, fmt: str, options: TableOptions, writer: BundleWriter) -> Iterator[tuple[pd.DataFrame, pd.Series]]:
    if fmt == "csv":
        return read_csv_chunks(file, writer.bad_rows, delimiter=options.delimiter, encoding=options.encoding,
                               check_header=True)
    return read_parquet_chunks(file)


def check_delimiter(delimiter: str) -> str:
    """``delimiter`` if it can separate CSV fields.

    Raises:
        SourceError: not exactly one character, or a line break or double quote.
    """
    if not isinstance(delimiter, str) or len(delimiter) != 1:
        raise SourceError(f"--delimiter must be exactly one character (\\t or tab for a tab), got {delimiter!r}")
    if delimiter in "\r\n\"":
        raise SourceError(f"--delimiter cannot be {delimiter!r} (a line break or the quote character)")
    return delimiter


def convert_table(chunk: pd.DataFrame, lines: pd.Series, options: TableOptions,
                  source: str) -> tuple[pd.DataFrame, pd.Series, pd.Series]:
    """Rename, reshape and convert one chunk; returns rows, their source lines and per-row problems."""
    unknown = [c for c in options.column_map if c not in chunk.columns]
    if unknown:
        raise SourceError(f"{source}: mapped column '{unknown[0]}' is not in the table "
                          f"(have: {', '.join(map(str, chunk.columns[:12]))})")
    frame = chunk.rename(columns=options.column_map).reset_index(drop=True)
    if frame.columns.duplicated().any():
        twice = frame.columns[frame.columns.duplicated()][0]
        raise SourceError(f"{source}: two columns are named '{twice}' after the mapping (check --map)")
    lines = lines.reset_index(drop=True)
    if options.wide:
        frame, lines = wide_to_long(frame, lines, source)
    service_column = "service_name" if options.signal == "traces" else "service"
    origin = options.service_from or (service_column if options.service_regex else None)
    if origin is not None:
        if origin not in frame.columns:
            raise SourceError(f"{source}: service column '{origin}' is not in the table after mapping")
        frame[service_column] = service_names(frame[origin], options.service_regex)
    problems = pd.Series(pd.NA, index=frame.index, dtype="string")
    time_column = TIME_COLUMNS[options.signal]
    if time_column in frame.columns:
        raw = frame[time_column]
        frame[time_column] = to_utc(raw, options.time_unit)
        problems = problems.fillna(time_problems(raw, frame[time_column], time_column, options.time_unit,
                                                 "; check --time-unit"))
    if options.signal == "traces" and "duration" in frame.columns:
        raw = frame["duration"]
        frame["duration"] = duration_ms(raw, options.duration_unit)
        problems = note_problems(problems, unreadable(raw, frame["duration"]), "'duration' is not a number")
    if options.signal == "logs" and "level" not in frame.columns and "message" in frame.columns:
        frame["level"], frame["message"] = split_level(frame["message"])
    missing = [c for c in SCHEMAS[options.signal].required if c not in frame.columns]
    if missing:
        hint = " (map it with --map SOURCE=" + missing[0] + ")"
        raise SourceError(f"{source}: no '{missing[0]}' column for {options.signal}{hint}; "
                          f"have: {', '.join(map(str, frame.columns[:12]))}")
    return frame, lines, problems
