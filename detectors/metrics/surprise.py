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


def deviation_history(deviation: pd.Series, keys: list[pd.Series]) -> pd.DataFrame:
    """Per series: ``count``, ``mean`` and ``var`` of the training deviations (the prior)."""
    grouped = deviation.groupby(keys, observed=True)
    return pd.DataFrame({"count": grouped.count(), "mean": grouped.mean(), "var": grouped.var(ddof=0)})


def surprise(recent: np.ndarray, deviation: np.ndarray, series: np.ndarray, prior: pd.DataFrame,
             lag: int) -> np.ndarray:
    """``(recent - mean) / spread`` of each row, clipped at 0.

    Deviations are in robust sigmas, so the spread never falls under that of Gaussian noise's |z|:
    a series that sat still in training (already given its peers' scale, :func:`detectors.robust.fleet_floored`)
    is not made touchy again here.

    ``recent`` is the short-term mean deviation at each row and ``deviation`` the row's own;
    ``series`` codes the rows' series (rows in time order within each), ``prior`` holds each row's
    series' training ``count``, ``mean`` and ``var`` (aligned with the rows). The mean and spread at a
    row pool the prior with the series' deviations in this frame up to ``lag`` rows before it (the
    rows inside the short-term mean are left out, so a burst is not compared with itself).
    """
    frame = pd.DataFrame({"d": deviation, "d2": deviation ** 2, "series": series})
    grouped = frame.groupby("series", sort=False)
    seen = grouped.cumcount().to_numpy() - lag + 1
    total = grouped["d"].cumsum().to_numpy()
    squares = grouped["d2"].cumsum().to_numpy()
    # cumulative sums up to `lag` rows back: the running total minus the last `lag` rows
    back_total = pd.Series(total).groupby(series, sort=False).shift(lag).fillna(0.0).to_numpy()
    back_squares = pd.Series(squares).groupby(series, sort=False).shift(lag).fillna(0.0).to_numpy()
    seen = np.clip(seen, 0, None)
    n0 = prior["count"].to_numpy(dtype=float)
    m0 = prior["mean"].to_numpy(dtype=float)
    v0 = prior["var"].to_numpy(dtype=float)
    count = n0 + seen
    mean = (n0 * m0 + back_total) / count
    second = (n0 * (v0 + m0 ** 2) + back_squares) / count
    spread = np.sqrt(np.clip(second - mean ** 2, 0.0, None))
    spread = np.fmax(spread, HALF_NORMAL_SD)  # no series counts as calmer than noise at its own scale
    return np.clip((recent - mean) / spread, 0.0, None)
