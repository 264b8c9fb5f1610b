"""What a generation request will cost, estimated before any span is drawn, and a refusal above
what the machine has.

A request of ``--duration 10000d`` or ``--interval 1ms`` would otherwise try to allocate many GiB
and die (or swap) minutes later. The estimate counts the spans the call-tree templates make per
request (each optional call at its probability, a client span per remote call) and the metric
points of every pod and call edge, at the bytes per row the generator was measured to use
(docs/benchmarks.md, "Synthetic generator speed": 2.3 GB peak for 1.05 M spans, 1.09 M log lines
and 1.3 M metric points, at about 50,000 spans a second).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from melt.core.errors import ConfigError
from melt.core.settings import SynthSettings
from synth.topology import Topology
from synth.workload import CallTemplate

BYTES_PER_SPAN = 2_200  # the span, its log lines and the working arrays, at the generator's peak
BYTES_PER_METRIC_POINT = 150
SPANS_PER_SECOND = 50_000
MAX_SERVICES = 5_000  # a random topology larger than this takes minutes to build before anything is counted


@dataclass(frozen=True)
class Estimate:
    """The expected size and cost of one generation."""

    requests: int
    spans: int
    metric_points: int
    bytes: int
    seconds: float

    def text(self) -> str:
        return (f"about {self.spans:,} spans from {self.requests:,} requests and {self.metric_points:,} metric points: "
                f"~{self.bytes / 2**30:.1f} GiB, ~{self.seconds:.0f} s")


def estimate(config: SynthSettings, topology: Topology, templates: list[CallTemplate]) -> Estimate:
    """The estimate for ``config`` on this topology (before the fault schedule adds retries)."""
    minutes = config.duration / np.timedelta64(1, "m")
    requests = int(config.requests_per_minute * minutes)
    # the expected number of calls a request makes: each node at the probability that it and its callers run
    per_template = [_expected_nodes(t) for t in templates]
    spans = int(requests * float(np.mean(per_template)) * 1.9)  # about every call crosses services: a client span each
    buckets = int(config.duration / config.interval)
    pods = int(np.sum(topology.instances))
    edges = len(topology.service_edges())
    metric_points = buckets * (pods * 10 + edges * 2)
    size = spans * BYTES_PER_SPAN + metric_points * BYTES_PER_METRIC_POINT
    return Estimate(requests, spans, metric_points, size, spans / SPANS_PER_SECOND)


def _expected_nodes(template: CallTemplate) -> float:
    """Sum over a template's nodes of the probability that the node's call happens."""
    reach = template.prob.astype(float).copy()
    for node in range(template.endpoint.size):  # pre-order: parents come first
        if template.parent[node] >= 0:
            reach[node] *= reach[template.parent[node]]
    return float(reach.sum())


def available_memory() -> int | None:
    """Bytes of memory the machine can give now (Linux ``MemAvailable``), or ``None`` if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def check_budget(cost: Estimate, available: int | None) -> None:
    """Refuse (:class:`ConfigError`) a request that needs more memory than the machine has now."""
    if available is not None and cost.bytes > available:
        raise ConfigError(f"synth: this request needs {cost.text()}, more than the {available / 2**30:.1f} GiB "
                          "available; use a shorter --duration, a longer --interval, fewer --services or a lower "
                          "--requests-per-minute")
