"""Score calibration: map any detector's raw scores onto one shared scale.

Follows Merlion's ``AnomScoreCalibrator`` (Bhatnagar et al., 2021): a monotone piecewise-linear
map from quantiles of the training scores to the same quantiles of the half-normal |N(0, 1)|, with
linear extrapolation past the largest training score. A calibrated score of 3 is then about as
rare as a 3-sigma event for every detector, so the ensemble can fuse them without special cases.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Any

import numpy as np

ALERT_SIGMAS = 4.0  # the ensemble's default threshold (config ensemble.threshold)
_PROBS = np.array([0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999])
_TAIL_FROM = 0.9


class ScoreCalibrator:
    """Monotone map raw score -> calibrated score (higher = more anomalous, 0 = typical)."""

    def __init__(self) -> None:
        self.anchors_: np.ndarray | None = None
        self.targets_: np.ndarray | None = None
        self.tail_slope_: float = 1.0

    def fit(self, raw: np.ndarray | list[float]) -> ScoreCalibrator:
        """Learn the map from training scores (NaN and inf are ignored)."""
        values = np.asarray(raw, dtype=float)
        values = values[np.isfinite(values)]
        if values.size == 0:
            values = np.zeros(1)
        probs = np.append(_PROBS, 1.0)
        quantiles = np.quantile(values, probs)
        targets = np.array([NormalDist().inv_cdf(min((1 + p) / 2, 0.9999)) for p in probs])
        targets[0] = 0.0
        # keep the first (lowest-probability) anchor of tied quantiles: a common value is normal
        quantiles, first = np.unique(quantiles, return_index=True)
        targets = targets[first]
        self.anchors_, self.targets_ = quantiles, targets
        spread = float(np.quantile(values, 1.0) - np.quantile(values, _TAIL_FROM))
        if spread <= 0:
            spread = float(np.std(values)) or max(abs(float(quantiles[-1])) * 0.1, 1e-6)
        tail_target = targets[-1] - NormalDist().inv_cdf((1 + _TAIL_FROM) / 2)
        self.tail_slope_ = max(tail_target, 0.5) / spread
        return self

    def transform(self, raw: np.ndarray | list[float]) -> np.ndarray:
        """Calibrated scores for ``raw``; NaN stays NaN."""
        if self.anchors_ is None or self.targets_ is None:
            raise RuntimeError("ScoreCalibrator is not fitted")
        values = np.asarray(raw, dtype=float)
        out = np.interp(values, self.anchors_, self.targets_, left=0.0, right=np.nan)
        above = values > self.anchors_[-1]
        out[above] = self.targets_[-1] + (values[above] - self.anchors_[-1]) * self.tail_slope_
        out[np.isnan(values)] = np.nan
        return out

    def __eq__(self, other: object) -> bool:
        """Same map: same anchors, targets and tail slope (a fitted state compares by what it learned)."""
        if not isinstance(other, ScoreCalibrator):
            return NotImplemented
        return (self.tail_slope_ == other.tail_slope_
                and all(np.array_equal(a, b) if a is not None and b is not None else a is b
                        for a, b in ((self.anchors_, other.anchors_), (self.targets_, other.targets_))))

    __hash__ = None  # type: ignore[assignment]  # mutable: fitted in place

    def to_dict(self) -> dict[str, Any]:
        if self.anchors_ is None or self.targets_ is None:
            raise RuntimeError("ScoreCalibrator is not fitted")
        return {"anchors": self.anchors_.tolist(), "targets": self.targets_.tolist(), "tail_slope": self.tail_slope_}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> ScoreCalibrator:
        calibrator = cls()
        calibrator.anchors_ = np.asarray(state["anchors"], dtype=float)
        calibrator.targets_ = np.asarray(state["targets"], dtype=float)
        calibrator.tail_slope_ = float(state["tail_slope"])
        return calibrator


def effect_size_floor(raw: np.ndarray, alert_at: float) -> np.ndarray | None:
    """The calibrated score a raw effect size earns by itself: at least ``ALERT_SIGMAS`` from
    ``alert_at`` up, in proportion above it, 0 under it; ``None`` when ``alert_at`` is 0 (off).

    For detectors whose raw score has an absolute meaning (:meth:`melt.detector.Detector.score_floor`).
    """
    if alert_at <= 0:
        return None
    return np.where(raw >= alert_at, ALERT_SIGMAS * raw / alert_at, 0.0)
