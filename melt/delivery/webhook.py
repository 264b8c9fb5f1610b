"""POST incident reports to a ticketing webhook: payload templates, retries, idempotency.

A payload template is JSON whose strings may hold ``${name}`` placeholders (built-in: ``generic``,
``jira``, ``pagerduty`` for PagerDuty Events v2, in ``melt/delivery/payloads/``; or a file of your own).
A string that is exactly ``"${report}"`` becomes the whole report object. ``${env:NAME}`` reads an
environment variable at send time, in templates, ``headers`` and ``vars`` alike, so secrets are
never written to the spool. Each request carries the report fingerprint in the idempotency
header (and PagerDuty's ``dedup_key``), so a retried or re-sent incident never opens a second
ticket. Transient failures (connection errors, timeouts, an answer that is not HTTP, 408, 429,
5xx) are retried with exponential backoff, honouring ``Retry-After``; other 4xx answers are final.
:meth:`Webhook.send` never raises: a payload that cannot be rendered, a bad URL or a garbage answer
is a failed :class:`Attempt` with a one-line reason, so the caller can spool the report.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from melt.core.errors import ConfigError, MeltError
from melt.core.settings import WebhookSettings

PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][\w:.-]*)\}")
BUILT_IN_PAYLOADS = ("generic", "jira", "pagerduty")
PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
RETRY_STATUS = {408, 425, 429, 500, 502, 503, 504}
MAX_RETRY_AFTER_S = 30.0


def check_url(url: Any, where: str) -> str:
    """``url`` if it is an absolute http(s) URL with a host, else a one-line :class:`ConfigError`.

    Checked before anything is sent or claimed, so a typo never turns into one failure per report.
    """
    text = url if isinstance(url, str) else ""
    try:
        parts = urllib.parse.urlsplit(text.strip())
        parts.port  # noqa: B018 (raises ValueError for a port that is not a number)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or any(c.isspace() for c in text):
        raise ConfigError(f"{where}: {url!r} is not an http:// or https:// URL")
    return text


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def load_payload_template(name: str) -> Any:
    """A built-in template by name, or a JSON file by path."""
    if name in BUILT_IN_PAYLOADS:
        return json.loads(resources.files("melt.delivery").joinpath(f"payloads/{name}.json").read_text())
    if not isinstance(name, str) or not name:
        raise ConfigError(f"report.webhook.payload: {name!r} is neither {', '.join(BUILT_IN_PAYLOADS)} nor a file")
    file = Path(name)
    if not file.is_file():
        raise ConfigError(f"report.webhook.payload: '{name}' is neither {', '.join(BUILT_IN_PAYLOADS)} nor a file")
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"report.webhook.payload: {file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"report.webhook.payload: cannot read {file} ({_one_line(exc)})") from None


def _bullets(items: list[str]) -> str:
    return "\n".join(f"- {item}" for item in items) or "- (none)"


def report_values(report: dict[str, Any]) -> dict[str, Any]:
    """The ``${name}`` values a template may use, drawn from one report."""
    analysis = report["root_cause_analysis"]
    first_sentence = report["explanation"].split(". ")[0].rstrip(".")
    return {
        "incident_id": report["incident_id"], "fingerprint": report["fingerprint"],
        "severity": report["anomaly_details"]["severity"],
        "pagerduty_severity": PAGERDUTY_SEVERITY.get(report["anomaly_details"]["severity"], "warning"),
        "service": report["service"], "component": report["component"], "feature": report["feature"] or "",
        "anomaly_type": report["anomaly_details"]["anomaly_type"] or "anomaly",
        "summary": first_sentence[:200], "explanation": report["explanation"],
        "window_start": report["window"]["start"], "window_end": report["window"]["end"],
        "top_causes": ", ".join(c["service"] for c in analysis["ranked_causes"][:3]) or report["service"],
        "suggested_causes": _bullets(analysis["suggested_causes"]),
        "recommendations": _bullets(report["recommendations"]),
        "melt_version": report["melt_version"], "jira_issue_type": "Bug", "report": report,
    }


def expand(text: str, values: Mapping[str, Any], environ: Mapping[str, str], where: str) -> Any:
    """Fill the placeholders of one string; a string that is one placeholder keeps the value's type."""
    def lookup(name: str) -> Any:
        if name.startswith("env:"):
            variable = name[4:]
            if variable not in environ:
                raise ConfigError(f"{where}: environment variable {variable} is not set")
            return environ[variable]
        if name not in values:
            raise ConfigError(f"{where}: unknown placeholder ${{{name}}} (known: {', '.join(sorted(values))}, "
                              f"env:NAME; add your own under report.webhook.vars)")
        return values[name]

    whole = PLACEHOLDER.fullmatch(text)
    if whole:
        return lookup(whole.group(1))
    return PLACEHOLDER.sub(lambda m: str(lookup(m.group(1))), text)


def render(template: Any, values: Mapping[str, Any], environ: Mapping[str, str], where: str) -> Any:
    if isinstance(template, str):
        return expand(template, values, environ, where)
    if isinstance(template, dict):
        return {k: render(v, values, environ, where) for k, v in template.items()}
    if isinstance(template, list):
        return [render(v, values, environ, where) for v in template]
    return template


@dataclass
class Attempt:
    """How one delivery ended: ``ok``, the HTTP status (``None`` without an answer), tries and error."""

    ok: bool
    status: int | None
    tries: int
    error: str | None = None


class Webhook:
    """Renders and POSTs reports (settings: ``report.webhook``).

    A missing or malformed URL and an unreadable payload template are a :class:`ConfigError` here,
    when the sink is built, so ``melt detect`` stops before any detector runs.
    """

    def __init__(self, settings: WebhookSettings, environ: Mapping[str, str] | None = None,
                 sleep: Any = time.sleep) -> None:
        if not settings.url:
            raise ConfigError("the webhook sink needs report.webhook.url")
        self.settings = settings
        self.url = check_url(settings.url, "report.webhook.url")
        self.template = load_payload_template(settings.payload)
        self.environ = os.environ if environ is None else environ
        self.sleep = sleep

    def payload(self, report: dict[str, Any]) -> bytes:
        vars_ = {k: render(v, {}, self.environ, f"report.webhook.vars.{k}") for k, v in self.settings.vars.items()}
        body = render(self.template, report_values(report) | vars_, self.environ,
                      f"report.webhook.payload '{self.settings.payload}'")
        return json.dumps(body, default=str).encode()

    def headers(self, report: dict[str, Any], key: str | None = None) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": f"melt/{report['melt_version']}"}
        for name, value in self.settings.headers.items():
            headers[name] = str(render(value, {}, self.environ, f"report.webhook.headers.{name}"))
        headers[self.settings.idempotency_header] = key or report["fingerprint"]
        return headers

    def send(self, report: dict[str, Any], key: str | None = None) -> Attempt:
        """POST one report with retries; never raises, whatever goes wrong (the reason is in the attempt).

        ``key`` is the idempotency key (default: the report's fingerprint; `melt serve` sends one
        per report version).

        A payload or header that cannot be rendered (unknown placeholder, unset ``${env:X}``) is a
        failed attempt with no request made: retrying cannot fix it, but a later ``melt deliver`` can.
        """
        try:
            body, headers = self.payload(report), self.headers(report, key)
        except MeltError as exc:
            return Attempt(False, None, 1, _one_line(exc))
        except Exception as exc:  # a report the template cannot use: still the caller's to spool
            return Attempt(False, None, 1, f"cannot render the payload ({type(exc).__name__}: {_one_line(exc)})")
        retries, backoff = self.settings.max_retries, self.settings.backoff
        status, error = None, None
        for attempt in range(retries + 1):
            wait = backoff * 2 ** attempt
            try:
                request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.settings.timeout) as response:
                    return Attempt(True, response.status, attempt + 1)
            except urllib.error.HTTPError as exc:
                status, error = exc.code, f"HTTP {exc.code}"
                if exc.code not in RETRY_STATUS:
                    return Attempt(False, status, attempt + 1, error)
                retry_after = exc.headers.get("Retry-After", "") if exc.headers else ""
                if retry_after.strip().isdigit():
                    wait = min(float(retry_after), MAX_RETRY_AFTER_S)
            except urllib.error.URLError as exc:
                status, error = None, f"cannot reach {self.url} ({_one_line(exc.reason)})"
            except http.client.HTTPException as exc:  # BadStatusLine, RemoteDisconnected, IncompleteRead...
                status, error = None, f"no valid HTTP answer from {self.url} ({type(exc).__name__})"
            except (TimeoutError, OSError) as exc:
                status, error = None, f"cannot reach {self.url} ({_one_line(exc) or type(exc).__name__})"
            except ValueError as exc:  # a URL urllib cannot use; retrying will not help
                return Attempt(False, None, attempt + 1, f"cannot send to {self.url} ({_one_line(exc)})")
            if attempt < retries:
                self.sleep(wait)
        return Attempt(False, status, retries + 1, error)
