"""Reading import sources in chunks: files under a path, CSV blocks, JSON lines, parquet row groups.

Every reader is a generator, so a multi-GB export is never in memory at once. Unreadable rows go
to :class:`~melt.importers.bad_rows.BadRows` with their file and line number.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from melt.core.errors import SourceError
from melt.importers.bad_rows import BadRows

CSV_BLOCK_BYTES = 16 << 20
BATCH_BYTES = 16 << 20


def source_files(src: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``src`` itself, or the files under the directory ``src`` whose name ends in one of ``suffixes``.

    Raises:
        SourceError: ``src`` does not exist, or the directory holds no matching file.
    """
    root = Path(src)
    if not root.exists():
        raise SourceError(f"import source not found: {root}")
    if root.is_file():
        return [root]
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise SourceError(f"{root}: no {' / '.join(suffixes)} file found")
    return files


def open_text(path: Path) -> IO[str]:
    """Open a text file, transparently gunzipping ``*.gz``."""
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return path.open(encoding="utf-8", errors="replace")


def json_lines(path: Path, bad_rows: BadRows) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, object)`` for every non-blank line; corrupt lines are counted, not fatal."""
    with open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line.rstrip("\r\n"))
            except json.JSONDecodeError as exc:
                bad_rows.add(f"{path}:{number}", f"not valid JSON ({exc.msg} at column {exc.colno})")


def read_csv_chunks(path: Path, bad_rows: BadRows, *, delimiter: str = ",",
                    block_bytes: int = CSV_BLOCK_BYTES) -> Iterator[tuple[pd.DataFrame, pd.Series]]:
    """Stream a CSV file as frames of strings, with each row's line number.

    Every column is read as text (types are the importer's job), so a column that looks numeric in
    the first block and not later never fails the read. Rows with the wrong number of fields are
    counted as bad rows with their line number. Values spanning lines are not supported.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with open_text(path) as handle:
        header = handle.readline()
    if not header.strip():
        raise SourceError(f"{path}: empty file (no header line)")
    names = next(csv.reader([header], delimiter=delimiter))
    skipped: list[int] = []

    def invalid(row: Any) -> str:
        skipped.append(int(row.number))
        bad_rows.add(f"{path}:{row.number}", f"expected {row.expected_columns} fields, found {row.actual_columns}")
        return "skip"

    try:
        reader = pacsv.open_csv(
            path,
            read_options=pacsv.ReadOptions(block_size=block_bytes, use_threads=False),
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                 strings_can_be_null=True),
        )
    except pa.ArrowInvalid as exc:
        raise SourceError(f"{path}: cannot read CSV ({str(exc).splitlines()[0][:160]})") from None
    next_line = 2
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise SourceError(f"{path}: cannot read CSV ({str(exc).splitlines()[0][:160]})") from None
        lines = np.arange(next_line, next_line + batch.num_rows + len(skipped))
        lines = np.setdiff1d(lines, skipped, assume_unique=True)[: batch.num_rows]
        next_line = int(lines[-1]) + 1 if len(lines) else next_line + len(skipped)
        skipped.clear()
        yield batch.to_pandas(), pd.Series(lines)


def csv_batches(files: list[Path], bad_rows: BadRows, *, required: list[str],
                min_rows: int = 50_000, max_bytes: int = BATCH_BYTES,
                foreign: Callable[[Path, list[str]], None] | None = None,
                ) -> Iterator[tuple[pd.DataFrame, pd.Series, pd.Series, int]]:
    """Stream many small CSV files as batches of ``min_rows`` rows or ``max_bytes`` of files, whichever comes first.

    Yields ``(frame, line numbers, file of each row, files done)``, so per-batch work (conversion,
    checks) is paid once per batch, not once per file. A file that lacks one of the ``required``
    columns is not this kind of data: with ``foreign``, it is handed to it (file, its columns) and
    skipped; without, it is an error.

    Raises:
        SourceError: a file lacks one of the ``required`` columns (named with the file), and no ``foreign``.
    """
    frames: list[pd.DataFrame] = []
    lines: list[pd.Series] = []
    sources: list[np.ndarray] = []
    buffered = size = 0
    for done, file in enumerate(files, start=1):
        size += file.stat().st_size
        for chunk, chunk_lines in read_csv_chunks(file, bad_rows):
            missing = [c for c in required if c not in chunk.columns]
            if missing and foreign is not None:
                foreign(file, list(chunk.columns))
                break
            if missing:
                raise SourceError(f"{file}: column {missing[0]} is missing (have: {', '.join(chunk.columns)})")
            frames.append(chunk)
            lines.append(chunk_lines)
            sources.append(np.full(len(chunk), str(file), dtype=object))
            buffered += len(chunk)
        if buffered >= min_rows or size >= max_bytes or (done == len(files) and frames):
            yield (pd.concat(frames, ignore_index=True), pd.concat(lines, ignore_index=True),
                   pd.Series(np.concatenate(sources)), done)
            frames, lines, sources, buffered, size = [], [], [], 0, 0


def read_parquet_chunks(path: Path) -> Iterator[tuple[pd.DataFrame, pd.Series]]:
    """Stream a parquet file one row group at a time, with each row's 1-based row number."""
    import pyarrow.parquet as pq

    try:
        file = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several unrelated types for a corrupt file
        raise SourceError(f"{path}: cannot read parquet ({str(exc).splitlines()[0][:160]})") from None
    first = 1
    for group in range(file.num_row_groups):
        frame = file.read_row_group(group).to_pandas()
        yield frame, pd.Series(np.arange(first, first + len(frame)))
        first += len(frame)
