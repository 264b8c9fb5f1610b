"""The JSON incident report: the seed tool's fields plus incident id, fingerprint and ranked causes.

Its shape is ``melt/schemas/report.schema.json``; every report is checked against it before any
sink sees it (:func:`validate_report`).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd

from melt.core.errors import ReportError
from melt.core.json_schema import first_error
from melt.core.version import __version__
from melt.incidents.ensemble import Incident

SCHEMA_VERSION = "1.2"
UNKNOWN_SERVICE = "unknown"  # the report's service when an incident names none and nothing ranked


def validate_report(report: dict[str, Any]) -> dict[str, Any]:
    """``report`` unchanged, or :class:`ReportError` naming the first violation and where it is.

    Beyond the schema, every evidence id cited anywhere must be one of the report's evidence items.
    """
    name = report.get("incident_id", "?") if isinstance(report, dict) else "?"
    error = first_error("report", report)
    if error:
        raise ReportError(f"report {name}: invalid {error}")
    known = {e["id"] for e in report["evidence"]}
    cited = set(report.get("explanation_cites", [])).union(
        *(c["evidence_ids"] for c in report["root_cause_analysis"]["ranked_causes"]))
    if cited - known:
        raise ReportError(f"report {name}: cites evidence it does not hold: {', '.join(sorted(cited - known))}")
    return report


def fingerprint(top_service: str, services: list[str], start: pd.Timestamp) -> str:
    """Stable id for de-duplication: the cause, the involved services and the onset hour."""
    key = "|".join([top_service, ",".join(sorted(services)), start.floor("h").isoformat()])
    return hashlib.sha256(key.encode()).hexdigest()[:20]


def correlated_anomalies(incident: Incident, top: str, window: str = "1min") -> list[dict[str, Any]]:
    """Other services' strongest feature, with the correlation of their score series to the cause's."""
    rows = incident.evidence
    if rows.empty:
        return []
    series = (rows.assign(w=rows["timestamp"].dt.floor(window))
              .pivot_table(index="w", columns="service", values="score", aggfunc="max").fillna(0.0))
    strongest = rows.sort_values("score", ascending=False).drop_duplicates("service")
    out = []
    for row in strongest.itertuples(index=False):
        if row.service == top:
            continue
        corr = 0.0
        if top in series and series[top].std() > 0 and series[row.service].std() > 0:
            corr = float(np.corrcoef(series[top], series[row.service])[0, 1])
        out.append({"service": row.service, "metric": row.entity, "correlation_score": round(corr, 3)})
    return out[:10]


def build_report(incident: Incident, candidates: list[dict[str, Any]], evidence: list[dict[str, Any]],
                 explanation: dict[str, Any], facts: dict[str, Any] | None = None,
                 forecast: dict[str, Any] | None = None) -> dict[str, Any]:
    """Assemble one report. ``candidates`` and ``evidence`` are plain dicts (from rca and melt.reports.evidence);
    ``forecast`` is the top cause's metric forecast (:mod:`melt.reports.report_forecast`), if any."""
    top = candidates[0]["service"] if candidates else next(iter(incident.services), UNKNOWN_SERVICE)
    main = next((e for e in evidence if e["service"] == top and e["component"] != "events"), None) or (
        evidence[0] if evidence else {})
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "melt_version": __version__,
        "incident_id": incident.id,
        "fingerprint": fingerprint(top, incident.services, incident.start),
        "timestamp": incident.start.isoformat(),
        "window": {"start": incident.start.isoformat(), "end": incident.end.isoformat()},
        "service": top,
        "component": main.get("component", "unknown"),
        "feature": main.get("feature"),
        "anomaly_details": {
            "value": main.get("value"),
            "expected_range": main.get("expected_range"),
            "anomaly_type": main.get("anomaly_type"),
            "severity": incident.severity,
            "confidence": round(incident.confidence, 3),
        },
        "services": incident.services,
        "root_cause_analysis": {
            "ranked_causes": [{"rank": i + 1, **c} for i, c in enumerate(candidates)],
            "correlated_anomalies": correlated_anomalies(incident, top),
        },
        "evidence": evidence,
    }
    if forecast is not None:
        report["forecast"] = forecast
    with_explanation(report, explanation)
    if facts is not None:
        report["facts"] = facts
    return report


def with_explanation(report: dict[str, Any], explanation: dict[str, Any]) -> dict[str, Any]:
    """Put ``explanation`` (an :class:`explain.explainer.Explainer` answer) into ``report``, in place:
    the suggested causes, recommendations, text, its source, citations and fallback reason."""
    report["root_cause_analysis"]["suggested_causes"] = explanation["suggested_causes"]
    report["recommendations"] = explanation["recommendations"]
    report["explanation"] = explanation["text"]
    report["explanation_source"] = explanation["source"]
    report["explanation_cites"] = explanation.get("cites", [])
    report["explanation_fallback"] = explanation.get("fallback")
    if "prompts" in explanation:
        report["prompts"] = explanation["prompts"]
    else:
        report.pop("prompts", None)
    return report
