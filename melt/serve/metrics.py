"""What `melt serve` tells Prometheus about itself (``GET /metrics``).

A private :class:`prometheus_client.CollectorRegistry` (never the process-global one), so two
servers in one process (tests) do not share counts, and the exposition holds melt's series only.
The body is the Prometheus text format 0.0.4
(https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format).

Series: ``melt_received_{spans,logs,points,events}_total``, ``melt_rejected_rows_total{signal}``,
``melt_requests_total{path,code}``, ``melt_duplicate_requests_total{path}``, ``melt_pending_bytes`` (the ingest queue), ``melt_step_lag_seconds``
(how far scoring is behind the steps that are due), ``melt_event_lag_seconds`` (newest event time
minus the end of the last scored step), ``melt_position_age_seconds`` (wall clock minus that step
end), ``melt_position_timestamp_seconds``, ``melt_score_seconds{detector}`` (histogram),
``melt_incidents_open``.

The step lag is measured the way stream processors measure a consumer's lag behind its watermark:
a step ``[t, t + step)`` is due once data ``serve.lateness`` newer than its end has arrived, and
the lag is how much event time is due and not yet scored, ``newest - lateness - (position + step)``,
floored at 0: how long (in event time) the oldest step that is due has waited to be scored. It is
0 while scoring keeps up (between two steps, and while a step is being scored it grows by no more
than that step's scoring time) and grows without bound when it does not. The position's age on
the wall clock also counts the lateness and the step that every step waits for by design: with a
feed that follows the clock it moves between ``lateness`` and ``step + lateness`` plus the scoring
time.
"""

from __future__ import annotations

import math
import threading
import time

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # text/plain; version=0.0.4; charset=utf-8
RECEIVED = {"traces": "spans", "spans": "spans", "logs": "logs", "metrics": "points", "events": "events"}
SCORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ServeMetrics:
    """The counters, gauges and histograms of one `melt serve` process."""

    def __init__(self, step: pd.Timedelta | str = "1min", lateness: pd.Timedelta | str = "30s") -> None:
        self.step, self.lateness = pd.Timedelta(step), pd.Timedelta(lateness)  # serve.step, serve.lateness
        self.registry = CollectorRegistry(auto_describe=True)
        self._received = {unit: Counter(f"melt_received_{unit}", f"OTLP {unit} received and stored",
                                        registry=self.registry) for unit in sorted(set(RECEIVED.values()))}
        self._rejected = Counter("melt_rejected_rows", "Rows refused by the receiver (reported as partial_success)",
                                 ["signal"], registry=self.registry)
        self._requests = Counter("melt_requests", "HTTP requests answered, by route and status code",
                                 ["path", "code"], registry=self.registry)
        self._duplicates = Counter("melt_duplicate_requests", "Requests sent again after they were stored "
                                   "(answered as the first, stored once)", ["path"], registry=self.registry)
        self._pending = Gauge("melt_pending_bytes", "Bytes received but not yet in a parquet segment",
                              registry=self.registry)
        self._lock = threading.Lock()
        self._position: pd.Timestamp | None = None
        self._newest: pd.Timestamp | None = None
        Gauge("melt_step_lag_seconds", "Event time due for scoring and not yet scored: newest event time less "
              "serve.lateness less the end of the next step; 0 while scoring keeps up; NaN before the first step",
              registry=self.registry).set_function(self._step_lag)
        Gauge("melt_event_lag_seconds", "Newest event time received minus the end of the last scored step",
              registry=self.registry).set_function(self._event_lag)
        Gauge("melt_position_age_seconds", "Wall clock now minus the end of the last scored step (between "
              "serve.lateness and serve.step + serve.lateness plus a step's scoring time while keeping up)",
              registry=self.registry).set_function(self._position_age)
        Gauge("melt_position_timestamp_seconds", "End of the last scored step, Unix seconds (event time)",
              registry=self.registry).set_function(self._position_seconds)
        self._score = Histogram("melt_score_seconds", "Time one detector took to score one step", ["detector"],
                                buckets=SCORE_BUCKETS, registry=self.registry)
        self._open = Gauge("melt_incidents_open", "Incidents open now", registry=self.registry)

    # ------------------------------------------------------------------ updates
    def received(self, signal: str, rows: int) -> None:
        """Count ``rows`` of ``signal`` (traces/spans, logs, metrics, events) stored."""
        self._received[_unit(signal)].inc(rows)

    def rejected(self, signal: str, rows: int) -> None:
        """Count ``rows`` of ``signal`` refused (bad rows, implausible times)."""
        _unit(signal)
        self._rejected.labels(signal=signal).inc(rows)

    def request(self, path: str, code: int) -> None:
        """Count one answered request; ``path`` is the route template (``/api/incidents/{incident_id}``)."""
        self._requests.labels(path=path, code=str(code)).inc()

    def duplicate(self, path: str) -> None:
        """Count one request that was a copy of one already stored or being stored."""
        self._duplicates.labels(path=path).inc()

    def pending(self, nbytes: int) -> None:
        """The ingest queue depth now, in bytes."""
        self._pending.set(nbytes)

    def step_done(self, position: pd.Timestamp, newest_event_time: pd.Timestamp | None) -> None:
        """A step was scored and committed: its end and the newest event time stored then."""
        with self._lock:
            self._position = pd.Timestamp(position)
        self.received_until(newest_event_time)

    def received_until(self, newest_event_time: pd.Timestamp | None) -> None:
        """The newest event time received so far (the receiver says it as it writes)."""
        if newest_event_time is None:
            return
        with self._lock:
            newest = pd.Timestamp(newest_event_time)
            self._newest = newest if self._newest is None else max(self._newest, newest)

    def scored(self, detector: str, seconds: float) -> None:
        """One detector scored one step in ``seconds``."""
        self._score.labels(detector=detector).observe(seconds)

    def incidents_open(self, n: int) -> None:
        """How many incidents are open now."""
        self._open.set(n)

    # ------------------------------------------------------------------ reading
    def exposition(self) -> bytes:
        """Every series in the Prometheus text format 0.0.4 (serve with :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)

    def _step_lag(self) -> float:
        with self._lock:
            position, newest = self._position, self._newest
        if position is None or newest is None:
            return math.nan
        return max((newest - self.lateness - (position + self.step)).total_seconds(), 0.0)

    def _position_age(self) -> float:
        with self._lock:
            position = self._position
        return math.nan if position is None else time.time() - position.timestamp()

    def _event_lag(self) -> float:
        with self._lock:
            position, newest = self._position, self._newest
        if position is None or newest is None:
            return math.nan
        return max((newest - position).total_seconds(), 0.0)

    def _position_seconds(self) -> float:
        with self._lock:
            position = self._position
        return math.nan if position is None else position.timestamp()


def _unit(signal: str) -> str:
    try:
        return RECEIVED[signal]
    except KeyError:
        raise ValueError(f"unknown signal {signal!r} (known: {', '.join(RECEIVED)})") from None
