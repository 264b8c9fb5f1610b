"""Span-tree lookups shared by the trace and log detectors: each span's parent row, and the span
through which a request entered a span's service. Vectorised over all spans at once (one index
lookup, then one array step per call level), never a loop over traces."""

from __future__ import annotations

import numpy as np
import pandas as pd

MAX_CALL_DEPTH = 64  # call levels followed up a trace; a broken trace whose parents loop stops here


def span_index(spans: pd.DataFrame) -> pd.MultiIndex:
    """(trace id, span id) of each row, as text: the key that parent ids and log lines refer to."""
    return pd.MultiIndex.from_arrays([spans["trace_id"].astype(str), spans["span_id"].astype(str)])


def parent_rows(spans: pd.DataFrame, index: pd.MultiIndex | None = None) -> np.ndarray:
    """Row of each span's parent in ``spans`` (positional), -1 for a root or a parent not present."""
    keys = span_index(spans) if index is None else index
    parents = spans["parent_span_id"].fillna("").astype(str)
    return keys.get_indexer(pd.MultiIndex.from_arrays([keys.get_level_values(0), parents]))


def entry_rows(spans: pd.DataFrame, parent: np.ndarray | None = None) -> np.ndarray:
    """Row of each span's highest ancestor in the same service: where the request entered it
    (``parent``: :func:`parent_rows`, when already computed)."""
    parent = parent_rows(spans) if parent is None else parent
    service = spans["service_name"].to_numpy(dtype=object)
    entry = np.arange(len(spans))
    for _ in range(MAX_CALL_DEPTH):  # one call level per pass
        up = parent[entry]
        climb = (up >= 0) & (up != entry) & (service[np.maximum(up, 0)] == service)
        if not climb.any():
            break
        entry = np.where(climb, up, entry)
    return entry
