"""The durable state of `melt serve` in one SQLite file (``serve.db``): incidents, every version of
their reports, one delivery row per (incident, version, sink), and the stream position.

Why SQLite: one file, transactions, and a crash-safe write-ahead log (https://sqlite.org/wal.html).
With ``synchronous=FULL`` a transaction is on disk once ``COMMIT`` returns, also when the process is
killed (-9) right after (https://sqlite.org/pragma.html#pragma_synchronous). Each scored step goes
in as ONE transaction (:meth:`StateDB.commit_step`): the new report versions, their pending
deliveries and the position move together, so after a restart the runner resumes at the position
and never sees a step half stored. Primary keys make a duplicate incident version or delivery
impossible; a delivery row marked delivered is never handed out again, so no report is sent twice.

Thread safety: each thread gets its own connection (WAL lets readers run beside the one writer);
writes take SQLite's write lock at ``BEGIN IMMEDIATE``.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.errors import ConfigError

SCHEMA_VERSION = 1
STATUSES = ("open", "resolved")
BUSY_TIMEOUT_MS = 10_000
PROBE_TIMEOUT_MS = 2_000  # a readiness probe waits at most this long for the write lock

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS incidents (          -- the latest version of each incident
    incident_id    TEXT PRIMARY KEY,
    latest_version INTEGER NOT NULL,
    status         TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    start_ns       INTEGER NOT NULL,
    end_ns         INTEGER NOT NULL,
    top_service    TEXT NOT NULL,
    services       TEXT NOT NULL,                  -- JSON list
    fingerprint    TEXT NOT NULL,
    severity       TEXT NOT NULL,
    updated_at     TEXT NOT NULL                   -- wall clock, ISO 8601 UTC
);
CREATE TABLE IF NOT EXISTS incident_services (  -- for the service filter
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id),
    service     TEXT NOT NULL,
    PRIMARY KEY (incident_id, service)
);
CREATE TABLE IF NOT EXISTS versions (           -- every report version, never changed once written
    incident_id TEXT NOT NULL REFERENCES incidents (incident_id),
    version     INTEGER NOT NULL CHECK (version >= 1),
    status      TEXT NOT NULL CHECK (status IN ('open', 'resolved')),
    start_ns    INTEGER NOT NULL,
    end_ns      INTEGER NOT NULL,
    top_service TEXT NOT NULL,
    services    TEXT NOT NULL,
    step_end_ns INTEGER NOT NULL,                  -- the step that produced it
    created_at  TEXT NOT NULL,
    report      TEXT NOT NULL,                     -- the report JSON
    detail      TEXT,                              -- what the incident page draws beyond the report (JSON)
    PRIMARY KEY (incident_id, version)
);
CREATE TABLE IF NOT EXISTS deliveries (
    incident_id TEXT NOT NULL,
    version     INTEGER NOT NULL,
    sink        TEXT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('pending', 'delivered')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (incident_id, version, sink),
    FOREIGN KEY (incident_id, version) REFERENCES versions (incident_id, version)
);
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (state) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS incidents_end ON incidents (end_ns);
"""


@dataclass(frozen=True)
class DeliveryRow:
    """One report version still to be delivered to one sink."""

    incident_id: str
    version: int
    sink: str
    report: dict[str, Any]
    attempts: int
    last_error: str | None

    @property
    def idempotency_key(self) -> str:
        """``<fingerprint>-v<version>``: the webhook's key, one per version, so a resent version
        never opens a second ticket while a new version still reaches the receiver."""
        return f"{self.report['fingerprint']}-v{self.version}"


def _ns(value: pd.Timestamp | str) -> int:
    stamp = pd.Timestamp(value)
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value)


def _stamp(ns: int) -> pd.Timestamp:
    return pd.Timestamp(ns, tz="UTC")


def _iso(ns: int) -> str:
    return _stamp(ns).isoformat()


def _now() -> str:
    return datetime.now(UTC).isoformat()


class StateDB:
    """incidents, report versions, deliveries and the stream position in SQLite (WAL, ``synchronous=FULL``).

    Args:
        path: the database file (``serve.db``); created with its tables when missing.
        sinks: the configured sinks; each stored version gets one pending delivery row per sink.

    Raises:
        ConfigError: the file cannot be opened or created, is not a SQLite database, or was
            written by a newer melt (a schema version this code does not know).
    """

    def __init__(self, path: str | Path, sinks: Sequence[str] = ()) -> None:
        self.path = Path(path)
        self.sinks = tuple(sinks)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ConfigError(f"serve.db: {self.path} is not a usable melt state database ({exc})") from None
        except OSError as exc:
            self.close()
            raise ConfigError(f"serve.db: cannot create {self.path} ({exc.strerror or exc})") from None

    # ------------------------------------------------------------------ connections
    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if self._closed:
                raise RuntimeError(f"{self.path}: the state database is closed")
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_MS / 1000)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA foreign_keys=ON")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed as a whole when the block ends, rolled back on any error."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        try:
            conn.execute("COMMIT")
        except BaseException:  # a COMMIT that fails (disk full, I/O error) must not leave the transaction open
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def _migrate(self) -> None:
        with self._write() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            found = int(row["value"]) if row is not None else None
            if found is not None and found > SCHEMA_VERSION:
                raise ConfigError(f"serve.db: {self.path} has state schema version {found}, written by a newer melt "
                                  f"(this one reads up to {SCHEMA_VERSION}); upgrade melt or use another serve.db")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            if found is None:
                conn.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def close(self) -> None:
        """Close every thread's connection (a WAL checkpoint happens on the last close)."""
        with self._lock:
            self._closed = True
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    # ------------------------------------------------------------------ the step
    def position(self) -> pd.Timestamp | None:
        """The end of the last committed step (UTC), or None before the first."""
        row = self._conn().execute("SELECT value FROM meta WHERE key = 'position'").fetchone()
        return None if row is None else _stamp(int(row["value"]))

    def commit_step(self, step_end: pd.Timestamp, versions: Sequence[dict[str, Any]]) -> list[tuple[str, int]]:
        """Store a scored step in ONE transaction and return the ``(incident_id, version)`` pairs stored.

        Each item of ``versions`` is ``{"report": <validated report>, "status": "open"|"resolved"}``
        for an incident whose report changed in this step. It becomes version previous + 1 of that
        incident, with one pending delivery per configured sink; the position moves to
        ``step_end``. A crash before the commit leaves nothing of the step; after it, all of it.

        Raises:
            ValueError: ``step_end`` is not after the current position, an incident appears twice,
                a status is unknown, or a report lacks the fields the tables need.
        """
        end_ns = _ns(step_end)
        rows = [self._version_row(item) for item in versions]
        ids = [row["incident_id"] for row in rows]
        if len(set(ids)) != len(ids):
            raise ValueError(f"commit_step: an incident appears twice in one step ({ids})")
        now = _now()
        stored: list[tuple[str, int]] = []
        with self._write() as conn:
            current = conn.execute("SELECT value FROM meta WHERE key = 'position'").fetchone()
            if current is not None and end_ns <= int(current["value"]):
                raise ValueError(f"commit_step: step end {_iso(end_ns)} is not after the position "
                                 f"{_iso(int(current['value']))}")
            for row in rows:
                previous = conn.execute("SELECT latest_version FROM incidents WHERE incident_id = ?",
                                        (row["incident_id"],)).fetchone()
                version = 1 if previous is None else int(previous["latest_version"]) + 1
                conn.execute(
                    "INSERT INTO incidents (incident_id, latest_version, status, start_ns, end_ns, top_service, "
                    "services, fingerprint, severity, updated_at) VALUES (:incident_id, :version, :status, :start_ns, "
                    ":end_ns, :top_service, :services, :fingerprint, :severity, :now) ON CONFLICT (incident_id) DO "
                    "UPDATE SET latest_version = excluded.latest_version, status = excluded.status, "
                    "start_ns = excluded.start_ns, end_ns = excluded.end_ns, top_service = excluded.top_service, "
                    "services = excluded.services, fingerprint = excluded.fingerprint, "
                    "severity = excluded.severity, updated_at = excluded.updated_at",
                    {**row, "version": version, "now": now})
                conn.execute("DELETE FROM incident_services WHERE incident_id = ?", (row["incident_id"],))
                conn.executemany("INSERT INTO incident_services (incident_id, service) VALUES (?, ?)",
                                 [(row["incident_id"], s) for s in sorted(set(json.loads(row["services"])))])
                conn.execute(
                    "INSERT INTO versions (incident_id, version, status, start_ns, end_ns, top_service, services, "
                    "step_end_ns, created_at, report, detail) VALUES (:incident_id, :version, :status, :start_ns, :end_ns, "
                    ":top_service, :services, :step_end_ns, :now, :report, :detail)",
                    {**row, "version": version, "step_end_ns": end_ns, "now": now})
                conn.executemany(
                    "INSERT INTO deliveries (incident_id, version, sink, state, updated_at) VALUES (?, ?, ?, 'pending', ?)",
                    [(row["incident_id"], version, sink, now) for sink in self.sinks])
                stored.append((row["incident_id"], version))
            conn.execute("INSERT INTO meta (key, value) VALUES ('position', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(end_ns),))
        return stored

    @staticmethod
    def _version_row(item: dict[str, Any]) -> dict[str, Any]:
        status = item.get("status")
        if status not in STATUSES:
            raise ValueError(f"commit_step: status must be one of {', '.join(STATUSES)}, got {status!r}")
        report = item.get("report")
        try:
            ranked = report["root_cause_analysis"]["ranked_causes"]  # type: ignore[index]
            return {"incident_id": str(report["incident_id"]), "status": status,  # type: ignore[index]
                    "start_ns": _ns(report["window"]["start"]), "end_ns": _ns(report["window"]["end"]),  # type: ignore[index]
                    "top_service": str(ranked[0]["service"] if ranked else report["service"]),  # type: ignore[index]
                    "services": json.dumps(sorted(set(report["services"]))),  # type: ignore[index]
                    "fingerprint": str(report["fingerprint"]),  # type: ignore[index]
                    "severity": str(report["anomaly_details"]["severity"]),  # type: ignore[index]
                    "report": json.dumps(report, default=str),
                    "detail": None if item.get("detail") is None else json.dumps(item["detail"], default=str)}
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"commit_step: not a melt report ({type(exc).__name__}: {exc})") from None

    # ------------------------------------------------------------------ deliveries
    def pending_deliveries(self) -> list[DeliveryRow]:
        """Every (incident, version, sink) not yet delivered, oldest version first."""
        rows = self._conn().execute(
            "SELECT d.incident_id, d.version, d.sink, d.attempts, d.last_error, v.report FROM deliveries d "
            "JOIN versions v USING (incident_id, version) WHERE d.state = 'pending' "
            "ORDER BY v.step_end_ns, d.incident_id, d.version, d.sink").fetchall()
        return [DeliveryRow(r["incident_id"], int(r["version"]), r["sink"], json.loads(r["report"]), int(r["attempts"]),
                            r["last_error"]) for r in rows]

    def mark_delivered(self, incident_id: str, version: int, sink: str, ok: bool = True,
                       error: str | None = None) -> None:
        """Record one delivery attempt: ``ok`` marks it delivered for good (it is never pending again);
        a failure counts the attempt, keeps the one-line ``error`` and leaves it pending.

        Raises:
            KeyError: no such delivery row.
        """
        with self._write() as conn:
            if ok:
                cursor = conn.execute(
                    "UPDATE deliveries SET state = 'delivered', attempts = attempts + 1, last_error = NULL, "
                    "updated_at = ? WHERE incident_id = ? AND version = ? AND sink = ?",
                    (_now(), incident_id, int(version), sink))
            else:
                cursor = conn.execute(
                    "UPDATE deliveries SET attempts = attempts + 1, last_error = ?, updated_at = ? "
                    "WHERE incident_id = ? AND version = ? AND sink = ? AND state = 'pending'",
                    (" ".join(str(error or "failed").split()), _now(), incident_id, int(version), sink))
                if cursor.rowcount == 0 and self._delivery_state(conn, incident_id, version, sink) == "delivered":
                    return  # a late failure report never undoes a delivery
            if cursor.rowcount == 0:
                raise KeyError(f"no delivery of {incident_id} v{version} to {sink}")

    @staticmethod
    def _delivery_state(conn: sqlite3.Connection, incident_id: str, version: int, sink: str) -> str | None:
        row = conn.execute("SELECT state FROM deliveries WHERE incident_id = ? AND version = ? AND sink = ?",
                           (incident_id, int(version), sink)).fetchone()
        return None if row is None else str(row["state"])

    # ------------------------------------------------------------------ reading
    def incidents(self, open: bool | None = None, service: str | None = None,  # noqa: A002 (the API's filter name)
                  since: pd.Timestamp | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Incident summaries (latest version), newest start first.

        Args:
            open: True: only open incidents; False: only resolved ones; None: both.
            service: only incidents that involve this service.
            since: only incidents whose window ends at or after this time.
            limit: at most this many.
        """
        where, params = [], []
        if open is not None:
            where.append("i.status = ?")
            params.append("open" if open else "resolved")
        if service is not None:
            where.append("EXISTS (SELECT 1 FROM incident_services s WHERE s.incident_id = i.incident_id "
                         "AND s.service = ?)")
            params.append(service)
        if since is not None:
            where.append("i.end_ns >= ?")
            params.append(_ns(since))
        sql = "SELECT * FROM incidents i" + (" WHERE " + " AND ".join(where) if where else "")
        sql += " ORDER BY i.start_ns DESC, i.incident_id"
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [self._summary(row) for row in self._conn().execute(sql, params).fetchall()]

    def incident_summary(self, incident_id: str) -> dict[str, Any] | None:
        """One incident's summary (as in :meth:`incidents`), or None."""
        row = self._conn().execute("SELECT * FROM incidents WHERE incident_id = ?", (incident_id,)).fetchone()
        return None if row is None else self._summary(row)

    def incident(self, incident_id: str) -> dict[str, Any] | None:
        """The latest version's report, or None for an unknown incident."""
        row = self._conn().execute(
            "SELECT v.report FROM versions v JOIN incidents i ON i.incident_id = v.incident_id "
            "AND i.latest_version = v.version WHERE v.incident_id = ?", (incident_id,)).fetchone()
        return None if row is None else json.loads(row["report"])

    def detail(self, incident_id: str) -> dict[str, Any] | None:
        """The latest version's page detail (:func:`melt.reports.detail.incident_detail`), if it was stored."""
        row = self._conn().execute(
            "SELECT v.detail FROM versions v JOIN incidents i ON i.incident_id = v.incident_id "
            "AND i.latest_version = v.version WHERE v.incident_id = ?", (incident_id,)).fetchone()
        return None if row is None or row["detail"] is None else json.loads(row["detail"])

    def latest_reports(self, limit: int | None = None) -> list[dict[str, Any]]:
        """The latest version of each incident, newest start first: ``{"version", "status", "report"}``."""
        sql = ("SELECT v.version, v.status, v.report FROM incidents i JOIN versions v ON v.incident_id = i.incident_id "
               "AND v.version = i.latest_version ORDER BY i.start_ns DESC, i.incident_id")
        params: list[int] = []
        if limit is not None:
            sql += " LIMIT ?"
            params.append(int(limit))
        return [{"version": int(row["version"]), "status": row["status"], "report": json.loads(row["report"])}
                for row in self._conn().execute(sql, params).fetchall()]

    def versions(self, incident_id: str) -> list[dict[str, Any]]:
        """Every version of one incident, oldest first: version, status, window, the step that
        produced it, when it was stored, its deliveries and its report. Empty for an unknown id."""
        conn = self._conn()
        deliveries: dict[int, list[dict[str, Any]]] = {}
        for row in conn.execute("SELECT version, sink, state, attempts, last_error FROM deliveries "
                                "WHERE incident_id = ? ORDER BY sink", (incident_id,)).fetchall():
            deliveries.setdefault(int(row["version"]), []).append(
                {"sink": row["sink"], "state": row["state"], "attempts": int(row["attempts"]),
                 "last_error": row["last_error"]})
        rows = conn.execute("SELECT * FROM versions WHERE incident_id = ? ORDER BY version", (incident_id,)).fetchall()
        return [{"incident_id": row["incident_id"], "version": int(row["version"]), "status": row["status"],
                 "start": _iso(row["start_ns"]), "end": _iso(row["end_ns"]), "top_service": row["top_service"],
                 "services": json.loads(row["services"]), "step_end": _iso(row["step_end_ns"]),
                 "created_at": row["created_at"], "deliveries": deliveries.get(int(row["version"]), []),
                 "report": json.loads(row["report"])} for row in rows]

    def open_count(self) -> int:
        """How many incidents are open."""
        return int(self._conn().execute("SELECT COUNT(*) FROM incidents WHERE status = 'open'").fetchone()[0])

    def writable(self) -> bool:
        """Whether a write transaction can start now (the file is writable and not locked for long)."""
        try:
            conn = self._conn()
            conn.execute(f"PRAGMA busy_timeout={PROBE_TIMEOUT_MS}")
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        except (sqlite3.Error, RuntimeError):
            return False
        return True

    @staticmethod
    def _summary(row: sqlite3.Row) -> dict[str, Any]:
        return {"incident_id": row["incident_id"], "version": int(row["latest_version"]), "status": row["status"],
                "start": _iso(row["start_ns"]), "end": _iso(row["end_ns"]), "top_service": row["top_service"],
                "services": json.loads(row["services"]), "fingerprint": row["fingerprint"],
                "severity": row["severity"], "updated_at": row["updated_at"]}
