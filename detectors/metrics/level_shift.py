"""Level shifts that have held long enough become the new normal (an online baseline with a changepoint rule).

A fixed baseline learned in training alerts on every point after a metric moves to a new level
and stays there (a resized pool, a deploy that changed the steady latency): one real change turns
into an alert run that lasts until the next refit, the pattern most of the false alarms on NAB's
cloud series followed. Here a series' expected value is moved to the median of its last ``adapt``
of residuals once at least ``share`` of that trailing window has sat on one side of the baseline,
more than ``min_sigmas`` sigma out: the shift alerts when it happens, and stops alerting once it has
held for about ``share x adapt``. A spike, or a fault shorter than that, never moves the baseline.
The rule needs a full ``adapt`` of the series in the frame being scored, so a short frame (a
stream step with its context) scores against the fitted baseline alone, as before; periodic refits
(``detect.retrain_every``) move that one.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def shift_level(residual: np.ndarray, sigma: np.ndarray, series: np.ndarray, timestamps: np.ndarray,
                adapt: pd.Timedelta, share: float = 0.9, min_sigmas: float = 3.0) -> np.ndarray:
    """The level each point's residual is measured from: 0, or the held shift before it.

    ``residual`` is value minus the fitted expectation, ``sigma`` the series' scale, ``series`` a
    code per row; rows are in time order within each series. The window is the trailing ``adapt``
    ending just before each point (the point itself never moves its own baseline).
    """
    if adapt <= pd.Timedelta(0) or len(residual) == 0:
        return np.zeros(len(residual))
    frame = pd.DataFrame({"z": residual / sigma, "series": series},
                         index=pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True)))
    rolling = frame.groupby("series", sort=False)["z"].rolling(adapt, closed="left")
    low = rolling.quantile(1 - share).to_numpy()
    high = rolling.quantile(share).to_numpy()
    middle = rolling.median().to_numpy()
    count = rolling.count().to_numpy()
    # groupby-rolling returns the rows series by series (in order of first appearance), each in its
    # own order: a stable sort by first appearance puts them back
    order = np.argsort(pd.factorize(series)[0], kind="stable")
    level = np.zeros(len(residual))
    first = pd.Series(frame.index).groupby(series, sort=False).transform("min").to_numpy()
    covered = (frame.index.to_numpy() - first) >= adapt.to_timedelta64()
    held_up = (low > min_sigmas) & (count > 1)
    held_down = (high < -min_sigmas) & (count > 1)
    shifted = np.where(held_up | held_down, middle, 0.0)
    level[order] = shifted
    level = np.where(covered, level, 0.0)
    return np.nan_to_num(level) * sigma
