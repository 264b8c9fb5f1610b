"""Robust z-score per (service, instance, metric) series against a median/MAD baseline.

The classic robust outlier rule (Hampel 1974; Iglewicz & Hoaglin's modified z-score): median and
MAD are not dragged by the outliers they must find. The score is |x - expected| / (1.4826 MAD).
When the training data covers at least ``min_seasons`` days, the expected value is a seasonal
profile from an STL decomposition, daily, and weekly as well from ``min_seasons`` weeks on
(:mod:`detectors.metrics.seasonal`), and the MAD is taken of the residuals, so a daily peak or a
quiet Sunday is not an anomaly. With less history, the expected value is the series median. A level
shift that has held for ``adapt`` becomes the new expected value (:mod:`detectors.metrics.level_shift`),
and with ``history`` the score is how unusual the recent |z| is against the series' own |z| so far
(:mod:`detectors.metrics.surprise`, after Numenta's anomaly likelihood), so a bursty series needs a
bigger burst to alert than a calm one.
No series' scale falls below ``fleet_floor`` (half) of its metric's typical scale across the
fleet, an empirical-Bayes style shrinkage (:func:`detectors.robust.fleet_floored`). A point
``alert_z`` robust sigmas out scores at least the alert threshold whatever the training history
held (:meth:`RobustZScore.score_floor`).
"""

from __future__ import annotations

from typing import NamedTuple, Self

import numpy as np
import pandas as pd

from detectors.metrics.level_shift import shift_level
from detectors.metrics.matrix import series_metric, smooth
from detectors.metrics.seasonal import DAY, stl_profiles, week_phase
from detectors.metrics.surprise import HALF_NORMAL_SD, Points, SurpriseMixin
from detectors.robust import fleet_floored, robust_baseline, severity_direction
from melt.core.bundle import MeltBundle
from melt.core.calibration import ALERT_SIGMAS, effect_size_floor
from melt.core.detector import Detector, empty_scores
from melt.core.timeutil import parse_duration

SERIES_KEYS = ("service", "instance", "metric")


class Deviations(NamedTuple):
    """Rows of known series and how far each is from its expected value."""

    frame: pd.DataFrame
    keys: list[np.ndarray]
    series: np.ndarray
    expected: np.ndarray
    sigma: np.ndarray
    z: np.ndarray


class RobustZScore(SurpriseMixin, Detector):
    """Robust z-score over each metric series.

    Args:
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
        min_points: series with fewer training points are not scored.
        rel_floor: scale floor as a share of the median, so near-constant series do not explode.
        profile_bucket: the time-of-week resolution of the seasonal profile.
        min_seasons: days of training data before the daily profile is used (weeks, for the weekly one).
        smooth_window: the score is the trailing median of |z| over this many points of the series,
            so a lone one-point blip (a p99 of three requests) does not alert; 1 = off.
        fleet_floor: no series' sigma falls below this share of the typical sigma of its metric
            across the series that moved in training (:func:`detectors.robust.fleet_floored`); 0 = off.
        alert_z: a (smoothed) score of at least this many robust sigmas scores at least 4 calibrated
            sigma (the ensemble's default threshold), and proportionally more above it, whatever the
            training history held; 0 = calibration only (:meth:`score_floor`).
        adapt: a level shift held this long becomes the expected value (90% of the trailing window
            ``expected_sigmas`` out on one side), and a |z| joins the history once its hour is this far
            behind; ``None``: never re-centre, and learn each hour once it is over.
        history: score the surprise of the recent |z| against the series' own |z| so far
            (:class:`~detectors.metrics.surprise.SurpriseMixin`); false = the calibrated smoothed |z|.
        weekly: also a weekly season (MSTL) once the training holds ``min_seasons`` weeks.
    """

    name = "zscore"
    signal = "metrics"
    partition = "service"
    series_names = SERIES_KEYS
    min_spread = HALF_NORMAL_SD  # |z| is in robust sigmas: no series is calmer than Gaussian noise
    history_of_points = True  # the median of the last few |z| against single |z|: a burst must last to count,
    recent_how = "median"  # and a lone one-minute blip (a p99 of three requests) never does,
    recent_pad = 0.0  # also at a frame's start, where the points before it count as no deviation
    pool_quantile = 0.5  # the typical series' spread, not the widest: one wild series would mute the rest

    def __init__(self, expected_sigmas: float = 3.0, min_points: int = 10, rel_floor: float = 0.05,
                 profile_bucket: str = "30m", min_seasons: float = 2.0, smooth_window: int = 3,
                 fleet_floor: float = 0.5, alert_z: float = 20.0, adapt: str | None = "1d", history: bool = True,
                 weekly: bool = True) -> None:
        self.expected_sigmas = expected_sigmas
        self.min_points = min_points
        self.rel_floor = rel_floor
        self.profile_bucket = profile_bucket
        self.min_seasons = min_seasons
        self.smooth_window = smooth_window
        self.fleet_floor = fleet_floor
        self.alert_z = alert_z
        self.adapt = adapt
        self.history = history
        self.weekly = weekly

    def _phase(self, timestamps: pd.Series) -> np.ndarray:
        """Index of each time's bucket within the week (the profile's phase, :mod:`detectors.metrics.seasonal`)."""
        return week_phase(timestamps, parse_duration(self.profile_bucket))

    @staticmethod
    def _keys(frame: pd.DataFrame) -> list[pd.Series]:
        instance = frame["instance"].fillna("") if "instance" in frame.columns else pd.Series("", index=frame.index)
        return [frame["service"].rename("service"), instance.rename("instance"), series_metric(frame).rename("metric")]

    def fit(self, bundle: MeltBundle) -> Self:
        frame = self.require(bundle).dropna(subset=["value"])
        self._pool_baselines([self._series_baselines(frame, self._seasonal(frame["timestamp"]))])
        self.learn_history(bundle)
        return self

    def _seasonal(self, timestamps: pd.Series) -> bool:
        """Whether the training holds ``min_seasons`` days, so the expected value is the STL profile."""
        return bool(len(timestamps)) and timestamps.max() - timestamps.min() >= DAY * self.min_seasons

    def _series_baselines(self, frame: pd.DataFrame, seasonal: bool) -> tuple[pd.DataFrame, pd.Series | None]:
        """Each series' median and robust sigma (of the residuals from its STL profile, when
        ``seasonal``), and the profiles: series by series, so a part of the series gives its rows."""
        keys = self._keys(frame)
        baseline = robust_baseline(frame["value"], keys, rel_floor=self.rel_floor, tail_quantile=0.99)
        if not (seasonal and len(frame)):
            return baseline, None
        named = frame.assign(**{k.name: k.to_numpy() for k in keys})
        profile = stl_profiles(named, list(SERIES_KEYS), parse_duration(self.profile_bucket), self.weekly,
                               self.min_seasons)
        phase = pd.Series(self._phase(frame["timestamp"]), index=frame.index, name="phase")
        expected = profile.reindex(pd.MultiIndex.from_arrays([*keys, phase])).to_numpy()
        expected = np.where(np.isnan(expected), baseline["median"].reindex(
            pd.MultiIndex.from_arrays(keys)).to_numpy(), expected)
        residual = robust_baseline(pd.Series(frame["value"].to_numpy() - expected), keys, rel_floor=0.0, tail_quantile=0.99)
        floor = np.maximum(baseline["median"].abs() * self.rel_floor, 1e-6)
        baseline["sigma"] = np.maximum(residual["sigma"].reindex(baseline.index).to_numpy(), floor)
        return baseline, profile

    def _pool_baselines(self, parts: list[tuple[pd.DataFrame, pd.Series | None]]) -> None:
        """The fleet's steps over every series' baseline: the fleet floor, then ``min_points``."""
        baseline = pd.concat([b for b, _ in parts]).sort_index() if len(parts) > 1 else parts[0][0]
        profiles = [p for _, p in parts if p is not None]
        profile = (pd.concat(profiles).sort_index() if len(profiles) > 1 else profiles[0]) if profiles else None
        self.profile_: pd.Series | None = profile if profile is not None and len(profile) else None
        baseline["sigma"] = fleet_floored(baseline, self.fleet_floor, self.rel_floor)
        self.baseline_ = baseline[baseline["count"] >= self.min_points]

    # ---------------------------------------------- fitting by parts (melt.core.sharded_fit)
    fit_rounds = 3

    def fit_map(self, bundle: MeltBundle, step: int) -> object:
        frame = self.require(bundle).dropna(subset=["value"])
        if step == 0:
            return (frame["timestamp"].min(), frame["timestamp"].max()) if len(frame) else None
        if step == 1:
            return self._series_baselines(frame, self.seasonal_)
        return self.history_sums(bundle)

    def fit_reduce(self, step: int, parts: list) -> None:
        if step == 0:
            found = [p for p in parts if p is not None]
            self.seasonal_ = bool(found) and max(p[1] for p in found) - min(p[0] for p in found) >= DAY * self.min_seasons
        elif step == 1:
            self._pool_baselines(parts)
            del self.seasonal_
        else:
            self.pool_history([p for p in parts if p is not None])

    def points(self, bundle: MeltBundle) -> Points | None:
        """Each row's |z| (:meth:`SurpriseMixin.points`)."""
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        deviations = self.deviations(frame) if len(frame) else None
        return None if deviations is None else self._points_of(deviations)

    @staticmethod
    def _points_of(deviations: Deviations) -> Points:
        return Points(np.abs(deviations.z), deviations.series, deviations.keys, deviations.frame["timestamp"])

    def score_floor(self, raw: np.ndarray) -> np.ndarray | None:
        """A point ``alert_z`` of its series' own robust sigmas out is anomalous, however wild the pooled history was.

        Calibration pools every series and tops its scale out at the largest training score: one
        series that ran 232 sigma out in the 2 h before (an earlier fault, in a rolling refit's
        unlabelled history) squashed a CPU hog's 100 sigma to 3.5. Points far past what normal
        noise reaches keep a score in proportion to their own z; the rest keep the calibrated one.
        """
        return effect_size_floor(raw, self.alert_z)

    def deviations(self, frame: pd.DataFrame) -> Deviations | None:
        """Each row of a known series against its expected value (``None``: no row is of a known series).

        ``frame`` is in time order. The expected value is the series' median, or its seasonal
        profile, moved by a level shift that has held for ``adapt`` (:mod:`detectors.metrics.level_shift`).
        """
        key_arrays = [k.to_numpy() for k in self._keys(frame)]
        stats = self.baseline_.reindex(pd.MultiIndex.from_arrays(key_arrays, names=list(SERIES_KEYS)))
        known = stats["median"].notna().to_numpy()
        if not known.any():
            return None
        frame = frame[known]
        key_arrays = [k[known] for k in key_arrays]
        expected = stats["median"].to_numpy()[known]
        sigma = stats["sigma"].to_numpy()[known]
        if self.profile_ is not None:
            index = pd.MultiIndex.from_arrays([*key_arrays, self._phase(frame["timestamp"])])
            seasonal = self.profile_.reindex(index).to_numpy()
            expected = np.where(np.isnan(seasonal), expected, seasonal)
        value = frame["value"].to_numpy()
        series = pd.MultiIndex.from_arrays(key_arrays).factorize()[0]
        if self.adapt:
            expected = expected + shift_level(value - expected, sigma, series, frame["timestamp"].to_numpy(),
                                              parse_duration(self.adapt), min_sigmas=self.expected_sigmas)
        return Deviations(frame, key_arrays, series, expected, sigma, (value - expected) / sigma)

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        deviations = self.deviations(frame) if len(frame) else None
        if deviations is None:
            return empty_scores()
        score = self._raw_score(self._points_of(deviations))
        return self.deviation_scores(deviations, deviations.expected, score, severity_direction(deviations.z))

    def deviation_scores(self, deviations: Deviations, expected: np.ndarray, score: np.ndarray,
                         anomaly_type: np.ndarray) -> pd.DataFrame:
        """The score frame of ``deviations``' rows, with evidence measured from ``expected``
        (value, expected range, anomaly type, z, instance); shared with the changepoint detector."""
        frame, keys, sigma = deviations.frame, deviations.keys, deviations.sigma
        value = frame["value"].to_numpy()
        low, high = expected - self.expected_sigmas * sigma, expected + self.expected_sigmas * sigma
        instance = frame["instance"].fillna("").to_numpy() if "instance" in frame.columns else np.full(len(frame), "")
        evidence = pd.DataFrame({
            "value": np.round(value, 4),
            "expected_range": np.stack([np.round(low, 4), np.round(high, 4)], axis=1).tolist(),
            "anomaly_type": anomaly_type, "z": np.round((value - expected) / sigma, 2),
            "instance": pd.Series(instance).replace("", None).to_numpy(dtype=object),
        }).to_dict("records")
        return pd.DataFrame({
            "timestamp": frame["timestamp"].to_numpy(),
            "service": frame["service"].to_numpy(),
            "detector": self.name,
            "entity": keys[2],
            "score": score,
            "evidence": evidence,
        })

    def _raw_score(self, points: Points) -> np.ndarray:
        """The smoothed |z|; with ``history``, its surprise against the series' own |z| so far
        (:class:`~detectors.metrics.surprise.SurpriseMixin`), raised so that an ``alert_z`` |z| still alerts."""
        recent = smooth(points.deviation, points.series, self.smooth_window, how="median", pad=self.recent_pad)
        if getattr(self, "score_history_", None) is None:  # history off (or a model saved before it)
            return recent
        unusual = self.surprised(points)
        if self.alert_z <= 0:
            return unusual
        return np.fmax(unusual, np.where(recent >= self.alert_z, ALERT_SIGMAS * recent / self.alert_z, 0.0))
