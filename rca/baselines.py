"""Baseline rankers that ``melt evaluate`` runs beside melt's, so that its gains are honest.

- ``random``: a seeded shuffle of the services that served requests in the window;
- ``max_anomaly``: the service with the highest single calibrated score wins ("loudest wins");
- ``pagerank``: plain personalized PageRank on caller -> callee edges, personalised by each
  service's strongest score (the MicroRCA family, Wu et al., NOMS 2020, without melt's evidence terms).
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pandas as pd

BASELINES = ("random", "max_anomaly", "pagerank")


def loudest(scores: pd.DataFrame, candidates: set[str] | None) -> pd.Series:
    """Each candidate service's highest calibrated score, best first."""
    per = scores.groupby("service", observed=True)["score"].max().clip(lower=0)
    if candidates:
        per = per[per.index.isin(candidates)]
    return per.sort_values(ascending=False, kind="stable")


def random_ranking(services: list[str], seed: int) -> list[str]:
    order = np.random.default_rng(seed).permutation(len(services))
    return [sorted(services)[i] for i in order]


def pagerank_ranking(graph: nx.DiGraph, anomaly: pd.Series, alpha: float = 0.85) -> list[str]:
    """Plain personalized PageRank over the whole graph, personalised by anomaly."""
    if anomaly.empty or anomaly.sum() <= 0:
        return anomaly.index.tolist()
    # sorted: a set's order follows the process's string hashing, and with it the last bits of the
    # power iteration, which flipped tied services between two runs on the same data
    nodes = sorted(set(graph.nodes) | set(anomaly.index))
    walk = nx.DiGraph()
    walk.add_nodes_from(nodes)
    walk.add_edges_from(sorted(graph.edges))
    personalization = {n: float(anomaly.get(n, 0.0)) + 1e-9 for n in nodes}
    ranks = pd.Series(nx.pagerank(walk, alpha=alpha, personalization=personalization)).round(12)
    ranks = ranks[ranks.index.isin(anomaly.index)]
    return sorted(ranks.index, key=lambda n: (-ranks[n], n))  # ties by name


def baseline_rankings(scores: pd.DataFrame, graph: nx.DiGraph, candidates: set[str] | None, seed: int,
                      top_k: int) -> dict[str, list[str]]:
    """Each baseline's top ``top_k`` services for one incident window."""
    anomaly = loudest(scores, candidates)
    pool = sorted(candidates) if candidates else anomaly.index.tolist()
    return {
        "random": random_ranking(pool, seed)[:top_k],
        "max_anomaly": anomaly.index.tolist()[:top_k],
        "pagerank": pagerank_ranking(graph, anomaly)[:top_k],
    }
