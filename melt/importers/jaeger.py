"""Importer for Jaeger's JSON export (the UI's "Download JSON" and the ``/api/traces`` response).

A file holds ``{"data": [trace, ...]}``; a trace holds ``spans`` and ``processes``. Span
``references`` give the parent (``CHILD_OF``, else the first ``FOLLOWS_FROM``, marked as an
asynchronous ``consumer`` when no ``span.kind`` tag says otherwise); times are microseconds. Tags
become ``attr.*``; span logs become log lines of their span. Files with one such document (or one
trace) per line are read line by line; a single pretty-printed document is read whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from melt.core.errors import SourceError
from melt.core.progress import log
from melt.importers.bad_rows import BadRows
from melt.importers.otlp import hex_id
from melt.importers.sources import json_lines, open_text, source_files
from melt.importers.writer import BundleWriter

SUFFIXES = (".json", ".jsonl", ".json.gz", ".jsonl.gz")
LOG_LEVEL_KEYS = ("level", "log.level", "severity")


def import_jaeger(src: str | Path, writer: BundleWriter, *, chunk_rows: int = 100_000, quiet: bool = False) -> None:
    """Import every Jaeger JSON file under ``src`` into ``writer``."""
    files = source_files(src, SUFFIXES)
    for index, file in enumerate(files, start=1):
        spans: list[dict[str, Any]] = []
        logs: list[dict[str, Any]] = []
        for line, trace in _traces(file, writer.bad_rows):
            try:
                trace_spans, trace_logs = _trace_rows(trace, line)
            except (TypeError, ValueError, AttributeError, KeyError) as exc:
                writer.bad_rows.add(f"{file}:{line}", f"not a Jaeger trace ({type(exc).__name__}: {exc})")
                continue
            spans += trace_spans
            logs += trace_logs
            if len(spans) >= chunk_rows:
                _flush(spans, logs, writer, file)
        _flush(spans, logs, writer, file)
        log(f"{file.name}: {index}/{len(files)} files", quiet, stage="melt import")


def _traces(file: Path, bad_rows: BadRows) -> Iterator[tuple[int, dict[str, Any]]]:
    """Every trace object in ``file`` with the line it starts on."""
    with open_text(file) as handle:
        first = handle.readline()
    try:
        json.loads(first)
        documents: Iterator[tuple[int, Any]] = json_lines(file, bad_rows)
    except json.JSONDecodeError:
        try:
            with open_text(file) as handle:
                documents = iter([(1, json.load(handle))])
        except json.JSONDecodeError as exc:
            raise SourceError(f"{file}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    for line, document in documents:
        if isinstance(document, dict) and "spans" in document:
            yield line, document
        elif isinstance(document, dict) and isinstance(document.get("data"), list):
            for trace in document["data"]:
                yield line, trace
        elif isinstance(document, list):
            for trace in document:
                yield line, trace
        else:
            bad_rows.add(f"{file}:{line}", "neither a Jaeger trace nor {\"data\": [...]}")


def _tags(tags: list[dict[str, Any]] | None) -> dict[str, Any]:
    return {tag["key"]: tag.get("value") for tag in tags or []}


def _trace_rows(trace: dict[str, Any], line: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    processes = trace.get("processes") or {}
    spans, logs = [], []
    for span in trace["spans"]:
        process = span.get("process") or processes.get(span.get("processID")) or {}
        process_tags = _tags(process.get("tags"))
        tags = _tags(span.get("tags"))
        references = span.get("references") or []
        parent = next((r for r in references if r.get("refType") == "CHILD_OF"), None) or \
            next((r for r in references if r.get("refType") == "FOLLOWS_FROM"), None)
        kind = tags.get("span.kind")
        if kind is None and parent is not None and parent.get("refType") == "FOLLOWS_FROM":
            kind = "consumer"
        failed = str(tags.get("error", "")).lower() == "true" or str(tags.get("otel.status_code", "")) == "ERROR"
        http = tags.get("http.response.status_code", tags.get("http.status_code"))
        row = {f"attr.{k}": v for k, v in {**process_tags, **tags}.items()}
        trace_id, span_id = hex_id(span.get("traceID")), hex_id(span.get("spanID"))
        instance = process_tags.get("hostname") or process_tags.get("k8s.pod.name")
        row.update({
            "trace_id": trace_id, "span_id": span_id, "parent_span_id": hex_id(parent["spanID"]) if parent else None,
            "span_name": span.get("operationName"), "service_name": process.get("serviceName"),
            "start_time": int(span["startTime"]), "duration": float(span["duration"]) / 1e3,
            "span_kind": kind, "status_code": int(http) if http is not None else 500 if failed else None,
            "_line": line,
        })
        spans.append(row)
        for entry in span.get("logs") or []:
            fields = _tags(entry.get("fields"))
            level = next((str(fields[k]) for k in LOG_LEVEL_KEYS if k in fields), None)
            if level is None:
                level = "ERROR" if fields.get("event") == "error" or "error.object" in fields else "INFO"
            message = str(fields["message"]) if "message" in fields else \
                " ".join(f"{k}={v}" for k, v in fields.items() if k not in LOG_LEVEL_KEYS)
            logs.append({"timestamp": int(entry["timestamp"]), "service": process.get("serviceName"),
                         "instance": instance, "level": level, "message": message,
                         "trace_id": trace_id, "span_id": span_id, "_line": line})
    return spans, logs


def _flush(spans: list[dict[str, Any]], logs: list[dict[str, Any]], writer: BundleWriter, file: Path) -> None:
    writer.add_records("traces", spans, str(file), time_unit="us")
    writer.add_records("logs", logs, str(file), time_unit="us")
