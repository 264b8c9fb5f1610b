"""Service call graph with typical roles, seeded or loaded from YAML.

Services are layered (gateway -> mid-tier layers -> datastores) so the endpoint call graph is a
DAG, as in DeathStarBench/TrainTicket-style systems. Each service has several endpoints; each
endpoint calls a few endpoints of deeper services, synchronously or (to queues) asynchronously.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from melt.core.errors import ConfigError

MID_TIER_NAMES = [
    "order", "payment", "user", "cart", "catalog", "inventory", "shipping", "auth", "search", "pricing",
    "recommendation", "notification", "review", "coupon", "checkout", "account", "route", "ticket",
    "seat", "station", "travel", "contacts", "food", "consign", "billing", "profile", "media", "geo",
]
BASE_LATENCY_MS = {"gateway": 2.0, "frontend": 4.0, "service": 6.0, "db": 3.0, "cache": 0.6, "queue": 0.8}
OPERATIONS = {
    "db": ["SELECT", "INSERT", "UPDATE"],
    "cache": ["GET", "SET"],
    "queue": ["publish"],
}
VERBS = ["get", "list", "create", "update", "validate", "query", "reserve", "cancel"]


@dataclass
class Topology:
    """Services, endpoints and endpoint-level calls.

    Attributes:
        services: service names; ``roles`` and ``base_latency_ms`` align with it.
        instances: number of pods per service.
        endpoint_service: service index of each endpoint; ``endpoint_name`` its operation name.
        calls: per endpoint, a list of (callee endpoint, call probability, is_async).
    """

    services: list[str]
    roles: list[str]
    base_latency_ms: np.ndarray
    instances: np.ndarray
    endpoint_service: np.ndarray
    endpoint_name: list[str]
    calls: list[list[tuple[int, float, bool]]] = field(default_factory=list)

    def roots(self) -> np.ndarray:
        """Endpoints of the gateway: where requests enter."""
        gateways = [i for i, r in enumerate(self.roles) if r == "gateway"]
        return np.flatnonzero(np.isin(self.endpoint_service, gateways))

    def service_edges(self) -> set[tuple[str, str]]:
        """Caller service -> callee service pairs implied by the endpoint calls."""
        return {
            (self.services[self.endpoint_service[a]], self.services[self.endpoint_service[b]])
            for a, callees in enumerate(self.calls)
            for b, _, _ in callees
        }


def _names(n_services: int) -> tuple[list[str], list[str]]:
    n_db = max(1, n_services // 6)
    n_cache = max(1, n_services // 10)
    n_queue = 1 if n_services >= 8 else 0
    n_front = 1 if n_services >= 6 else 0
    n_mid = n_services - 1 - n_front - n_db - n_cache - n_queue
    if n_mid < 1:
        raise ConfigError(f"synth: --services must be at least 4, got {n_services}")
    names, roles = ["gateway"], ["gateway"]
    if n_front:
        names.append("web-frontend")
        roles.append("frontend")
    for i in range(n_mid):
        base = MID_TIER_NAMES[i % len(MID_TIER_NAMES)]
        suffix = f"-{i // len(MID_TIER_NAMES) + 1}" if i >= len(MID_TIER_NAMES) else ""
        names.append(f"{base}-service{suffix}")
        roles.append("service")
    for kind, count, label in (("db", n_db, "postgres"), ("cache", n_cache, "redis"), ("queue", n_queue, "kafka")):
        for i in range(count):
            names.append(f"{label}-{i + 1}" if count > 1 else label)
            roles.append(kind)
    return names, roles


def random_topology(n_services: int, endpoints_per_service: int, rng: np.random.Generator) -> Topology:
    """A layered random topology with ``n_services`` services."""
    names, roles = _names(n_services)
    role_arr = np.array(roles)
    mids = np.flatnonzero(role_arr == "service")
    layers = np.zeros(len(names), dtype=int)
    n_layers = max(1, min(4, int(np.ceil(len(mids) / 3))))
    layers[mids] = 1 + np.sort(rng.integers(0, n_layers, len(mids)))
    layers[mids[0]] = 1
    layers[role_arr == "frontend"] = 0
    layers[role_arr == "gateway"] = -1
    stores = np.flatnonzero(np.isin(role_arr, ["db", "cache", "queue"]))
    layers[stores] = n_layers + 1

    endpoint_service: list[int] = []
    endpoint_name: list[str] = []
    nouns = sorted({names[s].split("-")[0] for s in mids})
    for s, role in enumerate(roles):
        ops = OPERATIONS.get(role)
        if role == "gateway":  # one public route per request type; big systems have many, each touching a few services
            routes = [f"{'GET' if v in ('get', 'list', 'query') else 'POST'} /api/v1/{noun}/{v}" for noun in nouns for v in VERBS]
            n_routes = min(max(endpoints_per_service, len(mids) // 2), len(routes))
            ops = sorted(rng.choice(routes, size=n_routes, replace=False))
        elif ops is None:
            noun = names[s].split("-")[0]
            ops = [f"{'GET' if v in ('get', 'list', 'query') else 'POST'} /api/{noun}/{v}" for v in VERBS]
            ops = sorted(rng.choice(ops, size=min(endpoints_per_service, len(ops)), replace=False))
        endpoint_service += [s] * len(ops)
        endpoint_name += list(ops)
    ep_service = np.array(endpoint_service)
    calls: list[list[tuple[int, float, bool]]] = [[] for _ in endpoint_name]

    def endpoints_of(services: np.ndarray) -> np.ndarray:
        return np.flatnonzero(np.isin(ep_service, services))

    # every endpoint gets a caller that is itself reached, in a shallower layer, so no endpoint is dead
    reached = set(endpoints_of(np.flatnonzero(role_arr == "gateway")).tolist())
    for s in np.argsort(layers, kind="stable"):
        if roles[s] == "gateway":
            continue
        app = np.isin(role_arr, ["gateway", "frontend"] if roles[s] == "service" and layers[s] == 1
                      else ["gateway", "frontend", "service"])
        shallower = endpoints_of(np.flatnonzero((layers < layers[s]) & app))
        callers = np.array([ep for ep in shallower if ep in reached])
        for callee_ep in endpoints_of(np.array([s])):
            caller_ep = int(rng.choice(callers))
            calls[caller_ep].append((int(callee_ep), 1.0, roles[s] == "queue"))
            reached.add(int(callee_ep))
    # extra fan-out: each mid-tier endpoint calls 0-2 deeper endpoints, some optional
    for ep, s in enumerate(ep_service):
        if roles[s] not in ("gateway", "frontend", "service"):
            continue
        deeper = np.flatnonzero(layers > layers[s])
        if deeper.size == 0:
            continue
        for callee_ep in rng.choice(endpoints_of(deeper), size=int(rng.integers(0, 3)), replace=True):
            if all(c != callee_ep for c, _, _ in calls[ep]):
                prob = float(rng.choice([1.0, 1.0, 0.7, 0.4]))
                calls[ep].append((int(callee_ep), prob, roles[ep_service[callee_ep]] == "queue"))
    # gateway endpoints without calls would make trivial traces: route them to the frontend or layer 1
    entry = np.flatnonzero((role_arr == "frontend") | ((role_arr == "service") & (layers == 1)))
    for ep in endpoints_of(np.flatnonzero(role_arr == "gateway")):
        if not calls[ep]:
            calls[ep].append((int(rng.choice(endpoints_of(entry))), 1.0, False))
    base = np.array([BASE_LATENCY_MS[r] for r in roles]) * rng.lognormal(0.0, 0.35, len(roles))
    instances = np.where(np.isin(role_arr, ["service", "frontend"]), rng.integers(1, 4, len(roles)), 1)
    return Topology(names, roles, base, instances, ep_service, endpoint_name, calls)


def load_topology(path: str | Path) -> Topology:
    """Load a topology from YAML.

    Format::

        services:
          gateway: {role: gateway, latency_ms: 2, instances: 2}
          orders:  {role: service, latency_ms: 8}
          db:      {role: db}
        calls:                       # caller.endpoint -> callee.endpoint
          - {from: "gateway.GET /orders", to: "orders.list", prob: 1.0, async: false}
          - {from: "orders.list", to: "db.SELECT"}
    """
    import yaml

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"topology file not found: {file}")
    try:
        spec = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not a valid YAML topology ({type(exc).__name__})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("services"), dict) or not isinstance(spec.get("calls"), list):
        raise ConfigError(f"{file}: needs a 'services' mapping and a 'calls' list")
    names = list(spec["services"])
    roles = [str(spec["services"][n].get("role", "service")) for n in names]
    for name, role in zip(names, roles, strict=True):
        if role not in BASE_LATENCY_MS:
            raise ConfigError(f"{file}: service '{name}' has unknown role '{role}' (use {', '.join(BASE_LATENCY_MS)})")
    if roles.count("gateway") < 1:
        raise ConfigError(f"{file}: needs one service with role 'gateway'")
    endpoints: dict[str, int] = {}
    endpoint_service: list[int] = []
    endpoint_name: list[str] = []

    def endpoint(ref: str) -> int:
        service, _, op = str(ref).partition(".")
        if service not in names or not op:
            raise ConfigError(f"{file}: call endpoint '{ref}' must be 'service.operation' with a known service")
        if ref not in endpoints:
            endpoints[ref] = len(endpoint_name)
            endpoint_service.append(names.index(service))
            endpoint_name.append(op)
        return endpoints[ref]

    edges = [(endpoint(c["from"]), endpoint(c["to"]), float(c.get("prob", 1.0)), bool(c.get("async", False)))
             for c in spec["calls"]]
    calls: list[list[tuple[int, float, bool]]] = [[] for _ in endpoint_name]
    for a, b, p, is_async in edges:
        calls[a].append((b, p, is_async))
    base = np.array([float(spec["services"][n].get("latency_ms", BASE_LATENCY_MS[r])) for n, r in zip(names, roles, strict=True)])
    instances = np.array([int(spec["services"][n].get("instances", 1)) for n in names])
    return Topology(names, roles, base, instances, np.array(endpoint_service), endpoint_name, calls)
