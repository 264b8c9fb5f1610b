"""Daily and weekly profiles of metric series from an STL decomposition (statsmodels).

STL (Cleveland, Cleveland, McRae and Terpenning, 1990) splits a series into trend, seasonal and
remainder with local regressions; MSTL (Bandara, Hyndman and Bergmeir, 2021) does it for several
seasons at once. Each series is first put on a regular grid of ``bucket`` (the median of its
points in each bucket, gaps interpolated), so a 1-minute metric's day is 48 half-hours and STL
stays fast. A season is used once the history holds ``min_seasons`` of it: the day from two days
on, the week as well from two weeks on. The profile is the series' level (the median of the
deseasonalised history) plus its seasonal component at each phase of the week, and is what the
metric detectors measure each point against.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

DAY = pd.Timedelta("1D")
WEEK = pd.Timedelta("7D")


def week_phase(timestamps: pd.Series | np.ndarray, bucket: pd.Timedelta) -> np.ndarray:
    """The bucket of the week each time falls in (0 .. WEEK / bucket - 1)."""
    ns = pd.to_datetime(pd.Series(timestamps), utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    return (ns % WEEK.value) // bucket.value


def seasonal_component(values: np.ndarray, per_day: int, weekly: bool, min_seasons: float) -> np.ndarray | None:
    """The seasonal part of a regular series (daily, plus weekly when long enough); ``None``: too short."""
    from statsmodels.tsa.seasonal import MSTL, STL

    n = len(values)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if weekly and n >= min_seasons * 7 * per_day:
            fitted = MSTL(values, periods=(per_day, 7 * per_day), stl_kwargs={"robust": True}).fit()
            return np.asarray(fitted.seasonal).sum(axis=1)
        if n >= min_seasons * per_day and per_day >= 2:
            return np.asarray(STL(values, period=per_day, robust=True).fit().seasonal)
    return None


def stl_profiles(frame: pd.DataFrame, keys: list[str], bucket: pd.Timedelta, weekly: bool = True,
                 min_seasons: float = 2.0) -> pd.Series:
    """Expected value per (``keys``..., week phase) of every series whose history holds a season.

    ``frame`` has the ``keys`` columns, ``timestamp`` and ``value``. Series too short for a day's
    season are left out (their detectors use the plain median).
    """
    per_day = int(DAY / bucket)
    phases = np.arange(int(WEEK / bucket))
    parts = []
    binned = frame.assign(bucket=frame["timestamp"].dt.floor(bucket))
    for key, group in binned.groupby(keys, sort=True, observed=True):
        series = group.groupby("bucket")["value"].median()
        grid = pd.date_range(series.index.min(), series.index.max(), freq=bucket)
        if len(grid) < min_seasons * per_day:
            continue
        regular = series.reindex(grid).interpolate(limit_direction="both")
        seasonal = seasonal_component(regular.to_numpy(dtype=float), per_day, weekly, min_seasons)
        if seasonal is None:
            continue
        level = float(np.median(regular.to_numpy() - seasonal))
        by_phase = pd.Series(seasonal).groupby(week_phase(grid, bucket)).median()
        if by_phase.size < phases.size:  # a daily season only: the same day on every day of the week
            daily = pd.Series(seasonal).groupby(week_phase(grid, bucket) % per_day).median()
            by_phase = daily.reindex(phases % per_day).set_axis(phases)
        key = key if isinstance(key, tuple) else (key,)
        index = pd.MultiIndex.from_tuples([(*key, phase) for phase in by_phase.index], names=[*keys, "phase"])
        parts.append(pd.Series(level + by_phase.to_numpy(), index=index))
    if not parts:
        return pd.Series(dtype=float, index=pd.MultiIndex.from_arrays([[]] * (len(keys) + 1), names=[*keys, "phase"]))
    return pd.concat(parts)
