"""Robust location/scale helpers shared by the built-in detectors (median and MAD, Hampel 1974)."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np
import pandas as pd

MAD_TO_SIGMA = 1.4826


def robust_baseline(values: pd.Series, keys: list[pd.Series] | pd.Series, rel_floor: float = 0.02,
                    abs_floor: float = 1e-6, tail_quantile: float | None = None) -> pd.DataFrame:
    """Per group: median, MAD-based sigma (floored so constant series do not divide by zero), count.

    ``tail_quantile`` (e.g. 0.99) also floors sigma so that the group's own training deviation at
    that quantile scores as that quantile of a normal: a series that is zero 98% of the time (an
    error rate) then gets a scale from its non-zero points instead of the absolute floor, and its
    ordinary blips do not score in the tens of thousands.
    """
    frame = pd.DataFrame({"value": values.to_numpy(dtype=float)})
    keys = keys if isinstance(keys, list) else [keys]
    names = []
    for i, key in enumerate(keys):
        name = key.name if key.name is not None else f"k{i}"
        frame[name] = key.to_numpy()
        names.append(name)
    grouped = frame.groupby(names, sort=True, observed=True)["value"]
    median = grouped.median()
    mad = (frame["value"] - grouped.transform("median")).abs().groupby([frame[n] for n in names], observed=True).median()
    sigma = np.maximum(mad * MAD_TO_SIGMA, np.maximum(median.abs() * rel_floor, abs_floor))
    if tail_quantile is not None:
        deviation = (frame["value"] - grouped.transform("median")).abs()
        tail = deviation.groupby([frame[n] for n in names], observed=True).quantile(tail_quantile)
        sigma = np.maximum(sigma, tail / NormalDist().inv_cdf((1 + tail_quantile) / 2))
    return pd.DataFrame({"median": median, "sigma": sigma, "count": grouped.count()})


def severity_direction(z: np.ndarray) -> np.ndarray:
    """'spike' above the baseline, 'drop' below it."""
    return np.where(z >= 0, "spike", "drop")


def median_shift_z(window_median: np.ndarray, n: np.ndarray, median: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """z-score of a window's median of ``n`` draws against a baseline median and sigma.

    The median of ``n`` normal draws has a standard error of about 1.25 sigma / sqrt(n), so a
    busy operation's small but steady shift counts, and one slow call among three does not.
    """
    return (window_median - median) / (sigma * 1.25 / np.sqrt(n))


def binomial_z(count: np.ndarray, n: np.ndarray, rate: np.ndarray) -> np.ndarray:
    """z-score of ``count`` events in ``n`` trials against a baseline ``rate`` (kept off 0 and 1)."""
    p = np.clip(rate, 0.001, 0.999)
    return (count - n * p) / np.sqrt(n * p * (1 - p))


def fleet_floored(baseline: pd.DataFrame, fleet_floor: float, rel_floor: float) -> np.ndarray:
    """Each series' sigma, raised to ``fleet_floor`` x the typical sigma of its metric.

    ``baseline`` has ``median`` and ``sigma`` columns and a ``metric`` index level. The typical
    sigma is the median over the metric's series that moved in training. A series far calmer than
    its peers (an error rate that stayed 0, a client latency percentile that sat on one histogram
    bucket for two hours) would otherwise score its first ordinary jump, one its peers make every
    hour, in the thousands of sigma: shrinking its scale towards the fleet's, as empirical-Bayes
    estimates do, keeps that jump in the single digits while a jump large for the whole fleet still
    alerts. ``fleet_floor`` 0 = off.
    """
    sigma = baseline["sigma"].to_numpy()
    if fleet_floor <= 0:
        return sigma
    metric = baseline.index.get_level_values("metric")
    moving = baseline["sigma"] > baseline["median"].abs() * rel_floor + 1e-6
    typical = baseline["sigma"].where(moving).groupby(metric).median().reindex(metric).to_numpy()
    return np.fmax(sigma, fleet_floor * typical)
