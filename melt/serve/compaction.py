"""Compaction of received segments: the many small files of group commits merged into one per step.

At a 200 ms commit interval a busy feed writes up to five files a second per signal: 2.6 million
files in two days of retention, too many to list, index or read. Once a step has been scored,
``melt serve``'s step process merges the small segments that lie wholly before it into one file per
signal and step (arrow tables concatenated, sorted by event time and rewritten, no pandas), as
log-structured stores compact their flushed runs. Reads by event time are unchanged: the rows are the same, only the files differ.

A merge is crash-safe with a journal, as databases make a multi-file change atomic: the names of the
parts and of the merged file are written (and fsynced) to ``compaction.json`` in the signal's
folder before the merged file is renamed into place; the parts are deleted after, then the journal.
:func:`recover` finishes or undoes an interrupted merge: with the merged file in place its parts are
deleted, without it the parts stay and the temporary file goes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from melt.serve.dedup import REQUESTS_KEY
from melt.serve.durable import fsync_path

JOURNAL = "compaction.json"
COMPACTED_MARK = ".c"
"""A merged segment is named ``<seq>-<low>-<high>.c.parquet``; it is never merged again."""


def merged_name(seq: int, low: int, high: int) -> str:
    return f"{seq:012d}-{low}-{high}{COMPACTED_MARK}.parquet"


ROW_GROUP = 65_536
"""Rows per row group of a merged file: a read of a few seconds skips the others by their statistics."""


def merge(folder: Path, parts: list[Path], seq: int, low: int, high: int, time_column: str) -> Path:
    """Write the rows of ``parts`` as one segment in ``folder``, in event-time order, and delete the
    parts; the merged file's path. Each part's ``melt.requests`` metadata (the receiver's request
    keys) is carried over, so de-duplication survives the merge."""
    tables, keys = [], []
    kept: dict[bytes, bytes] = {}  # the first part's other metadata (pandas' column hints)
    for path in parts:
        table = pq.read_table(path)
        metadata = dict(table.schema.metadata or {})
        if metadata.get(REQUESTS_KEY):
            keys.append(metadata[REQUESTS_KEY].decode())
        metadata.pop(REQUESTS_KEY, None)
        kept = kept or metadata
        tables.append(table.replace_schema_metadata(None))
    table = pa.concat_tables(tables, promote_options="permissive").sort_by(time_column)
    table = table.replace_schema_metadata({**kept, **({REQUESTS_KEY: ",".join(keys).encode()} if keys else {})})
    final = folder / merged_name(seq, low, high)
    temporary = folder / f".{final.name}.tmp"
    pq.write_table(table, temporary, compression="zstd", row_group_size=ROW_GROUP)
    fsync_path(temporary)
    journal = folder / JOURNAL
    journal.write_text(json.dumps({"merged": final.name, "temporary": temporary.name,
                                   "parts": [p.name for p in parts]}))
    fsync_path(journal)
    fsync_path(folder)
    os.replace(temporary, final)
    fsync_path(folder)
    _finish(folder, [p.name for p in parts])
    return final


def recover(folder: Path) -> None:
    """Finish (merged file in place) or undo (not yet) a merge that a crash interrupted."""
    journal = folder / JOURNAL
    if not journal.is_file():
        return
    try:
        entry = json.loads(journal.read_text())
    except (OSError, ValueError):  # the journal itself was half written: nothing was renamed yet
        journal.unlink(missing_ok=True)
        return
    if (folder / entry["merged"]).is_file():
        _finish(folder, entry["parts"])
    else:
        (folder / entry["temporary"]).unlink(missing_ok=True)
        journal.unlink(missing_ok=True)


def _finish(folder: Path, parts: list[str]) -> None:
    for name in parts:
        (folder / name).unlink(missing_ok=True)
    fsync_path(folder)
    (folder / JOURNAL).unlink(missing_ok=True)
