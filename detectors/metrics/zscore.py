"""Robust z-score per (service, instance, metric) series against a median/MAD baseline.

The classic robust outlier rule (Hampel 1974; Iglewicz & Hoaglin's modified z-score): median and
MAD are not dragged by the outliers they must find. The score is |x - expected| / (1.4826 MAD).
When the training data covers at least ``min_seasons`` seasons (days, by default), the expected
value is a seasonal profile, the median of the series at the same time of day (the robust
profile behind STL's seasonal step, Cleveland et al. 1990), and the MAD is taken of the residuals,
so a daily peak is not an anomaly. With less history, the expected value is the series median.
No series' scale falls below ``fleet_floor`` (half) of its metric's typical scale across the
fleet, an empirical-Bayes style shrinkage (:func:`detectors.robust.fleet_floored`). A point
``alert_z`` robust sigmas out scores at least the alert threshold whatever the training history
held (:meth:`RobustZScore.score_floor`).
"""

from __future__ import annotations

from typing import Self

import numpy as np
import pandas as pd

from detectors.metrics.matrix import series_metric, smooth
from detectors.robust import fleet_floored, robust_baseline, severity_direction
from melt.core.bundle import MeltBundle
from melt.core.calibration import effect_size_floor
from melt.core.detector import Detector, empty_scores
from melt.core.timeutil import parse_duration


class RobustZScore(Detector):
    """Robust z-score over each metric series.

    Args:
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
        min_points: series with fewer training points are not scored.
        rel_floor: scale floor as a share of the median, so near-constant series do not explode.
        season: length of the seasonal cycle; ``profile_bucket`` the time-of-day resolution of the profile.
        min_seasons: seasons of training data needed before the seasonal profile is used.
        smooth_window: the score is the trailing median of |z| over this many points of the series,
            so a lone one-point blip (a p99 of three requests) does not alert; 1 = off.
        fleet_floor: no series' sigma falls below this share of the typical sigma of its metric
            across the series that moved in training (:func:`detectors.robust.fleet_floored`); 0 = off.
        alert_z: a (smoothed) score of at least this many robust sigmas scores at least 4 calibrated
            sigma (the ensemble's default threshold), and proportionally more above it, whatever the
            training history held; 0 = calibration only (:meth:`score_floor`).
    """

    name = "zscore"
    signal = "metrics"

    def __init__(self, expected_sigmas: float = 3.0, min_points: int = 10, rel_floor: float = 0.05,
                 season: str = "1d", profile_bucket: str = "30m", min_seasons: float = 2.0, smooth_window: int = 3,
                 fleet_floor: float = 0.5, alert_z: float = 20.0) -> None:
        self.expected_sigmas = expected_sigmas
        self.min_points = min_points
        self.rel_floor = rel_floor
        self.season = season
        self.profile_bucket = profile_bucket
        self.min_seasons = min_seasons
        self.smooth_window = smooth_window
        self.fleet_floor = fleet_floor
        self.alert_z = alert_z

    def _phase(self, timestamps: pd.Series) -> np.ndarray:
        """Index of each time's bucket within the season (e.g. the half hour of the day)."""
        ns = pd.to_datetime(timestamps, utc=True).dt.as_unit("ns").astype("int64").to_numpy()
        season, bucket = parse_duration(self.season).value, parse_duration(self.profile_bucket).value
        return (ns % season) // bucket

    @staticmethod
    def _keys(frame: pd.DataFrame) -> list[pd.Series]:
        instance = frame["instance"].fillna("") if "instance" in frame.columns else pd.Series("", index=frame.index)
        return [frame["service"].rename("service"), instance.rename("instance"), series_metric(frame).rename("metric")]

    def fit(self, bundle: MeltBundle) -> Self:
        frame = self.require(bundle).dropna(subset=["value"])
        keys = self._keys(frame)
        baseline = robust_baseline(frame["value"], keys, rel_floor=self.rel_floor, tail_quantile=0.99)
        self.profile_: pd.Series | None = None
        span = frame["timestamp"].max() - frame["timestamp"].min() if len(frame) else pd.Timedelta(0)
        if len(frame) and span >= parse_duration(self.season) * self.min_seasons:
            phase = pd.Series(self._phase(frame["timestamp"]), index=frame.index, name="phase")
            profile = frame["value"].groupby([*keys, phase], observed=True).median()
            expected = profile.reindex(pd.MultiIndex.from_arrays([*keys, phase])).to_numpy()
            residual = robust_baseline(pd.Series(frame["value"].to_numpy() - expected), keys, rel_floor=0.0, tail_quantile=0.99)
            floor = np.maximum(baseline["median"].abs() * self.rel_floor, 1e-6)
            baseline["sigma"] = np.maximum(residual["sigma"].reindex(baseline.index).to_numpy(), floor)
            self.profile_ = profile
        baseline["sigma"] = fleet_floored(baseline, self.fleet_floor, self.rel_floor)
        self.baseline_ = baseline[baseline["count"] >= self.min_points]
        return self

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """A point ``alert_z`` of its series' own robust sigmas out is anomalous, however wild the pooled history was.

        Calibration pools every series and tops its scale out at the largest training score: one
        series that ran 232 sigma out in the 2 h before (an earlier fault, in a rolling refit's
        unlabelled history) squashed a CPU hog's 100 sigma to 3.5. Points far past what normal
        noise reaches keep a score in proportion to their own z; the rest keep the calibrated one.
        """
        return effect_size_floor(raw, self.alert_z)

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        if frame.empty:
            return empty_scores()
        key_arrays = [k.to_numpy() for k in self._keys(frame)]
        stats = self.baseline_.reindex(pd.MultiIndex.from_arrays(key_arrays, names=["service", "instance", "metric"]))
        known = stats["median"].notna().to_numpy()
        frame = frame[known]
        key_arrays = [k[known] for k in key_arrays]
        median = stats["median"].to_numpy()[known]
        sigma = stats["sigma"].to_numpy()[known]
        if self.profile_ is not None:
            index = pd.MultiIndex.from_arrays([*key_arrays, self._phase(frame["timestamp"])])
            seasonal = self.profile_.reindex(index).to_numpy()
            median = np.where(np.isnan(seasonal), median, seasonal)
        value = frame["value"].to_numpy()
        z = (value - median) / sigma
        series = pd.MultiIndex.from_arrays(key_arrays).factorize()[0]
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
            "entity": key_arrays[2],
            "score": smooth(np.abs(z), series, self.smooth_window, how="median"),
            "evidence": evidence,
        })
