"""Level shifts, weekly seasons and bursty series (issue 27): alert once, then the new normal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from melt.core.bundle import MeltBundle
from melt.core.registry import build_detector
from melt.reports.evidence import alert_episodes, select_evidence


def series(values: np.ndarray, start: str = "2026-01-05", freq: str = "1min", service: str = "api",
           metric: str = "latency_p95") -> pd.DataFrame:
    times = pd.date_range(start, periods=len(values), freq=freq, tz="UTC")
    return pd.DataFrame({"timestamp": times, "service": service, "instance": None, "metric": metric, "value": values})


def scored_in_steps(stream, test: pd.DataFrame, start: str = "2026-01-05T10:00Z", steps: int = 48) -> pd.Series:
    """``test``'s scores as a stream gives them: 5-minute steps, each scored with 30 minutes of
    context (iforest's trend and lstm_ae's window with the smoothing need > 10 rows), then taken in
    (``observe``); indexed by service and timestamp."""
    context, parts = pd.Timedelta("30min"), []
    for begin in pd.date_range(start, periods=steps, freq="5min"):
        end = begin + pd.Timedelta("5min")
        frame = MeltBundle(metrics=test[(test["timestamp"] >= begin - context) & (test["timestamp"] < end)])
        scores = stream.detect(frame)
        parts.append(scores[scores["timestamp"] >= begin])
        stream.observe(frame, begin, end)
    return pd.concat(parts).set_index(["service", "timestamp"])["score"]


def alert_runs(scores: pd.Series, threshold: float = 4.0) -> int:
    """Runs of consecutive rows at or over the threshold."""
    alert = scores.to_numpy() >= threshold
    return int((alert & ~np.r_[False, alert[:-1]]).sum())


def test_a_shift_that_stays_alerts_once_then_is_the_new_normal() -> None:
    rng = np.random.default_rng(3)
    train = MeltBundle(metrics=series(100 + rng.normal(0, 2, 300)))
    after = np.r_[100 + rng.normal(0, 2, 60), 130 + rng.normal(0, 2, 240)]  # +6 sigma (of the 5% floor) from minute 60 on
    test = MeltBundle(metrics=series(after, start="2026-01-05T05:00Z"))
    for name, params in (("changepoint", {}), ("zscore", {"adapt": "30m"})):
        scores = build_detector(name, params).fit_calibrated(train).detect(test).set_index("timestamp")["score"]
        assert scores.iloc[60:70].max() >= 4.0, name  # the change alerts within minutes
        assert alert_runs(scores) == 1, name  # ... once
        assert scores.iloc[-60:].max() < 4.0, name  # and the new level is normal by the last hour
    fixed = build_detector("zscore", {"adapt": None, "history": False}).fit_calibrated(train).detect(test)
    assert fixed["score"].iloc[-60:].min() >= 4.0  # a fixed baseline would alert to the end


def test_the_changepoint_sums_a_shift_that_no_single_point_shows() -> None:
    rng = np.random.default_rng(5)
    train = MeltBundle(metrics=series(10 + rng.normal(0, 1, 400)))
    test_values = np.r_[10 + rng.normal(0, 1, 60), 11.5 + rng.normal(0, 1, 120)]  # +1.5 sigma
    test = MeltBundle(metrics=series(test_values, start="2026-01-05T06:40Z"))
    detector = build_detector("changepoint").fit_calibrated(train)
    scores = detector.detect(test)
    assert scores["score"].iloc[:60].max() < 4.0
    change = scores.index[scores["score"] >= 4.0]
    assert len(change) and 60 <= change[0] <= 90
    assert scores["evidence"].iloc[change[0]]["anomaly_type"] == "level_up"
    zscore = build_detector("zscore", {"history": False}).fit_calibrated(train).detect(test)
    assert zscore["score"].max() < 4.0  # no point is far out on its own


def test_a_weekly_season_from_two_weeks_of_history() -> None:
    times = pd.date_range("2026-01-05", periods=21 * 48, freq="30min", tz="UTC")  # three weeks from a Monday
    weekend = times.day_of_week >= 5
    rng = np.random.default_rng(1)
    values = np.where(weekend, 20.0, 100.0) + 10 * np.sin(2 * np.pi * times.hour / 24) + rng.normal(0, 1, len(times))
    frame = pd.DataFrame({"timestamp": times, "service": "shop", "instance": None, "metric": "request_rate", "value": values})
    detector = build_detector("zscore").fit_calibrated(MeltBundle(metrics=frame))
    assert detector.profile_ is not None
    test_times = pd.date_range("2026-01-26", periods=7 * 48, freq="30min", tz="UTC")
    normal = np.where(test_times.day_of_week >= 5, 20.0, 100.0) + 10 * np.sin(2 * np.pi * test_times.hour / 24)
    test_frame = pd.DataFrame({"timestamp": test_times, "service": "shop", "instance": None, "metric": "request_rate",
                               "value": normal + rng.normal(0, 1, len(test_times))})
    quiet = detector.detect(MeltBundle(metrics=test_frame))
    assert (quiet["score"] >= 4.0).mean() < 0.01  # a quiet weekend is expected
    busy_sunday = test_frame.assign(value=np.where(test_times.day_of_week == 6, 100.0 + normal - 20.0, test_frame["value"]))

    def sunday_peak(model) -> float:
        scores = model.detect(MeltBundle(metrics=busy_sunday))
        return float(scores.loc[pd.DatetimeIndex(scores["timestamp"]).day_of_week == 6, "score"].max())

    assert sunday_peak(detector) >= 4.0  # a weekday's traffic on a Sunday is news
    daily_only = build_detector("zscore", {"weekly": False}).fit_calibrated(MeltBundle(metrics=frame))
    assert sunday_peak(daily_only) < 4.0  # without the week, the weekend swing widens the scale and hides it


def test_a_burst_that_is_news_for_a_calm_series_is_not_for_a_bursty_one() -> None:
    rng = np.random.default_rng(7)
    calm = 100 + rng.normal(0, 2, 2000)
    bursty = calm.copy()
    bursty[rng.choice(2000, 80, replace=False)] += rng.uniform(20, 40, 80)  # bursts of 10-20 sigma now and then
    train = MeltBundle(metrics=pd.concat([series(calm, service="calm"), series(bursty, service="bursty")]))
    test_values = 100 + rng.normal(0, 2, 120)
    test_values[60:63] += 30  # one 15-sigma burst
    test = pd.concat([series(test_values, start="2026-01-06T12:00Z", service=s) for s in ("calm", "bursty")])
    scores = build_detector("zscore").fit_calibrated(train).detect(MeltBundle(metrics=test))
    peak = scores.groupby("service")["score"].max()
    assert peak["calm"] >= 4.0 > peak["bursty"]


def test_evidence_carries_its_alert_episode() -> None:
    times = pd.date_range("2026-01-05T10:00Z", periods=6, freq="1min")
    rows = pd.DataFrame({"timestamp": times, "service": "db", "detector": "zscore", "entity": "cpu",
                         "score": [1.0, 5.0, 9.0, 6.0, 2.0, 4.5], "evidence": [{"value": float(i)} for i in range(6)]})
    episodes = alert_episodes(rows, 4.0)
    episode = episodes.loc[("db", "zscore", "cpu")]
    assert (episode["start"], episode["end"], episode["peak"]) == (times[1], times[5], times[2])
    items = select_evidence(rows, ["db"], {"zscore": "metrics"}, 5, threshold=4.0)
    assert items[0]["episode"] == {"start": times[1].isoformat(), "end": times[5].isoformat(),
                                   "peak": times[2].isoformat(), "peak_score": 9.0}
    assert "episode" not in select_evidence(rows, ["db"], {"zscore": "metrics"}, 5)[0]


@pytest.mark.parametrize(("name", "params"), [
    ("zscore", {}), ("zscore", {"adapt": "1h"}), ("zscore", {"adapt": None}),
    ("iforest", {"adapt": "1h"}), ("lstm_ae", {"adapt": "1h", "epochs": 3}), ("changepoint", {"threshold": 4.0}),
])
def test_scored_step_by_step_the_surprise_is_the_one_frame_s(name, params) -> None:
    """A stream scores 5-minute steps with the context the detector needs and lets it take in each
    step's rows (``observe``): every score equals the one-frame batch score, with the history
    learning each hour once it is over (adapt None) or once it is ``adapt`` behind."""
    rng = np.random.default_rng(11)
    train = MeltBundle(metrics=pd.concat([series(100 + rng.normal(0, 2, 600), service=s) for s in ("a", "b")]))
    values = {s: 100 + rng.normal(0, 2, 240) for s in ("a", "b")}
    values["a"][100:140] += rng.uniform(5, 30, 40)  # a stretch of bursts that raises a's own bar
    test = pd.concat([series(v, start="2026-01-05T10:00Z", service=s) for s, v in values.items()], ignore_index=True)
    batch = build_detector(name, params).fit_calibrated(train)
    whole = batch.detect(MeltBundle(metrics=test)).set_index(["service", "timestamp"])["score"]
    stream = build_detector(name, params).fit_calibrated(train)
    stepped = scored_in_steps(stream, test)
    if name in ("zscore", "changepoint"):
        assert whole.max() >= 4.0  # the bursts alert (and CUSUM declares changes: its sums restart)
    np.testing.assert_allclose(stepped.reindex(whole.index).to_numpy(), whole.to_numpy(), rtol=1e-9, atol=1e-12)
    restored = build_detector(name, params).fit_calibrated(train)
    restored.restore_online(stream.online_state())
    assert restored.online_state()["seen_until"] == stream.online_state()["seen_until"]
