"""The first generator: determinism, well-formed span trees, and faults visible upstream."""

from __future__ import annotations

import hashlib

import pandas as pd

from synth.generate import generate
from tests.conftest import small_config


def digest(path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def test_same_seed_gives_identical_files(tmp_path) -> None:
    generate(small_config(seed=21)).write(tmp_path / "a")
    generate(small_config(seed=21)).write(tmp_path / "b")
    generate(small_config(seed=22)).write(tmp_path / "c")
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert digest(tmp_path / "a") != digest(tmp_path / "c")


def test_span_trees_are_well_formed(tiny_bundle) -> None:
    spans = tiny_bundle.frame("traces")
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


def test_latency_fault_slows_callers(tiny_bundle) -> None:
    fault = tiny_bundle.truth["faults"][0]
    spans = tiny_bundle.frame("traces")
    start, end = pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"])
    callers = [s for s in fault["affected_services"] if s != fault["root_cause_service"]]
    assert callers
    before = spans[spans["start_time"] < start]
    during = spans[(spans["start_time"] >= start) & (spans["start_time"] < end)]
    for service in callers:
        assert during[during["service_name"] == service]["duration"].quantile(0.9) > \
            before[before["service_name"] == service]["duration"].quantile(0.9)
    labelled = tiny_bundle.frame("traces").groupby("trace_id")["label"].max()
    assert 0 < labelled.sum() < len(labelled)
