"""Requests and their span trees, generated with numpy over all spans at once.

Each gateway endpoint expands once into a call-tree *template* (arrays in pre-order). A request
copies its template's arrays; optional calls are dropped with their subtree; self times are
heavy-tailed (log-normal body, Pareto tail); a span's duration is its self time plus its
synchronous children's durations (``synth.calls``). No Python loop runs per span: loops run per
template or per tree depth only.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from melt.core.errors import ConfigError
from synth.topology import Topology

MAX_DEPTH = 12


@dataclass
class CallTemplate:
    """One request type: pre-order arrays of its call tree."""

    endpoint: np.ndarray  # endpoint index per node
    parent: np.ndarray  # index of the parent node within the template, -1 at the root
    depth: np.ndarray
    prob: np.ndarray  # probability that the call is made, given the parent ran
    is_async: np.ndarray


def build_templates(topology: Topology) -> list[CallTemplate]:
    """Expand each gateway endpoint into its call tree, in pre-order (every subtree is contiguous)."""
    templates = []
    for root in topology.roots():
        endpoint: list[int] = []
        parent: list[int] = []
        depth: list[int] = []
        prob: list[float] = []
        is_async: list[bool] = []
        stack = [(int(root), -1, 0, 1.0, False)]
        while stack:
            ep, up, level, p, asy = stack.pop()
            if level > MAX_DEPTH:
                raise ConfigError(f"topology: call chain deeper than {MAX_DEPTH} at '{topology.endpoint_name[ep]}' (a cycle?)")
            node = len(endpoint)
            endpoint.append(ep)
            parent.append(up)
            depth.append(level)
            prob.append(p)
            is_async.append(asy)
            stack.extend((callee, node, level + 1, cp, ca) for callee, cp, ca in reversed(topology.calls[ep]))
        templates.append(CallTemplate(np.array(endpoint), np.array(parent), np.array(depth), np.array(prob), np.array(is_async)))
    return templates


def arrival_times(start: pd.Timestamp, minutes: int, rate_per_minute: float, surges: list[tuple[int, int, float]],
                  rng: np.random.Generator) -> np.ndarray:
    """Request times (ns since epoch): daily sinusoid x noise x benign surges, Poisson per minute."""
    minute = np.arange(minutes)
    hour_of_day = (start.hour + start.minute / 60 + minute / 60) % 24
    daily = 1.0 + 0.45 * np.sin(2 * np.pi * (hour_of_day - 9) / 24)
    noise = np.exp(rng.normal(0, 0.08, minutes))
    rate = rate_per_minute * daily * noise
    for first, length, factor in surges:
        rate[first:first + length] *= factor
    counts = rng.poisson(rate)
    minute_of_request = np.repeat(minute, counts)
    offsets = rng.uniform(0, 60e9, counts.sum())
    times = start.value + minute_of_request.astype(np.int64) * 60_000_000_000 + offsets.astype(np.int64)
    return np.sort(times)


@dataclass
class SpanArrays:
    """Flat arrays of every span of every request (one row per span, pre-order within a request)."""

    request: np.ndarray  # request (trace) index
    parent: np.ndarray  # global span index of the parent, -1 at roots
    endpoint: np.ndarray
    service: np.ndarray
    instance: np.ndarray
    depth: np.ndarray
    is_async: np.ndarray
    self_ms: np.ndarray
    request_time: np.ndarray  # ns, the trace's arrival time
    gap_ms: np.ndarray | None = None  # wait before the call starts (network delay, pool wait)
    is_retry: np.ndarray | None = None  # the span is a retried copy of a failed call
    retried: np.ndarray | None = None  # the call failed and its caller retried it

    def __post_init__(self) -> None:
        n = self.request.size
        self.gap_ms = np.zeros(n) if self.gap_ms is None else self.gap_ms
        self.is_retry = np.zeros(n, bool) if self.is_retry is None else self.is_retry
        self.retried = np.zeros(n, bool) if self.retried is None else self.retried

    @property
    def size(self) -> int:
        return int(self.request.size)

    @property
    def max_depth(self) -> int:
        return int(self.depth.max()) if self.size else 0


def expand_requests(topology: Topology, templates: list[CallTemplate], times: np.ndarray,
                    rng: np.random.Generator) -> SpanArrays:
    """Pick a template per request, copy its arrays, drop optional calls that did not happen."""
    n_req = times.size
    weights = rng.dirichlet(np.ones(len(templates)) * 2.0)
    chosen = rng.choice(len(templates), size=n_req, p=weights)
    parts = []
    offset = 0
    for t, template in enumerate(templates):
        requests = np.flatnonzero(chosen == t)
        size = template.endpoint.size
        if requests.size == 0:
            continue
        n = requests.size * size
        local_parent = np.tile(template.parent, requests.size)
        base = np.repeat(np.arange(requests.size) * size + offset, size)
        parts.append((
            np.repeat(requests, size),
            np.where(local_parent >= 0, local_parent + base, -1),
            np.tile(template.endpoint, requests.size),
            np.tile(template.depth, requests.size),
            np.tile(template.prob, requests.size),
            np.tile(template.is_async, requests.size),
        ))
        offset += n
    request, parent, endpoint, depth, prob, is_async = (np.concatenate(a) for a in zip(*parts, strict=True))
    # a call happens with its probability, and only if its caller ran (parents precede children)
    keep = rng.random(request.size) < prob
    for d in range(1, int(depth.max()) + 1):
        level = np.flatnonzero(depth == d)
        keep[level] &= keep[parent[level]]
    new_index = np.cumsum(keep) - 1
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)[keep]
    request, endpoint, depth, is_async = request[keep], endpoint[keep], depth[keep], is_async[keep]
    service = topology.endpoint_service[endpoint]
    instance = (rng.random(request.size) * topology.instances[service]).astype(np.int64)
    body = rng.lognormal(0.0, 0.45, request.size)
    tail = np.where(rng.random(request.size) < 0.01, rng.pareto(2.5, request.size) * 4 + 1, 1.0)
    self_ms = topology.base_latency_ms[service] * body * tail
    return SpanArrays(request, parent, endpoint, service, instance, depth, is_async, self_ms, times[request])
