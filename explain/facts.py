"""A compact, structured summary of an incident: the only thing an explainer may see and cite.

Facts hold the incident, the top causes with their paths and evidence ids, and the evidence
items themselves (observed value against expected range, templates, change events), each under
its report-wide id. They are cut to a token budget by dropping the weakest evidence first, so
that a prompt stays small however loud the incident; the hash of the facts keys the
explanation cache. A report's forecast of the top cause's metric comes in as a few numbers
(:func:`forecast_facts`): where it is expected at the horizon, its 95% range, the direction, and
when it reaches its limit.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

EVIDENCE_FIELDS = ("id", "service", "component", "feature", "anomaly_type", "value", "expected_range", "score",
                   "template", "pattern", "operation", "reported_by", "example", "message", "timestamp", "unit", "reason")
MAX_TEXT = 300  # characters kept of a template, pattern or message
CHARS_PER_TOKEN = 4  # the usual estimate for English and code with GPT-style tokenizers


def _compact(item: dict[str, Any]) -> dict[str, Any]:
    out = {k: item[k] for k in EVIDENCE_FIELDS if k in item and item[k] is not None}
    for key in ("template", "pattern", "example", "message"):
        if isinstance(out.get(key), str) and len(out[key]) > MAX_TEXT:
            out[key] = out[key][:MAX_TEXT] + "..."
    return out


def estimate_tokens(value: Any) -> int:
    return len(json.dumps(value, default=str)) // CHARS_PER_TOKEN + 1


def forecast_facts(forecast: dict[str, Any]) -> dict[str, Any]:
    """The compact facts of a report's ``forecast`` block: the value expected at the horizon with its
    95% range, the direction from the path's first step to its last (a change beyond half the 80%
    interval's half-width counts), and the limit and time to it, when known."""
    path = forecast["path"]
    first, last = path[0], path[-1]
    half = (last["upper_80"] - last["lower_80"]) / 2
    change = last["mean"] - first["mean"]
    direction = "flat" if abs(change) <= 0.5 * half else "rising" if change > 0 else "falling"
    out = {"evidence_id": forecast["evidence_id"], "service": forecast["service"], "metric": forecast["metric"],
           "from": forecast["origin"], "horizon_min": round(forecast["horizon"] / 60, 1), "at": last["timestamp"],
           "expected": last["mean"], "range_95": [last["lower_95"], last["upper_95"]], "direction": direction,
           "model": forecast["model"]}
    if forecast.get("limit") is not None:
        out["limit"] = forecast["limit"]
    if forecast.get("time_to_limit"):
        out["time_to_limit"] = forecast["time_to_limit"]
        out["minutes_to_limit"] = round(minutes_between(forecast["origin"], forecast["time_to_limit"]), 1)
    return out


def build_facts(incident: dict[str, Any], candidates: list[dict[str, Any]], evidence: list[dict[str, Any]],
                max_tokens: int = 1500, forecast: dict[str, Any] | None = None) -> dict[str, Any]:
    """Facts from plain report parts, within ``max_tokens`` (evidence cut weakest first, never below one).

    Evidence cited by the top cause is kept ahead of the rest; change events are listed on their own
    as well, since a deploy just before onset is often the whole story. ``forecast`` (a report's
    forecast block) adds its compact facts under ``"forecast"``.
    """
    top_ids = set(candidates[0]["evidence_ids"]) if candidates else set()
    ordered = sorted(evidence, key=lambda e: (e["id"] not in top_ids, -float(e.get("score") or 0.0)))
    items = [_compact(e) for e in ordered]
    causes = [{k: c[k] for k in ("service", "score", "path", "evidence_ids")} for c in candidates[:3]]
    # each item costs its own size plus its id, listed again in the causes or change events
    extra = {"forecast": forecast_facts(forecast)} if forecast else {}
    room = max_tokens - estimate_tokens({"incident": incident, "top_causes": causes, "evidence": [], "change_events": [],
                                         **extra})
    cost = np.cumsum([estimate_tokens(e) + 2 for e in items])
    items = items[:max(1, int(np.searchsorted(cost, room, side="right")))]
    kept = {e["id"] for e in items}
    for cause in causes:
        cause["evidence_ids"] = [i for i in cause["evidence_ids"] if i in kept]
    return {"incident": incident, "top_causes": causes, "evidence": items,
            "change_events": [e["id"] for e in items if e.get("component") == "events"], **extra}


def evidence_ids(facts: dict[str, Any]) -> set[str]:
    """The ids an explanation may cite."""
    return {e["id"] for e in facts["evidence"]}


def facts_hash(facts: dict[str, Any], *salt: str) -> str:
    """Stable hash of the facts (and of whatever else shapes the answer: provider, model, prompt version)."""
    canonical = json.dumps([facts, *salt], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def minutes_between(start: str, end: str) -> float:
    return (pd.Timestamp(end) - pd.Timestamp(start)) / pd.Timedelta(minutes=1)
