"""The forecast block of a report: the top cause's strongest metric evidence, forecast from the incident's end.

The metric is the one of the top-ranked cause's metrics evidence with the highest score (its
instance and call peer too, where the item names them). Its rows are read from the metric rows
given (a batch run's bundle, a stream's bounded history), and :func:`melt.reports.forecast.forecast`
makes the path from the *end of the incident window*: where the metric is heading now that the
incident has been seen whole, from data a batch run and a stream both hold by then. A ``limit``
column in the metric rows, where present, gives the resource's limit. Any failure costs the
forecast, never the report.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from melt.core.settings import ReportSettings
from melt.reports.detail import metric_key
from melt.reports.forecast import forecast


def forecast_evidence(candidates: list[dict[str, Any]], evidence: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The top cause's metrics evidence item with the highest score, or ``None``."""
    if not candidates:
        return None
    top = candidates[0]["service"]
    items = [e for e in evidence if e["service"] == top and e.get("component") == "metrics"]
    return max(items, key=lambda e: float(e.get("score") or 0.0)) if items else None


def series_rows(metrics: pd.DataFrame, item: dict[str, Any], start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """The rows in ``[start, end)`` of the series ``item`` names: service, metric, peer, instance."""
    metric, peer = metric_key(item)
    rows = metrics[(metrics["timestamp"] >= start) & (metrics["timestamp"] < end)]
    rows = rows[(rows["service"] == item["service"]) & (rows["metric"] == metric)]
    if "peer" in rows.columns:  # nullable columns: a missing peer or instance is no match
        rows = rows[rows["peer"].eq(peer).fillna(False).astype(bool)] if peer else rows[rows["peer"].isna()]
    instance = item.get("instance")
    if instance and "instance" in rows.columns:
        same = rows["instance"].eq(instance).fillna(False).astype(bool)
        rows = rows[same] if same.any() else rows
    return rows


def report_forecast(candidates: list[dict[str, Any]], evidence: list[dict[str, Any]], metrics: pd.DataFrame | None,
                    origin: pd.Timestamp, settings: ReportSettings) -> dict[str, Any] | None:
    """The report's ``forecast`` block (docs/report.md), or ``None``: off, no metric evidence, too little history."""
    horizon = settings.forecast_horizon
    if horizon is None or metrics is None or metrics.empty:
        return None
    item = forecast_evidence(candidates, evidence)
    if item is None:
        return None
    rows = series_rows(metrics, item, origin - settings.forecast_history, origin)
    if rows.empty:
        return None
    limit = None
    if "limit" in rows.columns:
        known = pd.to_numeric(rows["limit"], errors="coerce").dropna()
        limit = float(known.iloc[-1]) if len(known) and np.isfinite(known.iloc[-1]) else None
    metric, peer = metric_key(item)
    block = forecast(rows["timestamp"], rows["value"].to_numpy(float), origin, horizon, settings.forecast_history,
                     metric=metric, limit=limit)
    if block is None:
        return None
    return {"evidence_id": item["id"], "service": item["service"], "metric": metric, "peer": peer,
            "instance": item.get("instance"), **block}
