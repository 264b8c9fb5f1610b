"""Rolling refits: each period is scored by detectors fitted on the window just before it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melt.core.bundle import MeltBundle
from melt.core.config import default_settings
from melt.core.errors import PluginError
from melt.pipeline.fitting import fit_detectors, score_all, training_split
from melt.pipeline.rolling import periods, rolling_scores

T0 = pd.Timestamp("2026-01-01 00:00", tz="UTC")


def _drifting(hours: int = 8, spike_at: int = 420, pods: int = 20) -> MeltBundle:
    """CPU of ``pods`` pods that climbs slowly from 20 to 35 over the period; one pod spikes for 5 minutes."""
    rng = np.random.default_rng(7)
    minutes = np.arange(hours * 60)
    value = 20 + 15 * minutes / minutes[-1] + rng.normal(0, 1.0, (pods, len(minutes)))
    value[0, spike_at:spike_at + 5] += 25
    metrics = pd.DataFrame({"timestamp": np.tile(T0 + pd.to_timedelta(minutes, unit="min"), pods), "service": "db",
                            "instance": np.repeat([f"db-{i}" for i in range(pods)], len(minutes)),
                            "metric": "cpu_usage", "value": value.ravel()})
    return MeltBundle(metrics=metrics)


def test_a_slow_drift_is_the_new_normal_and_a_spike_still_stands_out() -> None:
    """Fitted once on the first hours, the climb reads as an anomaly for hours; refitted every 30
    minutes on the two hours before, it does not, and the spike still does (Merlion's
    retrain_freq / train_window)."""
    bundle, config = _drifting(), default_settings()
    threshold = config.ensemble.threshold

    def loudest_per_minute(scores: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
        loudest = scores.groupby("timestamp")["score"].max()
        minute = (loudest.index - T0).total_seconds() / 60
        spike, lag = (minute >= 421) & (minute < 426), minute == 420  # a 3-point trailing median lags one point
        return loudest[spike], loudest[~spike & ~lag]

    once = score_all(fit_detectors(training_split(bundle, 0.35), ["zscore"], config, quiet=True), bundle, quiet=True)
    rolled, signal_of = rolling_scores(bundle, ["zscore"], config, pd.Timedelta("30min"), pd.Timedelta("2h"), quiet=True)
    assert signal_of == {"zscore": "metrics"}
    once_spike, once_rest = loudest_per_minute(once)
    rolled_spike, rolled_rest = loudest_per_minute(rolled)
    assert (once_rest >= threshold).sum() > 200  # the climb, for hours after the training period
    assert (rolled_rest >= threshold).sum() < 0.25 * (once_rest >= threshold).sum()
    assert rolled_spike.min() > 3 * rolled_rest.max() and rolled_spike.min() > 0.8 * once_spike.min()  # not blunted
    # a period whose history is under min_train_rows is not scored rather than scored against nothing
    assert rolled["timestamp"].min() == T0 + pd.Timedelta("30min")


def test_a_reference_bundle_lets_the_first_periods_be_scored() -> None:
    bundle, config = _drifting(hours=2, spike_at=10), default_settings()
    reference = MeltBundle(metrics=bundle.metrics.assign(timestamp=bundle.metrics["timestamp"] - pd.Timedelta("1D")))
    rolled, _ = rolling_scores(bundle, ["zscore"], config, pd.Timedelta("30min"), pd.Timedelta("1h"), reference, quiet=True)
    assert rolled["timestamp"].min() == T0


def test_no_period_with_enough_history_is_one_clear_error() -> None:
    bundle = _drifting(hours=1)
    with pytest.raises(PluginError, match="no period of 2h could be scored: the 3h before each"):
        rolling_scores(bundle, ["zscore"], default_settings(), pd.Timedelta("2h"), pd.Timedelta("3h"), quiet=True)


def test_periods_hold_data_only() -> None:
    bundle = _drifting(hours=1)
    late = bundle.metrics.assign(timestamp=bundle.metrics["timestamp"] + pd.Timedelta("5h"))
    starts = periods(MeltBundle(metrics=pd.concat([bundle.metrics, late])), pd.Timedelta("30min"))
    assert [s - T0 for s in starts] == [pd.Timedelta(m, unit="min") for m in (0, 30, 300, 330)]


def test_a_period_starts_with_its_smoothing_warm() -> None:
    """A one-minute blip on a period's first minute is smoothed away like a blip anywhere else: the
    period is scored with the one before it as context, so the trailing median has its points."""
    bundle, config = _drifting(hours=3, spike_at=0), default_settings()
    value = bundle.metrics["value"].to_numpy().copy()
    minute = ((bundle.metrics["timestamp"] - T0).dt.total_seconds() // 60).to_numpy()
    pod = bundle.metrics["instance"].to_numpy()
    value[(pod == "db-1") & (minute == 150)] += 40  # the first minute of the 2:30 period
    value[(pod == "db-2") & (minute == 165)] += 40  # mid-period
    rolled, _ = rolling_scores(MeltBundle(metrics=bundle.metrics.assign(value=value)), ["zscore"], config,
                               pd.Timedelta("30min"), pd.Timedelta("2h"), quiet=True)
    at = rolled.assign(minute=(rolled["timestamp"] - T0).dt.total_seconds() // 60)
    first = at[(at["entity"] == "cpu_usage") & (at["minute"] == 150)]
    blip = first[first["evidence"].map(lambda e: e["instance"]) == "db-1"]["score"].max()
    assert blip < config.ensemble.threshold


def _slow_calls(minutes: int) -> MeltBundle:
    """Every 4 s a request: 'api' logs 'received', then 20 s later its call to 'db' logs 'query ok'.

    The 5 requests that start in the last 20 s of a period reach 'db' in the next one.
    """
    starts = T0 + pd.to_timedelta(np.arange(0, minutes * 60, 4), unit="s")
    n = len(starts)
    trace = np.array([f"t{i}" for i in range(n)], dtype=object)
    child_start = starts + pd.Timedelta("20s")
    spans = pd.DataFrame({"trace_id": np.r_[trace, trace], "span_id": np.r_[["root"] * n, ["call"] * n],
                          "parent_span_id": np.r_[[None] * n, ["root"] * n], "service_name": ["api"] * n + ["db"] * n,
                          "span_name": ["GET /order"] * n + ["SELECT order"] * n,
                          "start_time": starts.append(child_start), "duration": 25.0})
    logs = pd.DataFrame({"timestamp": starts.append(child_start), "service": ["api"] * n + ["db"] * n, "level": "INFO",
                         "message": [f"OrderImpl#1 received order {i}" for i in range(n)]
                         + [f"DbImpl#2 query ok for order {i}" for i in range(n)],
                         "trace_id": np.r_[trace, trace], "span_id": np.r_[["root"] * n, ["call"] * n]})
    return MeltBundle(logs=logs, traces=spans)


def test_a_trace_that_outlasts_its_period_is_scored_once_and_whole() -> None:
    """Requests that start before a period ends and log after it: the period keeps them whole, with
    their lines, and scores only its own minutes. Cut at the boundary instead, their late calls look
    like calls whose expected line vanished, and both periods score the first minute of the next."""
    config = default_settings()
    rolled, _ = rolling_scores(_slow_calls(90), ["log_patterns"], config, pd.Timedelta("10min"),
                               pd.Timedelta("30min"), quiet=True)
    assert not rolled.empty
    assert not rolled.duplicated(["timestamp", "service", "entity"]).any()
    assert rolled["score"].max() < config.ensemble.threshold
