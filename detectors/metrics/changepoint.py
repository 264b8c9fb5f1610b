"""Two-sided CUSUM change-point detection per metric series, restarting at the new level after each change.

Page's cumulative sum (Page 1954; Montgomery, *Statistical Quality Control*, ch. 9): the sums
``S+ = max(0, S+ + z - k)`` and ``S- = max(0, S- - z - k)`` of each point's robust z (against the
same expected value as :class:`detectors.metrics.zscore.RobustZScore`: median or seasonal profile)
grow while a series sits above or below its expected level, and a change is declared when one
reaches ``h``. A small shift that no single point shows (a latency up by one sigma for an hour)
adds up; a lone spike does not (each distance is clipped at ``clip`` sigma before it is summed). At a
change the level is re-estimated (the mean distance over the points since the sum left 0) and both sums restart,
so a shift that stays alerts once and its new level is then normal. The raw score is the larger
sum in units of ``h``, and the calibrated score four times that: a sum at ``h`` scores the alert
threshold (4). Each series' z are first divided by how much its autocorrelation widens a sum.
"""

from __future__ import annotations

from typing import Any, Self

import numpy as np
import pandas as pd

from detectors.metrics.zscore import SERIES_KEYS, Deviations, RobustZScore
from detectors.robust import severity_direction
from melt.core.bundle import MeltBundle
from melt.core.calibration import ALERT_SIGMAS
from melt.core.detector import Detector, empty_scores

MAX_AUTOCORRELATION = 0.95


State = tuple[float, float, float, int, float, int, float]  # level, S+, S-, and for each: points since it left 0, their distance sum
START: State = (0.0, 0.0, 0.0, 0, 0.0, 0, 0.0)


def cusum(z: np.ndarray, series: np.ndarray, k: float, h: float, clip: float,
          initial: dict[int, State] | None = None) -> tuple[np.ndarray, np.ndarray, dict[int, State]]:
    """The larger CUSUM sum at each row (in units of ``h``), the level shift (in sigma) in force
    there, and each series' state after its last row.

    Rows are in time order within each ``series`` code; a series starts from ``initial`` (default:
    level 0, empty sums). Each point's distance from the level in force is clipped at ``clip``
    before it is summed; the new level after a change is the mean of the unclipped distances since
    the sum left 0. A loop over rows: each restart depends on the sums before it, so there is no
    vectorised form (300,000 rows in about 0.3 s).
    """
    z = np.nan_to_num(np.asarray(z, dtype=float))
    out = np.zeros(len(z))
    shift = np.zeros(len(z))
    state: dict[int, State] = dict(initial or {})
    for i, (value, code) in enumerate(zip(z.tolist(), series.tolist(), strict=True)):
        level, up, down, n_up, sum_up, n_down, sum_down = state.get(code, START)
        shift[i] = level
        distance = value - level
        x = min(max(distance, -clip), clip)
        up, down = max(0.0, up + x - k), max(0.0, down - x - k)
        n_up, sum_up = (n_up + 1, sum_up + distance) if up > 0 else (0, 0.0)
        n_down, sum_down = (n_down + 1, sum_down + distance) if down > 0 else (0, 0.0)
        out[i] = max(up, down) / h
        if up >= h:
            level, up, down, n_up, sum_up, n_down, sum_down = level + sum_up / n_up, *START[1:]
        elif down >= h:
            level, up, down, n_up, sum_up, n_down, sum_down = level + sum_down / n_down, *START[1:]
        state[code] = (level, up, down, n_up, sum_up, n_down, sum_down)
    return out, shift, state


class CusumChangepoint(Detector):
    """CUSUM change points over each metric series.

    Args:
        drift: ``k``, the allowance in sigma per point: shifts smaller than about twice this are ignored.
        threshold: ``h``, the sum (in sigma) that declares a change.
        clip: each point's |z| is clipped at this before it is summed, so one spike is not a change.
        profile_bucket, min_seasons, min_points, rel_floor, fleet_floor: the expected value and
            scale, as :class:`~detectors.metrics.zscore.RobustZScore` learns them.
        expected_sigmas: half-width of ``expected_range`` in robust sigmas.
    """

    name = "changepoint"
    signal = "metrics"
    partition = "service"

    def __init__(self, drift: float = 0.5, threshold: float = 8.0, clip: float = 4.0, profile_bucket: str = "30m",
                 min_seasons: float = 2.0, min_points: int = 10, rel_floor: float = 0.05, fleet_floor: float = 0.5, expected_sigmas: float = 3.0) -> None:
        self.drift = drift
        self.threshold = threshold
        self.clip = clip
        self.profile_bucket = profile_bucket
        self.min_seasons = min_seasons
        self.min_points = min_points
        self.rel_floor = rel_floor
        self.fleet_floor = fleet_floor
        self.expected_sigmas = expected_sigmas

    def _baseline(self) -> RobustZScore:
        return RobustZScore(expected_sigmas=self.expected_sigmas, min_points=self.min_points, rel_floor=self.rel_floor,
                            profile_bucket=self.profile_bucket, min_seasons=self.min_seasons,
                            fleet_floor=self.fleet_floor, adapt=None, history=False)

    def fit(self, bundle: MeltBundle) -> Self:
        self.baseline_ = self._baseline().fit(bundle)
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        trained = self.baseline_.deviations(frame) if len(frame) else None
        self.inflation_ = pd.Series(dtype=float)
        if trained is not None:
            self.inflation_ = self._inflation(trained.z, trained.series, trained.keys)
        self.state_: dict[tuple, State] = {}  # a stream's sums per series, carried across its steps
        self.seen_until_: pd.Timestamp | None = None
        return self

    # ---------------------------------------------- fitting by parts (melt.core.sharded_fit)
    fit_rounds = 3  # the baseline's two (time span, series baselines), then each series' inflation

    def fit_map(self, bundle: MeltBundle, step: int) -> object:
        if step < 2:
            if step == 0:
                self.building_ = self._baseline()
            return self.building_.fit_map(bundle, step)
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        trained = self.baseline_.deviations(frame) if len(frame) else None
        return None if trained is None else self._inflation(trained.z, trained.series, trained.keys)

    def fit_reduce(self, step: int, parts: list) -> None:
        if step == 0:
            self.building_ = self._baseline()
        if step < 2:
            self.building_.fit_reduce(step, parts)
            if step == 1:
                self.building_.pool_history([])  # history=False: no history, as its fit leaves it
                self.baseline_ = self.building_
                del self.building_
            return
        found = [p for p in parts if p is not None]
        self.inflation_ = pd.concat(found) if found else pd.Series(dtype=float)
        self.state_ = {}
        self.seen_until_ = None

    def _inflation(self, z: np.ndarray, series: np.ndarray, keys: list[np.ndarray]) -> pd.Series:
        """Per series: how much wider its sums spread than independent noise's, ``sqrt((1 + phi) / (1 - phi))``.

        Real metrics are autocorrelated (lag-1 correlation ``phi`` of the training z), and a sum of
        correlated points wanders far more than CUSUM's thresholds assume: a series that drifts
        slowly would declare a change every few hours. Its z are divided by this before summing.
        """
        clipped = pd.Series(np.clip(z, -self.clip, self.clip))
        pairs = pd.DataFrame({"z": clipped, "lag": clipped.groupby(series).shift(1), "series": series}).dropna()
        codes = np.arange(int(series.max()) + 1)
        phi = pairs.groupby("series")["z"].corr(pairs["lag"]).reindex(codes).fillna(0.0)
        phi = np.clip(phi.to_numpy(dtype=float), 0.0, MAX_AUTOCORRELATION)
        first = pd.Series(np.arange(len(series))).groupby(series).first().reindex(codes).to_numpy()
        index = pd.MultiIndex.from_arrays([k[first] for k in keys], names=list(SERIES_KEYS))
        return pd.Series(np.sqrt((1 + phi) / (1 - phi)), index=index)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """The sum in units of ``threshold`` times the alert threshold: a declared change scores 4.

        Not the quantile map of the other detectors: a training stretch without a change holds only
        near-zero sums, and stretching those onto the normal's tail made every small wobble after
        it score like a change. ``threshold`` is already a rate choice (Page's average run length).
        """
        self.check_is_fitted()
        return ALERT_SIGMAS * np.asarray(raw, dtype=float)

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        deviations = self.baseline_.deviations(frame) if len(frame) else None
        if deviations is None:
            return empty_scores()
        fresh = self._fresh(deviations.frame["timestamp"])
        sums, shift = np.zeros(len(fresh)), np.zeros(len(fresh))
        sums[fresh], shift[fresh], _ = self._run(deviations, fresh)
        inflation = self._inflation_of(deviations)
        level = deviations.expected + shift * inflation * deviations.sigma
        direction = severity_direction(deviations.frame["value"].to_numpy() - level)
        scores = self.baseline_.deviation_scores(deviations, level, sums, np.where(direction == "spike", "level_up", "level_down"))
        scores = scores[fresh].reset_index(drop=True)  # a stream's context rows were scored in the step before
        return scores.assign(detector=self.name)

    # ------------------------------------------------------------------ a stream's sums across steps
    def observe(self, bundle: MeltBundle, since: pd.Timestamp, until: pd.Timestamp) -> None:
        """Carry each series' sums past the rows before ``until`` not carried yet (the step's, and a first
        step's context): the next step goes on from them as a batch run's one frame goes on from its
        earlier rows."""
        frame = self.require(bundle).dropna(subset=["value"]).sort_values("timestamp", kind="stable")
        deviations = self.baseline_.deviations(frame) if len(frame) else None
        if deviations is not None:
            times = deviations.frame["timestamp"]
            rows = self._fresh(times) & (times < until).to_numpy()  # a first frame's context too, as batch sums it
            *_, state = self._run(deviations, rows)
            keys = self._series_keys(deviations)
            self.state_ = {**self.state_, **{keys[code]: value for code, value in state.items()}}
        self.seen_until_ = until if self.seen_until_ is None else max(self.seen_until_, until)

    def online_state(self) -> dict[str, Any] | None:
        return {"state": dict(self.state_), "seen_until": self.seen_until_}

    def restore_online(self, state: dict[str, Any]) -> None:
        self.state_, self.seen_until_ = dict(state["state"]), state["seen_until"]

    def _run(self, deviations: Deviations, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[int, State]]:
        """:func:`cusum` over ``rows``, each series starting from its carried state."""
        keys = self._series_keys(deviations)
        carried = getattr(self, "state_", {})
        initial = {code: carried[key] for code, key in keys.items() if key in carried}
        z = deviations.z / self._inflation_of(deviations)
        return cusum(z[rows], deviations.series[rows], self.drift, self.threshold, self.clip, initial)

    def _inflation_of(self, deviations: Deviations) -> np.ndarray:
        index = pd.MultiIndex.from_arrays(deviations.keys, names=list(SERIES_KEYS))
        return self.inflation_.reindex(index).fillna(1.0).to_numpy()

    @staticmethod
    def _series_keys(deviations: Deviations) -> dict[int, tuple]:
        """Series code -> its (service, instance, metric)."""
        first = pd.Series(np.arange(len(deviations.series))).groupby(deviations.series).first()
        return {int(code): tuple(k[row] for k in deviations.keys) for code, row in first.items()}

    def _fresh(self, timestamps: pd.Series) -> np.ndarray:
        """Rows a stream has not carried the sums past yet (all, outside a stream)."""
        seen = getattr(self, "seen_until_", None)
        return np.ones(len(timestamps), bool) if seen is None else (timestamps >= seen).to_numpy()

