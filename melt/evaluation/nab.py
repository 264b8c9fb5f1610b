"""The Numenta Anomaly Benchmark's scoring rules (Lavin and Ahmad, 2015), written from the published rules.

A series is scored from the row indices where a detector fired. The first ``min(floor(0.15 n), 750)``
rows are the probationary period and do not count. Inside a labelled window only the earliest
detection counts, with a scaled sigmoid of its position (about 1 at the window's left edge, 0 at
its right edge); a window with none costs ``A_FN``. A detection outside every window costs
``A_FP`` times the sigmoid of how far past the previous window it is (``-A_FP`` with no window
before it). The normalised score of a corpus is ``100 (raw - null) / (perfect - null)``: the null
detector never fires, the perfect one fires at every window's left edge.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PROBATION_SHARE = 0.15
PROBATION_CAP = 750


@dataclass(frozen=True)
class Profile:
    """Weights of true positives, false positives and false negatives."""

    tp: float = 1.0
    fp: float = 0.11
    fn: float = 1.0


STANDARD = Profile()
PROFILES = {"standard": STANDARD, "reward_low_fp": Profile(fp=0.22), "reward_low_fn": Profile(fn=2.0)}


@dataclass(frozen=True)
class SeriesScore:
    """One series' raw score and its counts (``fp`` counts detections, as the detector gave them)."""

    raw: float
    tp: int
    fp: int
    fn: int
    windows: int


def scaled_sigmoid(y: np.ndarray | float) -> np.ndarray:
    """NAB's ``2 / (1 + e^{5y}) - 1``, and -1 from ``y > 3`` on."""
    y = np.asarray(y, dtype=float)
    return np.where(y > 3.0, -1.0, 2.0 / (1.0 + np.exp(5.0 * y)) - 1.0)


def probation_rows(n: int) -> int:
    """Rows at the start of a series of ``n`` rows whose detections are ignored."""
    return min(int(np.floor(PROBATION_SHARE * n)), PROBATION_CAP)


def score_series(detections: np.ndarray, windows: list[tuple[int, int]], n: int,
                 profile: Profile = STANDARD) -> SeriesScore:
    """Raw score of ``detections`` (row indices) on a series of ``n`` rows with ``windows``.

    ``windows`` are inclusive ``(left, right)`` row indices, in time order and not overlapping.
    """
    rows = np.unique(np.asarray(detections, dtype=int))
    rows = rows[rows >= probation_rows(n)]
    lefts = np.array([w[0] for w in windows], dtype=int)
    rights = np.array([w[1] for w in windows], dtype=int)
    widths = rights - lefts + 1
    # the window each detection is in (-1: none) and the last window that ended before it (-1: none)
    before = np.searchsorted(lefts, rows, side="right") - 1
    inside = (before >= 0) & (rows <= rights[np.clip(before, 0, None)]) if len(windows) else np.zeros(len(rows), bool)
    previous = np.searchsorted(rights, rows, side="left") - 1
    raw, tp = 0.0, 0
    found = np.zeros(len(windows), bool)
    for window in range(len(windows)):
        hits = rows[inside & (before == window)]
        if hits.size:
            first = hits.min()
            position = -(rights[window] - first + 1) / widths[window]
            raw += profile.tp * float(scaled_sigmoid(position) / scaled_sigmoid(-1.0))
            found[window] = True
            tp += 1
    outside = rows[~inside]
    prev = previous[~inside]
    has_prev = prev >= 0
    distance = np.abs(outside - rights[np.clip(prev, 0, None)]) / np.maximum(widths[np.clip(prev, 0, None)] - 1, 1) \
        if len(windows) else np.zeros(len(outside))
    fp_cost = np.where(has_prev, scaled_sigmoid(distance), -1.0) if len(outside) else np.zeros(0)
    raw += profile.fp * float(fp_cost.sum())
    fn = int((~found).sum())
    raw -= profile.fn * fn
    return SeriesScore(raw=raw, tp=tp, fp=int(len(outside)), fn=fn, windows=len(windows))


def normalised(raw: float, windows: int, profile: Profile = STANDARD) -> float:
    """``100 (raw - null) / (perfect - null)`` over a corpus with ``windows`` labelled windows."""
    null, perfect = -profile.fn * windows, profile.tp * windows
    return 100.0 * (raw - null) / (perfect - null) if windows else 0.0
