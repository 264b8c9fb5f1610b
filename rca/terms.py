"""Evidence terms of the root-cause ranking, one function each, every one a Series over services.

The evidence terms (``resource``, ``logs``, ``reported``, ``traces``, ``symptoms``) are each
service's strongest calibrated score of one kind in the incident window, in the shared sigma scale of
:mod:`melt.core.calibration`. ``reported`` is what callers' logs say about a service by name
(:mod:`rca.attribution`). Metric evidence is split the way the USE and RED methods split it
(Gregg, "Thinking Methodically about Performance", 2013): saturation of a service's own resources
(CPU, memory, threads, GC) points at the service itself, while rate, error and duration metrics are
symptoms that travel up the call graph to every caller. ``propagation``, ``precedence`` and
``change`` are in [0, 1].
"""

from __future__ import annotations

import re

import networkx as nx
import pandas as pd

from melt.core.schema import EDGE_ARROW

EVIDENCE_KINDS = ("resource", "logs", "reported", "traces", "calls", "symptoms")
ONSET_KINDS = ("resource", "logs", "reported", "traces", "symptoms")  # kinds whose rows name the service they are about


def evidence_kind(scores: pd.DataFrame, signal_of: dict[str, str], resource_metrics: re.Pattern[str],
                  host_metrics: re.Pattern[str] | None = None) -> pd.Series:
    """The kind of each score row: resource | symptoms (other metrics) | logs | reported | traces | calls | events.

    ``calls`` rows score a call edge (they carry a ``caller``; :mod:`detectors.edges`), whichever
    signal they were read from: :func:`call_edge_evidence` decides which end they speak about.

    ``reported`` rows are log rows that :func:`rca.attribution.attribute_to_peers` moved to the service
    they name. Metrics matching ``host_metrics`` describe the host a service runs on (node CPU, node
    memory), which every service on that host reports alike, so they are symptoms, not the service's own
    resource: a CPU hog raises its neighbours' node CPU as much as its own. The regexes run once per
    distinct entity name, not once per row. The patterns come compiled from the settings
    (``rca.resource_metrics``, ``rca.host_metrics``, case-insensitive).
    """
    signal = scores["detector"].map(signal_of).fillna("unknown")
    entity = scores["entity"].astype(str)
    names = pd.Series(entity.unique())
    metric = names.str.split(EDGE_ARROW, n=1, regex=False).str[0]  # a call metric's peer is not part of its name
    matches = metric.str.contains(resource_metrics, regex=True)
    if host_metrics is not None:
        matches &= ~metric.str.contains(host_metrics, regex=True)
    is_resource = pd.Series(matches.to_numpy(), index=names.to_numpy())
    resource = signal.eq("metrics") & entity.map(is_resource).astype(bool)
    kind = signal.where(~signal.eq("metrics"), "symptoms").where(~resource, "resource")
    if "reported_by" in scores.columns:
        kind = kind.where(scores["reported_by"].isna(), "reported")
    if "caller" in scores.columns:
        kind = kind.where(scores["caller"].isna(), "calls")
    return kind


def strongest(scores: pd.DataFrame, kinds: pd.Series, kind: str, rising_only: bool = False) -> pd.Series:
    """Each service's strongest calibrated score of ``kind``; ``rising_only`` keeps upward metric moves."""
    rows = scores[kinds == kind]
    if rising_only and len(rows):
        rising = rows["evidence"].map(lambda e: not isinstance(e, dict) or e.get("anomaly_type") != "drop")
        rows = rows[rising.to_numpy(dtype=bool)]
    if rows.empty:
        return pd.Series(dtype=float)
    return rows.groupby("service", observed=True)["score"].max().clip(lower=0)


def excess(values: pd.Series, floor: float, cap: float) -> pd.Series:
    """Evidence above the level that ordinary noise reaches (``floor`` sigma), saturating at ``cap``.

    Past ``cap`` sigma an anomaly is certain either way; without the cap, one series whose baseline
    was near constant (a z of thousands) would outweigh every other service and kind.
    """
    return (values - floor).clip(lower=0, upper=cap)


def call_edge_evidence(scores: pd.DataFrame, kinds: pd.Series, floor: float, cap: float) -> pd.Series:
    """Per service: how far the call edges it takes part in moved, attributed to the end they share.

    An edge's anomaly (its strongest ``calls`` score above ``floor``, capped) could belong to either
    end. The data decide: in the Nezha OnlineBoutique network delays only the calls *into* the
    delayed pod grow (frontend -> checkoutservice from 4 to 234 ms while checkoutservice's own
    calls stay at 4-8 ms), and under a CPU hog on a caller *all* of its outgoing calls grow
    (frontend -> every callee from 2-6 to about 90 ms). So:
    - the caller's effect is its second most anomalous outgoing edge: two calls to different
      services that grew together are explained more simply by the one service they share (with
      one anomalous edge, nothing tells caller from callee, and the callee takes it);
    - what the caller's effect does not explain moves to the callee, whose effect is the median of
      that residue over its incoming edges: one caller of many is that caller's noise or trouble;
    - a service's evidence is the larger of its two effects.
    On OnlineBoutique the second edge rather than the median of a caller's edges ranks a CPU hog on
    the frontend first where it slows only some of its calls (docs/rca.md); TrainTicket is unchanged.
    """
    rows = scores[(kinds == "calls").to_numpy()]
    if rows.empty:
        return pd.Series(dtype=float)
    edges = excess(rows.groupby(["caller", "service"], observed=True)["score"].max(), floor, cap).rename("anomaly")
    edges = edges.reset_index()
    second = edges.sort_values("anomaly", ascending=False, kind="stable").groupby("caller", observed=True).nth(1)
    caller_effect = second.set_index("caller")["anomaly"].reindex(edges["caller"].unique()).fillna(0.0)
    residue = (edges["anomaly"] - caller_effect.reindex(edges["caller"]).fillna(0.0).to_numpy()).clip(lower=0.0)
    callee_effect = residue.groupby(edges["service"].to_numpy()).median()
    both = pd.concat([caller_effect, callee_effect], axis=1).max(axis=1)
    both.index = both.index.astype(str)
    return both


def complaint_strength(scores: pd.DataFrame, kinds: pd.Series, floor: float, cap: float) -> pd.Series:
    """Per service, in [0, 1]: how loudly its own logs blame another service by name.

    A service that logs "Timed out waiting for X" waits on X: the anomalies it shows itself (busy
    threads, slow responses, its callers' complaints about it) are what X's fault looks like from
    upstream. Following the complaints down ends at the service that blames no one.
    """
    if "reported_by" not in scores.columns:
        return pd.Series(dtype=float)
    rows = scores[(kinds == "reported").to_numpy() & scores["reported_by"].notna().to_numpy()]
    if rows.empty:
        return pd.Series(dtype=float)
    loudest = rows.groupby("reported_by", observed=True)["score"].max()
    return excess(loudest, floor, cap) / cap


def propagation_term(graph: nx.DiGraph, own: pd.Series, alpha: float) -> pd.Series:
    """Personalized PageRank on caller -> callee edges, weighted by the callee's own evidence.

    MicroRCA (Wu et al., NOMS 2020): a walker that starts at an anomalous service moves on to
    anomalous dependencies, so mass gathers in the callee whose fault explains its callers'
    symptoms, never the reverse. Anomalous services keep a self-loop weighted by their own evidence
    (the walker may stop where the fault is). Scaled by the service's own evidence, as MicroRCA does,
    so a quiet service that everyone calls does not win on structure alone; max 1.
    """
    active = own[own > 0]
    if active.empty:
        return pd.Series(dtype=float)
    nodes = set(active.index) & set(graph.nodes)
    sub = nx.DiGraph()
    sub.add_nodes_from(active.index)
    for caller, callee in graph.subgraph(nodes).edges:
        if caller != callee:
            sub.add_edge(caller, callee, weight=float(active[callee]))
    for service, value in active.items():
        sub.add_edge(service, service, weight=float(value) * 0.5)
    personalization = (active / active.sum()).to_dict()
    ranks = pd.Series(nx.pagerank(sub, alpha=alpha, personalization=personalization, weight="weight"))
    ranks = ranks * (active.reindex(ranks.index) / active.max())
    return ranks / ranks.max() if ranks.max() > 0 else ranks


def precedence_term(scores: pd.DataFrame, own_kinds: pd.Series, threshold: float) -> pd.Series:
    """1 for the service whose evidence crossed ``threshold`` first, falling with its onset order."""
    hot = scores[own_kinds.isin(ONSET_KINDS).to_numpy() & (scores["score"] >= threshold).to_numpy()]
    if hot.empty:
        return pd.Series(dtype=float)
    onset = hot.groupby("service", observed=True)["timestamp"].min()
    order = onset.rank(method="min") - 1
    return 1.0 - order / (float(order.max()) + 1.0)


def change_term(scores: pd.DataFrame, kinds: pd.Series, start: pd.Timestamp, lookback: pd.Timedelta) -> pd.Series:
    """Strongest change event (deploy, config change, restart) per service within ``lookback`` before onset.

    Uses the event detector's raw prior in [0, 1], which already weighs the kind of change.
    """
    events = scores[(kinds == "events").to_numpy() & (scores["timestamp"] >= start - lookback).to_numpy()
                    & (scores["timestamp"] <= start).to_numpy()]
    if events.empty:
        return pd.Series(dtype=float)
    column = "raw_score" if "raw_score" in events.columns else "score"
    return events.groupby("service", observed=True)[column].max().clip(0, 1)


def involved(spans: pd.DataFrame | None, logs: pd.DataFrame | None, start: pd.Timestamp,
             end: pd.Timestamp) -> set[str]:
    """Services that served requests in ``[start, end)``: they have spans or logs there."""
    names: set[str] = set()
    for frame, time, service in ((spans, "start_time", "service_name"), (logs, "timestamp", "service")):
        if frame is not None and len(frame) and time in frame.columns:
            inside = (frame[time] >= start) & (frame[time] < end)
            names.update(frame.loc[inside, service].dropna().unique().tolist())
    return names


def normalised(values: pd.Series) -> pd.Series:
    top = float(values.max()) if len(values) else 0.0
    return values / top if top > 0 else values * 0.0

