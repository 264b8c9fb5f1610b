"""Robust z-score per (service, instance, metric) series against a median/MAD baseline.

The classic robust outlier rule (Hampel 1974; Iglewicz & Hoaglin's modified z-score): median and
MAD are not dragged by the outliers they must find. The score is |x - median| / (1.4826 MAD).
Seasonal baselines (STL) arrive with the metric-detector issue; this version is the reference.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from detectors.robust import robust_baseline, severity_direction
from melt.bundle import MeltBundle
from melt.detector import Detector, empty_scores


class RobustZScore(Detector):
    """Robust z-score over each metric series.

    Args:
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
        min_points: series with fewer training points are not scored.
        rel_floor: scale floor as a share of the median, so near-constant series do not explode.
    """

    name = "zscore"
    signal = "metrics"

    def __init__(self, expected_sigmas: float = 3.0, min_points: int = 10, rel_floor: float = 0.05) -> None:
        self.expected_sigmas = expected_sigmas
        self.min_points = min_points
        self.rel_floor = rel_floor

    @staticmethod
    def _keys(frame: pd.DataFrame) -> list[pd.Series]:
        instance = frame["instance"].fillna("") if "instance" in frame.columns else pd.Series("", index=frame.index)
        return [frame["service"].rename("service"), instance.rename("instance"), frame["metric"].rename("metric")]

    def fit(self, bundle: MeltBundle) -> Self:
        frame = self.require(bundle).dropna(subset=["value"])
        baseline = robust_baseline(frame["value"], self._keys(frame), rel_floor=self.rel_floor)
        self.baseline_ = baseline[baseline["count"] >= self.min_points]
        return self

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        frame = self.require(bundle).dropna(subset=["value"])
        if frame.empty:
            return empty_scores()
        keys = pd.MultiIndex.from_arrays([k.to_numpy() for k in self._keys(frame)], names=["service", "instance", "metric"])
        stats = self.baseline_.reindex(keys)
        known = stats["median"].notna().to_numpy()
        frame = frame[known]
        median = stats["median"].to_numpy()[known]
        sigma = stats["sigma"].to_numpy()[known]
        value = frame["value"].to_numpy()
        z = (value - median) / sigma
        low, high = median - self.expected_sigmas * sigma, median + self.expected_sigmas * sigma
        direction = severity_direction(z)
        instance = frame["instance"].fillna("").to_numpy() if "instance" in frame.columns else np.full(len(frame), "")
        evidence = pd.DataFrame({
            "value": np.round(value, 4),
            "expected_range": np.stack([np.round(low, 4), np.round(high, 4)], axis=1).tolist(),
            "anomaly_type": direction, "z": np.round(z, 2),
            "instance": pd.Series(instance).replace("", None).to_numpy(dtype=object),
        }).to_dict("records")
        return pd.DataFrame({
            "timestamp": frame["timestamp"].to_numpy(),
            "service": frame["service"].to_numpy(),
            "detector": self.name,
            "entity": frame["metric"].to_numpy(),
            "score": np.abs(z),
            "evidence": evidence,
        })
