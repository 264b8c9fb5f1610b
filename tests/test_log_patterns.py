"""log_patterns: a vanished or new pattern scores in the service that changed, whatever the traffic or request mix."""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.logs.log_patterns import LogPatternDetector
from melt.core.bundle import MeltBundle


def _logs(start: str, traces: int, broken: bool) -> pd.DataFrame:
    """Each trace: svc-a logs 'open' and 'commit'; svc-b logs 'lookup'. Broken: svc-a skips 'commit'."""
    rows = []
    t0 = pd.Timestamp(start, tz="UTC")
    for i in range(traces):
        at = t0 + pd.Timedelta(seconds=i * 60 / traces)
        rows.append((at, "svc-a", "INFO", f"OrderImpl#10 open order {i}", f"t{start}{i}"))
        rows.append((at + pd.Timedelta(milliseconds=5), "svc-a", "INFO",
                     f"OrderImpl#31 {'skip commit for' if broken else 'commit order'} {i}", f"t{start}{i}"))
        rows.append((at + pd.Timedelta(milliseconds=2), "svc-b", "INFO", f"StockImpl#7 lookup item {i}", f"t{start}{i}"))
    return pd.DataFrame(rows, columns=["timestamp", "service", "level", "message", "trace_id"])


def _calls(start: str, minutes: int, per_minute: int, share_of_search: float, lost_line: bool = False,
           seed: int = 0, miss: list[float] | None = None, after_miss: str | None = None) -> MeltBundle:
    """svc-a serves 'search' (logs 'query' then, in a random 40% of calls, 'cache miss') and 'buy' (logs 'pay').

    ``share_of_search`` sets the request mix. ``lost_line``: 'search' still runs but never logs
    'query' (its code path changed). ``miss``: the cache-miss rate of each minute. ``after_miss``: a
    line that follows every 'cache miss'. Every line carries its span's id.
    """
    rng = np.random.default_rng(seed)
    misses = miss or [0.4] * minutes
    logs, spans = [], []
    t0 = pd.Timestamp(start, tz="UTC")
    for minute, miss_rate in enumerate(misses):
        for i in range(per_minute):
            at = t0 + pd.Timedelta(minutes=minute, seconds=i * 60 / per_minute)
            trace, span = f"{start}-{minute}-{i}", f"s{minute}-{i}"
            search = rng.random() < share_of_search
            spans.append((trace, span, "", "SearchController.search" if search else "BuyController.buy", "svc-a", at, 5.0))
            missed = ["SearchImpl#20 cache miss {}"] + ([after_miss] if after_miss else [])
            lines = (([] if lost_line else ["SearchImpl#12 query {}"]) + (missed if rng.random() < miss_rate else [])
                     if search else ["BuyImpl#40 pay order {}"])
            for j, line in enumerate(lines):
                logs.append((at + pd.Timedelta(milliseconds=j), "svc-a", "INFO", line.format(i), trace, span))
    return MeltBundle(
        logs=pd.DataFrame(logs, columns=["timestamp", "service", "level", "message", "trace_id", "span_id"]),
        traces=pd.DataFrame(spans, columns=["trace_id", "span_id", "parent_span_id", "span_name", "service_name",
                                            "start_time", "duration"]))


def test_changed_code_path_scores_in_the_changed_service() -> None:
    train = MeltBundle(logs=pd.concat([_logs("2026-01-01 00:00", 40, False), _logs("2026-01-01 00:01", 40, False)]))
    detector = LogPatternDetector().fit_calibrated(train)
    scores = detector.detect(MeltBundle(logs=_logs("2026-01-01 00:10", 40, True)))
    per_service = scores.groupby("service")["raw_score"].max()
    assert per_service["svc-a"] > 0.8  # 'commit' left every trace: at least 80 points of share, at 95%
    assert per_service["svc-b"] == 0.0
    top = scores.sort_values("raw_score").iloc[-1]
    assert top["service"] == "svc-a"
    assert top["evidence"]["anomaly_type"] in {"pattern_vanished", "new_pattern"}


def test_traffic_volume_alone_is_not_a_change() -> None:
    train = MeltBundle(logs=_logs("2026-01-01 00:00", 40, False))
    detector = LogPatternDetector().fit_calibrated(train)
    busy = detector.detect(MeltBundle(logs=_logs("2026-01-01 00:10", 200, False)))
    assert busy["raw_score"].max() == 0.0


def test_request_mix_is_not_a_change_but_a_lost_line_in_a_running_operation_is() -> None:
    detector = LogPatternDetector().fit_calibrated(_calls("2026-01-01 00:00", 4, 60, 0.3))
    mix = detector.detect(_calls("2026-01-01 00:10", 3, 60, 0.8, seed=1))
    # search went from 30% to 80% of calls; each operation logs as before, up to the coin flips of "cache miss"
    assert mix["raw_score"].max() < 0.15
    broken = detector.detect(_calls("2026-01-01 00:20", 3, 60, 0.3, lost_line=True, seed=2))
    top = broken.sort_values("raw_score").iloc[-1]
    assert top["raw_score"] > 0.5
    assert top["evidence"]["operation"] == "SearchController.search"
    assert top["evidence"]["anomaly_type"] == "pattern_vanished"
    assert top["entity"].startswith("SearchController.search: ")


def test_calibration_learns_the_drift_between_training_windows() -> None:
    """The cache-miss rate drifts from minute to minute in training: a drift of that size is normal later.

    Scored in-sample, a training window is part of its own baseline, so the drift looks smaller
    than it is and the same drift later would look rare.
    """
    train = _calls("2026-01-01 00:00", 6, 100, 0.5, miss=[0.1, 0.7, 0.1, 0.7, 0.1, 0.7])
    detector = LogPatternDetector(pairs=False)
    held_out = detector.fit(train).calibration_scores(train)
    in_sample = detector.score(train)["score"].to_numpy()
    assert held_out.max() > in_sample.max() > 0
    detector.fit_calibrated(train)
    drifted = detector.detect(_calls("2026-01-01 00:10", 1, 100, 0.5, miss=[0.7], seed=3))
    lost = detector.detect(_calls("2026-01-01 00:20", 1, 100, 0.5, lost_line=True, seed=4))
    assert drifted["score"].max() < 3.0 < lost["score"].max()


def test_a_line_that_stops_following_a_rare_line_is_a_strong_change() -> None:
    """Nezha's expected pattern: 'load' always followed 'cache miss'; the fault throws right after the miss.

    Counted among all calls the pair falls from a 15% share, within reach of noise; counted among the
    calls that logged 'cache miss' it falls from 100% to none.
    """
    load = "SearchImpl#24 load item {} from db"
    detector = LogPatternDetector().fit_calibrated(
        _calls("2026-01-01 00:00", 4, 120, 0.5, miss=[0.15] * 4, after_miss=load))
    healthy = detector.detect(_calls("2026-01-01 00:10", 3, 120, 0.5, seed=1, miss=[0.15] * 3, after_miss=load))
    broken = detector.detect(_calls("2026-01-01 00:20", 3, 120, 0.5, seed=2, miss=[0.15] * 3))
    assert healthy["raw_score"].max() < 0.15
    top = broken.sort_values("raw_score").iloc[-1]
    assert top["raw_score"] > 0.5
    assert top["evidence"]["anomaly_type"] == "pattern_vanished"
    assert "cache miss" in top["evidence"]["template"] and "load item" in top["evidence"]["template"]


def test_a_fault_like_one_in_the_history_still_alerts() -> None:
    """A rolling refit's history holds earlier faults: 'query' was already lost for 3 of its 20
    minutes. Quantile calibration alone then tops out at that fault's score, under the ensemble's
    threshold; the share of calls that changed sets a floor that does not depend on the history."""
    history = _calls("2026-01-01 00:00", 17, 40, 0.5).union(_calls("2026-01-01 00:17", 3, 40, 0.5, lost_line=True, seed=1))
    fault = _calls("2026-01-01 00:30", 3, 40, 0.5, lost_line=True, seed=2)
    calibrated_only = LogPatternDetector(alert_share=0).fit_calibrated(history).detect(fault)
    with_floor = LogPatternDetector().fit_calibrated(history).detect(fault)
    assert calibrated_only["score"].max() < 4.0
    assert with_floor["score"].max() >= 4.0
    assert with_floor["raw_score"].max() == calibrated_only["raw_score"].max()
    normal = LogPatternDetector().fit_calibrated(history).detect(_calls("2026-01-01 00:40", 3, 40, 0.5, seed=3))
    assert normal["score"].max() < 4.0


def _behind_two_endpoints(start: str, minutes: int, lost: bool) -> MeltBundle:
    """'PriceController.query' serves two endpoints; only the list endpoint's calls log 'list prices'.

    ``lost``: the list endpoint's calls stop logging it (its code path changed).
    """
    logs, spans = [], []
    t0 = pd.Timestamp(start, tz="UTC")
    for minute in range(minutes):
        for i in range(40):
            at = t0 + pd.Timedelta(minutes=minute, seconds=i * 1.5)
            trace, endpoint = f"{start}-{minute}-{i}", ("/prices/list" if i % 2 else "/prices/{id}")
            spans += [(trace, "entry", "", endpoint, "price", at, 5.0),
                      (trace, "query", "entry", "PriceController.query", "price", at, 4.0)]
            if endpoint == "/prices/list" and not lost:
                logs.append((at, "price", "INFO", f"PriceServiceImpl#31 list prices for {i} routes", trace, "query"))
            logs.append((at, "price", "INFO", f"PriceController#12 query {i}", trace, "query"))
    return MeltBundle(
        logs=pd.DataFrame(logs, columns=["timestamp", "service", "level", "message", "trace_id", "span_id"]),
        traces=pd.DataFrame(spans, columns=["trace_id", "span_id", "parent_span_id", "span_name", "service_name",
                                            "start_time", "duration"]))


def test_a_line_lost_behind_one_of_two_endpoints_is_a_full_change() -> None:
    """The same controller span behind two endpoints runs two code paths. Keyed by the endpoint the
    request came in through, a line lost from every call of one endpoint is a change in all of its
    calls, not in half of the controller's."""
    detector = LogPatternDetector().fit_calibrated(_behind_two_endpoints("2026-01-01 00:00", 4, lost=False))
    broken = detector.detect(_behind_two_endpoints("2026-01-01 00:10", 2, lost=True))
    top = broken.sort_values("raw_score").iloc[-1]
    assert top["evidence"]["operation"] == "/prices/list > PriceController.query"
    assert top["evidence"]["anomaly_type"] == "pattern_vanished"
    assert top["raw_score"] > 0.7  # keyed by the controller alone, at most half the calls changed
    healthy = detector.detect(_behind_two_endpoints("2026-01-01 00:20", 2, lost=False))
    assert healthy["raw_score"].max() < 0.15


def test_spans_whose_parents_loop_still_fit_and_score() -> None:
    """Broken input: two spans of one service name each other as parent. The climb to the entry
    span stops instead of running forever, and each keeps a name."""
    bundle = _behind_two_endpoints("2026-01-01 00:00", 2, lost=False)
    spans = bundle.traces.copy()
    spans.loc[spans["span_id"] == "entry", "parent_span_id"] = "query"
    looped = MeltBundle(logs=bundle.logs, traces=spans)
    scores = LogPatternDetector().fit_calibrated(looped).detect(looped)
    assert not scores.empty
    assert scores["evidence"].map(lambda e: e["operation"]).str.contains("PriceController.query").all()
