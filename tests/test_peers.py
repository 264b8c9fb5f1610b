"""Callers' log lines that name a dependency: kept apart per dependency, and counted for the dependency."""

from __future__ import annotations

from dataclasses import replace

import networkx as nx
import pandas as pd

from detectors.logs.log_templates import LogTemplateDetector
from detectors.logs.peers import describe, named_peers, split_peer, with_peer
from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.incidents.ensemble import window_incident
from rca.attribution import attribute_to_peers
from rca.rank import rank_root_causes

T0 = pd.Timestamp("2026-01-01 00:00", tz="UTC")
SIGNAL_OF = {"log_patterns": "logs", "span_latency": "traces", "zscore": "metrics"}


def test_a_line_names_the_longest_whole_service_name_other_than_its_own() -> None:
    messages = pd.Series(["Slow call to payment-service: 12 ms", "No instances available for ts-inside-payment-service",
                          "payment-service started", "retry payment-services now", "Timed out waiting for cart-service, id=1"])
    own = pd.Series(["web", "web", "payment-service", "web", "web"])
    services = ["payment-service", "ts-inside-payment-service", "cart-service", "web"]
    assert named_peers(messages, own, services).tolist() == ["payment-service", "ts-inside-payment-service", "", "",
                                                             "cart-service"]
    labels = with_peer(pd.Series(["7", "7", "8"]).to_numpy(), pd.Series(["cart", "", "pay"]).to_numpy(dtype=object))
    assert [split_peer(label) for label in labels] == [("7", "cart"), ("7", None), ("8", "pay")]
    assert describe(labels[0], {"7": "Slow call to <*>"}) == "Slow call to <*> [cart]"


def _slow_calls(minute: int, per_callee: dict[str, int]) -> pd.DataFrame:
    """web logs 'Slow call to <callee>' lines; every callee logs its own request lines."""
    rows = []
    for callee, slow in per_callee.items():
        at = T0 + pd.Timedelta(minutes=minute)
        rows += [(at + pd.Timedelta(seconds=i), "web", "WARN", f"Slow call to {callee}: {150 + i} ms exceeds 100 ms")
                 for i in range(slow)]
        rows += [(at + pd.Timedelta(seconds=i), callee, "INFO", f"handled request {i} in {i + 3} ms") for i in range(20)]
    return pd.DataFrame(rows, columns=["timestamp", "service", "level", "message"])


def test_drain_keeps_complaints_about_each_callee_apart() -> None:
    """Drain merges 'Slow call to cart' and 'Slow call to payments' into one template; the peer keeps them apart."""
    normal = {"cart": 2, "payments": 2}
    train = MeltBundle(logs=pd.concat([_slow_calls(m, normal) for m in range(20)], ignore_index=True))
    detector = LogTemplateDetector().fit_calibrated(train)
    scores = detector.detect(MeltBundle(logs=_slow_calls(30, {"cart": 2, "payments": 30})))
    top = scores.sort_values("raw_score").iloc[-1]
    assert top["service"] == "web" and top["evidence"]["peer"] == "payments"
    assert top["entity"].endswith("[payments]") and "<*>" in top["entity"]
    cart = scores[scores["entity"].str.endswith("[cart]")]
    assert len(cart) == 1 and cart["raw_score"].iloc[0] < top["raw_score"]


def _row(service: str, detector: str, entity: str, score: float, **evidence: object) -> dict:
    return {"timestamp": T0, "service": service, "detector": detector, "entity": entity, "score": score,
            "raw_score": score, "evidence": {"anomaly_type": "pattern_grew"} | evidence}


def test_callers_complaints_rank_the_service_they_name() -> None:
    """Two callers log slow calls to payments, loudly; payments' own span time grew a little: payments is the cause."""
    graph = nx.DiGraph([("gateway", "orders"), ("orders", "payments"), ("gateway", "payments")])
    scores = pd.DataFrame([
        _row("gateway", "log_patterns", "GET /pay: Slow call to <*> [payments]", 20.0, peer="payments"),
        _row("orders", "log_patterns", "POST /order: Slow call to <*> [payments]", 15.0, peer="payments"),
        _row("orders", "log_patterns", "POST /order: Slow call to <*> [stock]", 9.0, peer="stock",
             anomaly_type="pattern_vanished"),
        _row("payments", "span_latency", "charge self time", 6.0),
    ])
    moved = attribute_to_peers(scores, SIGNAL_OF)
    assert moved["service"].tolist() == ["payments", "payments", "orders", "payments"]
    assert moved["reported_by"].tolist() == ["gateway", "orders", None, None]
    assert moved["evidence"].iloc[0]["reported_by"] == "gateway" and "reported_by" not in scores["evidence"].iloc[0]
    assert attribute_to_peers(moved, SIGNAL_OF) is moved  # attributed rows are not moved twice
    incident = window_incident(scores, SIGNAL_OF, T0, T0 + pd.Timedelta(minutes=5), 4.0)
    ranked = rank_root_causes(incident, scores, graph, SIGNAL_OF, load_settings(None).rca, 4.0)
    assert ranked[0].service == "payments"
    assert ranked[0].terms["evidence.reported"] == 17.0  # the loudest complaint, less the 3-sigma noise floor
    orders = next(c for c in ranked if c.service == "orders")
    assert orders.terms["evidence.logs"] == 9.0  # fewer complaints about stock stay the caller's own change


def test_a_service_that_blames_another_is_waiting_on_it() -> None:
    """catalog's threads pile up while it waits on a slow db: its CPU and its callers' complaints are db's fault."""
    graph = nx.DiGraph([("gateway", "catalog"), ("catalog", "db")])
    scores = pd.DataFrame([
        _row("catalog", "log_patterns", "GET /item: Timed out waiting for <*> [db]", 23.0, peer="db"),
        _row("gateway", "log_patterns", "GET /shop: Slow call to <*> [catalog]", 13.0, peer="catalog"),
        _row("catalog", "zscore", "cpu_usage", 25.0, anomaly_type="spike"),
    ])
    incident = window_incident(scores, SIGNAL_OF, T0, T0 + pd.Timedelta(minutes=5), 4.0)
    config = load_settings(None).rca
    ranked = rank_root_causes(incident, scores, graph, SIGNAL_OF, config, 4.0)
    assert [c.service for c in ranked][:2] == ["db", "catalog"]
    assert ranked[1].terms["evidence.resource"] == 20.0  # the evidence itself is kept; its weight in `anomaly` falls
    trusting = rank_root_causes(incident, scores, graph, SIGNAL_OF, replace(config, complaint_discount=0.0), 4.0)
    assert trusting[0].service == "catalog"
