"""Rank the root-cause services of an incident: weighted evidence terms on the dependency graph.

score = w_anomaly * anomaly + w_propagation * propagation + w_precedence * precedence + w_change * change

``anomaly`` is a service's own evidence, the weighted sum over kinds (resource saturation, log
patterns, callers' logs that name it, span self time, symptom metrics) of how far its strongest
calibrated score of that kind rises above the kind's noise floor, scaled to max 1 in the incident.
It shrinks by the share ``complaint_discount`` x how loudly the service's own logs blame another
service by name: a service that waits on another shows that one's fault. The other terms are in
:mod:`rca.terms`. Only services that served requests in the incident window are candidates when the
bundle has traces or logs: a root cause of a user-facing incident sits on the request path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from melt.core.settings import RcaSettings
from rca import terms
from rca.attribution import attribute_to_peers

TERMS = ("anomaly", "propagation", "precedence", "change")


@dataclass
class Candidate:
    """A ranked root-cause candidate."""

    service: str
    score: float
    terms: dict[str, float]
    path: list[str]
    evidence_ids: list[str] = field(default_factory=list)


def own_evidence(scores: pd.DataFrame, kinds: pd.Series, settings: RcaSettings) -> pd.DataFrame:
    """Per service and evidence kind: the strongest calibrated score above that kind's noise floor."""
    floors, weights, cap = settings.noise_floor, settings.evidence_weights, settings.evidence_cap
    columns = {}
    for kind in terms.EVIDENCE_KINDS:
        if kind == "calls":  # an edge's two ends: attributed to the end the anomalous edges share
            strength = terms.call_edge_evidence(scores, kinds, floors[kind], cap)
        else:
            strength = terms.excess(terms.strongest(scores, kinds, kind, rising_only=(kind == "resource")),
                                    floors[kind], cap)
        columns[kind] = strength * weights[kind]
    return pd.DataFrame(columns).fillna(0.0)


def term_table(scores: pd.DataFrame, graph: nx.DiGraph, signal_of: dict[str, str], settings: RcaSettings,
               start: pd.Timestamp, threshold: float, candidates: set[str] | None = None) -> pd.DataFrame:
    """Every term for every candidate service, plus the per-kind evidence behind ``anomaly``."""
    scores = attribute_to_peers(scores, signal_of)
    kinds = terms.evidence_kind(scores, signal_of, settings.resource_metrics, settings.host_metrics)
    in_window = (scores["timestamp"] >= start.floor(settings.bucket)).to_numpy()
    current, current_kinds = scores[in_window], kinds[in_window]
    evidence = own_evidence(current, current_kinds, settings)
    if candidates:
        evidence = evidence[evidence.index.isin(candidates)]
    blames = terms.complaint_strength(current, current_kinds, settings.noise_floor["reported"], settings.evidence_cap)
    own = evidence.sum(axis=1) * (1.0 - settings.complaint_discount * blames.reindex(evidence.index).fillna(0.0))
    table = pd.DataFrame({
        "anomaly": terms.normalised(own),
        "propagation": terms.propagation_term(graph, own, settings.pagerank_alpha),
        "precedence": terms.precedence_term(scores, kinds, threshold),
        "change": terms.change_term(scores, kinds, start, settings.lookback),
    }).reindex(own.index).fillna(0.0)
    return pd.concat([table, evidence.add_prefix("evidence.")], axis=1)


def propagation_path(graph: nx.DiGraph, symptoms: list[str], cause: str) -> list[str]:
    """Call path from the farthest anomalous caller down to the cause (just the cause if none)."""
    best = [cause]
    if cause not in graph:
        return best
    reaching = nx.ancestors(graph, cause)
    for symptom in symptoms:
        if symptom in reaching:
            path = nx.shortest_path(graph, symptom, cause)
            if len(path) > len(best):
                best = path
    return best


def evidence_window(incident: Any, settings: RcaSettings) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The rows that speak to an incident's cause: from ``lookback`` before its onset (change events
    and early signs sit there) to its end."""
    return incident.start - settings.lookback, incident.end


def rank_root_causes(incident: Any, all_scores: pd.DataFrame, graph: nx.DiGraph, signal_of: dict[str, str],
                     settings: RcaSettings, threshold: float, candidates: set[str] | None = None) -> list[Candidate]:
    """Ranked candidates for ``incident``.

    Args:
        incident: anything with ``start``, ``end`` and ``services`` (a :class:`melt.ensemble.Incident`).
        all_scores: calibrated score rows of every detector (events included).
        graph: the service dependency graph.
        signal_of: detector name -> signal.
        settings: the ``rca`` settings.
        threshold: the ensemble's alert threshold, for onset times.
        candidates: services allowed to rank (those on the request path); ``None`` = every service
            with a score row in the evidence window. The list is filled up to ``top_k`` from them
            (:func:`ranked_services`).
    """
    start, end = evidence_window(incident, settings)
    window = all_scores[(all_scores["timestamp"] >= start) & (all_scores["timestamp"] < end)]
    table = term_table(window, graph, signal_of, settings, incident.start, threshold, candidates)
    total = table[list(TERMS)].mul(pd.Series({name: settings.weights[name] for name in TERMS})).sum(axis=1)
    symptoms = [s for s in incident.services if s in table.index]  # every service with evidence, ranked or not
    ranked = ranked_services(total, window, candidates, settings.top_k)
    table = table.reindex(ranked.index).fillna(0.0)
    return [
        Candidate(service=str(s), score=round(float(v), 4),
                  terms={k: round(float(table.at[s, k]), 4) for k in table.columns},
                  path=propagation_path(graph, symptoms, str(s)))
        for s, v in ranked.items()
    ]


def ranked_services(total: pd.Series, window: pd.DataFrame, candidates: set[str] | None, top_k: int) -> pd.Series:
    """The ``top_k`` services by total score, filled up with the other candidates.

    Every service involved in the incident can be the cause, so the list runs to ``top_k`` wherever
    that many took part, also when only one or two had evidence above its noise floor: a
    responder reads on down the list, and AC@3 or AC@5 are meaningless for a list of one. Ties
    (a zero total most often) go to the service with the loudest single score in the window, then
    by name, so the order is stable.
    """
    pool = set(total.index) | (set(candidates) if candidates else set(window["service"].dropna().astype(str)))
    loudest = window.groupby("service", observed=True)["score"].max() if len(window) else pd.Series(dtype=float)
    order = pd.DataFrame({"total": total.reindex(sorted(pool)).fillna(0.0)})
    order["loudest"] = loudest.reindex(order.index).fillna(-np.inf).to_numpy()
    order = order.rename_axis("service").reset_index()
    order = order.sort_values(["total", "loudest", "service"], ascending=[False, False, True], kind="stable")
    return order.set_index("service")["total"].head(top_k)


def score_spread(candidates: list[Candidate]) -> float:
    """Margin of the top candidate over the second, in [0, 1]: a confidence signal for the report."""
    if len(candidates) < 2:
        return 1.0 if candidates else 0.0
    top, second = candidates[0].score, candidates[1].score
    return float(np.clip((top - second) / max(top, 1e-9), 0, 1))
