"""The score frame of a call-edge detector: one row per (caller -> callee, window), keyed by the callee.

Shared by :mod:`detectors.traces.call_edges` (client spans) and :mod:`detectors.metrics.call_metrics`
(client- and server-side latency series). A row scores the edge, not a service: ``service`` is the
callee, and the extra column ``caller`` names the other end, so that the root-cause ranking can
decide which end the edge's anomaly belongs to (:func:`rca.terms.call_edge_evidence`). Its evidence
carries both ends too, for the report.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from melt.core.schema import EDGE_ARROW


def edge_entity(caller: pd.Series, callee: pd.Series, operation: pd.Series | None = None) -> np.ndarray:
    """``caller -> callee`` (``: operation`` when given): what the row scores, as the report names it."""
    entity = caller.astype(str).str.cat(callee.astype(str), sep=EDGE_ARROW)
    if operation is not None:
        entity = entity.str.cat(operation.astype(str), sep=": ")
    return entity.to_numpy(dtype=object)


def edge_score_frame(detector: str, windows: pd.DataFrame, raw: np.ndarray, evidence: list[dict]) -> pd.DataFrame:
    """Score rows for ``windows`` (columns ``bucket``, ``caller``, ``callee``, optional ``operation``).

    Each evidence dict gets ``caller`` and ``callee`` added.
    """
    operation = windows["operation"] if "operation" in windows.columns else None
    records = [dict(e, caller=a, callee=b) for e, a, b in zip(evidence, windows["caller"], windows["callee"], strict=True)]
    return pd.DataFrame({
        "timestamp": windows["bucket"].to_numpy(),
        "service": windows["callee"].astype(str).to_numpy(dtype=object),
        "detector": detector,
        "entity": edge_entity(windows["caller"], windows["callee"], operation),
        "score": np.asarray(raw, dtype=float),
        "evidence": records,
        "caller": windows["caller"].astype(str).to_numpy(dtype=object),
    })
