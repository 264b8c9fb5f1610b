"""Block-diagonal batches of many trace graphs, cut from one node table sorted by trace.

Graph builders (``teg_graphs``, ``gat_graphs``) keep every trace's nodes contiguous
(``trace_ptr``) and the edge list sorted by source node, so any set of traces becomes one PyG-style
batch - features, re-indexed edges and a graph index per node - with a few numpy calls and no
loop over traces.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np


class GraphTable(Protocol):
    x: np.ndarray  # nodes x features, nodes grouped by trace
    edge_index: np.ndarray  # 2 x edges, sorted by source node
    trace_ptr: np.ndarray  # nodes of trace t are trace_ptr[t]:trace_ptr[t + 1]


def batch_nodes(graphs: GraphTable, traces: np.ndarray) -> np.ndarray:
    """Positions of the nodes of ``traces`` (sorted trace positions), in order."""
    lo, hi = graphs.trace_ptr[traces], graphs.trace_ptr[traces + 1]
    counts = hi - lo
    return np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())


def gather(graphs: GraphTable, traces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Block-diagonal batch of arbitrary (sorted) traces: features, re-indexed edges, graph index."""
    x, edges, _, batch = gather_edges(graphs, traces)
    return x, edges, batch


def gather_edges(graphs: GraphTable, traces: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """:func:`gather`, with the positions of the batch's edges in ``graphs.edge_index`` (to cut
    per-edge features the same way)."""
    lo, hi = graphs.trace_ptr[traces], graphs.trace_ptr[traces + 1]
    nodes = batch_nodes(graphs, traces)
    new_id = np.full(graphs.x.shape[0], -1, dtype=np.int64)
    new_id[nodes] = np.arange(nodes.size)
    a, b = np.searchsorted(graphs.edge_index[0], lo), np.searchsorted(graphs.edge_index[0], hi)
    edge_cols = np.repeat(a - np.cumsum(b - a) + (b - a), b - a) + np.arange((b - a).sum())
    edges = new_id[graphs.edge_index[:, edge_cols]]
    return graphs.x[nodes], edges, edge_cols, np.repeat(np.arange(traces.size), hi - lo)
