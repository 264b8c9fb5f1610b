"""The alert budget (issue 27): a unit that keeps alerting needs a stronger score to alert again,
scored the same in one frame and step by step."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.metrics.alert_budget import EXPONENT, MIN_DAYS, budgeted
from melt.core.bundle import MeltBundle
from melt.core.registry import build_detector
from tests.test_level_shifts import scored_in_steps, series


def test_a_series_within_its_budget_scores_as_before_and_one_past_it_is_damped() -> None:
    score = np.array([5.0, 0.0, 5.0, 0.0, 5.0, 5.0, 0.0, 8.0])
    times = pd.Series(pd.date_range("2026-01-05", periods=len(score), freq="1h", tz="UTC"))
    prior = pd.DataFrame({"episodes": [0.0], "first": [np.nan]})
    fresh = np.ones(len(score), bool)
    same, table = budgeted(score, np.zeros(len(score), int), times, fresh, prior, budget=1.0)
    np.testing.assert_array_equal(same, score)  # 3 episodes before the last row: under 1 a day over MIN_DAYS
    assert table["episodes"].tolist() == [4.0]
    damped, _ = budgeted(score, np.zeros(len(score), int), times, fresh, prior, budget=0.1)
    rate = np.array([0, 1, 1, 2, 2, 3, 3, 3]) / MIN_DAYS  # episodes that started before each row, per day
    np.testing.assert_allclose(damped, score / np.fmax(1.0, rate / 0.1) ** EXPONENT)


def test_scored_step_by_step_the_budget_is_the_one_frame_s() -> None:
    rng = np.random.default_rng(5)
    params = {"adapt": "1h", "alert_budget": 0.05}  # 0.35 episodes free: every episode after the first is damped
    train = MeltBundle(metrics=pd.concat([series(100 + rng.normal(0, 2, 600), service=s) for s in ("a", "b")]))
    values = {s: 100 + rng.normal(0, 2, 240) for s in ("a", "b")}
    for start in (60, 120, 180):  # three bursts on a
        values["a"][start:start + 5] += 40
    test = pd.concat([series(v, start="2026-01-05T10:00Z", service=s) for s, v in values.items()], ignore_index=True)
    batch = build_detector("iforest", params).fit_calibrated(train)
    whole = batch.detect(MeltBundle(metrics=test)).set_index(["service", "timestamp"])["score"]
    free = build_detector("iforest", {**params, "alert_budget": None}).fit_calibrated(train)
    undamped = free.detect(MeltBundle(metrics=test)).set_index(["service", "timestamp"])["score"]
    late = whole.index.get_level_values("timestamp") >= pd.Timestamp("2026-01-05T12:00Z")
    assert (whole[late] < undamped[late]).any() and (whole <= undamped + 1e-12).all()
    stream = build_detector("iforest", params).fit_calibrated(train)
    stepped = scored_in_steps(stream, test)
    np.testing.assert_allclose(stepped.reindex(whole.index).to_numpy(), whole.to_numpy(), rtol=1e-9, atol=1e-12)
    restored = build_detector("iforest", params).fit_calibrated(train)
    restored.restore_online(stream.online_state())
    pd.testing.assert_frame_equal(restored.online_state()["budget"], stream.online_state()["budget"])
