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


def alert_episodes(rows: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Per (service, detector, entity) series: its alert episode, the first and last row at or over
    ``threshold``, and the time and score of its peak, so a report says "from 10:02 to 10:14, worst
    at 10:09" once instead of citing every alerting point."""
    alerting = rows[rows["score"] >= threshold]
    if alerting.empty:
        return pd.DataFrame(columns=["start", "end", "peak", "peak_score"])
    keys = ["service", "detector", "entity"]
    peak = alerting.sort_values("score", ascending=False).drop_duplicates(keys).set_index(keys)
    span = alerting.groupby(keys, observed=True)["timestamp"].agg(["min", "max"])
    return pd.DataFrame({"start": span["min"], "end": span["max"],
                         "peak": peak["timestamp"].reindex(span.index), "peak_score": peak["score"].reindex(span.index)})


def select_evidence(rows: pd.DataFrame, services: list[str], signal_of: dict[str, str], max_items: int,
                    threshold: float | None = None) -> list[dict[str, Any]]:
    """The strongest row per (service, detector, entity) for ``services``, best first, ids ``E1..En``.

    Services earlier in ``services`` (the ranked causes) get their share first, so the top cause's
    evidence is never crowded out by a loud symptom. With ``threshold``, an item whose series
    alerted carries its ``episode`` (:func:`alert_episodes`).
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
    episodes = alert_episodes(rows, threshold) if threshold is not None else None
    items = []
    for i, row in enumerate(chosen.itertuples(index=False), start=1):
        detail = dict(row.evidence) if isinstance(row.evidence, dict) else {}
        key = (row.service, row.detector, row.entity)
        if episodes is not None and key in episodes.index:
            episode = episodes.loc[key]
            detail["episode"] = {"start": episode["start"], "end": episode["end"], "peak": episode["peak"],
                                 "peak_score": round(float(episode["peak_score"]), 3)}
        items.append(_plain({
            "id": f"E{i}", "service": row.service, "component": signal_of.get(row.detector, "unknown"),
            "detector": row.detector, "feature": row.entity, "timestamp": row.timestamp,
            "score": round(float(row.score), 3), **detail,
        }))
    return items
