"""Change events (deploy, config change, restart, scaling) scored by kind and rarity.

Changes are the most common trigger of production incidents (Google SRE book, ch. 1: "roughly 70%
of outages are due to changes in a live system"). Each event is scored by a prior weight of its
kind, discounted by how often that service had that kind of event in training: a routine hourly
rescale is less suspicious than a rare deploy. RCA uses these scores as its change term.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores

KIND_WEIGHTS = {"deploy": 1.0, "config_change": 0.8, "restart": 0.9, "scale": 0.3}


class ChangeEventDetector(Detector):
    """Scores change events; the score is context for RCA more than an alert on its own.

    Args:
        other_weight: prior weight of event kinds not in the built-in table.
    """

    name = "change_events"
    signal = "events"
    partition = "service"

    def __init__(self, other_weight: float = 0.2) -> None:
        self.other_weight = other_weight

    fit_rounds = 1  # one round: the parts' first and last event and counts per (service, kind)

    def fit_map(self, bundle: MeltBundle, step: int) -> dict[str, Any]:
        events = self.require(bundle)
        return {"times": [events["timestamp"].min(), events["timestamp"].max()] if len(events) else [],
                "rows": len(events), "counts": events.groupby(["service", "kind"], observed=True).size()}

    def fit_reduce(self, step: int, parts: list[dict[str, Any]]) -> None:
        times = [t for p in parts for t in p["times"]]
        hours = 1.0
        if sum(p["rows"] for p in parts) > 1:
            hours = max((max(times) - min(times)) / pd.Timedelta(hours=1), 1.0)
        counts = pd.concat([p["counts"] for p in parts]).groupby(level=[0, 1]).sum()
        self.rate_per_hour_ = (counts / hours).to_dict()

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        events = self.require(bundle)
        if events.empty:
            return empty_scores()
        prior = events["kind"].map(KIND_WEIGHTS).fillna(self.other_weight).to_numpy(dtype=float)
        rate = np.array([self.rate_per_hour_.get((s, k), 0.0) for s, k in zip(events["service"], events["kind"], strict=True)])
        raw = prior / (1.0 + rate)
        evidence = [{"value": str(k), "expected_range": None, "anomaly_type": "change_event", "message": str(m)}
                    for k, m in zip(events["kind"], events["message"], strict=True)]
        return pd.DataFrame({
            "timestamp": events["timestamp"].to_numpy(),
            "service": events["service"].to_numpy(),
            "detector": self.name,
            "entity": events["kind"].to_numpy(),
            "score": raw,
            "evidence": evidence,
        })
