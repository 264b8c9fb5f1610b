"""How unusual a series' recent deviation is against the deviations it has shown before.

After Numenta's anomaly likelihood (Ahmad, Lavin, Purdy and Agha, "Unsupervised real-time anomaly
detection for streaming data", Neurocomputing 2017): a raw deviation score is not compared with a
fixed scale but with the distribution of that series' own raw scores so far. The short-term mean of
the last few deviations is standardised by the mean and standard deviation of all the series'
earlier ones (its training deviations, then those of the data scored before it). A series whose
normal life holds big swings (tweet volume, a bursty queue) needs a bigger swing to alert than a
calm one, and a series that keeps swinging after an alert raises its own bar, so one change
alerts once instead of for every point that follows it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

HALF_NORMAL_SD = float(np.sqrt(1 - 2 / np.pi))  # the spread of |z| for Gaussian noise, about 0.60


def deviation_sums(deviation: np.ndarray, keys: list[np.ndarray], names: list[str]) -> pd.DataFrame:
    """Per series (indexed by ``keys`` named ``names``): ``count``, ``total`` and ``squares`` of its deviations."""
    frame = pd.DataFrame({"count": 1.0, "total": deviation, "squares": deviation ** 2})
    return frame.groupby([pd.Series(k, name=n) for k, n in zip(keys, names, strict=True)], observed=True).sum()


def add_sums(history: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """Two :func:`deviation_sums` tables pooled (a series in either is in the result)."""
    return history.add(more, fill_value=0.0) if len(more) else history


def surprise(recent: np.ndarray, deviation: np.ndarray, series: np.ndarray, prior: pd.DataFrame,
             lag: int, fresh: np.ndarray | None = None) -> np.ndarray:
    """``(recent - mean) / spread`` of each row, clipped at 0.

    Deviations are in robust sigmas, so the spread never falls under that of Gaussian noise's |z|:
    a series that sat still in training (already given its peers' scale, :func:`detectors.robust.fleet_floored`)
    is not made touchy again here.

    ``recent`` is the short-term mean deviation at each row and ``deviation`` the row's own;
    ``series`` codes the rows' series (rows in time order within each), ``prior`` holds each row's
    series' :func:`deviation_sums` so far (aligned with the rows). The mean and spread at a row pool
    the prior with the ``fresh`` rows of this frame (default: all; a stream leaves out the context
    rows its history already holds) up to ``lag`` rows before it: the rows inside the short-term
    mean are left out, so a burst is not compared with itself.
    """
    fresh = np.ones(len(deviation), bool) if fresh is None else fresh
    counted = pd.DataFrame({"n": fresh.astype(float), "d": np.where(fresh, deviation, 0.0),
                            "d2": np.where(fresh, deviation ** 2, 0.0)})
    # per series, the running sums of the rows up to `lag` rows back
    before = counted.groupby(series, sort=False).cumsum().groupby(series, sort=False).shift(lag).fillna(0.0)
    count = np.fmax(prior["count"].to_numpy(dtype=float) + before["n"].to_numpy(), 1.0)
    mean = (prior["total"].to_numpy(dtype=float) + before["d"].to_numpy()) / count
    second = (prior["squares"].to_numpy(dtype=float) + before["d2"].to_numpy()) / count
    spread = np.sqrt(np.clip(second - mean ** 2, 0.0, None))
    spread = np.fmax(spread, HALF_NORMAL_SD)  # no series counts as calmer than noise at its own scale
    return np.clip((recent - mean) / spread, 0.0, None)
