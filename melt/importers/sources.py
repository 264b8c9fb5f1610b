"""Reading import sources in chunks: files under a path, CSV blocks, JSON documents, parquet row groups.

Every reader is a generator, so a multi-GB export is never in memory at once. Unreadable rows go
to :class:`~melt.importers.bad_rows.BadRows` with their file and line number; a file that cannot
be read at all (missing, not gzip though named ``.gz``, not in its encoding) is one
:class:`SourceError` line naming it, never a traceback.

Limits (a user's file must not exhaust memory or the stack): one line of a JSON-lines file may
hold :data:`MAX_LINE_BYTES`, a whole JSON document (and the first line, which may be one)
:data:`MAX_DOCUMENT_BYTES`; JSON nested deeper than Python's parser allows is a bad row.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import json
import re
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from melt.core.errors import SourceError
from melt.importers.bad_rows import BadRows

CSV_BLOCK_BYTES = 16 << 20
BATCH_BYTES = 16 << 20
MAX_LINE_BYTES = 64 << 20
"""The longest line of a JSON-lines file (after the first); a longer one is a bad row."""
MAX_DOCUMENT_BYTES = 256 << 20
"""The largest whole JSON document (a pretty-printed file, or a file's first line); larger is a bad row."""
SAMPLE_LINES = 20
"""Lines looked at to tell JSON lines (most lines parse alone) from one pretty-printed document."""
GZIP_MAGIC = b"\x1f\x8b"
DELIMITER_GUESSES = (";", "\t", "|")

_WHITESPACE = re.compile(r"[ \t\n\r]*")
_SURROGATE = re.compile(r"\\\\|(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})|\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
"""An escaped backslash, a surrogate pair (kept), or a lone surrogate escape (which pyarrow cannot store)."""


def source_files(src: str | Path, suffixes: tuple[str, ...]) -> list[Path]:
    """``src`` itself, or the files under the directory ``src`` whose name ends in one of ``suffixes``.

    Raises:
        SourceError: ``src`` does not exist, or the directory holds no matching file.
    """
    root = Path(src)
    with reading(root):
        if not root.exists():
            raise SourceError(f"import source not found: {root}")
        if root.is_file():
            return [root]
        if not root.is_dir():
            raise SourceError(f"{root}: not a file or a directory")
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith(suffixes))
    if not files:
        raise SourceError(f"{root}: no {' / '.join(suffixes)} file found")
    return files


@contextmanager
def reading(path: Path, encoding: str = "utf-8") -> Iterator[None]:
    """Turn the ways reading ``path`` fails (I/O, a corrupt gzip stream, text not in ``encoding``)
    into one :class:`SourceError` line naming the file."""
    try:
        yield
    except gzip.BadGzipFile as exc:
        raise SourceError(f"{path}: not a gzip file, or a corrupt one ({exc})") from None
    except (EOFError, zlib.error) as exc:
        raise SourceError(f"{path}: corrupt or truncated gzip data ({exc or 'unexpected end of file'})") from None
    except UnicodeError as exc:
        raise SourceError(f"{path}: not valid {encoding} text ({_unicode_reason(exc)}); "
                          "pass --encoding, e.g. --encoding latin-1") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _unicode_reason(exc: UnicodeError) -> str:
    return exc.reason if isinstance(exc, UnicodeDecodeError) else first_line(exc)


def first_line(exc: BaseException, width: int = 160) -> str:
    """The first line of an exception's message (its type when the message is empty), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:width] if text else type(exc).__name__


def check_encoding(encoding: str) -> str:
    """``encoding`` if Python knows it as a text encoding.

    Raises:
        SourceError: an unknown codec, or one that is not a text encoding (``hex``, ``zlib``).
    """
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError, ValueError):
        raise SourceError(f"--encoding: unknown encoding {encoding!r} (e.g. utf-8, latin-1, cp1252, utf-16)") from None
    if not getattr(info, "_is_text_encoding", True):
        raise SourceError(f"--encoding: {encoding!r} is not a text encoding")
    return encoding


def open_text(path: Path, encoding: str = "utf-8", errors: str = "replace") -> IO[str]:
    """Open a text file, transparently gunzipping ``*.gz``; a UTF-8 byte-order mark is skipped.

    Raises:
        SourceError: the file cannot be opened, or is named ``*.gz`` but is not gzip.
    """
    if codecs.lookup(encoding).name == "utf-8":
        encoding = "utf-8-sig"
    with reading(path, encoding):
        if path.suffix == ".gz":
            with path.open("rb") as raw:
                magic = raw.read(2)
            if magic not in (GZIP_MAGIC, b""):
                raise SourceError(f"{path}: not a gzip file (its name ends in .gz)")
            return gzip.open(path, "rt", encoding=encoding, errors=errors)
        return path.open(encoding=encoding, errors=errors)


class BadJSON(ValueError):
    """JSON text that cannot be parsed, with the reason and its line (1 = the text's first line)."""

    def __init__(self, reason: str, line: int = 1) -> None:
        super().__init__(reason)
        self.reason, self.line = reason, line


def parse_json(text: str, start: int = 0) -> tuple[Any, int]:
    """Parse the JSON value at ``start`` of ``text``; returns it and where it ends.

    Raises only :class:`BadJSON`: for invalid JSON, and also for nesting deeper than Python's
    parser allows (``RecursionError``) and integers too long to convert (``ValueError``).
    Lone surrogate escapes (``"\\ud800"``) become U+FFFD, as parquet cannot store them.
    """
    if "\\u" in text:
        text = _SURROGATE.sub(_keep_pairs, text)
    try:
        return json.JSONDecoder().raw_decode(text, start)
    except json.JSONDecodeError as exc:
        raise BadJSON(f"not valid JSON ({exc.msg} at column {exc.colno})", exc.lineno) from None
    except RecursionError:
        raise BadJSON("JSON nested too deeply for Python's parser", text.count("\n", 0, start) + 1) from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise BadJSON(f"not valid JSON ({first_line(exc, 120)})", text.count("\n", 0, start) + 1) from None


def _keep_pairs(match: re.Match[str]) -> str:
    return match.group(0) if match.group(0) == "\\\\" or match.group(1) else "\\ufffd"


def _lines(handle: IO[str], path: Path, bad_rows: BadRows) -> Iterator[tuple[int, str]]:
    """Non-blank lines with their numbers; a line over the limit is skipped and counted."""
    number = 0
    while True:
        number += 1
        limit = MAX_DOCUMENT_BYTES if number == 1 else MAX_LINE_BYTES
        line = handle.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            while not line.endswith("\n") and (line := handle.readline(1 << 20)):
                pass
            bad_rows.add(f"{path}:{number}", f"line longer than {limit >> 20} MiB (the limit of one JSON line)")
            continue
        if line.strip():
            yield number, line


def _parse_line(text: str) -> Any:
    value, end = parse_json(text, _WHITESPACE.match(text).end())  # type: ignore[union-attr]
    if text[end:].strip():
        raise BadJSON(f"not valid JSON (Extra data at column {end + 1})")
    return value


def json_lines(path: Path, bad_rows: BadRows) -> Iterator[tuple[int, Any]]:
    """Yield ``(line number, value)`` for every non-blank line; corrupt lines are counted, not fatal."""
    with reading(path), open_text(path) as handle:
        for number, line in _lines(handle, path, bad_rows):
            try:
                yield number, _parse_line(line)
            except BadJSON as exc:
                bad_rows.add(f"{path}:{number}", exc.reason)


def json_documents(path: Path, bad_rows: BadRows) -> Iterator[tuple[int, Any]]:
    """Yield ``(line, value)`` for every JSON document in ``path``, whichever way it is written.

    JSON lines (one document per line, streamed; a corrupt line is one bad row) or one or more
    whole documents, e.g. pretty-printed over many lines (read whole, up to
    :data:`MAX_DOCUMENT_BYTES`; a corrupt document is one bad row at the line of the error). The
    first :data:`SAMPLE_LINES` lines decide: JSON lines when at least half of them are a JSON
    object or array on their own.
    """
    with reading(path), open_text(path) as handle:
        lines = _lines(handle, path, bad_rows)
        sample: list[tuple[int, Any]] = []
        for number, line in lines:
            try:
                sample.append((number, _parse_line(line)))
            except BadJSON as exc:
                sample.append((number, exc))
            if len(sample) >= SAMPLE_LINES:
                break
        whole = sum(isinstance(value, dict | list) for _, value in sample)
        if len(sample) > 1 and 2 * whole < len(sample):
            return (yield from _whole_documents(path, bad_rows))
        for number, value in sample:
            if isinstance(value, BadJSON):
                bad_rows.add(f"{path}:{number}", value.reason)
            else:
                yield number, value
        for number, line in lines:
            try:
                yield number, _parse_line(line)
            except BadJSON as exc:
                bad_rows.add(f"{path}:{number}", exc.reason)


def _whole_documents(path: Path, bad_rows: BadRows) -> Iterator[tuple[int, Any]]:
    """The JSON documents of a file read whole, one after another, each with the line it starts on."""
    with reading(path), open_text(path) as handle:
        text = handle.read(MAX_DOCUMENT_BYTES + 1)
    if len(text) > MAX_DOCUMENT_BYTES:
        bad_rows.add(f"{path}:1", f"JSON document larger than {MAX_DOCUMENT_BYTES >> 20} MiB "
                                  "(write one document per line instead)")
        return
    position = _WHITESPACE.match(text).end()  # type: ignore[union-attr]
    line, counted = 1, 0
    while position < len(text):
        line += text.count("\n", counted, position)
        counted = position
        try:
            value, position = parse_json(text, position)
        except BadJSON as exc:
            bad_rows.add(f"{path}:{exc.line}", exc.reason)
            return
        yield line, value
        position = _WHITESPACE.match(text, position).end()  # type: ignore[union-attr]


def delimiter_hint(names: list[str], delimiter: str) -> str | None:
    """The delimiter a one-column header seems to use instead of ``delimiter``, if any."""
    if len(names) != 1:
        return None
    counts = {d: names[0].count(d) for d in DELIMITER_GUESSES if d != delimiter}
    best = max(counts, key=lambda d: counts[d], default=None)
    return best if best is not None and counts[best] > 0 else None


def read_csv_chunks(path: Path, bad_rows: BadRows, *, delimiter: str = ",", block_bytes: int = CSV_BLOCK_BYTES,
                    encoding: str = "utf-8", check_header: bool = False,
                    ) -> Iterator[tuple[pd.DataFrame, pd.Series]]:
    """Stream a CSV file as frames of strings, with each row's line number.

    Every column is read as text (types are the importer's job), so a column that looks numeric in
    the first block and not later never fails the read. Rows with the wrong number of fields are
    counted as bad rows with their line number. Values spanning lines are not supported. With
    ``check_header``, a header with a repeated name, or of one column that seems to use another
    delimiter, is an error (with the ``--delimiter`` to pass).

    Raises:
        SourceError: the file cannot be read as CSV in ``encoding``, one line naming it.
    """
    import pyarrow as pa
    import pyarrow.csv as pacsv

    with reading(path, encoding), open_text(path, encoding) as handle:
        header = handle.readline(MAX_LINE_BYTES)
    if not header.strip():
        raise SourceError(f"{path}: empty file (no header line)")
    try:
        names = next(csv.reader([header], delimiter=delimiter))
    except (csv.Error, StopIteration) as exc:
        raise SourceError(f"{path}:1: cannot read the CSV header ({exc})") from None
    if check_header:
        guess = delimiter_hint(names, delimiter)
        if guess is not None:
            shown = "\\t" if guess == "\t" else guess
            raise SourceError(f"{path}:1: the header is one column ({names[0][:60]!r}) and looks like "
                              f"'{shown}'-separated: pass --delimiter '{shown}'")
        repeated = next((name for i, name in enumerate(names) if name in names[:i]), None)
        if repeated is not None:
            raise SourceError(f"{path}:1: column {repeated!r} appears twice in the header")
    skipped: list[int] = []
    stopped: list[SourceError] = []

    def invalid(row: Any) -> str:
        skipped.append(int(row.number))
        try:
            bad_rows.add(f"{path}:{row.number}", f"expected {row.expected_columns} fields, found {row.actual_columns}")
        except SourceError as exc:  # strict: raised here, pyarrow would print it as "Exception ignored"
            stopped.append(exc)
            return "error"
        return "skip"

    def failed(exc: BaseException) -> SourceError:
        if stopped:
            return stopped[0]
        if isinstance(exc, UnicodeError):
            return SourceError(f"{path}: not valid {encoding} text ({_unicode_reason(exc)}); "
                               "pass --encoding, e.g. --encoding latin-1")
        message = first_line(exc, 400)
        row = re.search(r"Row #(\d+)", message)
        if "invalid UTF8" in message:
            where = f"{path}:{row.group(1)}" if row else str(path)
            return SourceError(f"{where}: not valid UTF-8 text; pass --encoding, e.g. --encoding latin-1")
        if isinstance(exc, OSError) and not isinstance(exc, pa.ArrowException):
            return SourceError(f"{path}: cannot read ({exc.strerror or message[:160]})")
        return SourceError(f"{path}: cannot read CSV ({message[:160]})")

    read_options = pacsv.ReadOptions(block_size=block_bytes, use_threads=False)
    if codecs.lookup(encoding).name != "utf-8":
        read_options.encoding = encoding
    try:
        reader = pacsv.open_csv(
            path,
            read_options=read_options,
            parse_options=pacsv.ParseOptions(delimiter=delimiter, invalid_row_handler=invalid),
            convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                 strings_can_be_null=True),
        )
    except (pa.ArrowException, OSError, ValueError, UnicodeError) as exc:
        raise failed(exc) from None
    next_line = 2
    while True:
        try:
            batch = reader.read_next_batch()
            frame = batch.to_pandas()  # a column name that is not UTF-8 fails only here
        except StopIteration:
            break
        except (pa.ArrowException, OSError, ValueError, UnicodeError) as exc:
            raise failed(exc) from None
        lines = np.arange(next_line, next_line + batch.num_rows + len(skipped))
        lines = np.setdiff1d(lines, skipped, assume_unique=True)[: batch.num_rows]
        next_line = int(lines[-1]) + 1 if len(lines) else next_line + len(skipped)
        skipped.clear()
        yield frame, pd.Series(lines)


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
        raise SourceError(f"{path}: cannot read parquet ({first_line(exc)})") from None
    first = 1
    for group in range(file.num_row_groups):
        try:
            frame = file.read_row_group(group).to_pandas()
        except Exception as exc:  # as above: a corrupt row group, or a type pandas cannot hold
            raise SourceError(f"{path}: cannot read parquet row group {group} ({first_line(exc)})") from None
        yield frame, pd.Series(np.arange(first, first + len(frame)))
        first += len(frame)
