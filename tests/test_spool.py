"""The spool under concurrency: claims are atomic renames, stale claims are taken back by exactly one
sender, failures go back with their reason, and 4 real `melt deliver` processes sharing a spool send
each of 200 reports exactly once (issue 33)."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from melt.core.config import default_settings
from melt.core.settings import WebhookSettings
from melt.delivery import spool as spool_module
from melt.delivery.spool import STALE_CLAIM_S, claim_age, drain, spool_report
from tests.conftest import REPO
from tests.local_servers import WebhookReceiver

MODELS = "zscore,span_latency"
OLD = time.time() - STALE_CLAIM_S - 600  # an mtime (or claim time) well past the stale limit
REPORTS = 200
SENDERS = 4


@pytest.fixture(scope="module")
def report(tiny_report) -> dict:
    """One real, valid report from the tiny bundle (a copy each module may change)."""
    return copy.deepcopy(tiny_report)


def copies(report: dict, count: int, tag: int = 0) -> list[dict]:
    """``count`` distinct reports: the same content under new incident ids and fingerprints."""
    return [{**report, "incident_id": f"INC-T{tag}-{i:04d}", "fingerprint": f"{tag:04x}{i:016x}"} for i in range(count)]


def hook(url: str | None = None, **changes) -> WebhookSettings:
    values = {"url": url, "backoff": 0.0, "max_retries": 0, "timeout": 5.0, **changes}
    return default_settings().with_overrides({f"report.webhook.{k}": v for k, v in values.items()}).report.webhook


def dead_pid() -> int:
    """The pid of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def age(path: Path, seconds_ago: float) -> None:
    then = time.time() - seconds_ago
    os.utime(path, (then, then))


def stale_claim(entry: Path, pid: int, legacy: bool = False) -> Path:
    """Turn a spooled entry into the claim of a crashed sender, older than STALE_CLAIM_S."""
    name = f"{entry.name}.sending" if legacy else f"{entry.name}.sending.{pid}.{int(OLD * 1000)}"
    claim = entry.rename(entry.with_name(name))
    os.utime(claim, (OLD, OLD))
    return claim


def test_claim_age_comes_from_the_name_not_the_mtime(tmp_path) -> None:
    now = time.time()
    fresh = tmp_path / f"a.json.sending.123.{int(now * 1000)}"
    fresh.write_text("{}")
    os.utime(fresh, (OLD, OLD))  # a rename keeps the mtime of the spooled file: it says nothing
    legacy = tmp_path / "b.json.sending"
    legacy.write_text("{}")
    os.utime(legacy, (OLD, OLD))
    assert claim_age(fresh, now) < 1.0 and claim_age(legacy, now) > STALE_CLAIM_S


def test_a_stale_claim_is_taken_back_by_exactly_one_sender(report, tmp_path) -> None:
    claim = stale_claim(spool_report(tmp_path, report, "http://127.0.0.1:9", "generic", "HTTP 503", 1), dead_pid())
    first, second = spool_module._claim(claim), spool_module._claim(claim)
    assert first is not None and second is None
    assert re.fullmatch(rf"{report['fingerprint']}\.json\.sending\.{os.getpid()}\.\d+", first.name)
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


def test_an_old_entry_and_a_fresh_claim_are_not_taken_as_stale(report, tmp_path) -> None:
    """An entry spooled long ago keeps its old mtime once claimed; a second sender must not take it over."""
    entry = spool_report(tmp_path, report, "http://127.0.0.1:9", "generic", "HTTP 503", 1)
    age(entry, STALE_CLAIM_S * 3)
    claimed = spool_module._claim(entry)
    assert claimed is not None and spool_module._candidates(tmp_path, time.time()) == []
    with WebhookReceiver() as receiver:
        result = drain(tmp_path, hook(receiver.url))
    assert not result.sent and not receiver.requests and claimed.exists()


def test_a_failed_delivery_goes_back_with_its_attempts_and_reason(report, tmp_path) -> None:
    spool_report(tmp_path, report, "http://127.0.0.1:9", "generic", "HTTP 503", 2)
    with WebhookReceiver(status=500) as receiver:
        receiver.down = True
        result = drain(tmp_path, hook(), url=receiver.url)
    entry = json.loads((tmp_path / f"{report['fingerprint']}.json").read_text())
    assert result.failed == [(f"{report['fingerprint']}.json", "HTTP 500")]
    assert entry["attempts"] == 3 and entry["last_error"] == "HTTP 500"
    assert [p.name for p in tmp_path.iterdir()] == [f"{report['fingerprint']}.json"]


def test_an_interrupted_sender_leaves_no_claim(report, tmp_path, monkeypatch) -> None:
    from melt.delivery.webhook import Webhook

    entry = spool_report(tmp_path, report, "http://127.0.0.1:9", "generic", "HTTP 503", 1)
    before = entry.read_bytes()

    def interrupted(self, report):
        raise KeyboardInterrupt

    monkeypatch.setattr(Webhook, "send", interrupted)
    with pytest.raises(KeyboardInterrupt):
        drain(tmp_path, hook())
    assert [p.name for p in tmp_path.iterdir()] == [entry.name] and entry.read_bytes() == before


def test_a_legacy_stale_claim_is_delivered_and_a_fresh_one_left_alone(report, tmp_path) -> None:
    one, two = copies(report, 2, tag=7)
    with WebhookReceiver() as receiver:
        stale_claim(spool_report(tmp_path, one, receiver.url, "generic", "HTTP 503", 1), 0, legacy=True)
        fresh = spool_report(tmp_path, two, receiver.url, "generic", "HTTP 503", 1)
        fresh = fresh.rename(fresh.with_name(fresh.name + ".sending"))  # an old melt sending it right now
        result = drain(tmp_path, hook())
    assert result.sent == [one["incident_id"]] and [p.name for p in tmp_path.iterdir()] == [fresh.name]


def _spool_for_the_race(spool: Path, reports: list[dict], url: str) -> None:
    """200 entries: a third spooled long ago (old mtime), a sixth stale claims of a dead sender, some
    of them old-style ``.sending`` claims, the rest fresh."""
    pid = dead_pid()
    for i, report in enumerate(reports):
        entry = spool_report(spool, report, url, "generic", "HTTP 503", 1)
        if i % 6 == 1:
            stale_claim(entry, pid, legacy=i % 12 == 7)
        elif i % 3 == 0:
            age(entry, STALE_CLAIM_S * 2)


@pytest.mark.parametrize("run", range(5))
def test_four_senders_at_once_send_every_report_exactly_once(report, tmp_path, run) -> None:
    reports = copies(report, REPORTS, tag=run)
    spool = tmp_path / "spool"
    with WebhookReceiver() as receiver:
        _spool_for_the_race(spool, reports, receiver.url)
        assert len(list(spool.glob("*.json.sending*"))) == sum(1 for i in range(REPORTS) if i % 6 == 1)
        config = tmp_path / "melt.yaml"
        config.write_text(yaml.safe_dump({"report": {"webhook": {
            "url": receiver.url, "max_retries": 0, "backoff": 0.0, "timeout": 10.0}}}))
        command = [sys.executable, "-m", "melt.cli", "--config", str(config), "deliver", "--spool", str(spool)]
        started = time.monotonic()
        senders = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for _ in range(SENDERS)]
        outputs = [sender.communicate(timeout=120) for sender in senders]
        took = time.monotonic() - started
    codes = [sender.returncode for sender in senders]
    keys = Counter(r["headers"]["idempotency-key"] for r in receiver.requests)
    per_sender = [int(m.group(1)) if (m := re.search(r"delivered (\d+) report", out)) else -1 for out, _ in outputs]
    left = sorted(p.name for p in spool.iterdir())
    print(f"run {run}: {len(receiver.requests)} deliveries, per sender {per_sender}, "
          f"duplicates {sum(n - 1 for n in keys.values())}, left {len(left)}, exit codes {codes}, {took:.1f} s")
    assert codes == [0] * SENDERS, [err for _, err in outputs]
    assert all(err == "" for _, err in outputs), [err for _, err in outputs]
    assert set(keys) == {r["fingerprint"] for r in reports} and set(keys.values()) == {1}
    assert sum(per_sender) == REPORTS and left == []
