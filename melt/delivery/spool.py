"""A directory of reports that a webhook could not take, resent later by ``melt deliver``.

One file per incident, ``<fingerprint>.json``: the report, where it was going (URL and payload
name, never headers or rendered payloads, which may hold secrets) and how the last try ended.
A sender claims a file by renaming it to ``.sending`` (atomic), so two ``melt deliver`` runs never
send the same report; a claim older than ``STALE_CLAIM_S`` (a crashed sender) is taken over.
A delivered report's file is removed; a failed one is put back with its attempt count. An entry
that is not JSON or whose report no longer validates is renamed to ``.bad`` and never sent.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from melt.core.errors import BundleError, ReportError
from melt.core.settings import WebhookSettings
from melt.reports.report import validate_report

STALE_CLAIM_S = 600.0


def spool_report(directory: str | Path, report: dict[str, Any], url: str, payload: str, error: str | None,
                 attempts: int) -> Path:
    """Write (or overwrite) the spool entry of one report, atomically."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    entry = {"spool_version": 1, "fingerprint": report["fingerprint"], "incident_id": report["incident_id"],
             "url": url, "payload": payload, "attempts": attempts, "last_error": error,
             "spooled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "report": report}
    handle, temporary = tempfile.mkstemp(dir=root, suffix=".tmp")
    with os.fdopen(handle, "w") as out:
        json.dump(entry, out, default=str)
    target = root / f"{report['fingerprint']}.json"
    os.replace(temporary, target)
    return target


@dataclass
class DrainResult:
    """What one ``melt deliver`` run did."""

    sent: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (incident id, last error)
    unreadable: list[str] = field(default_factory=list)


def _claims(root: Path) -> list[Path]:
    now = time.time()
    stale = [p for p in root.glob("*.json.sending") if now - p.stat().st_mtime > STALE_CLAIM_S]
    return sorted(root.glob("*.json")) + sorted(stale)


def drain(directory: str | Path, settings: WebhookSettings, url: str | None = None,
          environ: Mapping[str, str] | None = None) -> DrainResult:
    """Try every spooled report once (each with the webhook's own retries); keep the ones that fail.

    Args:
        directory: the spool.
        settings: the ``report.webhook`` settings (headers, vars, retries).
        url: send everything here instead of to each entry's own URL.
        environ: for ``${env:NAME}`` values (default: the process environment).
    """
    from melt.delivery.webhook import Webhook

    root = Path(directory)
    if not root.is_dir():
        raise BundleError(f"{root}: spool directory not found")
    webhooks: dict[tuple[str, str], Webhook] = {}
    result = DrainResult()
    for file in _claims(root):
        claimed = file if file.suffix == ".sending" else file.with_name(file.name + ".sending")
        try:
            if claimed != file:
                os.rename(file, claimed)
            else:
                os.utime(claimed)
        except FileNotFoundError:  # another sender took it
            continue
        try:
            entry = json.loads(claimed.read_text())
            report = validate_report(entry["report"])
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ReportError):
            os.rename(claimed, claimed.with_name(claimed.name.removesuffix(".sending") + ".bad"))
            result.unreadable.append(file.name)
            continue
        target = (url or entry.get("url") or settings.url, entry.get("payload") or settings.payload)
        if target not in webhooks:
            webhooks[target] = Webhook(replace(settings, url=target[0], payload=target[1]), environ)
        attempt = webhooks[target].send(report)
        if attempt.ok:
            claimed.unlink()
            result.sent.append(report["incident_id"])
            continue
        entry.update(attempts=int(entry.get("attempts", 0)) + attempt.tries, last_error=attempt.error)
        claimed.write_text(json.dumps(entry, default=str))
        os.rename(claimed, root / f"{entry['fingerprint']}.json")
        result.failed.append((report["incident_id"], attempt.error or "failed"))
    return result
