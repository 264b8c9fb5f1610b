"""Service dependency graph from spans: caller service -> callee service.

Each edge carries call count, error count and mean latency of the callee's spans, computed with
one vectorised self-join of spans on (trace_id, parent_span_id) into sums that add up across
shards of whole traces (:func:`call_table`). An optional topology from config
adds services and edges that the traces did not show.
"""

from __future__ import annotations

from pathlib import Path

import networkx as nx
import pandas as pd

from melt.core.errors import ConfigError


def dependency_graph(spans: pd.DataFrame | None, topology_file: str | Path | None = None) -> nx.DiGraph:
    """Build the graph; ``spans`` may be ``None`` when only a topology is known."""
    nodes = spans["service_name"].dropna().unique().tolist() if spans is not None and len(spans) else []
    return graph_of_calls(call_table(spans), nodes, topology_file)


def call_table(spans: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (caller, callee) service pair: ``calls``, ``errors`` and ``latency_sum`` (ms) of
    the callee's spans. Sums, so that the tables of disjoint sets of whole traces add up (a Dask
    run builds one per trace shard)."""
    columns = ["caller", "service_name", "calls", "errors", "latency_sum"]
    if spans is None or not len(spans):
        return pd.DataFrame({c: pd.Series([], dtype=object if c in columns[:2] else float) for c in columns})
    parents = spans[["trace_id", "span_id", "service_name"]].rename(
        columns={"span_id": "parent_span_id", "service_name": "caller"})
    error = spans["status_code"].fillna(0).astype("int64") >= 500 if "status_code" in spans.columns else False
    children = spans.assign(error=error)[["trace_id", "parent_span_id", "service_name", "duration", "error"]]
    calls = children.dropna(subset=["parent_span_id"]).merge(parents, on=["trace_id", "parent_span_id"], how="inner")
    calls = calls[calls["caller"] != calls["service_name"]]
    return calls.groupby(["caller", "service_name"], observed=True).agg(
        calls=("duration", "size"), errors=("error", "sum"), latency_sum=("duration", "sum")).reset_index()


def graph_of_calls(calls: pd.DataFrame, nodes: list[str], topology_file: str | Path | None = None) -> nx.DiGraph:
    """The graph of :func:`call_table` rows (tables of several trace sets are summed first), the
    services in ``nodes``, and the topology file's."""
    graph = nx.DiGraph()
    graph.add_nodes_from(nodes)
    if len(calls):
        edges = calls.groupby(["caller", "service_name"], observed=True)[["calls", "errors", "latency_sum"]].sum()
        for (caller, callee), row in edges.iterrows():
            graph.add_edge(caller, callee, calls=int(row["calls"]), errors=int(row["errors"]),
                           latency_ms=round(float(row["latency_sum"]) / float(row["calls"]), 3))
    if topology_file:
        _merge_topology(graph, Path(topology_file))
    return canonical(graph)


def canonical(graph: nx.DiGraph) -> nx.DiGraph:
    """The same graph with nodes and edges in sorted order.

    Path searches break ties by insertion order; sorted, the graph a stream builds step by step
    (:func:`networkx.compose` of each step's) breaks them as the one a batch run builds at once.
    """
    ordered = nx.DiGraph()
    ordered.add_nodes_from(sorted(graph.nodes(data=True), key=lambda item: str(item[0])))
    ordered.add_edges_from(sorted(graph.edges(data=True), key=lambda item: (str(item[0]), str(item[1]))))
    return ordered


def _merge_topology(graph: nx.DiGraph, file: Path) -> None:
    """Add ``services`` and ``edges: [[caller, callee], ...]`` from a YAML file."""
    import yaml

    if not file.is_file():
        raise ConfigError(f"rca.topology_file not found: {file}")
    spec = yaml.safe_load(file.read_text()) or {}
    graph.add_nodes_from(spec.get("services", []))
    for edge in spec.get("edges", []):
        if not isinstance(edge, list | tuple) or len(edge) != 2:
            raise ConfigError(f"{file}: each edge must be [caller, callee], got {edge!r}")
        if not graph.has_edge(*edge):
            graph.add_edge(edge[0], edge[1], calls=0, errors=0, latency_ms=None)


def export_graph(graph: nx.DiGraph, path: str | Path) -> Path:
    """Write JSON (node-link) or GraphML, chosen by the file suffix."""
    import json

    file = Path(path)
    if file.suffix == ".graphml":
        clean = nx.DiGraph()
        clean.add_nodes_from(graph.nodes)
        for a, b, data in graph.edges(data=True):
            clean.add_edge(a, b, **{k: v for k, v in data.items() if v is not None})
        nx.write_graphml(clean, file)
    else:
        file.write_text(json.dumps(nx.node_link_data(graph, edges="links"), indent=2, default=str) + "\n")
    return file
