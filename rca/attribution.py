"""Callers' complaints count for the service they name: log evidence that names a peer moves to that peer.

"Slow call to payment-service", "Timed out waiting for cart-service" and "No instances available
for ts-basic-service" are logged by the caller, but they describe the callee. Left with the caller,
they make every caller of a slow service look like its root cause, and the louder the caller's
logging the worse it gets. The log detectors key such templates by the service the lines name
(:mod:`detectors.logs.peers`); here, rows of *rising* log evidence that name a peer are re-keyed to
that peer, with ``reported_by`` set to the caller, and rank as the evidence kind ``reported``. A
complaint that vanishes (fewer slow calls than usual) says nothing against the callee and stays with
the caller. This is how an SRE reads a caller's error log: the name in it is where to look next.
"""

from __future__ import annotations

import pandas as pd

FALLING = frozenset({"log_drop", "pattern_vanished", "drop"})  # anomaly types that are a decrease


def attribute_to_peers(scores: pd.DataFrame, signal_of: dict[str, str]) -> pd.DataFrame:
    """``scores`` with rising log rows that name a peer re-keyed to the peer; ``reported_by`` names the writer.

    ``reported_by`` is ``None`` on every other row. The moved rows' evidence records the writer too,
    so a report shows who complained. Rows that have a ``reported_by`` column are attributed already
    and come back as they are.
    """
    if "reported_by" in scores.columns:
        return scores
    out = scores.assign(reported_by=None)
    logs = scores["detector"].map(signal_of).eq("logs").to_numpy()
    if not logs.any():
        return out
    evidence = scores.loc[logs, "evidence"]
    peer = evidence.map(lambda e: e.get("peer") if isinstance(e, dict) else None)
    rising = evidence.map(lambda e: not isinstance(e, dict) or e.get("anomaly_type") not in FALLING)
    moved = peer.notna() & rising.astype(bool) & peer.ne(scores.loc[logs, "service"].astype(str))
    if not moved.any():
        return out
    index = moved[moved].index
    writers = out.loc[index, "service"].astype(str)
    out["service"] = out["service"].astype(object)
    out.loc[index, "reported_by"] = writers
    out.loc[index, "service"] = peer[index]
    out.loc[index, "evidence"] = pd.Series([dict(e, reported_by=w) for e, w in zip(evidence[index], writers, strict=True)],
                                           index=index, dtype=object)
    return out
