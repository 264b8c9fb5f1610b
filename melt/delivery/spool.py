"""A directory of reports that a webhook could not take, resent later by ``melt deliver``.

One file per incident, ``<fingerprint>.json``: the report, where it was going (URL and payload
name, never headers or rendered payloads, which may hold secrets) and how the last try ended.

Several ``melt deliver`` runs may share a spool; every change of hands is one atomic rename:

- a sender claims ``<name>.json`` by renaming it to ``<name>.json.sending.<pid>.<epoch_ms>``; a
  sender whose rename fails (``FileNotFoundError``) lost the race and skips the entry;
- a claim older than :data:`STALE_CLAIM_S` (its sender crashed) is taken back by renaming it to a
  claim of one's own: exactly one sender's rename succeeds. The age comes from the time in the
  name, never from the file's mtime, which a rename keeps from when the report was spooled. A
  ``<name>.json.sending`` claim of older melt versions counts with its mtime;
- a delivered entry's claim is removed; a failed one is renamed back to ``<name>.json`` with its
  attempt count and last error updated; an entry that is not JSON, not a report or misses fields
  is moved to ``failed/`` and never sent.

A sender that ends normally (or is interrupted) leaves no claim behind.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from melt.core.errors import BundleError, MeltError, ReportError
from melt.core.settings import WebhookSettings
from melt.reports.report import validate_report

STALE_CLAIM_S = 600.0
CLAIM = ".sending"  # <name>.json.sending.<pid>.<epoch_ms>; a bare .sending is an old melt's claim
FAILED_DIR = "failed"


def spool_report(directory: str | Path, report: dict[str, Any], url: str, payload: str, error: str | None,
                 attempts: int) -> Path:
    """Write (or overwrite) the spool entry of one report, atomically."""
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    entry = {"spool_version": 1, "fingerprint": report["fingerprint"], "incident_id": report["incident_id"],
             "url": url, "payload": payload, "attempts": attempts, "last_error": error,
             "spooled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "report": report}
    target = root / f"{report['fingerprint']}.json"
    _write_atomically(target, entry)
    return target


def _write_atomically(target: Path, entry: dict[str, Any]) -> None:
    """``entry`` as JSON at ``target``: a temporary file in the same directory, then one rename."""
    handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            json.dump(entry, out, default=str)
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@dataclass
class DrainResult:
    """What one ``melt deliver`` run did, entry by entry."""

    sent: list[str] = field(default_factory=list)  # incident ids
    failed: list[tuple[str, str]] = field(default_factory=list)  # (entry name, why): back in the spool
    set_aside: list[tuple[str, str]] = field(default_factory=list)  # (entry name, why): moved to failed/
    skipped: int = 0  # entries another sender claimed first

    @property
    def unreadable(self) -> list[str]:
        """Names of the entries moved to ``failed/``."""
        return [name for name, _ in self.set_aside]


class CorruptEntry(MeltError):
    """A spool entry that can never be sent: not JSON, not a report, or missing fields."""


def _entry_name(claim: Path) -> str:
    """``<name>.json`` of a claim file (new or old style)."""
    return claim.name[:claim.name.index(".json" + CLAIM)] + ".json"


def claim_age(claim: Path, now: float) -> float:
    """Seconds since ``claim`` was made: from the time in its name, or its mtime for an old-style claim."""
    suffix = claim.name[claim.name.index(".json" + CLAIM) + len(".json" + CLAIM):]
    parts = suffix.split(".")
    if len(parts) == 3 and parts[0] == "" and parts[1].isdigit() and parts[2].isdigit():
        return now - int(parts[2]) / 1000.0
    return now - claim.stat().st_mtime


def _candidates(root: Path, now: float) -> list[Path]:
    """Spooled entries, then stale claims, each sorted by name."""
    pending, stale = [], []
    for path in root.iterdir():
        name = path.name
        if name.endswith(".json") and not name.startswith("."):
            pending.append(path)
        elif ".json" + CLAIM in name:
            try:
                if claim_age(path, now) > STALE_CLAIM_S:
                    stale.append(path)
            except FileNotFoundError:  # finished by its sender while we looked
                continue
    return sorted(pending) + sorted(stale)


def _claim(file: Path) -> Path | None:
    """Our claim on ``file`` (an entry or a stale claim), or ``None`` if another sender was first."""
    entry = _entry_name(file) if CLAIM in file.name else file.name
    claimed = file.with_name(f"{entry}{CLAIM}.{os.getpid()}.{time.time_ns() // 1_000_000}")
    try:
        os.rename(file, claimed)
    except FileNotFoundError:
        return None
    return claimed


def _read(claimed: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The entry and its validated report, or :class:`CorruptEntry` saying what is wrong."""
    try:
        entry = json.loads(claimed.read_text())
    except IsADirectoryError:
        raise CorruptEntry("a directory, not a file") from None
    except UnicodeDecodeError:
        raise CorruptEntry("not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise CorruptEntry(f"not JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(entry, dict):
        raise CorruptEntry(f"not a spool entry (a JSON {type(entry).__name__}, not an object)")
    if not isinstance(entry.get("report"), dict):
        raise CorruptEntry("no report in the entry")
    try:
        report = validate_report(entry["report"])
    except ReportError as exc:
        raise CorruptEntry(" ".join(str(exc).split())) from None
    return entry, report


def _give_back(claimed: Path, root: Path, name: str, entry: dict[str, Any] | None) -> bool:
    """Return a claimed entry to ``<name>.json``, updated to ``entry`` when given; False if it was taken over."""
    if entry is not None:
        handle, temporary = tempfile.mkstemp(dir=root, prefix=".", suffix=".tmp")
        with os.fdopen(handle, "w") as out:
            json.dump(entry, out, default=str)
        if not claimed.exists():  # another sender took our claim over (we were slower than STALE_CLAIM_S)
            os.unlink(temporary)
            return False
        os.replace(temporary, claimed)
    try:
        os.rename(claimed, root / name)
    except FileNotFoundError:
        return False
    return True


def _set_aside(claimed: Path, root: Path, name: str) -> Path:
    """Move a corrupt claimed entry to ``failed/<name>`` (never over an earlier one)."""
    folder = root / FAILED_DIR
    folder.mkdir(exist_ok=True)
    target = folder / name
    if target.exists():
        target = folder / f"{name}.{time.time_ns() // 1_000_000}"
    os.rename(claimed, target)
    return target


@contextmanager
def _held(claimed: Path, root: Path, name: str) -> Iterator[None]:
    """Put the entry back untouched if anything unforeseen (or Ctrl-C) ends the work on a claim."""
    try:
        yield
    except BaseException:
        if claimed.exists():
            _give_back(claimed, root, name, None)
        raise


def drain(directory: str | Path, settings: WebhookSettings, url: str | None = None,
          environ: Mapping[str, str] | None = None) -> DrainResult:
    """Try every spooled report once (each with the webhook's own retries); keep the ones that fail.

    Never raises for one entry: a failed delivery goes back to the spool with its reason, a corrupt
    entry to ``failed/``. A malformed ``url`` is a :class:`ConfigError` before anything is claimed.

    Args:
        directory: the spool.
        settings: the ``report.webhook`` settings (headers, vars, retries).
        url: send everything here instead of to each entry's own URL.
        environ: for ``${env:NAME}`` values (default: the process environment).
    """
    from melt.delivery.webhook import Webhook, check_url

    root = Path(directory)
    if url is not None:
        check_url(url, "--url")
    if not root.is_dir():
        raise BundleError(f"{root}: spool directory not found")
    webhooks: dict[tuple[str, str], Webhook] = {}
    result = DrainResult()
    for file in _candidates(root, time.time()):
        try:
            claimed = _claim(file)
        except OSError as exc:  # a spool we may not rename in: nothing was claimed
            result.failed.append((file.name, f"cannot claim ({exc.strerror or exc})"))
            continue
        if claimed is None:  # another sender took it
            result.skipped += 1
            continue
        name = _entry_name(claimed)
        try:
            with _held(claimed, root, name):
                _send_one(claimed, root, name, settings, url, environ, webhooks, result)
        except OSError as exc:  # the spool itself failed us (permissions, a full disk): the entry is back
            result.failed.append((name, f"spool: {exc.strerror or exc}"))
    return result


def _send_one(claimed: Path, root: Path, name: str, settings: WebhookSettings, url: str | None,
              environ: Mapping[str, str] | None, webhooks: dict[tuple[Any, Any], Any], result: DrainResult) -> None:
    """Send one claimed entry and settle its claim: removed, given back updated, or set aside."""
    from melt.delivery.webhook import Attempt, Webhook

    try:
        entry, report = _read(claimed)
    except CorruptEntry as exc:
        _set_aside(claimed, root, name)
        result.set_aside.append((name, str(exc)))
        return
    target = (url or entry.get("url") or settings.url, entry.get("payload") or settings.payload)
    try:
        if target not in webhooks:
            webhooks[target] = Webhook(replace(settings, url=target[0], payload=target[1]), environ)
        attempt = webhooks[target].send(report)
    except MeltError as exc:  # no URL, a malformed one, a payload file that is gone or not JSON
        attempt = Attempt(False, None, 1, " ".join(str(exc).split()))
    except Exception as exc:  # whatever else: the entry goes back, the run goes on
        attempt = Attempt(False, None, 1, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
    if attempt.ok:
        claimed.unlink(missing_ok=True)
        result.sent.append(report["incident_id"])
        return
    try:
        attempts = int(entry.get("attempts") or 0)
    except (TypeError, ValueError):
        attempts = 0
    entry.setdefault("fingerprint", report["fingerprint"])
    entry.update(attempts=attempts + attempt.tries, last_error=attempt.error)
    _give_back(claimed, root, name, entry)
    result.failed.append((name, attempt.error or "failed"))
    return result
