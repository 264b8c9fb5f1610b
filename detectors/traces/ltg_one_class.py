"""What LogTraceGuard's one-class scorer knows of normal: per operation, the training nodes' centre
in the embedding and the spread of their distances to it (Deep SVDD's centre distance, Ruff et
al., ICML 2018, kept per operation as ``teg``'s node scores are), how each input moves, and the
same centre and spread for whole graphs. Computed once, in numpy and pandas, from the training
traces' embeddings and inputs; the scorer holds them as buffers.

Every input is scored in nats of rarity (``-log p``) among its operation's training calls, with
tails that stay honest on heavy-tailed data (:func:`input_rarity`), so that the input groups can be
compared: an error that 0.5% of an operation's calls raise is about as rare as a call four sigmas
slow, and a span count 40 above its median is not scored as if it were drawn from a normal law.
How often an input moves is shrunk towards the fleet's rate (:func:`shrunk_shares`), and a node
that failed, or whose callee failed, reads its log inputs against the training nodes in the same
state (:data:`STATUS_GROUP`): an error's own lines are not a second surprise.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from detectors.robust import MAD_TO_SIGMA
from detectors.traces.ltg_graphs import NUMERIC
from detectors.traces.teg_graphs import HASH_DIM

MIN_NODES = 5  # an operation with fewer training nodes uses the fleet's statistics
MIN_TAIL_NODES = 50  # an operation with fewer training nodes uses the fleet's timing tail
TAIL_QUANTILE = 0.9  # the timing tail is fitted above this quantile of an operation's training calls
TAIL_SCALE_FLOOR = 0.05 / 3  # least mean excess of a timing tail: a twentieth of a sigma (inputs are z / 3)
MOVED = 1e-6  # a deviation above this is a move
MOVE_FLOOR = 1e-4  # least mean move of an input (inputs are on unit scales)
SIZE_SHAPE = 2.0  # Lomax shape of a move's size (shape 2: the smallest whose mean is finite)
TIMING = ("duration_z", "self_z", "in_gap_z")  # robust z / 3 of log times; only slower counts, on a fitted tail
UNLOGGED = "unlogged_error"  # doubles the node's error rarity; no rarity of its own
# Input groups: each scores the rarest of its inputs, less the log of its size (Bonferroni).
GROUPS = {
    "timing": list(TIMING),
    "structure": ["children_delta", "missing_calls", "span_count_delta", "log_depth", "in_unseen_call"],
    "logs": ["log_lines", "error_lines", "warn_lines", "unseen_lines", *(f"template_{i}" for i in range(HASH_DIM))],
    "errors": ["error", "in_client_error"],
}
ERROR_GROUP = list(GROUPS).index("errors")
# The group whose inputs a node reads against the training nodes of its failure state (failed; a
# callee failed) instead of its operation's: an exception line is rare among an operation's calls
# but usual among failing ones, so a failure's own lines do not count twice.
STATUS_GROUP = "logs"
OK, FAILED, CALLEE_FAILED = 0, 1, 2  # a node's failure state; the last two add rows to the input tables
INPUTS = NUMERIC + [f"template_{i}" for i in range(HASH_DIM)]
COMPONENTS = ["embedding", *GROUPS, "graph"]  # the scorer's one-class components, in order
# A trace's one-class score is the largest weighted component. Logs count one and a half times their
# rarity: on Nezha TrainTicket they carry most of the signal, and on the synthetic fault sets their
# normal rarity stays low. The embedding's and the graph's distances add more false alarms than
# faults on both (docs/benchmarks.md, "LogTraceGuard"), so they weigh nothing here; they still feed
# the PU head.
COMPONENT_WEIGHTS = {"embedding": 0.0, "timing": 1.0, "structure": 1.0, "logs": 1.5, "errors": 1.0, "graph": 0.0}


@dataclass
class OneClassStatistics:
    """The scorer's buffers (see :class:`detectors.traces.ltg_model.LogTraceGuardScorer`)."""

    node_centre: np.ndarray  # codes x hidden
    node_median: np.ndarray  # codes
    node_scale: np.ndarray  # codes
    feature_median: np.ndarray  # (codes + 2) x features (timing: where its tail's rarity would be 0 nats)
    feature_scale: np.ndarray  # (codes + 2) x features: the mean move (timing: the tail's mean excess)
    feature_move_nats: np.ndarray  # (codes + 2) x features: -log of the share of calls in which the input moved
    feature_timing: np.ndarray  # features: 1 = a timing input
    feature_by_status: np.ndarray  # features: 1 = read against the last two rows when the node failed or a callee did
    status_known: np.ndarray  # 2: 1 = at least MIN_NODES training nodes were FAILED (CALLEE_FAILED), so that row is read
    feature_log_count: np.ndarray  # features: log of the input's group size (Bonferroni)
    feature_groups: np.ndarray  # features x groups: 1 = the input is in the group (GROUPS' order)
    feature_doubles: np.ndarray  # features: 1 = doubles the node's error rarity (UNLOGGED)
    graph_centre: np.ndarray  # 2 x hidden
    graph_median: float
    graph_scale: float
    component_weight: np.ndarray  # per component of COMPONENTS


def input_groups() -> dict[str, np.ndarray]:
    """Per input of :data:`INPUTS`: ``timing`` (1 = a :data:`TIMING` input), ``by_status`` (1 = in
    :data:`STATUS_GROUP`), ``log_count`` (log of its group's size), ``groups`` (a row of 1 in its
    group's column, in the order of :data:`GROUPS`) and ``doubles`` (the :data:`UNLOGGED` flag)."""
    table = {"timing": np.array([name in TIMING for name in INPUTS], dtype=float),
             "by_status": np.array([name in GROUPS[STATUS_GROUP] for name in INPUTS], dtype=float),
             "log_count": np.zeros(len(INPUTS)), "groups": np.zeros((len(INPUTS), len(GROUPS))),
             "doubles": np.array([name == UNLOGGED for name in INPUTS], dtype=float)}
    for group, columns in enumerate(GROUPS.values()):
        index = [INPUTS.index(name) for name in columns]
        table["log_count"][index], table["groups"][index, group] = np.log(len(columns)), 1.0
    return table


def input_rarity(features: np.ndarray, code: np.ndarray, n_codes: int, rare: np.ndarray,
                 status: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per operation code and input: median, scale and move nats, so that a deviation ``d`` from the
    median scores ``move_nats + SIZE_SHAPE x log(1 + |d| / scale)`` nats (0 when it did not move).

    An input moves (leaves its operation's median) in a share ``r`` of the training calls, shrunk
    towards the fleet's share (:func:`shrunk_shares`); ``move_nats = -log r``. The size of a move
    has a Lomax (Pareto II) tail of shape 2 whose mean is the operation's mean move (``scale``): a
    move ten times the usual size adds 4.8 nats, not the 50 of a normal tail, because counts, span
    counts and template mixes of real systems (Nezha TrainTicket) make large moves far more often
    than a normal law allows. An input that never moved for an operation takes the fleet's mean move.

    The timing inputs get :func:`timing_tails` instead (median = the tail's zero, scale = its
    mean excess, move nats unused). Rare codes take the fleet's statistics. Two rows follow the
    codes: the same statistics over the training nodes whose failure ``status`` is
    :data:`FAILED`, then :data:`CALLEE_FAILED` (the fleet's where none was).
    """
    def per_group(frame: pd.DataFrame, group: np.ndarray, size: int) -> tuple[np.ndarray, ...]:
        index = np.arange(size)
        median = frame.groupby(group).median().reindex(index).to_numpy()
        deviation = (frame - median[group]).abs()
        moved = deviation > MOVED
        calls = np.bincount(group, minlength=size).astype(float)
        moves = moved.groupby(group).sum().reindex(index).fillna(0.0).to_numpy(dtype=float)
        move = deviation.where(moved).groupby(group).mean().reindex(index).to_numpy()
        return median, moves, calls, move

    frame = pd.DataFrame(features)
    median, moves, calls, move = per_group(frame, code, n_codes)
    fleet_median, fleet_moves, fleet_calls, fleet_move = (a[0] for a in per_group(frame, np.zeros(len(frame), dtype=np.int64), 1))
    fleet_share = smoothed_share(fleet_moves, fleet_calls)
    share = shrunk_shares(moves, calls, ~rare)
    status = np.zeros(len(frame), dtype=np.int64) if status is None else status
    by_status = per_group(frame, status, CALLEE_FAILED + 1)
    share = np.vstack([np.where(rare[:, None], fleet_share, share),
                       smoothed_share(by_status[1][FAILED:], by_status[2][FAILED:, None])])
    fleet_rows = np.r_[rare, False, False][:, None]  # and, through NaN, a failure state no training node was in
    median = np.vstack([median, by_status[0][FAILED:]])
    median = np.where(fleet_rows | np.isnan(median), fleet_median, median)
    move = np.vstack([move, by_status[3][FAILED:]])
    move = np.where(fleet_rows | np.isnan(move), fleet_move, move)
    move = np.maximum(np.where(np.isnan(move), 1.0, move), MOVE_FLOOR)  # no call moved it anywhere: unit scale
    move_nats = -np.log(share)
    timing = [INPUTS.index(name) for name in TIMING]
    tail_zero, tail_scale = timing_tails(features[:, timing], code, n_codes)
    median[:, timing] = np.vstack([tail_zero, np.repeat(tail_zero[:1], 2, axis=0)])  # failure states: never read
    move[:, timing] = np.vstack([tail_scale, np.repeat(tail_scale[:1], 2, axis=0)])
    move_nats[:, timing] = 0.0
    return median, move, move_nats


def smoothed_share(moves: np.ndarray, calls: np.ndarray) -> np.ndarray:
    """The share of ``calls`` in which an input moved, with half a move added (Jeffreys-like), so
    that a state seen without moves keeps a finite rarity."""
    return (moves + 0.5) / (calls + 1.0)


def shrunk_shares(moves: np.ndarray, calls: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """Per operation and input, the share of calls in which the input moved, as the posterior mean
    under a beta prior fitted to all operations by the method of moments (empirical Bayes for
    binomial rates; Kleinman, JASA 1973): ``(moves + a p) / (calls + a)``, where ``p`` is the
    fleet's share and ``a`` its prior strength, large where the operations' shares differ no
    more than binomial noise explains.

    With a few hundred errors spread over fifty operations, an operation that happened not to fail
    in training would otherwise score its first error at ``-log(0.5 / calls)``, several nats above
    one that failed three times, though both fail at the fleet's rate. ``counted``: the operations
    the prior is fitted on (those with enough calls)."""
    p = smoothed_share(moves.sum(axis=0), calls.sum())
    n = calls[counted][:, None]
    weight = n / max(float(n.sum()), 1.0)
    spread = (weight * (moves[counted] / np.maximum(n, 1.0) - p) ** 2).sum(axis=0)
    binomial = (weight * p * (1 - p) / np.maximum(n, 1.0)).sum(axis=0)
    between = spread - binomial
    with np.errstate(divide="ignore"):
        strength = np.where(between > 0, p * (1 - p) / np.where(between > 0, between, 1.0) - 1.0, np.inf)
    strength = np.maximum(strength, 0.0)
    pooled = np.isinf(strength)
    finite = np.where(pooled, 0.0, strength)
    share = (moves + finite * p) / np.maximum(calls[:, None] + finite, 1e-12)
    return np.where(pooled | (calls[:, None] == 0), p, share)


def timing_tails(values: np.ndarray, code: np.ndarray, n_codes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per operation code and timing input: an exponential tail of the log time above its
    ``TAIL_QUANTILE`` (a generalised Pareto tail of shape 0 in log time, i.e. a Pareto tail in
    time, which a heavy-tailed service time such as a Lomax has; Pickands 1975). Returned as the
    value where the tail's rarity would be zero nats (``origin``) and its mean excess (``scale``),
    so that a value ``v`` above the quantile scores ``(v - origin) / scale`` nats: the quantile
    itself scores ``-log(1 - TAIL_QUANTILE)``.

    A normal tail would score a slow call at ``z**2 / 2`` nats: six sigmas of a heavy-tailed time,
    which 1% of normal calls reach, at 18 nats, above a never-seen missing call. Operations with
    fewer than ``MIN_TAIL_NODES`` training calls take the fleet's tail.
    """
    frame = pd.DataFrame(values)

    def per_group(group: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
        index = np.arange(size)
        start = frame.groupby(group).quantile(TAIL_QUANTILE).reindex(index).to_numpy()
        excess = (frame - start[group]).where(frame > start[group])
        return start, excess.groupby(group).mean().reindex(index).to_numpy()

    start, scale = per_group(code, n_codes)
    fleet_start, fleet_scale = (a[0] for a in per_group(np.zeros(len(frame), dtype=np.int64), 1))
    few = (np.bincount(code, minlength=n_codes) < MIN_TAIL_NODES)[:, None]
    start = np.where(few | np.isnan(start), fleet_start, start)
    scale = np.where(few | np.isnan(scale), fleet_scale, scale)
    scale = np.maximum(np.nan_to_num(scale, nan=0.0), TAIL_SCALE_FLOOR)  # nan: no call above the quantile anywhere
    return start + np.log(1 - TAIL_QUANTILE) * scale, scale


def one_class_statistics(nodes: np.ndarray, pooled: np.ndarray, x: np.ndarray, n_codes: int,
                         score_features: bool, status: np.ndarray | None = None) -> OneClassStatistics:
    """The statistics of training nodes ``nodes`` (embeddings, in the order of their inputs ``x``,
    whose last column is the operation code, and their failure ``status``: :data:`OK`,
    :data:`FAILED` or :data:`CALLEE_FAILED`; a failure state with fewer than ``MIN_NODES``
    training nodes is not read, and its nodes keep their operation's statistics) and graphs
    ``pooled``. Without ``score_features`` the
    input groups weigh nothing and the embedding and graph distances count in full (an ablation)."""
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
    feature_median, feature_scale, move_nats = input_rarity(x[:, :-1], code, n_codes, rare, status)
    weights = dict(COMPONENT_WEIGHTS)
    if not score_features:
        weights = {name: float(name in ("embedding", "graph")) for name in COMPONENTS}
    table = input_groups()
    graph_centre = pooled.mean(axis=0)
    graph_distance = np.linalg.norm(pooled - graph_centre, axis=1)
    graph_median = float(np.median(graph_distance))
    graph_scale = max(MAD_TO_SIGMA * float(np.median(np.abs(graph_distance - graph_median))), 0.05 * graph_median, 1e-3)
    status = np.zeros(len(x), dtype=np.int64) if status is None else status
    known = np.array([float((status == state).sum() >= MIN_NODES) for state in (FAILED, CALLEE_FAILED)])
    return OneClassStatistics(centre, median, scale, feature_median, feature_scale, move_nats, table["timing"],
                              table["by_status"], known, table["log_count"], table["groups"], table["doubles"], graph_centre, graph_median,
                              graph_scale, np.array([weights[name] for name in COMPONENTS]))
