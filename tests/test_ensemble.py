"""Incident grouping: alerts close in time and connected in the dependency graph form one incident."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import networkx as nx
import pandas as pd
import pytest

from melt.core.config import default_settings
from melt.core.settings import EnsembleSettings
from melt.incidents.ensemble import connected_groups, group_incidents, nearby_services

T0 = pd.Timestamp("2026-01-01 00:10", tz="UTC")
SIGNAL_OF = {"zscore": "metrics"}


def _alerts(*items: tuple[int, str, float]) -> pd.DataFrame:
    return pd.DataFrame([{"timestamp": T0 + pd.Timedelta(minutes=m), "service": s, "detector": "zscore",
                          "entity": "LatencyP99(s)", "score": v, "raw_score": v, "evidence": {}} for m, s, v in items])


@pytest.fixture
def graph() -> nx.DiGraph:
    """Two separate call trees: web -> orders -> payments, and batch -> reports."""
    g = nx.DiGraph()
    g.add_edges_from([("web", "orders"), ("orders", "payments"), ("batch", "reports")])
    return g


@pytest.fixture
def ensemble() -> EnsembleSettings:
    """The default ensemble with zscore weighed 0.67, the weight these cases' scores were written for
    (the grouping rules are under test here, not the default weight)."""
    return replace(default_settings().ensemble, weights=MappingProxyType({"zscore": 0.67}))


def test_concurrent_failures_in_unconnected_services_stay_apart(graph, ensemble) -> None:
    scores = _alerts((0, "payments", 9.0), (1, "web", 6.0), (0, "reports", 8.0), (1, "reports", 7.0))
    incidents = group_incidents(scores, SIGNAL_OF, ensemble, graph)
    assert sorted(sorted(i.services) for i in incidents) == [["payments", "web"], ["reports"]]
    web_side = next(i for i in incidents if "web" in i.services)
    assert web_side.scope == {"web", "orders", "payments"}
    assert set(web_side.evidence["service"]) == {"payments", "web"}


def test_time_only_grouping_without_a_graph_or_with_zero_hops(graph, ensemble) -> None:
    scores = _alerts((0, "payments", 9.0), (1, "web", 6.0), (0, "reports", 8.0), (1, "reports", 7.0))
    assert len(group_incidents(scores, SIGNAL_OF, ensemble)) == 1
    assert len(group_incidents(scores, SIGNAL_OF, replace(ensemble, connect_hops=0), graph)) == 1


def test_flapping_alerts_on_one_service_extend_one_incident(graph, ensemble) -> None:
    scores = _alerts((0, "payments", 9.0), (2, "payments", 1.0), (3, "payments", 9.0), (6, "payments", 9.0))
    incidents = group_incidents(scores, SIGNAL_OF, ensemble, graph)
    assert len(incidents) == 1
    assert incidents[0].end - incidents[0].start == pd.Timedelta(minutes=7)


def test_connected_groups_hops_and_unknown_services(graph) -> None:
    services = ["web", "payments", "reports", "metrics-only"]
    groups = connected_groups(services, nearby_services(services, graph, hops=2))
    assert groups["web"] == groups["payments"] != groups["reports"]
    assert groups["metrics-only"] == groups["web"]  # cannot be placed: joins the largest group
    one_hop = connected_groups(["web", "payments"], nearby_services(["web", "payments"], graph, hops=1))
    assert one_hop["web"] != one_hop["payments"]


def test_a_lone_weak_alert_does_not_chain_two_failures(graph, ensemble) -> None:
    """Two failures 8 minutes apart, and one blip between them within merge_gap of both (zscore weighs 0.67)."""
    first = [(m, "payments", 12.0) for m in range(0, 4)]
    second = [(m, "orders", 12.0) for m in range(8, 12)]
    blip = [(6, "web", 7.0)]  # fused 4.7: an alert, under 1.5 x threshold
    incidents = group_incidents(_alerts(*first, *blip, *second), SIGNAL_OF, ensemble, graph)
    assert [(i.services, i.end - i.start) for i in incidents] == [(["payments"], pd.Timedelta(minutes=4)),
                                                                  (["orders"], pd.Timedelta(minutes=4))]
    strong = [(6, "web", 15.0)]  # a strong lone alert is no blip: it joins both into one incident
    assert len(group_incidents(_alerts(*first, *strong, *second), SIGNAL_OF, ensemble, graph)) == 1
    assert len(group_incidents(_alerts(*first, *blip, *second), SIGNAL_OF, replace(ensemble, blip_factor=0), graph)) == 1


def test_a_failure_that_faded_and_fell_quiet_is_over(graph, ensemble) -> None:
    """The next failure starts two minutes after the first one's faded tail, within merge_gap."""
    first = [(0, "payments", 30.0), (1, "payments", 30.0), (2, "payments", 8.0)]  # tail: 8 of 30
    second = [(m, "orders", 12.0) for m in range(4, 8)]
    incidents = group_incidents(_alerts(*first, *second), SIGNAL_OF, ensemble, graph)
    assert [(i.services, i.start - T0) for i in incidents] == [(["payments"], pd.Timedelta(0)),
                                                               (["orders"], pd.Timedelta(minutes=4))]
    loud_to_the_end = [(0, "payments", 30.0), (1, "payments", 30.0), (2, "payments", 25.0)]
    assert len(group_incidents(_alerts(*loud_to_the_end, *second), SIGNAL_OF, ensemble, graph)) == 1
    assert len(group_incidents(_alerts(*first, *second), SIGNAL_OF, replace(ensemble, settled_fraction=0), graph)) == 1
    flare = [(m, "orders", 30.0) for m in range(3, 7)]  # no quiet window: the next failure more than doubles the tail
    assert [i.services for i in group_incidents(_alerts(*first, *flare), SIGNAL_OF, ensemble, graph)] == [
        ["payments"], ["orders"]]
    assert len(group_incidents(_alerts(*loud_to_the_end, *flare), SIGNAL_OF, ensemble, graph)) == 1
