"""The generator: determinism, well-formed span trees, every fault type visible where it should be."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from melt.core.bundle import MeltBundle
from melt.core.errors import ConfigError
from melt.core.settings import SynthSettings
from synth.calls import add_retries, subtree_sizes
from synth.faults import FAULT_TYPES
from synth.generate import generate
from synth.workload import SpanArrays
from tests.conftest import small_config


def digest(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


@pytest.fixture(scope="module")
def all_faults() -> MeltBundle:
    """One fault of every type, one after the other, on a busy enough system to see them."""
    return generate(SynthSettings.of(seed=5, services=10, duration="150m", requests_per_minute=120.0, faults=len(FAULT_TYPES),
                                fault_types=list(FAULT_TYPES), fault_duration="8m", warmup_fraction=0.3))


def test_same_seed_gives_identical_files(tmp_path) -> None:
    generate(small_config(seed=21)).write(tmp_path / "a")
    generate(small_config(seed=21)).write(tmp_path / "b")
    generate(small_config(seed=22)).write(tmp_path / "c")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_span_trees_are_well_formed(all_faults) -> None:
    spans = all_faults.frame("traces")
    roots = spans["parent_span_id"].isna().groupby(spans["trace_id"]).sum()
    assert (roots == 1).all()
    parents = spans.merge(spans[["trace_id", "span_id", "start_time", "duration"]], left_on=["trace_id", "parent_span_id"],
                          right_on=["trace_id", "span_id"], suffixes=("", "_p"))
    assert len(parents) == spans["parent_span_id"].notna().sum()
    sync = parents[parents["span_kind"] != "consumer"]
    end = sync["start_time"] + pd.to_timedelta(sync["duration"], unit="ms")
    parent_end = sync["start_time_p"] + pd.to_timedelta(sync["duration_p"], unit="ms")
    assert (sync["start_time"] >= sync["start_time_p"]).all()
    assert (end <= parent_end + pd.Timedelta(microseconds=1)).all()
    assert spans["attr.retry"].sum() > 0 and (spans["status_code"] == 504).sum() > 0  # retries and timeouts happened


def test_retry_copies_a_subtree_right_after_the_failed_call() -> None:
    # request 0: a(0) -> b(1) -> c(2); a -> d(3).  Retry b: its copy b'(2 spans) goes after c, before d.
    parent = np.array([-1, 0, 1, 0])
    spans = SpanArrays(request=np.zeros(4, int), parent=parent, endpoint=np.arange(4), service=np.arange(4),
                       instance=np.zeros(4, int), depth=np.array([0, 1, 2, 1]), is_async=np.zeros(4, bool),
                       self_ms=np.ones(4), request_time=np.zeros(4, np.int64))
    assert subtree_sizes(spans).tolist() == [4, 2, 1, 1]
    out, source = add_retries(spans, np.array([1]), np.ones(4, int), np.random.default_rng(0))
    assert source.tolist() == [0, 1, 2, 1, 2, 3]
    assert out.parent.tolist() == [-1, 0, 1, 0, 3, 0]
    assert out.is_retry.tolist() == [False, False, False, True, True, False]
    assert out.retried.tolist() == [False, True, False, False, False, False]


def _calls_into_root(spans: pd.DataFrame, fault: dict) -> pd.DataFrame:
    """Caller spans whose child ran in the fault's root cause (its pod; from its peer for a network delay)."""
    children = spans[spans["service_name"] == fault["root_cause_service"]]
    if fault["root_cause_instance"]:
        children = children[children["attr.k8s.pod.name"] == fault["root_cause_instance"]]
    callers = spans[spans["span_id"].isin(children["parent_span_id"])]
    if fault.get("peer_service"):
        callers = callers[callers["service_name"] == fault["peer_service"]]
    return callers


@pytest.mark.parametrize("fault_type", FAULT_TYPES)
def test_each_fault_slows_or_fails_the_callers(all_faults, fault_type) -> None:
    spans = all_faults.frame("traces")
    first = min(pd.Timestamp(f["start"]) for f in all_faults.truth["faults"])
    fault = next(f for f in all_faults.truth["faults"] if f["type"] == fault_type)
    calls = _calls_into_root(spans, fault)
    before = calls[calls["start_time"] < first]
    during = calls[(calls["start_time"] >= pd.Timestamp(fault["start"])) & (calls["start_time"] < pd.Timestamp(fault["end"]))]
    assert len(before) > 50 and len(during) > 20
    slower = during["duration"].quantile(0.95) > 1.1 * before["duration"].quantile(0.95)
    failing = (during["status_code"] >= 500).mean() > (before["status_code"] >= 500).mean() + 0.02
    assert slower or failing


@pytest.mark.parametrize("fault_type", FAULT_TYPES)
def test_each_fault_raises_warning_and_error_logs_in_root_and_callers(all_faults, fault_type) -> None:
    spans, logs = all_faults.frame("traces"), all_faults.frame("logs")
    first = min(pd.Timestamp(f["start"]) for f in all_faults.truth["faults"])
    fault = next(f for f in all_faults.truth["faults"] if f["type"] == fault_type)
    start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
    who = {fault["root_cause_service"], *_calls_into_root(spans, fault)["service_name"]}
    problems = logs[logs["service"].isin(who) & logs["level"].isin(["WARN", "ERROR", "FATAL"])]
    per_minute_before = (problems["timestamp"] < first).sum() / ((first - spans["start_time"].min()) / pd.Timedelta("1min"))
    per_minute_during = problems["timestamp"].between(start, end, inclusive="left").sum() / ((end - start) / pd.Timedelta("1min"))
    assert per_minute_during > 1.5 * per_minute_before + 0.5
    if fault_type in ("error_burst", "bad_deploy", "pool_exhaustion", "memory_leak"):
        errors = problems[problems["level"].isin(["ERROR", "FATAL"])]
        assert errors["timestamp"].between(start, end, inclusive="left").sum() > (errors["timestamp"] < first).sum() * (end - start) / (first - spans["start_time"].min()) * 2


def test_faults_leave_their_marks_in_metrics_and_events(all_faults) -> None:
    metrics, events = all_faults.frame("metrics"), all_faults.frame("events")
    faults = {f["type"]: f for f in all_faults.truth["faults"]}

    def series(fault: dict, metric: str) -> tuple[float, float]:
        m = metrics[(metrics["instance"] == fault["root_cause_instance"]) if fault["root_cause_instance"]
                    else (metrics["service"] == fault["root_cause_service"])]
        m = m[m["metric"] == metric].groupby("timestamp")["value"].max()
        start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
        return float(m[m.index < start - pd.Timedelta("2min")].median()), float(m[(m.index >= start) & (m.index < end)].max())

    before, during = series(faults["cpu_saturation"], "cpu_usage")
    assert during > before + 30
    before, during = series(faults["memory_leak"], "memory_usage")
    assert during > before + 600
    before, during = series(faults["pool_exhaustion"], "conn_pool_used")
    assert during >= 95 > before
    deploys = events[(events["service"] == faults["bad_deploy"]["root_cause_service"]) & (events["kind"] == "deploy")]
    assert (abs(deploys["timestamp"] - pd.Timestamp(faults["bad_deploy"]["start"])) < pd.Timedelta("1s")).any()
    oom = events[(events["kind"] == "restart") & events["message"].str.contains("OOMKilled")]
    assert faults["memory_leak"]["root_cause_instance"] in oom["message"].iloc[0]


def test_truth_and_labels_are_complete(all_faults) -> None:
    for fault in all_faults.truth["faults"]:
        assert {"id", "type", "root_cause_service", "root_cause_instance", "start", "end", "affected_services"} <= set(fault)
        assert fault["root_cause_service"] in fault["affected_services"]
    first = min(pd.Timestamp(f["start"]) for f in all_faults.truth["faults"])
    for signal, column in (("traces", "start_time"), ("logs", "timestamp"), ("metrics", "timestamp")):
        frame = all_faults.frame(signal)
        assert 0 < frame["label"].mean() < 0.5, signal
        assert frame.loc[frame[column] < first - pd.Timedelta("1min"), "label"].sum() == 0, signal


def test_overlap_lets_fault_windows_overlap() -> None:
    config = dict(seed=3, services=8, duration="60m", requests_per_minute=20.0, faults=4, fault_duration="15m",
                  warmup_fraction=0.5)
    with pytest.raises(ConfigError, match="do not fit"):
        generate(SynthSettings.of(**config))
    faults = generate(SynthSettings.of(**config, overlap=True)).truth["faults"]
    windows = sorted((pd.Timestamp(f["start"]), pd.Timestamp(f["end"])) for f in faults)
    assert any(b[0] < a[1] for a, b in zip(windows, windows[1:], strict=False))


def test_presets_change_noise_and_distractors() -> None:
    easy, hard = (generate(small_config(seed=4, preset=p, duration="3h", faults=3)) for p in ("easy", "hard"))
    assert easy.truth["generator"]["noisy_services"] == [] and len(hard.truth["generator"]["noisy_services"]) == 3
    assert len(hard.frame("events")) > len(easy.frame("events"))


def test_topology_from_yaml(tmp_path) -> None:
    spec = {
        "services": {"edge": {"role": "gateway"}, "orders": {"role": "service", "instances": 2}, "db": {"role": "db"}},
        "calls": [{"from": "edge.GET /orders", "to": "orders.list"}, {"from": "orders.list", "to": "db.SELECT"}],
    }
    path = tmp_path / "topo.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    bundle = generate(small_config(topology_file=str(path), faults=1, fault_types=["latency"]))
    assert set(bundle.frame("traces")["service_name"]) == {"edge", "orders", "db"}
    assert bundle.truth["faults"][0]["root_cause_service"] in {"orders", "db"}
