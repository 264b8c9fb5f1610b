"""The report forecast (melt.reports.forecast): intervals, seasonality, time to limit, short history,
and the forecast block of a real report."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from explain.facts import build_facts
from explain.template import TemplateExplainer
from melt.core.config import load_settings
from melt.reports.forecast import forecast
from melt.reports.report import SCHEMA_VERSION, validate_report

T0 = pd.Timestamp("2026-03-02T00:00:00Z")


def series(n: int, step: str, values: np.ndarray) -> tuple[pd.DatetimeIndex, np.ndarray]:
    return pd.date_range(T0, periods=n, freq=step), values


def test_intervals_nest_around_the_mean_and_widen_with_the_horizon() -> None:
    rng = np.random.default_rng(3)
    times, values = series(300, "1min", 50 + np.cumsum(rng.normal(0, 0.5, 300)) + rng.normal(0, 1, 300))
    block = forecast(times, values, times[-1] + pd.Timedelta("1min"), pd.Timedelta("30min"), pd.Timedelta("1D"))
    path = pd.DataFrame(block["path"])
    # from the step at the origin to the origin plus the horizon
    assert len(path) == 31 and path["timestamp"].iloc[-1] == (times[-1] + pd.Timedelta("31min")).isoformat()
    assert block["model"] in ("ets", "ses")
    assert (path["lower_95"] <= path["lower_80"]).all() and (path["lower_80"] < path["mean"]).all()
    assert (path["mean"] < path["upper_80"]).all() and (path["upper_80"] <= path["upper_95"]).all()
    width = path["upper_95"] - path["lower_95"]
    assert width.iloc[-1] > width.iloc[0]
    assert block["time_to_limit"] is None and block["season"] is None


def test_a_season_is_used_only_with_two_of_them_in_the_history() -> None:
    rng = np.random.default_rng(5)
    n = 3 * 24 * 12  # three days of 5-minute steps
    t = np.arange(n)
    times, values = series(n, "5min", 100 + 30 * np.sin(2 * np.pi * t / 288) + rng.normal(0, 2, n))
    origin = times[-1] + pd.Timedelta("5min")
    seasonal = forecast(times, values, origin, pd.Timedelta("30min"), pd.Timedelta("2D"))
    assert seasonal["model"] == "seasonal+ets" and seasonal["season"] == 86400.0
    truth = 100 + 30 * np.sin(2 * np.pi * (n + np.arange(len(seasonal["path"]))) / 288)
    assert np.abs(np.array([p["mean"] for p in seasonal["path"]]) - truth).max() < 8
    short = forecast(times, values, origin, pd.Timedelta("30min"), pd.Timedelta("1D"))
    assert short["model"] != "seasonal+ets" and short["season"] is None


def test_a_memory_percent_series_growing_linearly_reaches_its_limit_when_the_trend_says() -> None:
    rng = np.random.default_rng(7)
    times, values = series(120, "1min", 40 + 0.25 * np.arange(120) + rng.normal(0, 0.3, 120))
    origin = times[-1] + pd.Timedelta("1min")  # at about 70%: 100% is 120 minutes after the origin
    block = forecast(times, values, origin, pd.Timedelta("30min"), pd.Timedelta("1D"), metric="memory_percent")
    assert block["limit"] == 100.0
    eta = (pd.Timestamp(block["time_to_limit"]) - origin) / pd.Timedelta("1min")
    assert 110 <= eta <= 130
    fast = 40 + 2.0 * np.arange(20)  # near the limit: the path itself crosses it
    times, values = series(20, "1min", fast + rng.normal(0, 0.2, 20))
    block = forecast(times, values, times[-1] + pd.Timedelta("1min"), pd.Timedelta("30min"), pd.Timedelta("1D"),
                     metric="memory_percent")
    eta = (pd.Timestamp(block["time_to_limit"]) - times[-1]) / pd.Timedelta("1min")
    assert 8 <= eta <= 16  # 78% at the last point, 2% a minute: 100% is 11 minutes later


def test_no_limit_for_a_metric_without_one_or_a_falling_one() -> None:
    times, values = series(60, "1min", 400 + 5 * np.arange(60.0))
    origin = times[-1] + pd.Timedelta("1min")
    assert forecast(times, values, origin, pd.Timedelta("30min"), pd.Timedelta("1D"), metric="memory_usage")[
        "time_to_limit"] is None  # megabytes: no known limit
    falling = forecast(times, 90 - 0.5 * np.arange(60.0), origin, pd.Timedelta("30min"), pd.Timedelta("1D"),
                       metric="cpu_percent")
    assert falling["limit"] == 100.0 and falling["time_to_limit"] is None
    given = forecast(times, values, origin, pd.Timedelta("30min"), pd.Timedelta("1D"), metric="heap", limit=800.0)
    assert pd.Timestamp(given["time_to_limit"]) < origin + pd.Timedelta("2h")


@pytest.mark.parametrize("values", [np.arange(5.0), np.full(40, np.nan), np.r_[np.full(30, np.nan), np.arange(5.0)]])
def test_too_little_history_gives_no_forecast(values: np.ndarray) -> None:
    times = pd.date_range(T0, periods=len(values), freq="1min")
    assert forecast(times, values, times[-1] + pd.Timedelta("1min"), pd.Timedelta("30min"), pd.Timedelta("1D")) is None


def test_gaps_nans_and_a_constant_series_do_not_break_it() -> None:
    times = pd.date_range(T0, periods=100, freq="1min")
    values = np.where(np.arange(100) % 7 == 0, np.nan, 5.0)
    block = forecast(times, values, times[-1] + pd.Timedelta("1min"), pd.Timedelta("10min"), pd.Timedelta("1D"))
    assert block["model"] == "constant" and {p["mean"] for p in block["path"]} == {5.0}
    gappy = np.sin(np.arange(100) / 5.0)
    keep = np.arange(100) % 10 < 6
    block = forecast(times[keep], gappy[keep], times[-1], pd.Timedelta("10min"), pd.Timedelta("1D"))
    assert block["step"] == 60.0 and np.isfinite([p["mean"] for p in block["path"]]).all()


def test_a_metric_never_below_zero_gets_no_bound_below_zero() -> None:
    """A latency at 10 ms with a 100 ms incident in its history: wide intervals, but none under 0."""
    rng = np.random.default_rng(5)
    values = 10 + rng.normal(0, 1, 240).clip(-9, None)
    values[200:230] = 100.0
    times, values = series(240, "1min", values)
    path = pd.DataFrame(forecast(times, values, times[-1] + pd.Timedelta("1min"), pd.Timedelta("30min"),
                                 pd.Timedelta("1D"))["path"])
    assert (path[["mean", "lower_80", "lower_95"]] >= 0).all().all()
    signed = forecast(times, values - 50, times[-1] + pd.Timedelta("1min"), pd.Timedelta("30min"), pd.Timedelta("1D"))
    assert (pd.DataFrame(signed["path"])["lower_95"] < -50).any()  # a series that goes negative keeps its bounds


def test_a_report_with_a_metric_top_cause_carries_a_valid_forecast(tiny_report) -> None:
    report = tiny_report
    assert report["schema_version"] == SCHEMA_VERSION == "1.2"
    top = report["root_cause_analysis"]["ranked_causes"][0]["service"]
    metric_items = [e for e in report["evidence"] if e["service"] == top and e["component"] == "metrics"]
    assert metric_items, "the tiny bundle's latency fault shows in its cause's metrics"
    block = report["forecast"]
    strongest = max(metric_items, key=lambda e: e["score"])
    assert block["evidence_id"] == strongest["id"] and block["service"] == top
    assert block["origin"] == report["window"]["end"]
    assert pd.Timestamp(block["path"][-1]["timestamp"]) >= pd.Timestamp(block["origin"]) + pd.Timedelta("30min")
    validate_report(report)
    assert "Forecast:" in report["explanation"] and block["metric"] in report["explanation"]
    broken = {**report, "forecast": {**block, "path": [{"timestamp": "x"}]}}
    with pytest.raises(Exception, match="forecast"):
        validate_report(broken)


def test_the_template_mentions_the_time_to_limit() -> None:
    times, values = series(120, "1min", 40 + 0.25 * np.arange(120))
    origin = times[-1] + pd.Timedelta("1min")
    block = forecast(times, values, origin, pd.Timedelta("30min"), pd.Timedelta("1D"), metric="memory_percent")
    block = {"evidence_id": "E1", "service": "cart", "metric": "memory_percent", "peer": None, "instance": None, **block}
    incident = {"id": "INC-1", "start": T0.isoformat(), "end": origin.isoformat(), "services": ["cart"],
                "severity": "high", "confidence": 0.9, "peak_score": 9.0}
    evidence = [{"id": "E1", "service": "cart", "component": "metrics", "detector": "zscore",
                 "feature": "memory_percent", "timestamp": T0.isoformat(), "score": 9.0, "value": 70.0,
                 "expected_range": [38.0, 45.0], "anomaly_type": "spike"}]
    facts = build_facts(incident, [{"service": "cart", "score": 0.9, "path": ["cart"], "evidence_ids": ["E1"]}],
                        evidence, forecast=block)
    assert facts["forecast"]["direction"] == "rising" and facts["forecast"]["limit"] == 100.0
    text = TemplateExplainer().explain(facts)["text"]
    assert "reaches its limit of 100" in text and "memory_percent of cart is rising" in text


def test_forecast_settings_parse_and_switch_off() -> None:
    settings = load_settings(env={})
    assert settings.report.forecast_horizon == pd.Timedelta("30min")
    assert settings.report.forecast_history == pd.Timedelta("2D")
    off = settings.with_overrides({"report.forecast_horizon": "1h"})
    assert off.report.forecast_horizon == pd.Timedelta("1h")
