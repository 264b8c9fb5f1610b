"""Change events: benign deploys, config changes, restarts and scaling, plus the ones faults cause.

Most changes in a real system are harmless, so most events here are. A bad deploy is a deploy at
the fault's start and a rollback at its end; a memory leak ends in an OOM-kill restart; some
latency and pool faults follow a config change. Distractor deploys land on other services just
before a fault, so "the last deploy did it" is not a free answer.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from synth.faults import Fault
from synth.topology import Topology

MINUTE_NS = 60_000_000_000


def benign_events(topology: Topology, start_ns: int, end_ns: int, per_hour: float, rng: np.random.Generator) -> pd.DataFrame:
    """Harmless changes spread over the period, about ``per_hour`` of them per hour."""
    hours = max((end_ns - start_ns) / (60 * MINUTE_NS), 1.0)
    n = int(rng.poisson(per_hour * hours)) + 1
    service = rng.integers(0, len(topology.services), n)
    kind = rng.choice(np.array(["deploy", "config_change", "scale", "restart"]), n, p=[0.45, 0.3, 0.15, 0.1])
    times = np.sort(rng.integers(start_ns, end_ns, n))
    return _frame(topology, times, service, kind, np.where(kind == "deploy", _versions(rng, n), ""))


def fault_events(topology: Topology, faults: list[Fault], distractors: float, rng: np.random.Generator) -> pd.DataFrame:
    """Events that faults cause or that precede them, and distractor deploys on innocent services."""
    times, service, kind, detail = [], [], [], []
    for fault in faults:
        if fault.type == "bad_deploy":
            version = f"2.{int(rng.integers(0, 40))}.0"
            times += [fault.start, fault.end]
            service += [fault.service, fault.service]
            kind += ["deploy", "deploy"]
            detail += [version, f"rollback from {version}"]
        elif fault.type == "memory_leak":
            times.append(fault.leak_end)
            service.append(fault.service)
            kind.append("restart")
            detail.append(f"{topology.services[fault.service]}-{fault.instance} OOMKilled")
        elif fault.type in ("latency", "pool_exhaustion") and rng.random() < 0.4:
            times.append(fault.start - int(rng.integers(1, 4)) * MINUTE_NS)
            service.append(fault.service)
            kind.append("config_change")
            detail.append("")
        if rng.random() < distractors:
            others = [s for s in range(len(topology.services)) if s != fault.service]
            times.append(fault.start - int(rng.integers(2, 10)) * MINUTE_NS)
            service.append(int(rng.choice(others)))
            kind.append("deploy")
            detail.append(f"1.{int(rng.integers(0, 30))}.{int(rng.integers(0, 9))}")
    if not times:
        return _frame(topology, np.array([], np.int64), np.array([], int), np.array([], str), np.array([], str))
    return _frame(topology, np.array(times), np.array(service), np.array(kind), np.array(detail))


def _versions(rng: np.random.Generator, n: int) -> np.ndarray:
    major = rng.integers(1, 3, n).astype(str)
    minor = rng.integers(0, 30, n).astype(str)
    return np.char.add(np.char.add(major, "."), np.char.add(minor, ".0"))


def _frame(topology: Topology, times: np.ndarray, service: np.ndarray, kind: np.ndarray, detail: np.ndarray) -> pd.DataFrame:
    names = np.array(topology.services)[service.astype(int)] if service.size else np.array([], str)
    messages, attributes = [], []
    for name, k, d in zip(names, kind, detail, strict=True):  # a few dozen events: a loop is clearer
        if k == "deploy":
            rollback = d.startswith("rollback")
            version = d.removeprefix("rollback from ")
            messages.append(f"Rolled back {name} from {version}" if rollback else f"Deployed {name} version {version}")
            attributes.append(json.dumps({"version": version, "rollback": rollback, "by": "ci-pipeline"}))
        elif k == "restart":
            reason = "OOMKilled" if d.endswith("OOMKilled") else "liveness probe"
            pod = d.removesuffix(" OOMKilled") or f"{name}-0"
            messages.append(f"Pod {pod} restarted ({reason})")
            attributes.append(json.dumps({"pod": pod, "reason": reason}))
        elif k == "scale":
            messages.append(f"Scaled {name} replicas")
            attributes.append(json.dumps({"by": "hpa"}))
        else:
            messages.append(f"Updated configmap of {name}")
            attributes.append(json.dumps({"by": "ops"}))
    return pd.DataFrame({"timestamp": pd.to_datetime(times, utc=True), "service": names, "kind": kind,
                         "message": messages, "attributes": attributes})
