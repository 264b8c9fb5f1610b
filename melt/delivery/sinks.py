"""Where reports go: files (one JSON per incident plus ``index.json``), stdout (JSON lines) and a
ticketing webhook, several at once. The webhook never loses a report: what it cannot deliver is
written to the spool (:mod:`melt.delivery.spool`) for ``melt deliver``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from melt.core.errors import ConfigError
from melt.core.settings import ReportSettings, WebhookSettings

SINKS = ("files", "stdout", "webhook")


@dataclass
class Delivery:
    """What a sink did with a batch: reports delivered, and those spooled with the reason."""

    sink: str
    delivered: int = 0
    spooled: list[str] = field(default_factory=list)
    spool_dir: Path | None = None
    error: str | None = None


class Sink(Protocol):
    name: str

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery: ...


class FileSink:
    """One ``<incident_id>.json`` per report and an ``index.json`` listing them."""

    name = "files"

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

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
        (self.out_dir / "index.json").write_text(json.dumps({"incidents": index}, indent=2) + "\n")
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


class WebhookSink:
    """POST each report (:class:`melt.delivery.webhook.Webhook`); spool the ones that fail."""

    name = "webhook"

    def __init__(self, settings: WebhookSettings, spool_dir: str | Path) -> None:
        from melt.delivery.webhook import Webhook

        self.webhook = Webhook(settings)
        self.settings = settings
        self.spool_dir = Path(spool_dir)

    def deliver(self, reports: list[dict[str, Any]]) -> Delivery:
        from melt.delivery.spool import spool_report

        delivery = Delivery(self.name, spool_dir=self.spool_dir)
        for report in reports:
            attempt = self.webhook.send(report)
            if attempt.ok:
                delivery.delivered += 1
                continue
            spool_report(self.spool_dir, report, self.webhook.url, self.settings.payload, attempt.error, attempt.tries)
            delivery.spooled.append(report["incident_id"])
            delivery.error = attempt.error
        return delivery


def make_sinks(names: Iterable[str], out_dir: str | Path, settings: ReportSettings | None = None) -> list[Sink]:
    """Sinks by name (settings: the ``report`` section); unknown names are a :class:`ConfigError`.

    Every sink is built before any delivers, so a bad webhook setting fails before anything is sent.
    """
    sinks: list[Sink] = []
    for name in names:
        if name == "files":
            sinks.append(FileSink(out_dir))
        elif name == "stdout":
            sinks.append(StdoutSink())
        elif name == "webhook":
            if settings is None:
                raise ConfigError("the webhook sink needs the report.webhook settings")
            sinks.append(WebhookSink(settings.webhook, settings.spool_dir or Path(out_dir) / "spool"))
        else:
            raise ConfigError(f"unknown sink '{name}' (available: {', '.join(SINKS)})")
    return sinks
