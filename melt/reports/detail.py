"""What the incident page shows beyond the report: the fused-score timeline, the evidence metrics
with their expected band, example log lines per template, the slowest spans and the call edges.

The report holds what a ticket needs; an engineer reading the incident also wants the curves
behind it. :func:`incident_detail` cuts them from the bundle and the score rows once, as plain
JSON-serialisable records, so the batch ``html`` sink and ``melt serve`` draw the same page from
the same data (:mod:`melt.reports.page`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import networkx as nx
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.progress import log
from melt.core.schema import EDGE_ARROW
from melt.core.settings import Settings
from melt.incidents.ensemble import Incident, fuse
from melt.reports.evidence import select_evidence

MAX_TIMELINE_SERVICES = 12
MAX_METRIC_SERIES = 8
LOG_EXAMPLES = 3
SLOWEST_SPANS = 10
TEMPLATE_TOKEN = re.compile(r"<\*>|<[A-Z]+>")  # Drain's wildcard and the masks' tokens (<NUM>, <IP>, <HEX>...)


def iso(values: pd.Series) -> list[str]:
    """ISO 8601 strings of a UTC time column."""
    return [t.isoformat() for t in values]


def involved_services(incident: Incident, report: dict[str, Any] | None) -> list[str]:
    """The incident's alerting services, then the ranked causes and the services on their paths."""
    names = list(incident.services)
    if report is not None:
        for cause in report["root_cause_analysis"]["ranked_causes"]:
            names += [cause["service"], *cause["path"]]
    return list(dict.fromkeys(names))


def timeline(scores: pd.DataFrame, signal_of: dict[str, str], services: list[str], start: pd.Timestamp,
             end: pd.Timestamp, settings: Settings) -> list[dict[str, Any]]:
    """Fused score per (service, ensemble window) over ``[start, end)``, as the ensemble fused it
    (:func:`melt.incidents.ensemble.fuse`), for the loudest :data:`MAX_TIMELINE_SERVICES` services."""
    rows = scores[(scores["timestamp"] >= start) & (scores["timestamp"] < end) & scores["service"].isin(services)]
    if rows.empty:
        return []
    ensemble = settings.ensemble
    fused, _ = fuse(rows, signal_of, ensemble.window, ensemble.combiner, ensemble.weights)
    loudest = fused.groupby("service", observed=True)["fused"].max().nlargest(MAX_TIMELINE_SERVICES).index
    fused = fused[fused["service"].isin(loudest)].sort_values(["service", "window"])
    return [{"timestamp": t, "service": s, "score": round(float(v), 4)}
            for t, s, v in zip(iso(fused["window"]), fused["service"].astype(str), fused["fused"], strict=True)]


def metric_key(item: dict[str, Any]) -> tuple[str, str | None]:
    """The bundle metric and peer of a metrics evidence item (``rpc.client.duration.p50 -> db`` is a call metric)."""
    name = str(item.get("metric") or item.get("feature") or "")
    metric, arrow, peer = name.partition(EDGE_ARROW)
    return metric, (peer if arrow else None)


def metric_series(metrics: pd.DataFrame | None, evidence: list[dict[str, Any]], start: pd.Timestamp,
                  end: pd.Timestamp, step: pd.Timedelta) -> list[dict[str, Any]]:
    """The value per window of each metric the evidence names, with the evidence's expected band."""
    if metrics is None or metrics.empty:
        return []
    near = metrics[(metrics["timestamp"] >= start) & (metrics["timestamp"] < end)]
    out, seen = [], set()
    for item in evidence:
        if item.get("component") != "metrics" or len(out) >= MAX_METRIC_SERIES:
            continue
        metric, peer = metric_key(item)
        instance = item.get("instance")
        key = (item["service"], metric, peer, instance, item.get("detector"))
        if key in seen:
            continue
        seen.add(key)
        rows = near[(near["service"] == item["service"]) & (near["metric"] == metric)]
        if "peer" in rows.columns:  # nullable columns: a missing peer or instance is no match
            rows = rows[rows["peer"].eq(peer).fillna(False).astype(bool)] if peer else rows[rows["peer"].isna()]
        if instance and "instance" in rows.columns:
            same = rows["instance"].eq(instance).fillna(False).astype(bool)
            rows = rows[same] if same.any() else rows
        per_window = rows.assign(w=rows["timestamp"].dt.floor(step)).groupby("w")["value"].mean().dropna()
        if per_window.empty:
            continue
        out.append({"evidence_id": item["id"], "service": item["service"], "metric": metric, "peer": peer,
                    "instance": instance, "detector": item.get("detector"),
                    "expected_range": item.get("expected_range"),
                    "marked": {"timestamp": item["timestamp"], "value": item.get("value")},
                    "points": [{"timestamp": t, "value": round(float(v), 6)}
                               for t, v in zip(iso(per_window.index.to_series()), per_window, strict=True)]})
    return out


def template_regex(template: str) -> str:
    """A regex for the lines of a mined template: each token (``<*>``, ``<NUM>``...) matches any
    text, the literal parts match as written, any run of spaces as any run of spaces."""
    parts = [re.escape(" ".join(p.split())).replace(r"\ ", r"\s+") for p in TEMPLATE_TOKEN.split(template)]
    return "^" + ".*?".join(parts) + "$"


def log_examples(logs: pd.DataFrame | None, evidence: list[dict[str, Any]], start: pd.Timestamp,
                 end: pd.Timestamp) -> list[dict[str, Any]]:
    """Up to :data:`LOG_EXAMPLES` lines per evidence template, the ones nearest the evidence's time.

    A caller's complaint about a peer (``reported_by``) is looked up in the caller's own lines, and
    its template loses the ``[peer]`` suffix the detector added.
    """
    if logs is None or logs.empty:
        return []
    near = logs[(logs["timestamp"] >= start) & (logs["timestamp"] < end)]
    out, seen = [], set()
    for item in evidence:
        template = item.get("template") or (item.get("feature") if item.get("component") == "logs" else None)
        if item.get("component") != "logs" or not template:
            continue
        peer, source = item.get("peer"), item.get("reported_by") or item["service"]
        if peer and template.endswith(f" [{peer}]"):
            template = template[: -len(f" [{peer}]")]
        if (source, template) in seen:
            continue
        seen.add((source, template))
        own = near[near["service"] == source]
        matched = own[own["message"].str.contains(template_regex(template), regex=True, na=False)]
        at = pd.Timestamp(item["timestamp"])
        nearest = matched.assign(gap=(matched["timestamp"] - at).abs()).nsmallest(LOG_EXAMPLES, "gap")
        nearest = nearest.sort_values("timestamp")
        lines = [{"timestamp": t, "level": str(level), "message": str(message)}
                 for t, level, message in zip(iso(nearest["timestamp"]), nearest["level"], nearest["message"],
                                              strict=True)]
        if not lines and item.get("example"):
            lines = [{"timestamp": item["timestamp"], "level": item.get("level"), "message": str(item["example"])}]
        out.append({"evidence_id": item["id"], "service": source, "template": template,
                    "level": item.get("level"), "lines": lines})
    return out


def slowest_spans(traces: pd.DataFrame | None, services: list[str], start: pd.Timestamp, end: pd.Timestamp,
                  family: Callable[[list[str]], pd.DataFrame] | None = None) -> list[dict[str, Any]]:
    """The :data:`SLOWEST_SPANS` longest spans of the involved services that started in the incident,
    the longest of each (service, operation), so one busy entry point does not fill the list; with
    their self time (duration minus the children's, the part spent in the span itself).

    ``family(trace_ids)`` gives every span of those traces, for ``traces`` that hold only the
    involved services' spans (a child may be another service's).
    """
    if traces is None or traces.empty or "start_time" not in traces.columns:
        return []

    def within(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[(frame["start_time"] >= start) & (frame["start_time"] < end)]

    spans = within(traces)
    slow = (spans[spans["service_name"].isin(services)].sort_values("duration", ascending=False, kind="stable")
            .drop_duplicates(["service_name", "span_name"]).head(SLOWEST_SPANS))
    relatives = spans if family is None else within(family(slow["trace_id"].astype(str).unique().tolist()))
    children = (relatives.dropna(subset=["parent_span_id"]).groupby(["trace_id", "parent_span_id"], observed=True)
                ["duration"].sum().rename("children"))
    slow = slow.join(children, on=["trace_id", "span_id"]).fillna({"children": 0.0})
    status = slow["status_code"] if "status_code" in slow.columns else pd.Series(pd.NA, index=slow.index)
    return [{"trace_id": str(r.trace_id), "span_id": str(r.span_id), "service": str(r.service_name),
             "operation": str(r.span_name), "start": r.start_time.isoformat(),
             "duration_ms": round(float(r.duration), 3),
             "self_ms": round(max(float(r.duration) - float(r.children), 0.0), 3),
             "status_code": None if pd.isna(code) else int(code)}
            for r, code in zip(slow.itertuples(index=False), status, strict=True)]


def call_edges(graph: nx.DiGraph | None, services: list[str]) -> list[dict[str, Any]]:
    """The dependency graph's edges among ``services``, with their call counts, errors and latency."""
    if graph is None:
        return []
    sub = graph.subgraph([s for s in services if s in graph])
    return [{"caller": a, "callee": b, "calls": data.get("calls"), "errors": data.get("errors"),
             "latency_ms": data.get("latency_ms")} for a, b, data in sorted(sub.edges(data=True))]


def drawn_rows(bundle: MeltBundle, evidence: list[dict[str, Any]], services: list[str], start: pd.Timestamp,
               incident: tuple[pd.Timestamp, pd.Timestamp], step: pd.Timedelta,
               family: Callable[[list[str]], pd.DataFrame] | None = None) -> dict[str, Any]:
    """What the page draws from the data's rows: the evidence's metric curves and log lines from
    ``start`` (the lookback) to the incident's end, and the slowest spans within ``incident``."""
    return {"metrics": metric_series(bundle.metrics, evidence, start, incident[1], step),
            "logs": log_examples(bundle.logs, evidence, start, incident[1]),
            "spans": slowest_spans(bundle.traces, services, incident[0], incident[1], family)}


# the rows' part of a page made elsewhere (a Dask worker): (incident, evidence, services) -> drawn_rows
RowDrawer = Callable[[Incident, list[dict[str, Any]], list[str]], dict[str, Any]]


def incident_detail(incident: Incident, scores: pd.DataFrame, bundle: MeltBundle, signal_of: dict[str, str],
                    graph: nx.DiGraph | None, settings: Settings,
                    report: dict[str, Any] | None = None, rows: RowDrawer | None = None) -> dict[str, Any]:
    """Everything the incident page draws beyond ``report``, as JSON-serialisable records.

    Args:
        incident: the incident (its window and services).
        scores: calibrated score rows of every detector (at least ``rca.lookback`` before the onset).
        bundle: the data the incident was found in (the same period).
        signal_of: detector name -> signal.
        graph: the service dependency graph (``None``: no edges).
        settings: ``ensemble`` (window, fusion) and ``rca.lookback``.
        report: the incident's report; its evidence items and ranked causes pick the metrics, the
            templates and the services shown. Without it, the strongest rows of the incident's
            services stand in, as :func:`melt.reports.evidence.select_evidence` picks them.
        rows: makes the part drawn from the data's rows (:func:`drawn_rows`) instead of ``bundle``.

    Returns:
        ``window`` (lookback start, incident end), ``threshold``, ``step`` (seconds), ``timeline``,
        ``metrics``, ``logs``, ``spans`` and ``edges``.
    """
    start, end = incident.start - settings.rca.lookback, incident.end
    services = involved_services(incident, report)
    if report is not None:
        evidence = report["evidence"]
    else:
        near = scores[(scores["timestamp"] >= start) & (scores["timestamp"] < end)]
        evidence = select_evidence(near, services, signal_of, settings.report.max_evidence)
    step = settings.ensemble.window
    drawn = rows(incident, evidence, services) if rows is not None else \
        drawn_rows(bundle, evidence, services, start, (incident.start, incident.end), step)
    return {
        "incident_id": incident.id,
        "window": {"start": start.isoformat(), "end": end.isoformat()},
        "threshold": float(settings.ensemble.threshold),
        "step": float(step.total_seconds()),
        "timeline": timeline(scores, signal_of, services, start, end, settings),
        **drawn,
        "edges": call_edges(graph, services),
    }


def incident_details(incidents: list[Incident], reports: list[dict[str, Any]], scores: pd.DataFrame,
                     bundle: MeltBundle, signal_of: dict[str, str], graph: nx.DiGraph | None, settings: Settings,
                     quiet: bool = True, rows: RowDrawer | None = None) -> dict[str, dict[str, Any]]:
    """:func:`incident_detail` of each incident by id, paired with its report by ``incident_id``
    (``rows``: as there).

    The page still renders from the report alone, so an incident whose detail cannot be cut (odd
    data) costs one warning line, not the run: its page is drawn without the curves.
    """
    by_id = {r["incident_id"]: r for r in reports}
    details = {}
    for incident in incidents:
        try:
            details[incident.id] = incident_detail(incident, scores, bundle, signal_of, graph, settings,
                                                   by_id.get(incident.id), rows)
        except (KeyError, ValueError, TypeError, re.error) as exc:
            log(f"page of {incident.id}: drawn without detail ({type(exc).__name__}: {exc})", quiet,
                stage="melt warning")
    return details
