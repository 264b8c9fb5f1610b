"""`melt serve`'s state database: one transaction per step, nothing committed lost after kill -9,
no duplicate version or delivery, listing filters, schema versions, and readers beside a writer."""

from __future__ import annotations

import copy
import json
import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest

from melt.core.errors import ConfigError
from melt.serve.state import SCHEMA_VERSION, StateDB

T0 = pd.Timestamp("2024-05-01T10:00:00Z")
MINUTE = pd.Timedelta("1min")


def fake_report(incident_id: str, start: pd.Timestamp, minutes: int = 5, services=("checkout", "payment"),
                severity: str = "high") -> dict:
    """The fields the state tables read, in a report's shape (the API tests use real reports)."""
    return {"incident_id": incident_id, "fingerprint": f"{abs(hash(incident_id)) % 16**20:020x}",
            "window": {"start": start.isoformat(), "end": (start + minutes * MINUTE).isoformat()},
            "service": services[0], "services": list(services),
            "anomaly_details": {"severity": severity},
            "root_cause_analysis": {"ranked_causes": [{"service": services[-1]}]}}


def update(incident_id: str, start: pd.Timestamp, status: str = "open", **kw) -> dict:
    return {"report": fake_report(incident_id, start, **kw), "status": status}


@pytest.fixture
def db(tmp_path) -> StateDB:
    state = StateDB(tmp_path / "serve.db", sinks=("files", "webhook"))
    yield state
    state.close()


def test_a_step_stores_versions_deliveries_and_the_position_together(db) -> None:
    assert db.position() is None
    stored = db.commit_step(T0 + MINUTE, [update("INC-1", T0)])
    assert stored == [("INC-1", 1)]
    assert db.position() == T0 + MINUTE
    stored = db.commit_step(T0 + 2 * MINUTE, [update("INC-1", T0, minutes=7), update("INC-2", T0 + MINUTE)])
    assert stored == [("INC-1", 2), ("INC-2", 1)]
    assert [v["version"] for v in db.versions("INC-1")] == [1, 2]
    assert db.incident("INC-1")["window"]["end"] == (T0 + 7 * MINUTE).isoformat()
    assert db.incident("nope") is None and db.versions("nope") == []
    pending = db.pending_deliveries()
    assert [(d.incident_id, d.version, d.sink) for d in pending] == [
        ("INC-1", 1, "files"), ("INC-1", 1, "webhook"), ("INC-1", 2, "files"), ("INC-1", 2, "webhook"),
        ("INC-2", 1, "files"), ("INC-2", 1, "webhook")]
    assert pending[2].idempotency_key == f"{pending[2].report['fingerprint']}-v2"
    # a step with no changed incident still moves the position
    assert db.commit_step(T0 + 3 * MINUTE, []) == []
    assert db.position() == T0 + 3 * MINUTE


def test_delivered_versions_are_never_handed_out_again_and_failures_stay_pending(db) -> None:
    db.commit_step(T0 + MINUTE, [update("INC-1", T0)])
    db.mark_delivered("INC-1", 1, "files", ok=True)
    db.mark_delivered("INC-1", 1, "webhook", ok=False, error="HTTP 503\nService Unavailable")
    (left,) = db.pending_deliveries()
    assert (left.sink, left.attempts, left.last_error) == ("webhook", 1, "HTTP 503 Service Unavailable")
    db.mark_delivered("INC-1", 1, "webhook", ok=True)
    assert db.pending_deliveries() == []
    db.mark_delivered("INC-1", 1, "webhook", ok=False, error="late")  # never undoes a delivery
    assert db.pending_deliveries() == []
    assert {d["state"] for d in db.versions("INC-1")[0]["deliveries"]} == {"delivered"}
    with pytest.raises(KeyError):
        db.mark_delivered("INC-1", 9, "files")


def test_duplicates_are_impossible(db) -> None:
    db.commit_step(T0 + MINUTE, [update("INC-1", T0)])
    with pytest.raises(ValueError, match="not after the position"):
        db.commit_step(T0 + MINUTE, [update("INC-1", T0)])  # the same step again
    with pytest.raises(ValueError, match="twice"):
        db.commit_step(T0 + 2 * MINUTE, [update("INC-2", T0), update("INC-2", T0)])
    with pytest.raises(ValueError, match="status"):
        db.commit_step(T0 + 2 * MINUTE, [update("INC-2", T0, status="closed")])
    with pytest.raises(ValueError, match="not a melt report"):
        db.commit_step(T0 + 2 * MINUTE, [{"report": {"incident_id": "x"}, "status": "open"}])
    assert [v["version"] for v in db.versions("INC-1")] == [1] and db.position() == T0 + MINUTE
    assert db.versions("INC-2") == []
    # the keys themselves refuse a second row for the same version or delivery
    conn = sqlite3.connect(db.path)
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO versions SELECT * FROM versions")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO deliveries SELECT * FROM deliveries")
    conn.close()


KILL_MID_STEP = """
import os, signal, sys
import pandas as pd
sys.path.insert(0, {tests!r})
from test_serve_state import update, T0, MINUTE
from melt.serve.state import StateDB

class KillWhileWriting:
    '''The sinks, read inside commit_step's transaction after the versions are inserted: kill -9 there.'''
    def __iter__(self):
        os.kill(os.getpid(), signal.SIGKILL)
        yield "files"

db = StateDB({path!r}, sinks=("files",))
db.commit_step(T0 + MINUTE, [update("INC-1", T0)])
print("committed", flush=True)
db.sinks = KillWhileWriting()
db.commit_step(T0 + 2 * MINUTE, [update("INC-1", T0, minutes=9), update("INC-2", T0 + MINUTE)])
print("not reached", flush=True)
"""


def test_kill_9_inside_a_step_loses_the_step_and_nothing_committed(tmp_path) -> None:
    path = tmp_path / "serve.db"
    script = KILL_MID_STEP.format(tests=str(Path(__file__).parent), path=str(path))
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == -9, result.stderr
    assert result.stdout.split() == ["committed"]
    db = StateDB(path, sinks=("files",))
    try:
        assert db.position() == T0 + MINUTE
        assert [v["version"] for v in db.versions("INC-1")] == [1]
        assert db.versions("INC-2") == [] and db.incident("INC-2") is None
        assert [(d.incident_id, d.version) for d in db.pending_deliveries()] == [("INC-1", 1)]
        # and the runner resumes at the position: the same step commits cleanly now
        assert db.commit_step(T0 + 2 * MINUTE, [update("INC-1", T0, minutes=9)]) == [("INC-1", 2)]
    finally:
        db.close()


def test_listing_filters(db) -> None:
    db.commit_step(T0 + MINUTE, [update("INC-1", T0, services=("cart", "redis")),
                                 update("INC-2", T0 + 30 * MINUTE, services=("checkout", "payment"))])
    db.commit_step(T0 + 2 * MINUTE, [update("INC-1", T0, status="resolved", services=("cart", "redis")),
                                     update("INC-3", T0 + 60 * MINUTE, services=("frontend", "payment"))])
    ids = lambda rows: [r["incident_id"] for r in rows]  # noqa: E731
    assert ids(db.incidents()) == ["INC-3", "INC-2", "INC-1"]  # newest start first
    assert ids(db.incidents(open=True)) == ["INC-3", "INC-2"]
    assert ids(db.incidents(open=False)) == ["INC-1"]
    assert ids(db.incidents(service="payment")) == ["INC-3", "INC-2"]
    assert ids(db.incidents(service="redis", open=False)) == ["INC-1"]
    assert ids(db.incidents(service="nobody")) == []
    assert ids(db.incidents(since=T0 + 20 * MINUTE)) == ["INC-3", "INC-2"]
    assert ids(db.incidents(since=pd.Timestamp("2024-05-01T10:34:00"))) == ["INC-3", "INC-2"]  # naive = UTC
    assert ids(db.incidents(since=T0 + 36 * MINUTE)) == ["INC-3"]
    assert ids(db.incidents(limit=1)) == ["INC-3"]
    first = db.incidents(open=False)[0]
    assert first["version"] == 2 and first["status"] == "resolved" and first["top_service"] == "redis"
    assert first["services"] == ["cart", "redis"] and first["severity"] == "high"
    assert db.open_count() == 2
    latest = db.latest_reports()
    assert [(r["report"]["incident_id"], r["status"], r["version"]) for r in latest] == [
        ("INC-3", "open", 1), ("INC-2", "open", 1), ("INC-1", "resolved", 2)]


def test_state_survives_reopening_and_keeps_its_schema_version(tmp_path) -> None:
    path = tmp_path / "sub" / "serve.db"
    db = StateDB(path, sinks=("files",))
    db.commit_step(T0 + MINUTE, [update("INC-1", T0)])
    db.close()
    again = StateDB(path, sinks=("files",))
    try:
        assert again.position() == T0 + MINUTE and again.incident("INC-1")["incident_id"] == "INC-1"
        assert again.writable()
    finally:
        again.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    conn.close()


def test_a_newer_schema_or_a_foreign_file_is_one_line_config_error(tmp_path) -> None:
    path = tmp_path / "serve.db"
    StateDB(path).close()
    conn = sqlite3.connect(path)
    conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match="written by a newer melt") as newer:
        StateDB(path)
    assert "\n" not in str(newer.value)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite, " * 100)
    with pytest.raises(ConfigError, match="not a usable melt state database") as foreign:
        StateDB(junk)
    assert "\n" not in str(foreign.value)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="cannot create"):
        StateDB(blocker / "serve.db")


def test_readers_in_other_threads_beside_the_writer(db) -> None:
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        try:
            while not done.is_set():
                for row in db.incidents():
                    assert db.incident(row["incident_id"]) is not None
                db.pending_deliveries()
        except BaseException as exc:  # noqa: BLE001 (reported below)
            errors.append(exc)

    readers = [threading.Thread(target=read) for _ in range(4)]
    for thread in readers:
        thread.start()
    for step in range(1, 41):
        db.commit_step(T0 + step * MINUTE, [update(f"INC-{step % 7}", T0 + (step % 7) * MINUTE)])
    done.set()
    for thread in readers:
        thread.join()
    assert errors == []
    assert sum(len(db.versions(f"INC-{i}")) for i in range(7)) == 40
    assert len(db.pending_deliveries()) == 80


def test_reports_round_trip_unchanged(db) -> None:
    report = fake_report("INC-9", T0)
    report["extra"] = {"nested": [1, 2.5, None, "ü"]}
    db.commit_step(T0 + MINUTE, [{"report": copy.deepcopy(report), "status": "open"}])
    assert db.incident("INC-9") == json.loads(json.dumps(report))
