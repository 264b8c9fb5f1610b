"""Where a metric is heading: an exponential-smoothing forecast with calibrated 80% and 95% intervals.

The method follows Hyndman and Athanasopoulos, *Forecasting: Principles and Practice* (3rd ed.),
chapters 8 and 3.6, with statsmodels' state-space ETS:

- The history before ``origin`` (at most ``history`` of it) is put on a regular grid (the median
  spacing of its timestamps; gaps interpolated, several rows at one time averaged).
- Without a full two seasons of history: ETS(A,Ad,N), additive errors and a damped additive trend
  (``model="ets"``). With at least two seasons (a day by default): the seasons' mean pattern
  (:func:`seasonal_profile`, smoothed over a 24th of the season) is taken out, the same ETS is fitted
  to the rest and the pattern is added back to its path (``model="seasonal+ets"``). Not STL: with
  exactly two seasons STL's seasonal smoother fits each phase's two points exactly, the adjusted
  series is nearly noise-free and the intervals collapse (95% coverage 0.14 on NAB).
- If a fit fails or gives non-finite values: simple exponential smoothing, ETS(A,N,N)
  (``"ses"``); if that fails too, the last value with a random-walk spread (``"naive"``). A
  constant history gives a flat path with no spread (``"constant"``). statsmodels' warnings are
  silenced; a forecast never raises on data.
- Intervals: statsmodels' analytic standard error of each step, times a width factor per level:
  the empirical quantile of the absolute one-step in-sample errors divided by their standard
  deviation (split-conformal calibration of the one-step errors, carried to every step through
  the analytic growth of the standard error). Real metrics are heavy-tailed: the normal quantiles
  alone under-cover their 95% intervals and over-cover their 80% ones. The rolling-origin backtest
  (``benchmarks/forecast_backtest.py``, docs/benchmarks.md) measures the coverage this gives.

``time_to_limit`` applies to a resource with a known limit: the ``limit`` given (a value the data
holds), else one read from the metric's name and values. The assumption: a metric named as a share
(``percent``, ``pct``, ``util``, ``usage``, ``ratio``, ``saturation``) whose whole history lies in
[0, 1] has the limit 1.0, in [0, 100] the limit 100; any other metric has no known limit (a memory
``usage`` in megabytes, above 100, has none). It is the first step of the mean path at or above the
limit; past the horizon, the least-squares line through the last four horizons of history, if it
rises significantly (t > 3), extended to the limit, when that is within :data:`MAX_LIMIT_AHEAD`.
``None`` when the metric does not grow, is already past the limit, or has no known limit.

A metric whose history never went below 0 gets no path or bound below 0.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

MIN_POINTS = 12  # fewer observations before the origin: no forecast
SEASON = pd.Timedelta("1D")
MIN_PERIOD = 4  # a season of fewer steps is no season
MAX_LIMIT_AHEAD = pd.Timedelta("7D")  # a limit further off than this is no warning
Z = {80: 1.2815515655446004, 95: 1.959963984540054}
SHARE_NAME = re.compile(r"percent|pct|util|usage|ratio|saturation|%", re.IGNORECASE)


def share_limit(metric: str | None, values: np.ndarray) -> float | None:
    """The limit of a metric named as a share: 1.0 if its values lie in [0, 1], 100 if in [0, 100]."""
    if not metric or not SHARE_NAME.search(metric) or not len(values):
        return None
    low, high = float(np.nanmin(values)), float(np.nanmax(values))
    if low < 0:
        return None
    return 1.0 if high <= 1.0 else 100.0 if high <= 100.0 else None


def regular_grid(timestamps: pd.Series | pd.DatetimeIndex, values: np.ndarray, origin: pd.Timestamp,
                 history: pd.Timedelta) -> tuple[pd.Timedelta, pd.Timestamp, np.ndarray] | None:
    """(step, last time, values on the grid ending there) of the rows in ``[origin - history, origin)``."""
    times = pd.DatetimeIndex(pd.to_datetime(timestamps, utc=True))
    values = np.asarray(values, dtype=float)
    keep = (times >= origin - history) & (times < origin) & np.isfinite(values)
    if keep.sum() < MIN_POINTS:
        return None
    frame = pd.Series(values[keep], index=times[keep]).groupby(level=0).mean().sort_index()
    if len(frame) < MIN_POINTS:
        return None
    step = pd.Timedelta(np.median(np.diff(frame.index.as_unit("ns").asi8)), unit="ns")
    if step <= pd.Timedelta(0):
        return None
    last = frame.index[-1]
    back = np.rint((last - frame.index) / step).astype(int)
    grid = pd.Series(frame.to_numpy()).groupby(back).mean()
    grid = grid.reindex(np.arange(int(back.max()), -1, -1)).interpolate(limit_direction="both")
    return step, last, grid.to_numpy()


def seasonal_profile(y: np.ndarray, period: int) -> np.ndarray:
    """The mean pattern of the last whole seasons of ``y`` by phase (phase 0 = ``y``'s first step):
    each season less its own mean, averaged, smoothed over a circular window of a 24th of the
    season, centred on zero."""
    seasons = len(y) // period
    block = y[len(y) - seasons * period:].reshape(seasons, period)
    raw = (block - block.mean(axis=1, keepdims=True)).mean(axis=0)
    width = max(1, period // 24) | 1
    padded = np.concatenate([raw[-(width // 2):], raw, raw[:width // 2]]) if width > 1 else raw
    smooth = np.convolve(padded, np.ones(width) / width, mode="valid")
    start = (len(y) - seasons * period) % period  # the phase of the block's first step
    profile = np.roll(smooth, start)
    return profile - profile.mean()


def _ets(y: pd.Series, steps: int, damped: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, standard error, one-step in-sample residuals) of ETS(A,Ad,N), or ETS(A,N,N) undamped."""
    from statsmodels.tsa.exponential_smoothing.ets import ETSModel

    kwargs: dict[str, Any] = {"error": "add", "trend": "add", "damped_trend": True} if damped else {"error": "add"}
    fit = ETSModel(y, **kwargs).fit(disp=False)
    prediction = fit.get_prediction(len(y), len(y) + steps - 1)
    mean = np.asarray(prediction.predicted_mean, dtype=float)
    return mean, np.sqrt(np.asarray(prediction.var_pred_mean, dtype=float)), np.asarray(fit.resid, dtype=float)


def _width(resid: np.ndarray, level: int) -> float:
    """The interval's half-width in standard errors: the empirical quantile of the standardised
    absolute one-step errors (the normal quantile with too few of them)."""
    resid = resid[np.isfinite(resid)]
    if len(resid) < MIN_POINTS or not np.std(resid) > 0:
        return Z[level]
    return float(np.quantile(np.abs(resid - resid.mean()), level / 100) / np.std(resid))


def predict(y: np.ndarray, steps: int, period: int | None) -> tuple[np.ndarray, dict[int, np.ndarray], str]:
    """Mean path, half-widths per level (80, 95) and model name for ``steps`` after the grid ``y``."""
    if np.ptp(y) <= 1e-12 * max(1.0, abs(float(y[-1]))):
        return np.full(steps, float(y[-1])), {80: np.zeros(steps), 95: np.zeros(steps)}, "constant"
    attempts = ([("seasonal+ets", True)] if period else []) + [("ets", True), ("ses", False)]
    profile = seasonal_profile(y, period) if period else None
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        for name, damped in attempts:
            seasonal = name == "seasonal+ets" and profile is not None
            try:
                if seasonal:
                    phases = np.arange(len(y), len(y) + steps) % period
                    mean, se, resid = _ets(pd.Series(y - profile[np.arange(len(y)) % period]), steps, damped)
                    mean = mean + profile[phases]
                else:
                    mean, se, resid = _ets(pd.Series(y), steps, damped)
            except Exception:  # noqa: BLE001 - any failure of a fit falls back to the next, simpler model
                continue
            if np.isfinite(mean).all() and np.isfinite(se).all() and (se >= 0).all():
                return mean, {level: _width(resid, level) * se for level in Z}, name
    diffs = np.diff(y)
    spread = float(np.std(diffs)) * np.sqrt(np.arange(1, steps + 1))
    return np.full(steps, float(y[-1])), {level: Z[level] * spread for level in Z}, "naive"


def time_to_limit(y: np.ndarray, mean: np.ndarray, path_times: pd.DatetimeIndex, last: pd.Timestamp,
                  step: pd.Timedelta, limit: float | None) -> pd.Timestamp | None:
    """When the mean path, or the recent trend beyond it, reaches ``limit`` (module docstring)."""
    if limit is None or y[-1] >= limit:
        return None
    reached = np.flatnonzero(mean >= limit)
    if len(reached):
        return path_times[reached[0]]
    recent = y[-min(len(y), 4 * len(mean)):]
    if len(recent) < MIN_POINTS:
        return None
    t = np.arange(len(recent), dtype=float)
    slope, intercept = np.polyfit(t, recent, 1)
    resid = recent - (slope * t + intercept)
    spread = np.sqrt(np.sum(resid ** 2) / (len(t) - 2) / np.sum((t - t.mean()) ** 2))
    if not slope > 0 or (spread > 0 and slope / spread < 3):
        return None
    ahead = (limit - (intercept + slope * t[-1])) / slope
    when = last + step * float(ahead)
    return when if path_times[-1] < when <= last + MAX_LIMIT_AHEAD else None


def forecast(timestamps: pd.Series | pd.DatetimeIndex, values: np.ndarray, origin: pd.Timestamp,
             horizon: pd.Timedelta, history: pd.Timedelta, metric: str | None = None,
             limit: float | None = None, season: pd.Timedelta = SEASON) -> dict[str, Any] | None:
    """The forecast block of one series from its rows before ``origin``; ``None`` with too little history.

    Args:
        timestamps, values: the series (UTC times, any order; NaNs dropped).
        origin: forecast from here; only rows before it are used.
        horizon: how far past ``origin`` the path goes.
        history: at most this much before ``origin`` is fitted.
        metric: the metric's name, for its limit (module docstring).
        limit: the resource's limit where the data holds one (wins over the name).
        season: the seasonal period, used with two of them in the history.

    Returns:
        ``origin``, ``step`` and ``horizon`` (seconds), ``model``, ``season`` (seconds or None),
        ``history_points``, ``path`` (timestamp, mean, lower/upper 80 and 95 per step), ``limit``
        and ``time_to_limit``.
    """
    origin = pd.Timestamp(origin)
    grid = regular_grid(timestamps, values, origin, history)
    if grid is None:
        return None
    step, last, y = grid
    steps = max(1, math.ceil((origin + horizon - last) / step))
    period = round(season / step)
    period = period if period >= MIN_PERIOD and len(y) >= 2 * period else None
    mean, half, model = predict(y, steps, period)
    times = pd.DatetimeIndex([last + step * (i + 1) for i in range(steps)])
    limit = limit if limit is not None and np.isfinite(limit) else share_limit(metric, y)
    reach = time_to_limit(y, mean, times, last, step, limit)
    digits = _digits(y)
    floor = 0.0 if np.nanmin(y) >= 0 else -np.inf  # a metric never below 0 (latency, bytes, a rate) stays so
    path = [{"timestamp": t.isoformat(), "mean": round(float(max(m, floor)), digits),
             "lower_80": round(float(max(m - h80, floor)), digits), "upper_80": round(float(m + h80), digits),
             "lower_95": round(float(max(m - h95, floor)), digits), "upper_95": round(float(m + h95), digits)}
            for t, m, h80, h95 in zip(times, mean, half[80], half[95], strict=True)]
    return {"origin": origin.isoformat(), "step": step.total_seconds(), "horizon": horizon.total_seconds(),
            "model": model, "season": season.total_seconds() if model == "seasonal+ets" else None,
            "history_points": int(len(y)), "path": path,
            "limit": None if limit is None else float(limit),
            "time_to_limit": None if reach is None else reach.isoformat()}


def _digits(y: np.ndarray) -> int:
    """Decimals that keep about six significant digits of the series' scale."""
    scale = float(np.nanmax(np.abs(y))) or 1.0
    return int(min(10, max(0, 6 - math.floor(math.log10(scale)))))
