"""Periodic refits in `melt serve` (melt/serve/refit.py): a fit per period, saved, and a restart
that goes on with the newest fit as if it had never stopped."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.core.errors import ConfigError
from melt.core.settings import Settings
from melt.pipeline.fitting import fit_detectors, training_split
from melt.pipeline.stream import StreamDetector
from melt.serve.refit import KEPT_FITS, Refitter
from melt.serve.runner import Runner
from melt.serve.segments import SegmentStore
from melt.serve.state import StateDB

MODELS = ["span_latency", "zscore"]
NEVER_IDLE = 1e9  # wall seconds: only the lateness rule closes steps


def settings_for(data_dir: Path) -> Settings:
    return load_settings(env={}).with_overrides({"serve.data_dir": str(data_dir), "detect.retrain_every": "10m",
                                                 "detect.train_window": "20m"})


def runner_on(data_dir: Path, models: dict, settings: Settings) -> tuple[Runner, SegmentStore, StateDB]:
    store = SegmentStore(data_dir, retention=pd.Timedelta("3650D"), commit_interval=pd.Timedelta("10ms"),
                         max_pending_bytes=2**28)
    store.start()
    state = StateDB(data_dir / "serve.db")
    return Runner(store, state, StreamDetector(dict(models), settings), [], quiet=True), store, state


def feed(store: SegmentStore, bundle: MeltBundle, start: pd.Timestamp | None, end: pd.Timestamp | None) -> None:
    part = bundle.slice_time(start, end)
    frames = {signal: frame for signal in ("metrics", "logs", "traces", "events")
              if (frame := getattr(part, signal)) is not None and len(frame)}
    store.submit(frames).result(60)


@pytest.fixture(scope="module")
def initial(tiny_bundle) -> dict:
    return fit_detectors(training_split(tiny_bundle, 0.3), MODELS, load_settings(env={}), quiet=True)


def test_each_period_is_scored_with_a_fit_on_the_window_before_it_and_a_restart_goes_on(tiny_bundle, initial,
                                                                                         tmp_path) -> None:
    first, last = tiny_bundle.time_range()
    half = (first + (last - first) / 2).floor("1min") + pd.Timedelta("17s")

    settings = settings_for(tmp_path / "straight")
    runner, store, state = runner_on(tmp_path / "straight", initial, settings)
    feed(store, tiny_bundle, None, None)
    runner.tick(idle_after=0.0)
    straight = {r["report"]["incident_id"]: r["report"] for r in state.latest_reports()}
    fits = sorted(int(p.name) for p in (tmp_path / "straight" / "models").iterdir())
    periods = pd.date_range(first.floor("10min"), last, freq="10min")
    expected = [p.value for p in periods[1:]]  # the first period is scored with the models the server started with
    assert fits == expected[-KEPT_FITS:]
    assert runner.refitter.period == periods[-1]
    assert all(runner.detector.models[name] is not initial[name] for name in MODELS)
    store.close()
    assert straight, "the injected fault should open an incident"

    settings = settings_for(tmp_path / "restarted")
    runner, store, state = runner_on(tmp_path / "restarted", initial, settings)
    feed(store, tiny_bundle, None, half)
    runner.tick(idle_after=NEVER_IDLE)
    stopped_at = state.position()
    assert stopped_at is not None and stopped_at > periods[1]  # at least one refit before the restart
    restarted = Runner(store, state, StreamDetector(dict(initial), settings), [], quiet=True)  # a new process
    restarted.tick(idle_after=NEVER_IDLE)
    last_step = stopped_at - settings.serve.step
    assert restarted.refitter.period == last_step.floor("10min")  # the saved fit, not the initial models
    assert all(restarted.detector.models[name] is not initial[name] for name in MODELS)
    feed(store, tiny_bundle, half, None)
    restarted.tick(idle_after=0.0)
    store.close()
    assert {r["report"]["incident_id"]: r["report"] for r in state.latest_reports()} == straight


def test_a_period_that_is_not_whole_steps_is_refused(tmp_path) -> None:
    settings = load_settings(env={}).with_overrides({"serve.data_dir": str(tmp_path), "detect.retrain_every": "90s"})
    with pytest.raises(ConfigError, match="whole number of serve.step"):
        Refitter(settings, store=None)


def test_too_little_history_keeps_the_current_fit(tmp_path, initial) -> None:
    settings = settings_for(tmp_path)
    store = SegmentStore(tmp_path, retention=pd.Timedelta("3650D"), commit_interval=pd.Timedelta("10ms"),
                         max_pending_bytes=2**26)
    refitter = Refitter(settings, store, quiet=True)
    start = pd.Timestamp("2026-01-01 10:00", tz="UTC")
    assert refitter.due(start) is None  # the first period: the models the server started with
    assert refitter.due(start + pd.Timedelta("10min")) == start + pd.Timedelta("10min")
    assert refitter.refit(start + pd.Timedelta("10min"), initial) is initial  # nothing stored: nothing to fit on
    assert refitter.due(start + pd.Timedelta("11min")) is None
    assert not (tmp_path / "models").exists()


def test_a_failing_refit_keeps_the_current_fit_and_the_stream_goes_on(tmp_path, initial, monkeypatch) -> None:
    settings = settings_for(tmp_path)
    refitter = Refitter(settings, store=None, quiet=True)  # no store: reading the history raises
    start = pd.Timestamp("2026-01-01 10:00", tz="UTC")
    refitter.due(start)
    period = refitter.due(start + pd.Timedelta("10min"))
    assert refitter.refit(period, initial) is initial
    assert refitter.period == period and "AttributeError" in refitter.error
    assert refitter.due(start + pd.Timedelta("11min")) is None  # not tried again for every step


def test_a_restart_at_a_period_boundary_still_refits_that_period(tmp_path) -> None:
    settings = settings_for(tmp_path)
    boundary = pd.Timestamp("2026-01-01 10:10", tz="UTC")
    refitter = Refitter(settings, store=None, quiet=True)
    assert refitter.restore(boundary, settings.serve.step) is None  # nothing saved yet
    assert refitter.due(boundary) == boundary  # the step that starts the period is refitted, as without the restart
    refitter = Refitter(settings, store=None, quiet=True)
    refitter.restore(boundary + pd.Timedelta("3min"), settings.serve.step)
    assert refitter.due(boundary + pd.Timedelta("3min")) is None  # mid-period: the period's fit (or lack) goes on
