"""A detector that keeps crying wolf on a series needs a stronger score to alert there again.

After the masking of ARTime (Hampton, NAB 2021: new detections are held back for a while after
one unless they are stronger) and the per-series alert-rate budgets of on-call practice, stated as a
rate instead of a timer: each series may raise ``budget`` alert episodes (runs of scores at or over
:data:`~melt.core.calibration.ALERT_SIGMAS`) per day of scoring. Once its own past episodes exceed
that rate, its scores are divided by ``(rate / budget) ** EXPONENT``, so a bursty series whose
detector has already alerted ten times a day needs about 1.8x the surprise to alert again, while a
series within its budget scores as before. The days are counted from the series' first scored
row, at least :data:`MIN_DAYS`, so a short frame (or a fault that flaps for an hour) has
``budget x MIN_DAYS`` episodes before its bar rises: the budget is a long-run rate, not a timer.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from melt.core.calibration import ALERT_SIGMAS

EXPONENT = 0.25
MIN_DAYS = 7.0
DAY = pd.Timedelta("1D")
COLUMNS = ["episodes", "first"]


def budgeted(score: np.ndarray, series: np.ndarray, timestamps: pd.Series, fresh: np.ndarray,
             prior: pd.DataFrame, budget: float) -> tuple[np.ndarray, pd.DataFrame]:
    """``score`` damped by each series' own alert rate so far, and the rows' episodes and first times.

    Rows are in time order within each ``series`` (integer codes, one per row of ``prior``: that
    series' ``episodes`` counted and ``first`` scored time, in nanoseconds, from earlier frames; NaN
    when none). Only ``fresh`` rows (not seen by an earlier frame) count; the returned table is
    ``prior`` plus the fresh rows' episodes and first times.
    """
    alert = np.asarray(score) >= ALERT_SIGMAS
    grouped = pd.Series(alert).groupby(series, sort=False)
    before = grouped.shift(1).fillna(False).to_numpy(dtype=bool)
    starts = (alert & ~before & fresh).astype(float)
    counted = pd.Series(starts).groupby(series, sort=False).cumsum().to_numpy() - starts
    ns = pd.to_datetime(pd.Series(timestamps), utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    first_here = pd.Series(np.where(fresh, ns, np.iinfo(np.int64).max)).groupby(series, sort=False).transform("min")
    first = np.fmin(prior["first"].to_numpy()[series], first_here.to_numpy().astype(float))
    days = np.fmax((ns - first) / DAY.value, MIN_DAYS)
    rate = (prior["episodes"].to_numpy()[series] + counted) / days
    damped = np.asarray(score) / np.fmax(1.0, rate / budget) ** EXPONENT
    table = prior.copy()
    table["episodes"] = prior["episodes"].to_numpy() + np.bincount(series, starts, minlength=len(prior))
    first_fresh = pd.Series(np.where(fresh, ns.astype(float), np.nan)).groupby(series).min()
    table["first"] = np.fmin(prior["first"].to_numpy(), first_fresh.reindex(range(len(prior))).to_numpy())
    return damped, table
