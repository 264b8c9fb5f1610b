"""The incident page's charts as plotly figures: the fused-score timeline, the dependency graph with
the ranked causes and the propagation path, one plot per evidence metric, and the incident list.

plotly draws them in the browser from the JSON this module builds (``plotly.min.js`` from the
``plotly`` package, no CDN). plotly reads a few HTML tags inside text (``<b>``, ``<a href>``), so
every name from the data goes in escaped (:func:`html.escape`); plotly shows the entities as the
characters they stand for. Graph node positions come from networkx: layered by call depth when
the graph has no cycle (callers above callees), else a spring layout with a fixed seed. Either way
the same incident is drawn the same way every time.
"""

from __future__ import annotations

from html import escape
from typing import Any

import networkx as nx
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

LAYOUT_SEED = 7
SEVERITY_COLOURS = {"low": "#6b8e23", "medium": "#d4a017", "high": "#e07b00", "critical": "#c62828"}
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#393b79", "#637939"]
BASE_LAYOUT: dict[str, Any] = {
    "template": "none",
    "font": {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12, "color": "#1f2933"},
    "paper_bgcolor": "white", "plot_bgcolor": "white",
    "margin": {"l": 56, "r": 16, "t": 36, "b": 40},
    "xaxis": {"gridcolor": "#e5e7eb", "linecolor": "#9ca3af", "zeroline": False},
    "yaxis": {"gridcolor": "#e5e7eb", "linecolor": "#9ca3af", "zeroline": False},
    "legend": {"orientation": "h", "y": -0.18, "x": 0},
    "hoverlabel": {"namelength": -1},
}


def figure_json(figure: go.Figure) -> str:
    """The figure as JSON for ``Plotly.newPlot`` (plotly's encoder writes ``<``, ``>`` and ``/`` as
    ``\\u`` escapes, and the page puts it in an escaped attribute)."""
    return pio.to_json(figure, validate=False)


def styled(figure: go.Figure, title: str, height: int) -> go.Figure:
    figure.update_layout(BASE_LAYOUT, title={"text": title, "x": 0, "font": {"size": 13}}, height=height)
    return figure


def mark_window(figure: go.Figure, report: dict[str, Any]) -> None:
    """Shade the incident's window."""
    window = report["window"]
    figure.add_vrect(x0=window["start"], x1=window["end"], fillcolor="#fde68a", opacity=0.35, line_width=0,
                     layer="below")


def log_axis(values: list[float], threshold: float) -> bool:
    """Scores span orders of magnitude in a bad incident: a log axis keeps the small ones readable."""
    positive = [v for v in values if v > 0]
    return bool(positive) and max(positive) > 20 * max(threshold, min(positive))


def timeline_figure(report: dict[str, Any], detail: dict[str, Any] | None) -> go.Figure:
    """Fused score per service per window (with ``detail``), or the evidence scores (the report alone)."""
    figure = go.Figure()
    threshold = (detail or {}).get("threshold")
    if detail and detail.get("timeline"):
        rows = detail["timeline"]
        peak: dict[str, float] = {}
        for row in rows:
            peak[row["service"]] = max(peak.get(row["service"], 0.0), row["score"])
        for i, service in enumerate(sorted(peak, key=lambda s: -peak[s])):
            mine = [r for r in rows if r["service"] == service]
            figure.add_trace(go.Scatter(
                x=[r["timestamp"] for r in mine], y=[r["score"] for r in mine], mode="lines+markers",
                name=escape(service), line={"width": 3 if i == 0 else 1.6, "color": PALETTE[i % len(PALETTE)]},
                marker={"size": 5}, hovertemplate="%{x}<br>fused score %{y:.3g}<extra>" + escape(service) + "</extra>"))
        values = [r["score"] for r in rows]
        title = "Fused anomaly score per service (ensemble window)"
    else:
        evidence = [e for e in report["evidence"] if isinstance(e.get("score"), int | float)]
        services = list(dict.fromkeys(e["service"] for e in evidence))
        for i, service in enumerate(services):
            mine = [e for e in evidence if e["service"] == service]
            figure.add_trace(go.Scatter(
                x=[e["timestamp"] for e in mine], y=[e["score"] for e in mine], mode="markers",
                name=escape(service), marker={"size": 9, "color": PALETTE[i % len(PALETTE)]},
                text=[escape(f"{e['id']} {e['detector']}: {e.get('feature')}") for e in mine],
                hovertemplate="%{text}<br>%{x}<br>score %{y:.3g}<extra></extra>"))
        values = [e["score"] for e in evidence]
        title = "Evidence scores per service (the report alone: no timeline)"
    if threshold is not None and values:
        xs = [x for trace in figure.data for x in trace.x]
        figure.add_trace(go.Scatter(x=[min(xs), max(xs)], y=[threshold, threshold], mode="lines", name="threshold",
                                    line={"dash": "dash", "color": "#6b7280", "width": 1}, hoverinfo="skip"))
    mark_window(figure, report)
    styled(figure, title, 460)
    figure.update_yaxes(title_text="score", type="log" if log_axis(values, threshold or 1.0) else "linear")
    return figure


def causal_graph(report: dict[str, Any], detail: dict[str, Any] | None) -> nx.DiGraph:
    """The services to draw and the calls between them: the detail's edges, and each cause's path."""
    graph = nx.DiGraph()
    causes = report["root_cause_analysis"]["ranked_causes"]
    graph.add_nodes_from(report["services"])
    for cause in causes:
        graph.add_node(cause["service"])
        nx.add_path(graph, cause["path"])
    for edge in (detail or {}).get("edges", []):
        graph.add_edge(edge["caller"], edge["callee"], **{k: edge[k] for k in ("calls", "errors", "latency_ms")})
    return graph


def positions(graph: nx.DiGraph) -> dict[str, tuple[float, float]]:
    """Node positions: layers by call depth (callers on top) for a graph without cycles, else a
    spring layout seeded with :data:`LAYOUT_SEED`."""
    if graph.number_of_nodes() == 0:
        return {}
    ordered = nx.DiGraph()  # networkx places nodes in insertion order: sort, so the order data came in does not matter
    ordered.add_nodes_from(sorted(graph.nodes))
    ordered.add_edges_from(sorted(graph.edges))
    if nx.is_directed_acyclic_graph(ordered):
        for depth, nodes in enumerate(nx.topological_generations(ordered)):
            for node in nodes:
                ordered.nodes[node]["layer"] = depth
        placed = nx.multipartite_layout(ordered, subset_key="layer", align="horizontal")
        return {n: (float(x), -float(y)) for n, (x, y) in placed.items()}
    placed = nx.spring_layout(ordered, seed=LAYOUT_SEED)
    return {n: (float(x), float(y)) for n, (x, y) in placed.items()}


def edge_trace(graph: nx.DiGraph, edges: list[tuple[str, str]], where: dict, name: str, colour: str,
               width: float, dash: str = "solid") -> go.Scatter:
    xs: list[float | None] = []
    ys: list[float | None] = []
    for a, b in edges:
        xs += [where[a][0], where[b][0], None]
        ys += [where[a][1], where[b][1], None]
    return go.Scatter(x=xs, y=ys, mode="lines", name=name, hoverinfo="skip",
                      line={"color": colour, "width": width, "dash": dash})


def graph_figure(report: dict[str, Any], detail: dict[str, Any] | None) -> go.Figure:
    """The dependency graph: ranked causes coloured and numbered, the top cause's propagation path
    in red, the other causes' paths dashed, arrows from caller to callee."""
    graph = causal_graph(report, detail)
    where = positions(graph)
    causes = report["root_cause_analysis"]["ranked_causes"]
    rank = {c["service"]: c for c in causes}
    top_path = list(zip(causes[0]["path"], causes[0]["path"][1:], strict=False)) if causes else []
    other_paths = {e for c in causes[1:] for e in zip(c["path"], c["path"][1:], strict=False)} - set(top_path)
    plain = [e for e in graph.edges if e not in top_path and e not in other_paths]
    figure = go.Figure()
    figure.add_trace(edge_trace(graph, plain, where, "call", "#9ca3af", 1.2))
    figure.add_trace(edge_trace(graph, sorted(other_paths), where, "other causes' paths", "#f59e0b", 2, "dash"))
    figure.add_trace(edge_trace(graph, top_path, where, "propagation path", "#dc2626", 4))
    for a, b in graph.edges:
        on_path = (a, b) in top_path
        figure.add_annotation(x=where[b][0], y=where[b][1], ax=where[a][0], ay=where[a][1], xref="x", yref="y",
                              axref="x", ayref="y", text="", showarrow=True, arrowhead=2, arrowsize=1.2,
                              arrowwidth=2.2 if on_path else 1, standoff=16, startstandoff=14,
                              arrowcolor="#dc2626" if on_path else "#6b7280")
    calls = [e for e in graph.edges(data=True) if e[2].get("calls") is not None]
    if calls:
        figure.add_trace(go.Scatter(
            x=[(where[a][0] + where[b][0]) / 2 for a, b, _ in calls],
            y=[(where[a][1] + where[b][1]) / 2 for a, b, _ in calls], mode="markers", name="calls",
            marker={"size": 8, "color": "rgba(0,0,0,0)"}, showlegend=False,
            text=[escape(f"{a} → {b}: {d['calls']} calls, {d['errors']} errors, {d['latency_ms']} ms mean")
                  for a, b, d in calls], hovertemplate="%{text}<extra></extra>"))
    alerting = set(report["services"])
    roles = [("top cause", "#dc2626", 34, lambda n: rank.get(n, {}).get("rank") == 1),
             ("other candidates", "#f59e0b", 26, lambda n: n in rank and rank[n]["rank"] > 1),
             ("alerting", "#fde047", 20, lambda n: n not in rank and n in alerting),
             ("other services", "#e5e7eb", 16, lambda n: n not in rank and n not in alerting)]
    for name, colour, size, member in roles:
        nodes = [n for n in sorted(graph.nodes) if member(n)]
        if not nodes:
            continue
        labels = [escape(f"#{rank[n]['rank']} {n}" if n in rank else n) for n in nodes]
        hover = [escape(f"{n}: rank {rank[n]['rank']}, score {rank[n]['score']:.3g}; "
                        + ", ".join(f"{k} {v:.3g}" for k, v in rank[n]["terms"].items() if v))
                 if n in rank else escape(n) for n in nodes]
        figure.add_trace(go.Scatter(
            x=[where[n][0] for n in nodes], y=[where[n][1] for n in nodes], mode="markers+text", name=name,
            text=labels, textposition="bottom center", hovertext=hover, hoverinfo="text",
            textfont={"size": 12, "color": "#111827"},
            marker={"size": size, "color": colour, "line": {"width": 1.5, "color": "#374151"}}))
    styled(figure, "Dependency graph: ranked causes and the propagation path", 460)
    hidden = {"visible": False, "showgrid": False, "zeroline": False}
    figure.update_layout(xaxis={**hidden, "range": padded([p[0] for p in where.values()])},
                         yaxis={**hidden, "range": padded([p[1] for p in where.values()], low=0.3)})
    return figure


def padded(values: list[float], low: float = 0.15, high: float = 0.15) -> list[float]:
    """An axis range around ``values`` with room for the labels."""
    if not values:
        return [-1.0, 1.0]
    lo, hi = min(values), max(values)
    span = hi - lo or 1.0
    return [lo - low * span, hi + high * span]


def metric_figure(series: dict[str, Any], report: dict[str, Any]) -> go.Figure:
    """One evidence metric per window against the expected band its detector reported."""
    xs = [p["timestamp"] for p in series["points"]]
    figure = go.Figure()
    band = series.get("expected_range") or [None, None]
    lo, hi = (band + [None, None])[:2]
    if lo is not None and hi is not None:
        figure.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[lo, lo], mode="lines", line={"width": 0},
                                    showlegend=False, hoverinfo="skip"))
        figure.add_trace(go.Scatter(x=[xs[0], xs[-1]], y=[hi, hi], mode="lines", line={"width": 0},
                                    fill="tonexty", fillcolor="rgba(34,197,94,0.18)", name="expected",
                                    hoverinfo="skip"))
    for bound in (lo, hi):
        if bound is not None and (lo is None or hi is None):
            figure.add_hline(y=bound, line={"dash": "dot", "color": "#16a34a"})
    figure.add_trace(go.Scatter(x=xs, y=[p["value"] for p in series["points"]], mode="lines+markers", name="value",
                                line={"color": "#1f77b4", "width": 2}, marker={"size": 4}))
    marked = series.get("marked") or {}
    if isinstance(marked.get("value"), int | float):
        figure.add_trace(go.Scatter(x=[marked["timestamp"]], y=[marked["value"]], mode="markers",
                                    name=escape(series["evidence_id"]),
                                    marker={"size": 11, "color": "#dc2626", "symbol": "diamond"}))
    mark_window(figure, report)
    name = series["metric"] + (f" → {series['peer']}" if series.get("peer") else "")
    where = f" ({series['instance']})" if series.get("instance") else ""
    styled(figure, escape(f"{series['evidence_id']} · {series['service']} · {name}{where}"), 240)
    figure.update_layout(margin={"l": 56, "r": 12, "t": 36, "b": 30}, showlegend=False)
    return figure


def forecast_figure(report: dict[str, Any], detail: dict[str, Any] | None) -> go.Figure:
    """The report's forecast after the observed series: the mean path in its 80% and 95% bands,
    the limit and the time it is reached, when known. The observed values are the page detail's
    series of the same evidence item, if it has one."""
    forecast = report["forecast"]
    path = forecast["path"]
    xs = [p["timestamp"] for p in path]
    figure = go.Figure()
    observed = next((s for s in (detail or {}).get("metrics", []) if s.get("evidence_id") == forecast["evidence_id"]
                     and s.get("metric") == forecast["metric"]), None)
    if observed is not None:
        figure.add_trace(go.Scatter(x=[p["timestamp"] for p in observed["points"]],
                                    y=[p["value"] for p in observed["points"]], mode="lines", name="observed",
                                    line={"color": "#1f77b4", "width": 2}))
    for level, colour in ((95, "rgba(124,58,237,0.15)"), (80, "rgba(124,58,237,0.28)")):
        figure.add_trace(go.Scatter(x=xs, y=[p[f"lower_{level}"] for p in path], mode="lines", line={"width": 0},
                                    showlegend=False, hoverinfo="skip"))
        figure.add_trace(go.Scatter(x=xs, y=[p[f"upper_{level}"] for p in path], mode="lines", line={"width": 0},
                                    fill="tonexty", fillcolor=colour, name=f"{level}% interval"))
    figure.add_trace(go.Scatter(x=xs, y=[p["mean"] for p in path], mode="lines", name="forecast",
                                line={"color": "#7c3aed", "width": 2, "dash": "dash"}))
    if forecast.get("limit") is not None:
        figure.add_hline(y=forecast["limit"], line={"dash": "dot", "color": "#c62828"})
    if forecast.get("time_to_limit"):
        figure.add_vline(x=forecast["time_to_limit"], line={"dash": "dot", "color": "#c62828"})
    figure.add_vline(x=forecast["origin"], line={"color": "#9ca3af", "width": 1})
    name = forecast["metric"] + (f" → {forecast['peer']}" if forecast.get("peer") else "")
    where = f" ({forecast['instance']})" if forecast.get("instance") else ""
    styled(figure, escape(f"{forecast['evidence_id']} · {forecast['service']} · {name}{where}: forecast "
                          f"({forecast['model']})"), 280)
    figure.update_layout(margin={"l": 56, "r": 12, "t": 36, "b": 30})
    return figure


def index_figure(reports: list[dict[str, Any]]) -> go.Figure:
    """The incidents on a time axis, one bar per incident, coloured by severity."""
    figure = go.Figure()
    for severity, colour in SEVERITY_COLOURS.items():
        mine = [r for r in reports if r["anomaly_details"]["severity"] == severity]
        if not mine:
            continue
        starts = [r["window"]["start"] for r in mine]
        lengths = [max(_ms(r["window"]["end"]) - _ms(r["window"]["start"]), 1) for r in mine]
        figure.add_trace(go.Bar(
            y=[escape(r["incident_id"]) for r in mine], x=lengths, base=starts, orientation="h", name=severity,
            marker={"color": colour}, text=[escape(r["service"]) for r in mine], textposition="auto",
            hovertemplate="%{y}<br>%{base} for %{customdata} min<extra>%{text}</extra>",
            customdata=[round(n / 60000, 1) for n in lengths]))
    styled(figure, "Incidents over time", min(160 + 24 * len(reports), 640))
    figure.update_layout(xaxis={"type": "date"}, yaxis={"autorange": "reversed", "type": "category", "automargin": True},
                         barmode="overlay")
    return figure


def _ms(text: str) -> int:
    return int(pd.Timestamp(text).value // 1_000_000)
