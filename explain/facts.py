"""A compact, structured summary of an incident: the only thing an explainer may see and cite."""

from __future__ import annotations

from typing import Any

import pandas as pd


def build_facts(incident: dict[str, Any], candidates: list[dict[str, Any]], evidence: list[dict[str, Any]],
                max_evidence: int = 12) -> dict[str, Any]:
    """Facts from plain report parts: the incident summary, ranked causes and cited evidence."""
    keep = ("id", "service", "component", "feature", "anomaly_type", "value", "expected_range", "score",
            "template", "example", "message", "timestamp", "unit")
    return {
        "incident": incident,
        "top_causes": [{k: c[k] for k in ("service", "score", "path", "evidence_ids")} for c in candidates[:3]],
        "evidence": [{k: e[k] for k in keep if k in e and e[k] is not None} for e in evidence[:max_evidence]],
    }


def minutes_between(start: str, end: str) -> float:
    return (pd.Timestamp(end) - pd.Timestamp(start)) / pd.Timedelta(minutes=1)
