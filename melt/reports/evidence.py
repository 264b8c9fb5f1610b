"""Pick the evidence rows of an incident that a report cites, and give each a stable id."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd


def _plain(value: Any) -> Any:
    """JSON-safe Python values (numpy scalars, timestamps)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def select_evidence(rows: pd.DataFrame, services: list[str], signal_of: dict[str, str], max_items: int) -> list[dict[str, Any]]:
    """The strongest row per (service, detector, entity) for ``services``, best first, ids ``E1..En``.

    Services earlier in ``services`` (the ranked causes) get their share first, so the top cause's
    evidence is never crowded out by a loud symptom.
    """
    rows = rows[rows["service"].isin(services)]
    if rows.empty:
        return []
    best = rows.sort_values("score", ascending=False).drop_duplicates(["service", "detector", "entity"])
    rank = {s: i for i, s in enumerate(services)}
    best = best.assign(service_rank=best["service"].map(rank))
    per_service = max(2, max_items // max(len(services), 1))
    head = best.groupby("service_rank", sort=True).head(per_service)
    rest = best.drop(head.index)
    chosen = pd.concat([head.sort_values(["service_rank", "score"], ascending=[True, False]),
                        rest.sort_values("score", ascending=False)]).head(max_items)
    items = []
    for i, row in enumerate(chosen.itertuples(index=False), start=1):
        detail = dict(row.evidence) if isinstance(row.evidence, dict) else {}
        items.append(_plain({
            "id": f"E{i}", "service": row.service, "component": signal_of.get(row.detector, "unknown"),
            "detector": row.detector, "feature": row.entity, "timestamp": row.timestamp,
            "score": round(float(row.score), 3), **detail,
        }))
    return items
