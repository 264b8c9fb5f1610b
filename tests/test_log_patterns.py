"""log_patterns: a vanished or new per-trace pattern scores in the service that changed, whatever the traffic."""

from __future__ import annotations

import pandas as pd

from detectors.logs.log_patterns import LogPatternDetector
from melt.bundle import MeltBundle


def _logs(start: str, traces: int, broken: bool) -> pd.DataFrame:
    """Each trace: svc-a logs 'open' and 'commit'; svc-b logs 'lookup'. Broken: svc-a skips 'commit'."""
    rows = []
    t0 = pd.Timestamp(start, tz="UTC")
    for i in range(traces):
        at = t0 + pd.Timedelta(seconds=i * 60 / traces)
        rows.append((at, "svc-a", "INFO", f"OrderImpl#10 open order {i}", f"t{start}{i}"))
        rows.append((at + pd.Timedelta(milliseconds=5), "svc-a", "INFO",
                     f"OrderImpl#31 {'skip commit for' if broken else 'commit order'} {i}", f"t{start}{i}"))
        rows.append((at + pd.Timedelta(milliseconds=2), "svc-b", "INFO", f"StockImpl#7 lookup item {i}", f"t{start}{i}"))
    return pd.DataFrame(rows, columns=["timestamp", "service", "level", "message", "trace_id"])


def test_changed_code_path_scores_in_the_changed_service() -> None:
    train = MeltBundle(logs=pd.concat([_logs("2026-01-01 00:00", 40, False), _logs("2026-01-01 00:01", 40, False)]))
    detector = LogPatternDetector().fit_calibrated(train)
    scores = detector.detect(MeltBundle(logs=_logs("2026-01-01 00:10", 40, True)))
    per_service = scores.groupby("service")["raw_score"].max()
    assert per_service["svc-a"] > 4 > per_service["svc-b"]
    top = scores.sort_values("raw_score").iloc[-1]
    assert top["service"] == "svc-a"
    assert top["evidence"]["anomaly_type"] in {"pattern_vanished", "new_pattern"}


def test_traffic_volume_alone_is_not_a_change() -> None:
    train = MeltBundle(logs=_logs("2026-01-01 00:00", 40, False))
    detector = LogPatternDetector().fit_calibrated(train)
    busy = detector.detect(MeltBundle(logs=_logs("2026-01-01 00:10", 200, False)))
    assert busy["raw_score"].max() < 2.0
