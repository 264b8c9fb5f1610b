"""The incident page: the list of incidents (:func:`render_index`) and one incident
(:func:`render_incident`), as self-contained HTML that works offline.

An incident page shows what an on-call engineer reads first (the explanation, the
recommendations), the ranked causes, a timeline of fused scores per service, the dependency graph
with the causes and the propagation path marked, and the evidence: metric plots with the expected
band, log templates with example lines and the slowest spans. The curves come from
:func:`melt.reports.detail.incident_detail`; without it the page is drawn from the report alone.

Charts are plotly figures (:mod:`melt.reports.page_figures`) drawn by ``plotly.min.js``, which
the caller serves beside the pages (:func:`plotly_js`, from the ``plotly`` package: no CDN).
Every value from a report is escaped (:func:`html.escape`); figure JSON sits in an escaped
attribute, never in inline script text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from html import escape
from typing import Any
from urllib.parse import quote

import pandas as pd

from melt.reports.page_figures import (
    figure_json,
    forecast_figure,
    graph_figure,
    index_figure,
    metric_figure,
    timeline_figure,
)
from melt.reports.page_style import CSS

PLOTLY_JS = "plotly.min.js"
EVIDENCE_ID = re.compile(r"\bE[0-9]+\b")
BOOT = """
(function () {
  if (!window.Plotly) { document.querySelectorAll('.nojs').forEach(function (e) { e.style.display = 'block'; }); return; }
  document.querySelectorAll('[data-figure]').forEach(function (el) {
    var f = JSON.parse(el.getAttribute('data-figure'));
    Plotly.newPlot(el, f.data, f.layout, {displaylogo: false, responsive: true, displayModeBar: false});
  });
})();
"""


def plotly_js() -> str:
    """plotly.js, minified, from the installed ``plotly`` package (served as ``plotly.min.js``)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def text(value: Any) -> str:
    """Any value as escaped HTML text (``None`` as a dash)."""
    return "–" if value is None else escape(str(value))


def number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return text(value)
    return escape(f"{value + 0.0:.4g}")  # + 0.0: no "-0"


def expected(band: Any) -> str:
    if not isinstance(band, list | tuple) or len(band) != 2:
        return "–"
    return f"[{number(band[0]) if band[0] is not None else '–'}, {number(band[1]) if band[1] is not None else '∞'}]"


def window_text(window: dict[str, Any]) -> str:
    """``2026-01-05 00:33 – 00:43 UTC (10 min)``, escaped; the ISO strings when they do not parse."""
    try:
        start, end = pd.to_datetime(window["start"], utc=True), pd.to_datetime(window["end"], utc=True)
    except (ValueError, TypeError):
        return f"{text(window['start'])} → {text(window['end'])}"
    until = f"{end:%H:%M}" if end.date() == start.date() else f"{end:%Y-%m-%d %H:%M}"
    return escape(f"{start:%Y-%m-%d %H:%M} – {until} UTC ({(end - start).total_seconds() / 60:.0f} min)")


def href(pattern: str, incident_id: str) -> str:
    """``pattern`` with ``{id}`` replaced by the URL-quoted id, escaped for an attribute."""
    return escape(pattern.replace("{id}", quote(str(incident_id), safe="")))


def cited(value: str) -> str:
    """Escaped text with each evidence id (``E3``) linked to its row in the evidence table."""
    return EVIDENCE_ID.sub(lambda m: f'<a href="#ev-{m.group(0)}">{m.group(0)}</a>', escape(value))


def chart(figure_id: str, figure: Any, css_class: str = "chart") -> str:
    return f'<div class="{css_class}" id="{escape(figure_id)}" data-figure="{escape(figure_json(figure))}"></div>'


def page(title: str, body: str, script_src: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{escape(title)}</title><style>{CSS}</style>"
            f"<script src=\"{escape(script_src)}\"></script></head>\n<body><main>\n{body}\n"
            f"<p class=\"nojs\">The charts need {escape(script_src)} beside this page.</p>\n"
            f"<footer>melt · plotly charts, drawn offline</footer></main><script>{BOOT}</script></body></html>\n")


def table(headers: Iterable[str], rows: Iterable[str], css_id: str | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    ident = f' id="{escape(css_id)}"' if css_id else ""
    return f"<table{ident}><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def severity_badge(severity: str) -> str:
    return f'<span class="sev sev-{escape(severity)}">{escape(severity)}</span>'


# ---------------------------------------------------------------------------------------- index
def render_index(reports: list[dict[str, Any]], *, title: str = "melt incidents", script_src: str = PLOTLY_JS,
                 incident_href: str = "{id}.html", json_href: str | None = None) -> str:
    """The list of incidents, newest first: window, severity, top cause, services, status (when a
    report dict carries ``status``, as ``melt serve`` adds it) and links, above a time chart."""
    ordered = sorted(reports, key=lambda r: r["window"]["start"], reverse=True)
    with_status = any("status" in r for r in ordered)
    headers = ["incident", "window", "severity", "top cause", "score", "feature", "services"]
    headers += ["status"] * with_status + ["links"]
    rows = []
    for r in ordered:
        ident = r["incident_id"]
        ranked = r["root_cause_analysis"]["ranked_causes"]
        services = r["services"]
        shown = ", ".join(services[:5]) + (f" +{len(services) - 5}" if len(services) > 5 else "")
        links = f'<a href="{href(incident_href, ident)}">page</a>'
        if json_href:
            links += f' · <a href="{href(json_href, ident)}">JSON</a>'
        cells = [f'<td class="id"><a href="{href(incident_href, ident)}">{text(ident)}</a></td>',
                 f'<td title="{text(r["window"]["start"])}">{window_text(r["window"])}</td>',
                 f"<td>{severity_badge(r['anomaly_details']['severity'])}</td>", f"<td>{text(r['service'])}</td>",
                 f'<td class="num">{number(ranked[0]["score"]) if ranked else "–"}</td>',
                 f'<td class="wrap">{text(r.get("feature"))}</td>', f'<td class="wrap">{text(shown)}</td>']
        if with_status:
            cells.append(f"<td>{text(r.get('status'))}</td>")
        cells.append(f"<td>{links}</td>")
        rows.append(f'<tr id="row-{escape(ident)}" class="incident">{"".join(cells)}</tr>')
    listing = table(headers, rows, "incidents") if rows else '<p class="muted">No incidents.</p>'
    timeline = f"<section>{chart('fig-incidents', index_figure(ordered))}</section>" if ordered else ""
    body = (f'<header class="top"><h1>{escape(title)}</h1><span class="muted">{len(ordered)} incident(s)</span>'
            f"</header>\n{timeline}\n<section><h2>Incidents</h2>{listing}</section>")
    return page(title, body, script_src)


# ------------------------------------------------------------------------------------- incident
def summary(report: dict[str, Any]) -> str:
    details = report["anomaly_details"]
    facts = [("window", window_text(report["window"])),
             ("top cause", report["service"]), ("signal · feature", f"{report['component']} · {report.get('feature')}"),
             ("observed", f"{number(details.get('value'))} (expected {expected(details.get('expected_range'))})"),
             ("anomaly type", details.get("anomaly_type")), ("confidence", number(details.get("confidence"))),
             ("services", ", ".join(report["services"])), ("fingerprint", report["fingerprint"]),
             ("explanation", report["explanation_source"] + (f" (fallback: {report['explanation_fallback']})"
                                                             if report.get("explanation_fallback") else ""))]
    trusted = {"window", "observed", "confidence"}  # already escaped by window_text()/number()/expected()
    items = "".join(f"<div><dt>{escape(k)}</dt><dd>{v if k in trusted else text(v)}</dd></div>" for k, v in facts)
    return f'<section id="summary"><dl class="facts">{items}</dl></section>'


def explanation(report: dict[str, Any]) -> str:
    rca = report["root_cause_analysis"]
    parts = [f'<p class="explanation">{cited(report["explanation"])}</p>']
    if rca.get("suggested_causes"):
        parts.append("<h3>Suggested causes</h3><ul>"
                     + "".join(f"<li>{cited(s)}</li>" for s in rca["suggested_causes"]) + "</ul>")
    if report.get("recommendations"):
        parts.append("<h3>Recommendations</h3><ol>"
                     + "".join(f"<li>{cited(s)}</li>" for s in report["recommendations"]) + "</ol>")
    return f'<section id="explanation"><h2>Explanation</h2>{"".join(parts)}</section>'


def causes(report: dict[str, Any]) -> str:
    rows = []
    for c in report["root_cause_analysis"]["ranked_causes"]:
        hops = " → ".join(f'<span class="hop">{text(s)}</span>' if s == c["service"] else text(s) for s in c["path"])
        terms = ", ".join(f"{text(k)} {number(v)}" for k, v in c["terms"].items() if v)
        ids = ", ".join(f'<a href="#ev-{escape(i)}">{escape(i)}</a>' for i in c["evidence_ids"])
        rows.append(f'<tr class="cause"><td class="num">{number(c["rank"])}</td><td>{text(c["service"])}</td>'
                    f'<td class="num">{number(c["score"])}</td><td class="path">{hops}</td>'
                    f'<td class="wrap">{terms}</td><td>{ids or "–"}</td></tr>')
    correlated = report["root_cause_analysis"].get("correlated_anomalies", [])
    extra = ""
    if correlated:
        extra = "<h3>Correlated anomalies</h3>" + table(
            ["service", "strongest feature", "correlation with the top cause"],
            [f'<tr><td>{text(c["service"])}</td><td class="wrap">{text(c["metric"])}</td>'
             f'<td class="num">{number(c["correlation_score"])}</td></tr>' for c in correlated])
    body = table(["rank", "service", "score", "path", "terms", "evidence"], rows) if rows else (
        '<p class="muted">No ranked causes.</p>')
    return f'<section id="causes"><h2>Ranked root causes</h2>{body}{extra}</section>'


def evidence_table(report: dict[str, Any]) -> str:
    rows = []
    for e in report["evidence"]:
        rows.append(f'<tr id="ev-{escape(e["id"])}"><td>{text(e["id"])}</td><td>{text(e["service"])}</td>'
                    f'<td>{text(e["component"])}</td><td>{text(e["detector"])}</td>'
                    f'<td class="wrap">{text(e.get("feature"))}</td><td>{text(e["timestamp"])}</td>'
                    f'<td class="num">{number(e["score"])}</td><td class="num">{number(e.get("value"))}</td>'
                    f'<td>{expected(e.get("expected_range"))}</td><td>{text(e.get("anomaly_type"))}</td></tr>')
    return table(["id", "service", "signal", "detector", "feature", "time", "score", "value", "expected",
                  "type"], rows, "evidence-table")


def log_section(report: dict[str, Any], detail: dict[str, Any] | None) -> str:
    """Templates with example lines: the detail's lines nearest the evidence, or the report's one example."""
    if detail is not None:
        groups = detail.get("logs", [])
    else:
        groups = [{"evidence_id": e["id"], "service": e.get("reported_by") or e["service"],
                   "template": e.get("template") or e.get("feature"), "level": e.get("level"),
                   "lines": [{"timestamp": e["timestamp"], "level": e.get("level"), "message": e["example"]}]}
                  for e in report["evidence"] if e["component"] == "logs" and e.get("example")]
    if not groups:
        return ""
    parts = []
    for g in groups:
        lines = "\n".join(f'<span class="lvl-{escape(str(line.get("level")))}">{text(line["timestamp"])} '
                          f'{text(line.get("level"))}</span> {text(line["message"])}' for line in g["lines"])
        parts.append(f'<div class="log"><a href="#ev-{escape(g["evidence_id"])}">{escape(g["evidence_id"])}</a> '
                     f'<b>{text(g["service"])}</b> <span class="template">{text(g["template"])}</span>'
                     f'<pre class="lines">{lines or "(no line of this template in the window)"}</pre></div>')
    return "<h3>Log templates with example lines</h3>" + "".join(parts)


def span_section(detail: dict[str, Any] | None) -> str:
    spans = (detail or {}).get("spans", [])
    if not spans:
        return ""
    rows = [f'<tr><td>{text(s["service"])}</td><td class="wrap">{text(s["operation"])}</td>'
            f'<td>{text(s["start"])}</td><td class="num">{number(s["duration_ms"])}</td>'
            f'<td class="num">{number(s["self_ms"])}</td><td>{text(s["status_code"])}</td>'
            f'<td class="path">{text(s["trace_id"])}</td></tr>' for s in spans]
    return "<h3>Slowest spans in the window</h3>" + table(
        ["service", "operation", "start", "duration ms", "self ms", "status", "trace"], rows, "spans")


def evidence(report: dict[str, Any], detail: dict[str, Any] | None) -> str:
    plots = [chart(f"fig-metric-{i}", metric_figure(s, report)) for i, s in enumerate((detail or {}).get("metrics", []))]
    metrics = f'<h3>Metrics against their expected band</h3><div class="grid2">{"".join(plots)}</div>' if plots else ""
    return (f'<section id="evidence"><h2>Evidence</h2>{metrics}{log_section(report, detail)}{span_section(detail)}'
            f"<h3>Evidence items</h3>{evidence_table(report)}</section>")


def forecast_section(report: dict[str, Any], detail: dict[str, Any] | None) -> str:
    """The forecast of the top cause's metric (docs/report.md), when the report has one."""
    forecast = report.get("forecast")
    if not forecast:
        return ""
    last = forecast["path"][-1]
    line = (f'Expected {number(last["mean"])} at {text(last["timestamp"])} '
            f'(95%: {number(last["lower_95"])} to {number(last["upper_95"])}); model {text(forecast["model"])}.')
    if forecast.get("time_to_limit"):
        line += f' Reaches its limit {number(forecast["limit"])} at <b>{text(forecast["time_to_limit"])}</b>.'
    return (f'<section id="forecast"><h2>Forecast</h2><p>{line}</p>'
            f'{chart("fig-forecast", forecast_figure(report, detail))}</section>')


def render_incident(report: dict[str, Any], detail: dict[str, Any] | None = None, *, script_src: str = PLOTLY_JS,
                    index_href: str = "index.html", json_href: str | None = None) -> str:
    """One incident's page. ``detail`` (:func:`melt.reports.detail.incident_detail`) adds the
    fused-score timeline, the call edges, the metric plots, log lines and slowest spans; without
    it the timeline shows the evidence scores and the graph the causes' call paths."""
    ident = report["incident_id"]
    links = f'<a href="{escape(index_href)}">← all incidents</a>'
    if json_href:
        links += f' · <a href="{href(json_href, ident)}">JSON report</a>'
    header = (f'<header class="top"><h1>{text(ident)}</h1>{severity_badge(report["anomaly_details"]["severity"])}'
              f'<span>top cause <b id="top-cause">{text(report["service"])}</b></span><span class="muted">{links}</span>'
              "</header>")
    charts = (f'<div class="grid2"><section id="graph">{chart("fig-graph", graph_figure(report, detail))}</section>'
              f'<section id="timeline">{chart("fig-timeline", timeline_figure(report, detail))}</section></div>')
    body = "\n".join([header, summary(report), explanation(report), charts, causes(report),
                      forecast_section(report, detail), evidence(report, detail)])
    return page(f"{ident} · melt", body, script_src)
