"""How unusual a series' recent score is against the scores it has shown before.

After Numenta's anomaly likelihood (Ahmad, Lavin, Purdy and Agha, "Unsupervised real-time anomaly
detection for streaming data", Neurocomputing 2017): a raw score is not compared with a fixed scale
but with the distribution of that series' own scores so far. The short-term mean of the last few
scores is standardised by the mean and standard deviation of the series' earlier ones (its training
scores, then those of the data scored after it). A series whose normal life holds big swings
(tweet volume, a bursty queue) needs a bigger swing to alert than a calm one, and a series that
keeps swinging raises its own bar.

The history learns an hour at a time (:data:`BUCKET`): a score joins it once its hour is ``adapt``
behind (off: once its hour is over), so a change is measured against the history before it for
``adapt`` and is then part of the normal, and a burst is never compared with itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from detectors.metrics.alert_budget import COLUMNS as BUDGET_COLUMNS
from detectors.metrics.alert_budget import budgeted
from detectors.metrics.matrix import UNIT_KEYS, smooth
from melt.core.bundle import MeltBundle
from melt.core.timeutil import parse_duration

HALF_NORMAL_SD = float(np.sqrt(1 - 2 / np.pi))  # the spread of |z| for Gaussian noise, about 0.60
RELATIVE_SPREAD = 0.05  # scores with no unit of their own: the spread is at least this share of their mean
BUCKET = pd.Timedelta("1h")  # the history learns an hour of scores at a time
SUMS = ["count", "total", "squares"]


def deviation_sums(deviation: np.ndarray, keys: list[np.ndarray], names: list[str],
                   bucket: np.ndarray | None = None) -> pd.DataFrame:
    """Per series (indexed by ``keys`` named ``names``, and by ``bucket`` when given): ``count``,
    ``total`` and ``squares`` of its scores."""
    frame = pd.DataFrame({"count": 1.0, "total": deviation, "squares": deviation ** 2})
    by = [pd.Series(k, name=n) for k, n in zip(keys, names, strict=True)]
    if bucket is not None:
        by.append(pd.Series(bucket, name="bucket"))
    return frame.groupby(by, observed=True).sum()


def add_sums(history: pd.DataFrame, more: pd.DataFrame) -> pd.DataFrame:
    """Two :func:`deviation_sums` tables pooled (a series in either is in the result)."""
    if not len(more):
        return history
    return history.add(more, fill_value=0.0) if len(history) else more


def sums_before(buckets: pd.DataFrame, keys: list[np.ndarray], names: list[str], cutoff: np.ndarray) -> np.ndarray:
    """Per row: the sums of its series' ``buckets`` (a :func:`deviation_sums` table by bucket) that
    start before the row's ``cutoff``."""
    if not len(buckets):
        return np.zeros((len(cutoff), 3))
    table = buckets.reset_index()
    table["series"] = pd.MultiIndex.from_frame(table[names]).to_flat_index()
    table = table.sort_values("bucket", kind="stable")
    table[SUMS] = table.groupby("series", sort=False)[SUMS].cumsum()
    rows = pd.DataFrame({"series": pd.MultiIndex.from_arrays(keys).to_flat_index(), "bucket": cutoff,
                         "order": np.arange(len(cutoff))}).sort_values("bucket", kind="stable")
    merged = pd.merge_asof(rows, table[["series", "bucket", *SUMS]], on="bucket", by="series",
                           allow_exact_matches=False)
    return merged.sort_values("order")[SUMS].fillna(0.0).to_numpy()


def spread_of(sums: np.ndarray) -> np.ndarray:
    """The standard deviation of each row's history from its (count, total, squares)."""
    count = np.fmax(sums[:, 0], 1.0)
    return np.sqrt(np.clip(sums[:, 2] / count - (sums[:, 1] / count) ** 2, 0.0, None))


def surprise(recent: np.ndarray, sums: np.ndarray, min_spread: float | None = HALF_NORMAL_SD,
             fleet_spread: float = 0.0) -> np.ndarray:
    """``(recent - mean) / spread`` of each row against its history's ``sums`` (count, total, squares),
    clipped at 0.

    ``min_spread`` floors the spread in the score's own unit (|z| in robust sigmas: Gaussian noise's
    0.60, so a series that sat still in training is not made touchy again); ``None`` floors it at
    :data:`RELATIVE_SPREAD` of the mean. ``fleet_spread`` floors it too (the widest spread among the
    detector's series in training, :meth:`SurpriseMixin.learn_history`).
    """
    mean = sums[:, 1] / np.fmax(sums[:, 0], 1.0)
    floor = min_spread if min_spread is not None else RELATIVE_SPREAD * np.abs(mean) + 1e-12
    return np.clip((recent - mean) / np.fmax(spread_of(sums), np.fmax(floor, fleet_spread)), 0.0, None)


class Points(NamedTuple):
    """A detector's point scores (before smoothing) and the series each row belongs to, rows in time
    order within each series."""

    deviation: np.ndarray
    series: np.ndarray  # integer code per row
    keys: list[np.ndarray]  # the series' key values per row, named by ``SurpriseMixin.series_names``
    timestamps: pd.Series

    @classmethod
    def of_units(cls, deviation: np.ndarray, units: np.ndarray, wide: pd.DataFrame) -> Points:
        """Scores of the rows of a wide (service, instance, timestamp) frame, one series per unit."""
        keys = [wide.index.get_level_values(k).to_numpy() for k in UNIT_KEYS]
        return cls(deviation, units, keys, pd.Series(wide.index.get_level_values("timestamp")))

    def where(self, rows: np.ndarray) -> Points:
        """The points of the selected rows."""
        return Points(self.deviation[rows], self.series[rows], [k[rows] for k in self.keys],
                      self.timestamps[rows].reset_index(drop=True))


class SurpriseMixin:
    """Scores as :func:`surprise` against each series' own history, for detectors with a ``history`` switch.

    A detector implements :meth:`points` and calls :meth:`learn_history` at the end of ``fit`` and
    :meth:`surprised` in ``score``; its ``adapt`` (a duration or ``None``) says when a score joins the
    history. A stream hands each step's scored rows to :meth:`observe`; the scores not yet in the
    history wait there as hour sums. The surprise is a standardised score, so it is the calibrated
    score as it is.
    """

    series_names: tuple[str, ...] = ()
    min_spread: float | None = None  # the spread's floor in the score's unit (None: RELATIVE_SPREAD of the mean)
    history_of_points: bool = False  # the history holds single scores (True) or their short-term means
    recent_how: str = "mean"  # the short-term "mean" or "median" (a lone one-point blip never counts)
    recent_pad: float | None = None  # what the rows before a frame's first count as in the short term (None: left out)
    pool_quantile: float = 1.0  # no series' spread under this quantile of the training spreads across series
    alert_budget: float | None = None  # alert episodes a series may raise per day before its bar rises (alert_budget.py)
    history: bool
    adapt: str | None
    smooth_window: int

    def points(self, bundle: MeltBundle) -> Points | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def prior_points(self, bundle: MeltBundle) -> Points | None:
        """The training rows the history starts from (default: all of them)."""
        return self.points(bundle)

    def history_sums(self, bundle: MeltBundle) -> pd.DataFrame | None:
        """The :func:`deviation_sums` of ``bundle``'s training rows (a part's share of the history in
        a fit by parts; ``None``: nothing to learn), for :meth:`pool_history`."""
        points = self.prior_points(bundle) if self.history else None
        return None if points is None or not len(points.deviation) else \
            deviation_sums(self._learned(points), points.keys, list(self.series_names))

    def learn_history(self, bundle: MeltBundle) -> None:
        sums = self.history_sums(bundle)
        self.pool_history([] if sums is None else [sums])

    def pool_history(self, sums: list[pd.DataFrame]) -> None:
        """The history from the :func:`deviation_sums` of every series (several parts' tables, each
        holding its own series), and the fleet's spread."""
        self.score_history_: pd.DataFrame | None = None
        self.pending_: pd.DataFrame | None = None  # hour sums seen but not yet `adapt` old (a stream's)
        self.seen_until_: pd.Timestamp | None = None
        self.fleet_spread_ = 0.0
        self.budget_state_ = pd.DataFrame(columns=BUDGET_COLUMNS, dtype=float,
                                          index=pd.MultiIndex.from_arrays([[]] * len(self.series_names),
                                                                          names=list(self.series_names)))
        if sums:
            self.score_history_ = pd.concat(sums).sort_index() if len(sums) > 1 else sums[0]
            # a floor from the fleet's training spreads (pool_quantile: the widest, or the typical one):
            # a unit with a short or calm history is not judged on its own few points (one unit's 14
            # held-out errors); alone, a series keeps its own
            moved = self.score_history_[self.score_history_["count"] >= 2][SUMS].to_numpy()
            self.fleet_spread_ = float(np.quantile(spread_of(moved), self.pool_quantile)) if len(moved) else 0.0

    def surprised(self, points: Points) -> np.ndarray:
        """Each row's surprise (needs the history: :meth:`learn_history` with ``history`` on), damped
        by the series' own alert rate so far when the detector has an ``alert_budget``."""
        unusual = self._surprise(points)
        if not self.alert_budget or getattr(self, "budget_state_", None) is None:
            return unusual
        return self._budgeted(points, unusual, self._fresh(points.timestamps))[0]

    def _budgeted(self, points: Points, unusual: np.ndarray, fresh: np.ndarray) -> tuple[np.ndarray, pd.DataFrame]:
        """:func:`~detectors.metrics.alert_budget.budgeted` with the series' counts from earlier frames;
        the table of counts comes back indexed by the series' keys."""
        names = list(self.series_names)
        codes = pd.Series(points.series)
        order = codes.drop_duplicates().sort_values()
        keys = pd.MultiIndex.from_arrays([k[order.index.to_numpy()] for k in points.keys], names=names)
        prior = self.budget_state_.reindex(keys)
        prior["episodes"] = prior["episodes"].fillna(0.0)
        lookup = pd.Series(np.arange(len(order)), index=order.to_numpy())
        series = lookup.reindex(codes.to_numpy()).to_numpy()
        damped, table = budgeted(unusual, series, points.timestamps, fresh, prior.reset_index(drop=True),
                                 float(self.alert_budget))
        table.index = keys  # the series' counts, by their keys, for the state a stream keeps
        return damped, table

    def _surprise(self, points: Points) -> np.ndarray:
        names = list(self.series_names)
        prior = self.score_history_.reindex(pd.MultiIndex.from_arrays(points.keys, names=names)).fillna(0.0)
        fresh = self._fresh(points.timestamps)
        frame_buckets = deviation_sums(self._learned(points)[fresh], [k[fresh] for k in points.keys], names,
                                       _bucket(points.timestamps[fresh]))
        buckets = frame_buckets if self.pending_ is None else add_sums(self.pending_, frame_buckets)
        later = sums_before(buckets, points.keys, names, self._cutoff(points.timestamps))
        recent = smooth(points.deviation, points.series, self.smooth_window, how=self.recent_how, pad=self.recent_pad)
        return surprise(recent, prior[SUMS].to_numpy() + later, self.min_spread, getattr(self, "fleet_spread_", 0.0))

    def observe(self, bundle: MeltBundle, since: pd.Timestamp, until: pd.Timestamp) -> None:
        """Take in the scores of ``bundle``'s rows in ``[since, until)``, the ones a stream step scored.

        A stream calls this after each step (:class:`melt.pipeline.stream.StreamDetector`): the rows
        wait as hour sums until no later point's history can leave them out (``adapt`` after them),
        then join the history, so each step sees the history a batch run's one frame sees before
        each point. The next frame's context rows, seen here already, are not counted again.
        """
        if getattr(self, "score_history_", None) is None:
            return
        names = list(self.series_names)
        points = self.points(bundle)
        if points is not None and len(points.deviation):
            times = points.timestamps
            new = self._fresh(times) & ((times >= since) & (times < until)).to_numpy()
            if self.alert_budget and getattr(self, "budget_state_", None) is not None:
                table = self._budgeted(points, self._surprise(points), new)[1]
                self.budget_state_ = table.combine_first(self.budget_state_)
            added = deviation_sums(self._learned(points)[new], [k[new] for k in points.keys], names, _bucket(times[new]))
            self.pending_ = added if self.pending_ is None else add_sums(self.pending_, added)
        self.seen_until_ = until if self.seen_until_ is None else max(self.seen_until_, until)
        if self.pending_ is not None and len(self.pending_):
            old = self.pending_.index.get_level_values("bucket") < self._cutoff(pd.Series([until]))[0]
            self.score_history_ = add_sums(self.score_history_, self.pending_[old].groupby(level=names).sum())
            self.pending_ = self.pending_[~old]

    def online_state(self) -> dict[str, Any] | None:
        history = getattr(self, "score_history_", None)
        if history is None:
            return None
        return {"history": history, "pending": self.pending_, "seen_until": self.seen_until_,
                "budget": getattr(self, "budget_state_", None)}

    def restore_online(self, state: dict[str, Any]) -> None:
        self.score_history_, self.pending_, self.seen_until_ = state["history"], state["pending"], state["seen_until"]
        self.budget_state_ = state.get("budget")

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """With ``history`` the raw score is already a standardised surprise: it is the calibrated score.

        The quantile map would stretch the training's own surprises (in-sample, so mostly 0) onto
        the normal's tail, and a mild surprise later would score like a fault.
        """
        if getattr(self, "score_history_", None) is None:
            return super().calibrate(raw)  # type: ignore[misc]
        self.check_is_fitted()  # type: ignore[attr-defined]
        return np.asarray(raw, dtype=float)

    def _cutoff(self, timestamps: pd.Series) -> np.ndarray:
        """Per row, the hour from which on scores are not in its history: ``adapt`` before it, or its own."""
        delay = parse_duration(self.adapt) if self.adapt else pd.Timedelta(0)
        return _bucket(pd.Series(timestamps) - delay)

    def _learned(self, points: Points) -> np.ndarray:
        """What the history holds of each row: the single score, or its short-term mean."""
        if self.history_of_points:
            return points.deviation
        return smooth(points.deviation, points.series, self.smooth_window, how=self.recent_how, pad=self.recent_pad)

    def _fresh(self, timestamps: pd.Series) -> np.ndarray:
        """Rows the history (and the stream's pending sums) do not hold yet."""
        if self.seen_until_ is None:
            return np.ones(len(timestamps), bool)
        return (pd.Series(timestamps) >= self.seen_until_).to_numpy()


def _bucket(timestamps: pd.Series) -> np.ndarray:
    """The hour each time falls in, as nanoseconds since the epoch."""
    ns = pd.to_datetime(pd.Series(timestamps), utc=True).dt.as_unit("ns").astype("int64").to_numpy()
    return ns - ns % BUCKET.value
