"""The step runner of `melt serve` on a real segment store and state database."""

from __future__ import annotations

import pandas as pd

from melt.core.config import load_settings
from melt.pipeline.stream import StreamDetector
from melt.serve.runner import Runner
from melt.serve.segments import SegmentStore
from melt.serve.state import StateDB
from tests.test_stream import MINUTE, T0, EveryService, spans


def test_a_quiet_day_is_skipped_not_scored_minute_by_minute(tmp_path) -> None:
    settings = load_settings(env={}).with_overrides({"serve.data_dir": str(tmp_path)})
    store = SegmentStore(tmp_path, retention=pd.Timedelta("30D"), commit_interval=pd.Timedelta("10ms"),
                         max_pending_bytes=2**26)
    store.start()
    day = pd.Timedelta("1D")
    for minute in range(3):  # a few minutes of traffic, a day of nothing, a few minutes more
        for offset in (pd.Timedelta(0), day):
            frame = spans(minute, edge=False).assign(start_time=lambda f, o=offset: f["start_time"] + o)
            frame["trace_id"] = frame["trace_id"] + ("d" if offset else "")
            store.submit({"traces": frame}).result(10)
    state = StateDB(tmp_path / "serve.db")
    runner = Runner(store, state, StreamDetector({"every_service": EveryService()}, settings), [], quiet=True)
    steps = runner.tick(idle_after=0.0)
    store.close()
    assert state.position() == T0 + day + 3 * MINUTE  # every minute with data scored, the newest one too
    assert steps < 30  # not the 1,440 empty minutes of the quiet day
    reports = state.latest_reports()
    assert {r["report"]["window"]["start"][:10] for r in reports} == {str(T0.date()), str((T0 + day).date())}
