"""What LogTraceGuard's one-class scorer knows of normal: per operation, the training nodes' centre
in the embedding and the spread of their distances to it (Deep SVDD's centre distance, Ruff et
al., ICML 2018, kept per operation as ``teg``'s node scores are), the median and spread of each
input feature, and the same centre and spread for whole graphs. Computed once, in numpy and
pandas, from the training traces' embeddings and inputs; the scorer holds them as buffers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.robust import MAD_TO_SIGMA

MIN_NODES = 5  # an operation with fewer training nodes uses the fleet's statistics
TAIL_Z = 2.576  # the 99th percentile of |N(0, 1)|
FEATURE_FLOOR = 0.1  # least spread of an input feature per operation (unit-scale features)


@dataclass
class OneClassStatistics:
    """The scorer's buffers (see :class:`detectors.traces.ltg_model.LogTraceGuardScorer`)."""

    node_centre: np.ndarray  # codes x hidden
    node_median: np.ndarray  # codes
    node_scale: np.ndarray  # codes
    feature_median: np.ndarray  # codes x features
    feature_scale: np.ndarray  # codes x features; all zero = input deviations not scored
    graph_centre: np.ndarray  # 2 x hidden
    graph_median: float
    graph_scale: float


def per_code_spread(features: np.ndarray, code: np.ndarray, n_codes: int,
                    rare: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per operation code and feature: the training nodes' median, and a spread that covers their
    rare moves too: the larger of 1.4826 MAD and the 99th percentile deviation over 2.576 (where a
    normal's 99th percentile lies), as :func:`detectors.robust.robust_baseline` does with its
    ``tail_quantile``. An error flag or a child count that moves in 2% of an operation's training
    calls then does not score as if it never moved.

    Rare codes take the fleet's. The spread is floored at ``FEATURE_FLOOR`` (features are on unit
    scales: z-scores over 3, log counts, flags, a normalised bag), so an input that never moved
    for an operation scores its first move in tenths, not by division by zero.
    """
    frame = pd.DataFrame(features)
    median = frame.groupby(code).median().reindex(np.arange(n_codes)).to_numpy()
    deviation = (frame - median[code]).abs().groupby(code)
    spread = np.maximum(MAD_TO_SIGMA * deviation.median().reindex(np.arange(n_codes)).to_numpy(),
                        deviation.quantile(0.99).reindex(np.arange(n_codes)).to_numpy() / TAIL_Z)
    everyone = np.median(features, axis=0)
    everyone_deviation = np.abs(features - everyone)
    everyone_spread = np.maximum(MAD_TO_SIGMA * np.median(everyone_deviation, axis=0),
                                 np.quantile(everyone_deviation, 0.99, axis=0) / TAIL_Z)
    median = np.where(rare[:, None] | np.isnan(median), everyone, median)
    spread = np.where(rare[:, None] | np.isnan(spread), everyone_spread, spread)
    return median, np.maximum(spread, FEATURE_FLOOR)


def one_class_statistics(nodes: np.ndarray, pooled: np.ndarray, x: np.ndarray, n_codes: int,
                         score_features: bool) -> OneClassStatistics:
    """The statistics of training nodes ``nodes`` (embeddings, in the order of their inputs ``x``,
    whose last column is the operation code) and graphs ``pooled``."""
    code = x[:, -1].astype(np.int64)
    counts = np.bincount(code, minlength=n_codes)
    centre = np.zeros((n_codes, nodes.shape[1]))
    np.add.at(centre, code, nodes)
    rare = counts < MIN_NODES
    centre = np.where(rare[:, None], nodes.mean(axis=0), centre / np.maximum(counts, 1)[:, None])
    distance = np.linalg.norm(nodes - centre[code], axis=1)
    frame = pd.DataFrame({"code": code, "d": distance})
    median = frame.groupby("code")["d"].median().reindex(np.arange(n_codes)).to_numpy()
    spread = (frame["d"] - median[code]).abs().groupby(frame["code"]).median().reindex(np.arange(n_codes)).to_numpy()
    all_median = float(np.median(distance))
    all_spread = float(np.median(np.abs(distance - all_median)))
    median = np.where(rare, all_median, median)
    scale = np.maximum(np.where(rare, all_spread, spread) * MAD_TO_SIGMA, max(0.05 * all_median, 1e-3))
    feature_median, feature_scale = np.zeros((n_codes, x.shape[1] - 1)), np.zeros((n_codes, x.shape[1] - 1))
    if score_features:
        feature_median, feature_scale = per_code_spread(x[:, :-1], code, n_codes, rare)
    graph_centre = pooled.mean(axis=0)
    graph_distance = np.linalg.norm(pooled - graph_centre, axis=1)
    graph_median = float(np.median(graph_distance))
    graph_scale = max(MAD_TO_SIGMA * float(np.median(np.abs(graph_distance - graph_median))), 0.05 * graph_median, 1e-3)
    return OneClassStatistics(centre, median, scale, feature_median, feature_scale, graph_centre, graph_median, graph_scale)
