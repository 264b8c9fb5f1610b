"""Where reports go: files (one JSON per incident plus ``index.json``), stdout (JSON lines), a
ticketing webhook and incident pages (``OUT/html/``), several at once. The webhook never loses a
report: what it cannot deliver, for whatever reason, is written to the spool
(:mod:`melt.delivery.spool`) for ``melt deliver``.

Sinks deliver in a fixed order, whatever the order they are named in: files first, then the
webhook (and its spool), then the pages, then stdout; so the report files and every spool entry
are written before any sink can fail (:func:`deliver_all`).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from melt.core.errors import ConfigError, DeliveryError, MeltError
from melt.core.progress import log
from melt.core.settings import SINKS, ReportSettings, WebhookSettings

DELIVERY_ORDER = {"files": 0, "webhook": 1, "html": 2, "stdout": 3}  # what keeps reports comes first
SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # an incident id that is a plain file name


@dataclass
class Delivery:
    """What a sink did with a batch: reports delivered, and those spooled with the reason."""

    sink: str
    delivered: int = 0
    spooled: list[str] = field(default_factory=list)
    spool_dir: Path | None = None
    error: str | None = None
    unspooled: list[str] = field(default_factory=list)  # neither delivered nor spooled (spool unwritable)


class Sink(Protocol):
    name: str

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery: ...


class FileSink:
    """One ``<incident_id>.json`` per report and an ``index.json`` listing them, with the detectors
    the run left out and why (``left_out``: ``{"detector", "reason"}`` records), so a reader of the
    reports sees which evidence is missing."""

    name = "files"

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        self.left_out: list[dict[str, str]] = []

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        index = []
        for report in reports:
            name = f"{report['incident_id']}.json"
            (self.out_dir / name).write_text(json.dumps(report, indent=2, default=str) + "\n")
            ranked = report["root_cause_analysis"]["ranked_causes"]
            index.append({"incident_id": report["incident_id"], "file": name, "window": report["window"],
                          "fingerprint": report["fingerprint"], "severity": report["anomaly_details"]["severity"],
                          "top_causes": [c["service"] for c in ranked[:3]],
                          "score": ranked[0]["score"] if ranked else None,
                          "explanation_source": report["explanation_source"]})
        (self.out_dir / "index.json").write_text(json.dumps({"incidents": index, "left_out": self.left_out},
                                                            indent=2) + "\n")
        return Delivery(self.name, len(reports))


class StdoutSink:
    """JSON lines on stdout, for piping into other tools."""

    name = "stdout"

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery:
        stream = self.stream or sys.stdout
        for report in reports:
            stream.write(json.dumps(report, default=str) + "\n")
        stream.flush()
        return Delivery(self.name, len(reports))


class HtmlSink:
    """The incident pages (:mod:`melt.reports.page`): ``OUT/html/index.html``, one
    ``<incident_id>.html`` per report and ``plotly.min.js`` beside them, so the pages open offline
    from the disk.

    ``details`` (incident id -> :func:`melt.reports.detail.incident_detail`) adds the curves; a
    report without one gets the page drawn from the report alone. A report that cannot be rendered
    costs one warning line and is left out of the index; the other pages are still written.
    """

    name = "html"

    def __init__(self, out_dir: str | Path, json_href: str | None = None, quiet: bool = False) -> None:
        self.out_dir = Path(out_dir) / "html"
        self.json_href = json_href  # link to each JSON report, e.g. "../{id}.json" beside the files sink
        self.details: dict[str, dict[str, Any]] = {}
        self.quiet = quiet

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery:
        from melt.reports.page import PLOTLY_JS, plotly_js, render_incident, render_index

        self.out_dir.mkdir(parents=True, exist_ok=True)
        script = plotly_js()
        target = self.out_dir / PLOTLY_JS
        if not target.is_file() or target.stat().st_size != len(script.encode()):
            target.write_text(script)
        delivery, pages = Delivery(self.name), []
        for report in reports:
            ident = str(report.get("incident_id", "?")) if isinstance(report, dict) else "?"
            try:
                if not SAFE_NAME.fullmatch(ident):
                    raise ValueError(f"incident id {ident!r} is not a plain file name")
                html = render_incident(report, self.details.get(ident), json_href=self.json_href)
            except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:
                reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
                log(f"html: page of {ident} not written ({reason})", self.quiet, stage="melt warning")
                delivery.error = delivery.error or f"{ident}: {reason}"
                continue
            (self.out_dir / f"{ident}.html").write_text(html)
            pages.append(report)
            delivery.delivered += 1
        (self.out_dir / "index.html").write_text(render_index(pages, json_href=self.json_href))
        return delivery


class WebhookSink:
    """POST each report (:class:`melt.delivery.webhook.Webhook`); spool the ones that fail."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, spool_dir: str | Path) -> None:
        from melt.delivery.webhook import Webhook

        self.webhook = Webhook(settings)
        self.settings = settings
        self.spool_dir = Path(spool_dir)

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery:
        """POST each report; spool every one that fails, whatever the reason, with that reason.

        Raises :class:`DeliveryError` only when a report could be neither sent nor spooled, after
        every report has been tried.
        """
        from melt.delivery.spool import spool_report
        from melt.delivery.webhook import Attempt

        delivery = Delivery(self.name, spool_dir=self.spool_dir)
        spool_error = None
        for report in reports:
            try:
                attempt = self.webhook.send(report)
            except Exception as exc:  # send() catches what it knows; nothing computed may be lost
                attempt = Attempt(False, None, 1, f"{type(exc).__name__}: {' '.join(str(exc).split())}")
            if attempt.ok:
                delivery.delivered += 1
                continue
            try:
                spool_report(self.spool_dir, report, self.webhook.url, self.settings.payload, attempt.error,
                             attempt.tries)
            except OSError as exc:
                delivery.unspooled.append(report["incident_id"])
                spool_error = f"cannot write the spool {self.spool_dir} ({exc.strerror or exc})"
                continue
            delivery.spooled.append(report["incident_id"])
            delivery.error = delivery.error or attempt.error
        if delivery.unspooled:
            raise DeliveryError(f"webhook: {len(delivery.unspooled)} of {len(reports)} report(s) neither delivered "
                                f"nor spooled: {spool_error}; {len(delivery.spooled)} spooled in {self.spool_dir}")
        return delivery


def deliver_all(sinks: Iterable[Sink], reports: list[dict[str, Any]],
                left_out: Iterable[tuple[str, str]] = ()) -> list[Delivery]:
    """Every sink delivers, files first (:data:`DELIVERY_ORDER`), even when an earlier one fails.

    ``left_out``: (detector, reason) pairs for the detectors the run dropped; the files sink lists
    them in ``index.json``.

    A sink that raises (an unwritable output directory, a closed stdout) does not keep the others
    from delivering; the first such failure is raised as one :class:`DeliveryError` at the end.
    """
    deliveries, failures = [], []
    notes = [{"detector": detector, "reason": reason} for detector, reason in left_out]
    for sink in sinks:
        if isinstance(sink, FileSink):
            sink.left_out = notes
    for sink in sorted(sinks, key=lambda s: DELIVERY_ORDER.get(s.name, len(DELIVERY_ORDER))):
        try:
            deliveries.append(sink.deliver(reports))
        except MeltError as exc:
            failures.append(str(exc))
        except OSError as exc:
            failures.append(f"{sink.name}: {exc.strerror or exc}" + (f" ({exc.filename})" if exc.filename else ""))
    if failures:
        spooled = [d for d in deliveries if d.spooled]
        note = "".join(f"; webhook: {len(d.spooled)} report(s) kept in {d.spool_dir}" for d in spooled)
        raise DeliveryError(failures[0] + note)
    return deliveries


def make_sinks(names: Iterable[str], out_dir: str | Path, settings: ReportSettings | None = None) -> list[Sink]:
    """Sinks by name, in delivery order (files, webhook, html, stdout; settings: the ``report`` section).

    Unknown names are a :class:`ConfigError`. Every sink is built before any delivers, so a bad
    webhook setting (no URL, a malformed one, a missing payload file) fails before anything runs.
    """
    names = list(names)
    sinks: list[Sink] = []
    for name in names:
        if name == "files":
            sinks.append(FileSink(out_dir))
        elif name == "stdout":
            sinks.append(StdoutSink())
        elif name == "html":
            sinks.append(HtmlSink(out_dir, json_href="../{id}.json" if "files" in names else None))
        elif name == "webhook":
            if settings is None:
                raise ConfigError("the webhook sink needs the report.webhook settings")
            sinks.append(WebhookSink(settings.webhook, settings.spool_dir or Path(out_dir) / "spool"))
        else:
            raise ConfigError(f"unknown sink '{name}' (available: {', '.join(SINKS)})")
    return sorted(sinks, key=lambda s: DELIVERY_ORDER[s.name])
