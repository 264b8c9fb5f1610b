"""Call-edge evidence: client spans and call metrics, and which end of an edge the ranking blames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from detectors.metrics.call_metrics import CallMetricsDetector
from detectors.traces.call_edges import CallEdgeDetector
from detectors.traces.client_calls import callee_map, client_calls, client_span_mask
from melt.core.bundle import MeltBundle
from melt.core.settings import SynthSettings
from rca.terms import call_edge_evidence, evidence_kind
from synth.generate import generate

T0 = pd.Timestamp("2026-01-05T00:00:00Z")


def _span(trace, span, parent, service, name, ms, kind=None, status=200, at=0.0):
    return {"trace_id": trace, "span_id": span, "parent_span_id": parent, "service_name": service, "span_name": name,
            "duration": ms, "span_kind": kind, "status_code": status, "start_time": T0 + pd.Timedelta(milliseconds=at)}


def test_client_calls_gap_missing_server_client_errors_and_retries() -> None:
    spans = pd.DataFrame([
        _span("t", "a", None, "web", "GET /", 100.0, "server"),
        _span("t", "c1", "a", "web", "GetCart", 30.0, "client", at=1),  # server span below: gap 30 - 12
        _span("t", "s1", "c1", "cart", "GetCart", 12.0, "server", at=5),
        _span("t", "c2", "a", "web", "GetCart", 250.0, "client", status=504, at=40),  # timed out, no server span
        _span("t", "c4", "a", "web", "GetCart", 9.0, "client", at=291),  # tried again after the timeout
        _span("t", "s4", "c4", "cart", "GetCart", 7.0, "server", at=292),
        _span("t", "c3", "a", "web", "Charge", 20.0, None, status=500, at=300),  # kind not recorded: structure decides
        _span("t", "s3", "c3", "pay", "Charge", 15.0, None, status=500, at=302),  # the server failed too
        _span("t", "i1", "a", "web", "render", 5.0, None, at=330),  # internal: not a call
    ])
    calls = client_calls(spans, callee_map(client_calls(spans)))
    by_row = calls.set_index(["operation", "start_time"])
    first = by_row.loc[("GetCart", T0 + pd.Timedelta(milliseconds=1))]
    assert (first["caller"], first["callee"], first["gap_ms"], first["server_missing"]) == ("web", "cart", 18.0, False)
    lone = by_row.loc[("GetCart", T0 + pd.Timedelta(milliseconds=40))]
    assert lone["callee"] == "cart" and lone["server_missing"] and lone["gap_ms"] == 250.0
    assert lone["client_error"] and not lone["retry"]  # the GetCart before it did not fail: fan-out, not a retry
    assert by_row.loc[("GetCart", T0 + pd.Timedelta(milliseconds=291)), "retry"]  # right after the timeout
    charge = by_row.loc[("Charge", T0 + pd.Timedelta(milliseconds=300))]
    assert charge["callee"] == "pay" and not charge["client_error"]  # the server's own error, not the client's
    assert len(calls) == 4 and "render" not in set(calls["operation"])


def test_without_span_kinds_an_entry_span_is_never_a_client_span() -> None:
    """Server-only traces: a service's entry span whose children all run in one other service is
    still its own work, not a call (span_latency keeps it; call_edges does not blame the callee)."""
    spans = pd.DataFrame([
        _span("t", "a", None, "web", "GET /", 100.0),
        _span("t", "b", "a", "cart", "GetCart", 12.0, at=5),  # an entry span with one remote child
        _span("t", "c", "b", "db", "SELECT", 3.0, at=6),
    ])
    assert not client_span_mask(spans).any() and client_calls(spans).empty


@pytest.fixture(scope="module")
def network_faults() -> MeltBundle:
    return generate(SynthSettings.of(seed=5, faults=2, duration="3h", fault_types=["network_delay", "packet_loss"]))


def _window(bundle: MeltBundle, fault: dict) -> MeltBundle:
    return bundle.slice_time(pd.Timestamp(fault["start"]), pd.Timestamp(fault["end"]))


def test_a_network_fault_leaves_the_targets_server_spans_flat_and_grows_its_callers_client_spans(network_faults) -> None:
    spans = network_faults.traces
    train = network_faults.slice_time(None, T0 + pd.Timedelta("60min")).traces
    callees = callee_map(client_calls(train))
    for fault in network_faults.truth["faults"]:
        target = fault["root_cause_service"]
        during = _window(network_faults, fault).traces
        own = [frame[(frame["service_name"] == target) & (frame["span_kind"] == "server")]["duration"].median()
               for frame in (during, train)]
        assert own[0] == pytest.approx(own[1], rel=0.25)
        calls = client_calls(during, callees)
        into = calls[calls["callee"] == target]
        normal = client_calls(train).query("callee == @target")["gap_ms"]
        if fault["type"] == "network_delay":  # every call waits
            assert into["gap_ms"].median() > 20 * normal.median()
        else:  # some calls wait for retransmissions, some never arrive and are retried
            assert into["gap_ms"].quantile(0.9) >= 200 > 20 * normal.quantile(0.9)
            lost = into[into["server_missing"]]
            assert len(lost) and lost["client_error"].all() and into["retry"].sum() > 0
    ids = set(spans["span_id"])
    assert spans["parent_span_id"].dropna().isin(ids).all()  # lost requests took their subtree with them


def test_call_edge_detectors_flag_the_edges_into_the_target(network_faults) -> None:
    train = network_faults.slice_time(None, T0 + pd.Timedelta("70min"))
    for detector in (CallEdgeDetector(), CallMetricsDetector()):
        fitted = detector.fit_calibrated(train)
        for fault in network_faults.truth["faults"]:
            scores = fitted.detect(_window(network_faults, fault))
            evidence = scores.loc[scores["score"].idxmax(), "evidence"]
            assert evidence["callee"] == fault["root_cause_service"] and evidence["caller"] in set(scores["caller"])
            blamed = call_edge_evidence(scores, evidence_kind(scores, {detector.name: "traces"}, re.compile("cpu")), 3.0, 20.0)
            assert blamed.idxmax() == fault["root_cause_service"] and blamed.max() >= 10, detector.name


def test_call_metrics_pairs_both_sides_of_an_edge_and_ignores_other_series() -> None:
    times = pd.date_range(T0, periods=30, freq="1min")
    rows = []
    for i, t in enumerate(times):
        network = 0.150 if i >= 25 else 0.001 + 0.0002 * (i % 3)
        rows += [{"timestamp": t, "service": "web", "metric": "rpc.client.duration.p50", "value": 0.004 + network, "peer": "cart"},
                 {"timestamp": t, "service": "cart", "metric": "rpc.server.duration.p50", "value": 0.004, "peer": "web"},
                 {"timestamp": t, "service": "web", "metric": "cpu", "value": 10.0 + i % 2, "peer": None}]
    frame = pd.DataFrame(rows)
    detector = CallMetricsDetector(smooth_window=1).fit_calibrated(MeltBundle(metrics=frame[frame["timestamp"] < times[20]]))
    scores = detector.detect(MeltBundle(metrics=frame))
    assert set(scores["entity"]) == {"web -> cart"} and set(scores["service"]) == {"cart"}
    gap = scores.set_index("timestamp")["evidence"].map(lambda e: e["value"])
    assert gap[times[26]] == pytest.approx(150.0) and gap[times[3]] == pytest.approx(1.0)
    assert scores.set_index("timestamp")["score"][times[26]] >= 4.0 > scores.set_index("timestamp")["score"][times[3]]


def _edges(*triples: tuple[str, str, float]) -> tuple[pd.DataFrame, pd.Series]:
    scores = pd.DataFrame({"timestamp": T0, "service": [c for _, c, _ in triples], "caller": [a for a, _, _ in triples],
                           "detector": "call_edges", "entity": "e", "score": [s for *_, s in triples], "evidence": None})
    return scores, evidence_kind(scores, {"call_edges": "traces"}, re.compile("cpu"))


def test_edge_anomalies_go_to_the_end_they_share() -> None:
    # a callee's network: both of its callers' calls grew, nothing else did
    evidence = call_edge_evidence(*_edges(("web", "cart", 30), ("checkout", "cart", 25), ("web", "ads", 1),
                                          ("checkout", "pay", 1)), floor=3.0, cap=20.0)
    assert evidence.idxmax() == "cart" and evidence["web"] == 0 and evidence["checkout"] == 0
    # a CPU hog on the caller: its calls to several callees grew together, their other callers' did not
    evidence = call_edge_evidence(*_edges(("web", "ads", 30), ("web", "recs", 25), ("web", "cart", 2),
                                          ("checkout", "cart", 1)), floor=3.0, cap=20.0)
    assert evidence.idxmax() == "web" and evidence["ads"] < evidence["web"] / 2
    # one anomalous edge: nothing tells the ends apart, and the callee takes it
    evidence = call_edge_evidence(*_edges(("web", "checkout", 15), ("web", "ads", 1), ("checkout", "pay", 1)),
                                  floor=3.0, cap=20.0)
    assert evidence.idxmax() == "checkout" and np.isclose(evidence["checkout"], 12.0)


def test_call_patterns_sees_calls_an_operation_stopped_making() -> None:
    """A handler that now throws after its second call stops making the third: its own code path changed."""
    from detectors.traces.call_patterns import CallPatternDetector

    def trace(i: int, stop_early: bool, minute: int) -> list[dict]:
        at = minute * 60_000 + i * 100
        rows = [_span(f"t{i}", f"e{i}", None, "checkout", "PlaceOrder", 50.0, "server", at=at),
                _span(f"t{i}", f"a{i}", f"e{i}", "checkout", "Charge", 5.0, "client", at=at + 1),
                _span(f"t{i}", f"b{i}", f"a{i}", "payment", "Charge", 4.0, "server", at=at + 2),
                _span(f"t{i}", f"c{i}", f"e{i}", "checkout", "Ship", 5.0, "client", at=at + 10),
                _span(f"t{i}", f"d{i}", f"c{i}", "shipping", "Ship", 4.0, "server", at=at + 11)]
        return rows[:3] if stop_early else rows

    train = pd.DataFrame([row for i in range(60) for row in trace(i, False, i // 10)])
    faulty = pd.DataFrame([row for i in range(100, 120) for row in trace(i, i % 10 != 0, 20)])
    detector = CallPatternDetector().fit_calibrated(MeltBundle(traces=train))
    scores = detector.detect(MeltBundle(traces=faulty))
    top = scores.loc[scores["score"].idxmax()]
    assert top["service"] == "checkout" and top["score"] >= 4.0
    assert "Ship [shipping]" in top["entity"] and top["evidence"]["anomaly_type"] == "pattern_vanished"
    assert top["evidence"]["value"] == pytest.approx(0.1)  # 2 of 20 calls still ship
    calm = detector.detect(MeltBundle(traces=pd.DataFrame([row for i in range(200, 220) for row in trace(i, False, 30)])))
    assert calm["score"].max() < 4.0


def test_server_tree_folds_a_call_into_its_server_span_and_keeps_lost_requests() -> None:
    from detectors.traces.client_calls import server_tree

    spans = pd.DataFrame([
        _span("t", "a", None, "web", "GET /", 100.0, "server"),
        _span("t", "c1", "a", "web", "GetCart", 30.0, "client", at=1),
        _span("t", "s1", "c1", "cart", "GetCart", 12.0, "server", at=5),
        _span("t", "c2", "a", "web", "GetCart", 200.0, "client", status=503, at=40),  # never arrived
    ])
    tree = server_tree(spans).set_index("span_id")
    assert list(tree.index) == ["a", "s1", "c2"]
    assert tree.loc["s1", "parent_span_id"] == "a" and tree.loc["c2", "parent_span_id"] == "a"
