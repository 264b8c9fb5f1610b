"""Where reports go: files (one JSON per incident plus ``index.json``) and stdout (JSON lines)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from melt.errors import ConfigError


class FileSink:
    """One ``<incident_id>.json`` per report and an ``index.json`` listing them."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)

    def deliver(self, reports: list[dict[str, Any]]) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        index = []
        for report in reports:
            name = f"{report['incident_id']}.json"
            (self.out_dir / name).write_text(json.dumps(report, indent=2, default=str) + "\n")
            ranked = report["root_cause_analysis"]["ranked_causes"]
            index.append({"incident_id": report["incident_id"], "file": name, "window": report["window"],
                          "severity": report["anomaly_details"]["severity"],
                          "top_causes": [c["service"] for c in ranked[:3]],
                          "score": ranked[0]["score"] if ranked else None})
        (self.out_dir / "index.json").write_text(json.dumps({"incidents": index}, indent=2) + "\n")
        return self.out_dir


class StdoutSink:
    """JSON lines on stdout, for piping into other tools."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def deliver(self, reports: list[dict[str, Any]]) -> None:
        stream = self.stream or sys.stdout
        for report in reports:
            stream.write(json.dumps(report, default=str) + "\n")
        stream.flush()


def make_sinks(names: list[str], out_dir: str | Path) -> list[FileSink | StdoutSink]:
    """Sinks by name; unknown names are a :class:`ConfigError`."""
    sinks: list[FileSink | StdoutSink] = []
    for name in names:
        if name == "files":
            sinks.append(FileSink(out_dir))
        elif name == "stdout":
            sinks.append(StdoutSink())
        else:
            raise ConfigError(f"unknown sink '{name}' (available: files, stdout)")
    return sinks
