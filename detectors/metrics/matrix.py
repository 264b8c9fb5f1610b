"""Long metric frames -> per-unit feature matrices, robustly scaled, for the multivariate detectors.

A *unit* is one (service, instance) series group: one row per timestamp, one column per metric.
Scaling is per (service, metric) with the training median and MAD (Hampel), pooled over the
service's instances, so replicas share a scale and a pod that appears later is still scaled. A
metric unseen in training is ignored; a missing value becomes the median (0 after scaling).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.robust import fleet_floored, robust_baseline
from melt.core.schema import EDGE_ARROW

UNIT_KEYS = ["service", "instance"]
CLIP = 50.0  # scaled values beyond +-CLIP robust sigmas carry no extra information


def series_metric(frame: pd.DataFrame) -> pd.Series:
    """Each row's metric name, qualified by its ``peer`` where it has one.

    A call metric (``rpc.client.duration.p50``) is one series per peer service: without the peer in
    its name, the series of a caller's calls to every callee would be one, with several points a
    minute.
    """
    metric = frame["metric"].astype(str)
    if "peer" not in frame.columns or not frame["peer"].notna().any():
        return metric
    peer = frame["peer"].astype("string")
    return metric.where(peer.isna(), metric + EDGE_ARROW + peer.fillna(""))


def wide_metrics(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (service, instance, timestamp), one column per metric (duplicates averaged)."""
    instance = frame["instance"].fillna("") if "instance" in frame.columns else pd.Series("", index=frame.index)
    long = pd.DataFrame({"service": frame["service"].astype(str).to_numpy(), "instance": instance.astype(str).to_numpy(),
                         "timestamp": frame["timestamp"].to_numpy(), "metric": series_metric(frame).to_numpy(),
                         "value": frame["value"].to_numpy(dtype=float)})
    # groupby+unstack keeps only (service, instance, timestamp) rows that exist; a pivot_table with
    # dropna=False would build the full product of the levels (every instance name under every service)
    wide = long.groupby(["service", "instance", "timestamp", "metric"], sort=True)["value"].mean().unstack("metric")
    wide.columns = wide.columns.astype(str)
    wide.columns.name = None
    return wide


def sampled(keys: pd.DataFrame, share: float, seed: int, salt: str = "melt-iforest") -> np.ndarray:
    """Whether each row (by its key: service, instance, timestamp) is in a ``share`` sample: a seeded
    hash of the key, so a row is in or out whatever part of the data it is read with (a fit by parts
    draws the sample a whole fit draws). ``salt`` (12 characters) keeps two detectors' samples apart."""
    if share >= 1.0:
        return np.ones(len(keys), dtype=bool)
    hashed = pd.util.hash_pandas_object(keys, index=False, hash_key=f"{salt}{seed:04d}"[:16]).to_numpy()
    return hashed < np.uint64(share * float(2**64 - 1))


def fit_scaler(frame: pd.DataFrame, rel_floor: float = 0.02, min_points: int = 10,
               fleet_floor: float = 0.5) -> pd.DataFrame:
    """Centre (median) and scale per (service, metric) of the training frame; a (service, metric)
    with fewer than ``min_points`` training points is left out, so it is not scored.

    The scale is the larger of the MAD-based sigma and the standard deviation: MAD alone explodes
    on sensors that sit on one value and jump now and then (a pressure gauge, a retry counter),
    which would hand a neural network inputs in the hundreds. No scale falls below ``fleet_floor``
    x its metric's typical scale across services (:func:`detectors.robust.fleet_floored`): an error
    rate that stayed 0 through a short training window would otherwise turn its first error into
    the clip value (on the demo bundle, 360 calibrated sigma from ``lstm_ae`` on an innocent service).
    """
    return pool_scaler([series_scales(frame, rel_floor)], rel_floor, min_points, fleet_floor)


def series_scales(frame: pd.DataFrame, rel_floor: float = 0.02) -> pd.DataFrame:
    """:func:`fit_scaler`'s per-series step (median, sigma, count), series by series: a part of the
    series (one service's, in a fit by parts) gives its rows of the table."""
    clean = frame.dropna(subset=["value"])
    keys = [clean["service"].astype(str).rename("service"), series_metric(clean).rename("metric")]
    stats = robust_baseline(clean["value"], keys, rel_floor=rel_floor)
    std = clean["value"].astype(float).groupby(keys, observed=True).std().fillna(0.0)
    stats["sigma"] = np.maximum(stats["sigma"], std.reindex(stats.index).fillna(0.0).to_numpy())
    return stats


def pool_scaler(parts: list[pd.DataFrame], rel_floor: float = 0.02, min_points: int = 10,
                fleet_floor: float = 0.5) -> pd.DataFrame:
    """:func:`fit_scaler` from the :func:`series_scales` of every series: the fleet floor, then ``min_points``."""
    stats = pd.concat(parts).sort_index() if len(parts) > 1 else parts[0].copy()
    stats["sigma"] = fleet_floored(stats, fleet_floor, rel_floor)
    return stats.loc[stats["count"] >= min_points, ["median", "sigma"]]


def scorable_wide(frame: pd.DataFrame, scaler: pd.DataFrame) -> pd.DataFrame:
    """The wide rows of services the scaler knows (others had too little training data); may be empty."""
    frame = frame.dropna(subset=["value"])
    if frame.empty:
        return pd.DataFrame()
    wide = wide_metrics(frame)
    return wide[wide.index.get_level_values("service").isin(scaler.index.get_level_values("service"))]


def scale(wide: pd.DataFrame, scaler: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Scaled values (rows x features; NaN and unknown services -> 0; clipped)."""
    services = wide.index.get_level_values("service")
    median = scaler["median"].unstack().reindex(index=services.unique(), columns=features)
    sigma = scaler["sigma"].unstack().reindex(index=services.unique(), columns=features)
    rows = median.index.get_indexer(services)
    values = wide.reindex(columns=features).to_numpy(dtype=float)
    z = (values - median.to_numpy()[rows]) / sigma.to_numpy()[rows]
    return np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP)


def unit_codes(wide: pd.DataFrame) -> np.ndarray:
    """Integer id of each row's (service, instance) unit; rows of a unit are contiguous and time-ordered."""
    return pd.MultiIndex.from_arrays([wide.index.get_level_values(k) for k in UNIT_KEYS]).factorize()[0]


def trailing_mean(values: np.ndarray, units: np.ndarray, window: int) -> np.ndarray:
    """Mean of the previous ``window`` rows of the same unit (excluding the row; NaN-free, 0 at a unit's start)."""
    frame = pd.DataFrame(values)
    return frame.groupby(units, sort=False).transform(
        lambda g: g.shift(1).rolling(window, min_periods=1).mean()).fillna(0.0).to_numpy()


def smooth(scores: np.ndarray, units: np.ndarray, window: int, how: str = "mean",
           pad: float | None = None) -> np.ndarray:
    """Trailing rolling mean (or median) of a score within each unit (window 1 = unchanged).

    The median needs most of the window to be high, so a lone one-minute blip never alerts.
    A unit's first rows in the frame have fewer than ``window`` rows behind them: by default the
    missing ones are left out, so the median of a frame's first two rows is their mean; with
    ``pad`` they count as ``pad`` (0: no deviation), and the median still needs most of the whole
    window high, wherever the frame starts.
    """
    if window <= 1:
        return scores
    if pad is not None:
        grouped = pd.Series(np.asarray(scores, dtype=float)).groupby(units, sort=False)
        lagged = np.column_stack([grouped.shift(lag).to_numpy(dtype=float) for lag in range(window)])
        lagged = np.where(np.isnan(lagged), pad, lagged)
        return np.median(lagged, axis=1) if how == "median" else lagged.mean(axis=1)
    rolling = pd.Series(scores).groupby(units, sort=False).rolling(window, min_periods=1)
    out = rolling.median() if how == "median" else rolling.mean()
    return out.reset_index(level=0, drop=True).sort_index().to_numpy()


def evidence_records(wide: pd.DataFrame, contributions: np.ndarray, features: list[str], scaler: pd.DataFrame,
                     expected: np.ndarray | None, sigmas: float, top: int = 3) -> tuple[np.ndarray, list[dict]]:
    """Per row: the top contributing metric, and evidence with value, expected range and contributions.

    Args:
        contributions: rows x features, non-negative share of the score per metric.
        expected: rows x features in scaled units (the model's expected value), or None for the median.
    """
    order = np.argsort(-contributions, axis=1)[:, :top]
    best = order[:, 0]
    rows = np.arange(len(wide))
    services = wide.index.get_level_values("service")
    median = scaler["median"].unstack().reindex(index=services.unique(), columns=features).to_numpy()
    sigma = scaler["sigma"].unstack().reindex(index=services.unique(), columns=features).to_numpy()
    s = pd.Index(services.unique()).get_indexer(services)
    centre_scaled = expected[rows, best] if expected is not None else np.zeros(len(wide))
    centre = median[s, best] + centre_scaled * sigma[s, best]
    low, high = centre - sigmas * sigma[s, best], centre + sigmas * sigma[s, best]
    values = wide.reindex(columns=features).to_numpy(dtype=float)[rows, best]
    names = np.array(features)
    total = contributions.sum(axis=1) + 1e-12
    share = np.round(contributions[rows[:, None], order] / total[:, None], 3)
    instance = wide.index.get_level_values("instance").to_numpy()
    records = [
        {"value": None if np.isnan(v) else round(float(v), 4), "expected_range": [round(float(a), 4), round(float(b), 4)],
         "anomaly_type": "spike" if not np.isnan(v) and v >= c else "drop", "metric": str(names[k]),
         "contributions": dict(zip(names[o].tolist(), sh.tolist(), strict=True)), "instance": inst or None}
        for v, a, b, c, k, o, sh, inst in zip(values, low, high, centre, best, order, share, instance, strict=True)
    ]
    return names[best], records


def score_frame(detector: str, wide: pd.DataFrame, raw: np.ndarray, contributions: np.ndarray, features: list[str],
                scaler: pd.DataFrame, expected: np.ndarray | None, sigmas: float) -> pd.DataFrame:
    """The score frame of a multivariate detector: one row per (service, instance, timestamp),
    the top contributing metric as ``entity``, evidence from :func:`evidence_records`."""
    entity, evidence = evidence_records(wide, contributions, features, scaler, expected, sigmas)
    return pd.DataFrame({
        "timestamp": wide.index.get_level_values("timestamp"),
        "service": wide.index.get_level_values("service").to_numpy(),
        "detector": detector,
        "entity": entity,
        "score": raw,
        "evidence": evidence,
    })
