"""Rank root-cause services of an incident from evidence terms on the dependency graph.

Score = sum of weighted terms, each in [0, 1], one function per term:

- ``anomaly``: the service's own strongest calibrated evidence in the incident window;
- ``pagerank``: personalized PageRank on caller -> callee edges weighted by the callee's anomaly,
  personalised by anomaly and weighted by it (MicroRCA, Wu et al., NOMS 2020): symptoms in callers
  send mass down to the anomalous dependency that explains them, not the reverse;
- ``precedence``: services that went anomalous first rank higher;
- ``change``: change events (deploy, config, restart) shortly before onset.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import networkx as nx
import numpy as np
import pandas as pd

from melt.ensemble import ALERT_SIGNALS, Incident
from melt.timeutil import parse_duration


@dataclass
class Candidate:
    """A ranked root-cause candidate."""

    service: str
    score: float
    terms: dict[str, float]
    path: list[str]
    evidence_ids: list[str] = field(default_factory=list)


def anomaly_term(evidence: pd.DataFrame, signal_of: dict[str, str]) -> pd.Series:
    """A vote of the detectors: per detector, each service's max score over the detector's max in the
    incident; averaged over detectors. No detector's scale (an unbounded log burst, say) dominates."""
    alert = evidence[evidence["detector"].map(signal_of).isin(ALERT_SIGNALS)]
    if alert.empty:
        return pd.Series(dtype=float)
    per = alert.groupby(["detector", "service"], observed=True)["score"].max().clip(lower=0).unstack("service")
    scaled = per.div(per.max(axis=1).replace(0, np.nan), axis=0).fillna(0.0)
    vote = scaled.mean(axis=0)
    return vote / vote.max() if vote.max() > 0 else vote


def pagerank_term(graph: nx.DiGraph, anomaly: pd.Series, alpha: float) -> pd.Series:
    """MicroRCA-style personalized PageRank on the anomalous part of the graph."""
    nodes = [n for n in graph.nodes if n in anomaly.index]
    if not nodes:
        return pd.Series(dtype=float)
    sub = graph.subgraph(set(nodes) | {v for n in nodes for v in graph.successors(n)}).copy()
    for a, b in sub.edges:
        sub[a][b]["weight"] = 0.05 + float(anomaly.get(b, 0.0))
    personalization = {n: float(anomaly.get(n, 0.0)) + 1e-6 for n in sub.nodes}
    ranks = pd.Series(nx.pagerank(sub, alpha=alpha, personalization=personalization, weight="weight"))
    # as in MicroRCA, the walk score is weighted by the node's own anomaly, so a quiet datastore that
    # every caller touches does not win on structure alone
    ranks = ranks * anomaly.reindex(ranks.index).fillna(0.0)
    return ranks / ranks.max() if ranks.max() > 0 else ranks


def precedence_term(evidence: pd.DataFrame, signal_of: dict[str, str], threshold: float) -> pd.Series:
    """1 for the first service over the threshold, falling linearly with its onset order."""
    alert = evidence[evidence["detector"].map(signal_of).isin(ALERT_SIGNALS) & (evidence["score"] >= threshold)]
    if alert.empty:
        return pd.Series(dtype=float)
    onset = alert.groupby("service", observed=True)["timestamp"].min()
    order = onset.rank(method="min") - 1
    return 1.0 - order / max(float(order.max()) + 1.0, 1.0)


def change_term(all_scores: pd.DataFrame, signal_of: dict[str, str], start: pd.Timestamp,
                lookback: pd.Timedelta) -> pd.Series:
    """Strongest change event per service within ``lookback`` before the onset (raw prior in [0, 1])."""
    events = all_scores[(all_scores["detector"].map(signal_of) == "events")
                        & (all_scores["timestamp"] >= start - lookback) & (all_scores["timestamp"] <= start)]
    if events.empty:
        return pd.Series(dtype=float)
    return events.groupby("service", observed=True)["raw_score"].max().clip(0, 1)


def propagation_path(graph: nx.DiGraph, symptoms: list[str], cause: str) -> list[str]:
    """Call path from the farthest anomalous caller down to the cause (just the cause if none)."""
    best = [cause]
    for symptom in symptoms:
        if symptom in graph and cause in graph and symptom != cause and nx.has_path(graph, symptom, cause):
            path = nx.shortest_path(graph, symptom, cause)
            if len(path) > len(best):
                best = path
    return best


def rank_root_causes(incident: Incident, all_scores: pd.DataFrame, graph: nx.DiGraph, signal_of: dict[str, str],
                     config: dict[str, Any], threshold: float) -> list[Candidate]:
    """Ranked candidates for ``incident`` (config: the ``rca`` section)."""
    lookback = parse_duration(config["lookback"])
    evidence = all_scores[(all_scores["timestamp"] >= incident.start - lookback) & (all_scores["timestamp"] < incident.end)]
    anomaly = anomaly_term(evidence, signal_of)
    terms = pd.DataFrame({
        "anomaly": anomaly,
        "pagerank": pagerank_term(graph, anomaly, float(config["pagerank_alpha"])),
        "precedence": precedence_term(evidence, signal_of, threshold),
        "change": change_term(all_scores, signal_of, incident.start, lookback),
    }).fillna(0.0)
    terms = terms[terms.index.isin(incident.services) | (terms["anomaly"] > 0)]
    weights = config["weights"]
    total = sum(terms[name] * float(weights.get(name, 0.0)) for name in terms.columns)
    ranked = total.sort_values(ascending=False, kind="stable").head(int(config["top_k"]))
    return [
        Candidate(service=str(s), score=round(float(v), 4),
                  terms={k: round(float(terms.at[s, k]), 4) for k in terms.columns},
                  path=propagation_path(graph, incident.services, str(s)))
        for s, v in ranked.items()
    ]


def score_spread(candidates: list[Candidate]) -> float:
    """Margin of the top candidate over the second, in [0, 1]: a confidence signal for the report."""
    if len(candidates) < 2:
        return 1.0 if candidates else 0.0
    top, second = candidates[0].score, candidates[1].score
    return float(np.clip((top - second) / max(top, 1e-9), 0, 1))
