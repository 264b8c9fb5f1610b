"""A compact, structured summary of an incident: the only thing an explainer may see and cite.

Facts hold the incident, the top causes with their paths and evidence ids, and the evidence
items themselves (observed value against expected range, templates, change events), each under
its report-wide id. They are cut to a token budget by dropping the weakest evidence first, so
that a prompt stays small however loud the incident; the hash of the facts keys the
explanation cache.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd

EVIDENCE_FIELDS = ("id", "service", "component", "feature", "anomaly_type", "value", "expected_range", "score",
                   "template", "pattern", "operation", "reported_by", "example", "message", "timestamp", "unit")
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


def build_facts(incident: dict[str, Any], candidates: list[dict[str, Any]], evidence: list[dict[str, Any]],
                max_tokens: int = 1500) -> dict[str, Any]:
    """Facts from plain report parts, within ``max_tokens`` (evidence cut weakest first, never below one).

    Evidence cited by the top cause is kept ahead of the rest; change events are listed on their own
    as well, since a deploy just before onset is often the whole story.
    """
    top_ids = set(candidates[0]["evidence_ids"]) if candidates else set()
    ordered = sorted(evidence, key=lambda e: (e["id"] not in top_ids, -float(e.get("score") or 0.0)))
    items = [_compact(e) for e in ordered]
    causes = [{k: c[k] for k in ("service", "score", "path", "evidence_ids")} for c in candidates[:3]]
    # each item costs its own size plus its id, listed again in the causes or change events
    room = max_tokens - estimate_tokens({"incident": incident, "top_causes": causes, "evidence": [], "change_events": []})
    cost = np.cumsum([estimate_tokens(e) + 2 for e in items])
    items = items[:max(1, int(np.searchsorted(cost, room, side="right")))]
    kept = {e["id"] for e in items}
    for cause in causes:
        cause["evidence_ids"] = [i for i in cause["evidence_ids"] if i in kept]
    return {"incident": incident, "top_causes": causes, "evidence": items,
            "change_events": [e["id"] for e in items if e.get("component") == "events"]}


def evidence_ids(facts: dict[str, Any]) -> set[str]:
    """The ids an explanation may cite."""
    return {e["id"] for e in facts["evidence"]}


def facts_hash(facts: dict[str, Any], *salt: str) -> str:
    """Stable hash of the facts (and of whatever else shapes the answer: provider, model, prompt version)."""
    canonical = json.dumps([facts, *salt], sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def minutes_between(start: str, end: str) -> float:
    return (pd.Timestamp(end) - pd.Timestamp(start)) / pd.Timedelta(minutes=1)
