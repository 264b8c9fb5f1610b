"""Isolation forest over each service's metrics at each timestamp (Liu, Ting & Zhou, ICDM 2008).

Features per (service, instance, timestamp): every metric, robustly scaled per (service, metric),
its deviation from the unit's trailing mean (a level shift stands out even when the level itself
is normal for another hour of the day), and the row's largest of each. One forest is shared by all services: scaling makes
them comparable, and a small service with few points still gets a well-trained model. The score
is the inverse normalised path length (higher = more isolated). Evidence: the metrics with
the largest absolute scaled deviation, the per-feature attribution used by the seeds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from detectors.metrics.matrix import (
    UNIT_KEYS,
    pool_scaler,
    sampled,
    scale,
    scorable_wide,
    score_frame,
    series_metric,
    series_scales,
    smooth,
    trailing_mean,
    unit_codes,
    wide_metrics,
)
from detectors.metrics.surprise import Points, SurpriseMixin
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores


def isolation_score(score_samples: np.ndarray) -> np.ndarray:
    """c(n) / E[h(x)], the inverse normalised path length, from scikit-learn's ``score_samples``
    (= -2^(-E[h]/c(n))). Monotone in the paper's score, but unbounded: the paper's score crowds
    every clear outlier just under 1, so calibration could not tell a pinned CPU from the most
    unusual training minute."""
    return 1.0 / np.maximum(-np.log2(np.clip(-score_samples, 1e-12, 1.0)), 1e-3)


class IsolationForestDetector(SurpriseMixin, Detector):
    """Multivariate isolation forest on scaled metrics and their short-term deviations.

    Args:
        n_estimators: trees in the forest.
        max_samples: rows per tree (256, as in the paper).
        trend_window: rows in the trailing mean that deviations are measured against.
        smooth_window: trailing mean of the score over this many rows of a unit (1 = off).
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
        seed: random seed of the forest.
        history: score each unit's smoothed isolation score as its surprise against the unit's own
            scores so far (:class:`~detectors.metrics.surprise.SurpriseMixin`); false = the calibrated score.
        adapt: a score joins that history once it is this old, so a change alerts for this long and
            is then normal; ``None``: as soon as it leaves the smoothing window.
        alert_budget: alert episodes (surprise >= 4) a unit may raise per day of scoring; beyond that
            rate its scores are divided by ``(rate / alert_budget) ** 0.25``
            (:mod:`detectors.metrics.alert_budget`); ``None``: off.
    """

    name = "iforest"
    signal = "metrics"
    partition = "service"
    series_names = tuple(UNIT_KEYS)

    def __init__(self, n_estimators: int = 200, max_samples: int = 256, trend_window: int = 10,
                 smooth_window: int = 3, expected_sigmas: float = 3.0, seed: int = 0, history: bool = True,
                 adapt: str | None = "2h", alert_budget: float | None = 0.5) -> None:
        self.n_estimators = n_estimators
        self.max_samples = max_samples
        self.trend_window = trend_window
        self.smooth_window = smooth_window
        self.expected_sigmas = expected_sigmas
        self.seed = seed
        self.history = history
        self.adapt = adapt
        self.alert_budget = alert_budget

    def _features(self, wide: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = scale(wide, self.scaler_, self.features_)
        units = unit_codes(wide)
        deviation = z - trailing_mean(z, units, self.trend_window)
        # the largest |z| and |deviation| of the row: one pinned metric among many is isolated in a
        # split or two instead of waiting for the trees to pick its column (iForest's known blind spot)
        peaks = np.stack([np.abs(z).max(axis=1), np.abs(deviation).max(axis=1)], axis=1) if z.size else np.zeros((len(z), 2))
        return np.hstack([z, deviation, peaks]), z, units

    # Fitting runs as map/reduce rounds, whole (one part) or service by service on a Dask cluster
    # (``Detector.fit_calibrated_by_parts``); both learn the same forest.
    fit_rounds = 3  # the series' scales and the row count; the forest's rows; each unit's history

    def fit_map(self, bundle: MeltBundle, step: int) -> object:
        frame = self.require(bundle)
        if step == 0:
            return {"scales": series_scales(frame), "features": set(series_metric(frame).unique()),
                    "rows": len(wide_metrics(frame))}
        if step == 1:  # the rows the trees may draw from: this part's share of the sample
            wide = wide_metrics(frame)
            x = self._features(wide)[0]
            keys = wide.index.to_frame(index=False)
            chosen = sampled(keys, self.sample_share_, self.seed)  # the trees draw only n_estimators x max_samples rows
            return keys[chosen].reset_index(drop=True), x[chosen]
        return self.history_sums(bundle)

    def fit_reduce(self, step: int, parts: list) -> None:
        if step == 0:
            self.scaler_ = pool_scaler([p["scales"] for p in parts])
            self.features_ = sorted(set().union(*(p["features"] for p in parts)))
            rows = sum(p["rows"] for p in parts)
            self.sample_share_ = min(1.0, self.n_estimators * self.max_samples / max(rows, 1))
        elif step == 1:
            keys = pd.concat([k for k, _ in parts], ignore_index=True)
            order = keys.sort_values(list(keys.columns), kind="stable").index.to_numpy()
            x = np.concatenate([x for _, x in parts])[order]
            self.forest_ = IsolationForest(n_estimators=self.n_estimators, max_samples=min(self.max_samples, len(x)),
                                           random_state=self.seed).fit(x)
            del self.sample_share_
        else:
            self.pool_history([p for p in parts if p is not None])

    def points(self, bundle: MeltBundle) -> Points | None:
        """Each (service, instance, timestamp) row's isolation score, unsmoothed."""
        wide = scorable_wide(self.require(bundle), self.scaler_)
        return None if wide.empty else self._points(wide, self._features(wide)[0])

    def _points(self, wide: pd.DataFrame, x: np.ndarray) -> Points:
        return Points.of_units(isolation_score(self.forest_.score_samples(x)), unit_codes(wide), wide)

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        wide = scorable_wide(self.require(bundle), self.scaler_)
        if wide.empty:
            return empty_scores()
        x, z, units = self._features(wide)
        points = self._points(wide, x)
        raw = self.surprised(points) if getattr(self, "score_history_", None) is not None else \
            smooth(points.deviation, units, self.smooth_window)
        m = len(self.features_)
        contributions = np.abs(z) + np.abs(x[:, m:2 * m])
        return score_frame(self.name, wide, raw, contributions, self.features_, self.scaler_, None, self.expected_sigmas)
