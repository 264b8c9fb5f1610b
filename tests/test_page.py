"""The incident page: the detail behind it, the HTML (escaping, report alone, with detail), the
``html`` sink through ``melt detect``, and what headless Chromium draws once plotly.js has run."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from html import unescape
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from melt.cli import cli
from melt.core.bundle import MeltBundle
from melt.core.config import load_settings
from melt.delivery.sinks import HtmlSink, make_sinks
from melt.incidents.ensemble import group_incidents
from melt.pipeline.batch import report_incidents
from melt.pipeline.fitting import fit_detectors, score_all, training_split
from melt.reports.detail import SLOWEST_SPANS, incident_detail, log_examples, metric_series, template_regex
from melt.reports.page import plotly_js, render_incident, render_index
from rca.graph import dependency_graph

MODELS = "zscore,span_latency"
EVIL = "<img src=x onerror=alert(1)>"
SCRIPT = "</script><script>alert(2)</script>"


@pytest.fixture(scope="module")
def run(tiny_dir: Path) -> dict:
    """One detect run on the tiny bundle, kept open: scores, incidents, reports and details."""
    settings = load_settings()
    bundle = MeltBundle.read(tiny_dir)
    models = fit_detectors(training_split(bundle, settings.detect.train_fraction), MODELS.split(","), settings, True)
    signal_of = {name: model.signal for name, model in models.items()}
    scores = score_all(models, bundle, True)
    graph = dependency_graph(bundle.traces)
    incidents = group_incidents(scores, signal_of, settings.ensemble, graph)
    reports = report_incidents(incidents, scores, bundle, signal_of, settings, graph)
    details = [incident_detail(i, scores, bundle, signal_of, graph, settings, r) for i, r in zip(incidents, reports, strict=True)]
    assert incidents, "the tiny bundle's fault makes an incident"
    return {"settings": settings, "bundle": bundle, "scores": scores, "signal_of": signal_of, "graph": graph,
            "incidents": incidents, "reports": reports, "details": details}


@pytest.fixture(scope="module")
def pages(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pages")
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", MODELS, "--out", str(out),
                                      "--sink", "files", "--sink", "html", "--quiet"])
    assert result.exit_code == 0, result.output
    return out


def figures(html: str) -> dict[str, dict]:
    """The plotly figures of a page by div id, as the browser will parse them."""
    found = re.findall(r'<div class="chart" id="([^"]+)" data-figure="([^"]*)"', html)
    return {ident: json.loads(unescape(data)) for ident, data in found}


# ------------------------------------------------------------------------------------------ detail
def test_detail_is_json_and_covers_the_incident(run: dict) -> None:
    incident, report, detail = run["incidents"][0], run["reports"][0], run["details"][0]
    assert json.loads(json.dumps(detail)) == detail  # plain records, nothing numpy or pandas
    start = incident.start - run["settings"].rca.lookback
    times = pd.to_datetime([r["timestamp"] for r in detail["timeline"]], utc=True)
    assert times.min() >= start and times.max() < incident.end and times.min() < incident.start
    assert report["service"] in {r["service"] for r in detail["timeline"]}
    peak = max(r["score"] for r in detail["timeline"] if r["service"] == report["service"])
    assert peak >= detail["threshold"]  # the cause alerted: its fused score crossed the threshold

    metric_items = {e["id"]: e for e in report["evidence"] if e["component"] == "metrics"}
    assert detail["metrics"], "the metrics evidence gets its series"
    for series in detail["metrics"]:
        item = metric_items[series["evidence_id"]]
        assert series["expected_range"] == item["expected_range"] and series["service"] == item["service"]
        assert len(series["points"]) > 3
        at = [p["value"] for p in series["points"] if p["timestamp"] == series["marked"]["timestamp"]]
        assert at and abs(at[0] - item["value"]) <= 1e-4 + 1e-3 * abs(item["value"]), \
            "the anomalous value (rounded in the report) is the plotted point at its time"

    spans = detail["spans"]
    assert 0 < len(spans) <= SLOWEST_SPANS
    assert [s["duration_ms"] for s in spans] == sorted((s["duration_ms"] for s in spans), reverse=True)
    assert all(incident.start <= pd.Timestamp(s["start"]) < incident.end for s in spans)
    assert all(0 <= s["self_ms"] <= s["duration_ms"] for s in spans)
    assert len({(s["service"], s["operation"]) for s in spans}) == len(spans)

    involved = set(incident.services) | {s for c in report["root_cause_analysis"]["ranked_causes"]
                                         for s in [c["service"], *c["path"]]}
    assert detail["edges"]
    for edge in detail["edges"]:
        assert {edge["caller"], edge["callee"]} <= involved and run["graph"].has_edge(edge["caller"], edge["callee"])
        assert edge["calls"] > 0


def test_detail_without_the_report_picks_its_own_evidence(run: dict) -> None:
    incident = run["incidents"][0]
    detail = incident_detail(incident, run["scores"], run["bundle"], run["signal_of"], None, run["settings"])
    assert detail["edges"] == [] and detail["metrics"] and detail["timeline"]
    assert detail["incident_id"] == incident.id and detail["spans"]


def test_metric_series_picks_the_series_the_evidence_names() -> None:
    """Call metrics by their peer, the evidence's instance when it has points, per-window means."""
    times = pd.date_range("2026-01-05 00:00", periods=8, freq="30s", tz="UTC")
    rows = [(t, "api", inst, metric, peer, value) for t in times
            for inst, metric, peer, value in [("api-0", "latency", None, 1.0), ("api-1", "latency", None, 3.0),
                                              (None, "rpc.p50", "db", 5.0), (None, "rpc.p50", "cache", 7.0)]]
    metrics = MeltBundle(metrics=pd.DataFrame(rows, columns=["timestamp", "service", "instance", "metric", "peer",
                                                             "value"])).metrics
    item = {"service": "api", "component": "metrics", "detector": "zscore", "timestamp": times[2].isoformat(),
            "expected_range": [0.0, 2.0], "value": 1.0}
    evidence = [item | {"id": "E1", "feature": "latency", "instance": "api-0"},
                item | {"id": "E2", "feature": "latency", "instance": "api-9"},  # no such instance: all of them
                item | {"id": "E3", "feature": "rpc.p50 -> db"},
                item | {"id": "E4", "feature": "disk", "metric": "disk"}]  # not in the data: no series
    series = metric_series(metrics, evidence, times[0], times[-1] + pd.Timedelta("1min"), pd.Timedelta("1min"))
    values = {s["evidence_id"]: [p["value"] for p in s["points"]] for s in series}
    assert values == {"E1": [1.0] * 4, "E2": [2.0] * 4, "E3": [5.0] * 4}
    assert series[2]["metric"] == "rpc.p50" and series[2]["peer"] == "db"


def test_template_regex_matches_the_lines_of_a_template() -> None:
    pattern = template_regex("Slow call to <*> <NUM> ms exceeds <NUM> ms, request id=<HEX> (x+1)")
    assert re.search(pattern, "Slow call to postgres-2: 58.6 ms exceeds 53 ms, request id=7ec0a84b6c7 (x+1)")
    assert re.search(pattern, "Slow  call to a b 1 ms exceeds 2 ms, request id=ff (x+1)")
    assert not re.search(pattern, "Fast call to postgres-2: 58.6 ms exceeds 53 ms, request id=7ec0a84b6c7 (x+1)")
    assert not re.search(pattern, "Slow call to postgres-2: 58.6 ms exceeds 53 ms, request id=7ec0 (x+1) and more")


def test_log_examples_are_the_template_lines_nearest_the_evidence(run: dict) -> None:
    logs = run["bundle"].logs
    line = logs.iloc[len(logs) // 2]
    template = re.sub(r"\d+(?:\.\d+)?", "<NUM>", str(line["message"]))
    at = line["timestamp"]
    start, end = at - pd.Timedelta("5min"), at + pd.Timedelta("5min")
    own = {"id": "E1", "service": line["service"], "component": "logs", "template": template,
           "timestamp": at.isoformat(), "level": line["level"]}
    # a caller's complaint about a peer: looked up in the caller's lines, without the "[peer]" suffix
    peer = {"id": "E2", "service": "some-peer", "component": "logs", "template": template + " [some-peer]",
            "peer": "some-peer", "reported_by": line["service"], "timestamp": at.isoformat()}
    none = {"id": "E3", "service": line["service"], "component": "logs", "template": "no such <NUM> line",
            "timestamp": at.isoformat(), "example": "no such 7 line"}
    groups = log_examples(logs, [own, peer, none], start, end)
    assert [g["evidence_id"] for g in groups] == ["E1", "E3"]  # E2 is the same (service, template) as E1
    lines = groups[0]["lines"]
    assert 1 <= len(lines) <= 3 and line["message"] in [x["message"] for x in lines]
    assert all(re.search(template_regex(template), x["message"]) for x in lines)
    assert groups[1]["lines"] == [{"timestamp": at.isoformat(), "level": None, "message": "no such 7 line"}]
    alone = log_examples(logs, [peer], start, end)
    assert alone[0]["service"] == line["service"] and alone[0]["template"] == template and alone[0]["lines"]


# -------------------------------------------------------------------------------------------- HTML
def test_report_alone_renders_graph_timeline_and_evidence(tiny_report: dict) -> None:
    html = render_incident(tiny_report)
    assert tiny_report["incident_id"] in html and tiny_report["service"] in html
    assert '<script src="plotly.min.js"></script>' in html
    assert not re.search(r"<script[^>]+src=\"(?:https?:)?//", html), "no CDN"
    figs = figures(html)
    assert "forecast" in tiny_report  # the top cause's metric forecast, drawn from the report alone
    assert set(figs) == {"fig-graph", "fig-timeline", "fig-forecast"}
    bands = [t.get("name") for t in figs["fig-forecast"]["data"]]
    assert {"forecast", "80% interval", "95% interval"} <= set(bands)
    forecast_x = next(t for t in figs["fig-forecast"]["data"] if t.get("name") == "forecast")["x"]
    assert list(forecast_x) == [p["timestamp"] for p in tiny_report["forecast"]["path"]]
    nodes = [t for trace in figs["fig-graph"]["data"] if trace.get("mode") == "markers+text" for t in trace["text"]]
    assert f"#1 {tiny_report['service']}" in nodes
    path = tiny_report["root_cause_analysis"]["ranked_causes"][0]["path"]
    red = next(t for t in figs["fig-graph"]["data"] if t.get("name") == "propagation path")
    assert [x for x in red["x"] if x is not None] or len(path) == 1
    for e in tiny_report["evidence"]:
        assert f'id="ev-{e["id"]}"' in html
    assert 'id="fig-metric-0"' not in html and 'id="spans"' not in html  # those need the detail
    assert render_incident(tiny_report, script_src="/static/plotly.min.js").count(
        '<script src="/static/plotly.min.js"></script>') == 1


def test_everything_from_the_report_is_escaped(tiny_report: dict) -> None:
    report = copy.deepcopy(tiny_report)
    cause = report["root_cause_analysis"]["ranked_causes"][0]
    old = cause["service"]
    report["service"] = cause["service"] = EVIL
    cause["path"] = [p if p != old else EVIL for p in cause["path"]]
    report["services"] = [EVIL, *report["services"]]
    report["incident_id"] = SCRIPT
    report["explanation"] = f"{SCRIPT} see E1 & {EVIL}"
    report["recommendations"] = [SCRIPT]
    report["evidence"][0]["feature"] = SCRIPT
    report["evidence"][0]["service"] = EVIL
    for html in (render_incident(report), render_index([report])):
        assert EVIL not in html and "<script>alert" not in html
        assert html.count("<script") == 2  # plotly.min.js and the loader, nothing injected
        assert "&lt;img src=x onerror=alert(1)&gt;" in html
    figs = figures(render_incident(report))
    texts = json.dumps(figs)
    assert EVIL not in texts and "&lt;img src=x onerror=alert(1)&gt;" in texts  # plotly reads tags in text
    assert '<a href="#ev-E1">E1</a>' in render_incident(report)


def test_graph_layout_does_not_depend_on_the_order_of_the_data() -> None:
    import networkx as nx

    from melt.reports.page_figures import positions

    edges = [("web", "api"), ("api", "db"), ("api", "cache"), ("web", "auth")]
    cyclic = [*edges, ("db", "web")]
    for calls in (edges, cyclic):
        one, other = nx.DiGraph(calls), nx.DiGraph(list(reversed(calls)))
        one.add_node("lonely")
        other.add_node("lonely")
        assert positions(one) == positions(other)
    layered = positions(nx.DiGraph(edges))
    assert layered["web"][1] > layered["api"][1] > layered["db"][1] == layered["cache"][1]  # callers above


def test_page_with_detail_draws_metrics_spans_and_edges(run: dict) -> None:
    report, detail = run["reports"][0], run["details"][0]
    html = render_incident(report, detail, json_href="../{id}.json")
    figs = figures(html)
    assert {"fig-graph", "fig-timeline"} < set(figs)
    assert sum(ident.startswith("fig-metric-") for ident in figs) == len(detail["metrics"]) > 0
    timeline_names = {t["name"] for t in figs["fig-timeline"]["data"]}
    assert report["service"] in timeline_names and "threshold" in timeline_names
    hovers = [h for t in figs["fig-graph"]["data"] if t.get("name") == "calls" for h in t["text"]]
    assert len(hovers) >= len(detail["edges"]) and all(" calls, " in h for h in hovers)
    assert 'id="spans"' in html and detail["spans"][0]["trace_id"] in html
    assert f'href="../{report["incident_id"]}.json"' in html
    band = figs["fig-metric-0"]["data"][1]
    assert band["fill"] == "tonexty" and band["y"][0] == detail["metrics"][0]["expected_range"][1]


def test_index_lists_incidents_newest_first_with_status(tiny_report: dict) -> None:
    older = copy.deepcopy(tiny_report)
    older["incident_id"] = "INC-older"
    older["window"] = {"start": "2020-01-01T00:00:00+00:00", "end": "2020-01-01T00:05:00+00:00"}
    html = render_index([older | {"status": "resolved"}, tiny_report | {"status": "open"}], title="stream",
                        incident_href="/incidents/{id}", json_href="/api/incidents/{id}")
    assert html.index(tiny_report["incident_id"]) < html.index("INC-older")
    assert "<th>status</th>" in html and "<td>resolved</td>" in html and "<td>open</td>" in html
    assert 'href="/incidents/INC-older"' in html and 'href="/api/incidents/INC-older"' in html
    assert "fig-incidents" in figures(html)
    plain = render_index([tiny_report])
    assert "<th>status</th>" not in plain and f'href="{tiny_report["incident_id"]}.html"' in plain
    assert "No incidents." in render_index([])


# -------------------------------------------------------------------------------------------- sink
def test_detect_html_sink_writes_the_pages(pages: Path) -> None:
    html_dir = pages / "html"
    reports = json.loads((pages / "index.json").read_text())["incidents"]
    assert reports
    index = (html_dir / "index.html").read_text()
    assert (html_dir / "plotly.min.js").read_text() == plotly_js()
    for entry in reports:
        ident = entry["incident_id"]
        page = (html_dir / f"{ident}.html").read_text()
        assert f'href="{ident}.html"' in index and f'href="../{ident}.json"' in index
        assert any(i.startswith("fig-metric-") for i in figures(page)), "the sink got the detail"
        assert (pages / f"{ident}.json").is_file()  # the files sink wrote the report it links to


def test_html_sink_skips_a_report_it_cannot_render(tiny_report: dict, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    broken = copy.deepcopy(tiny_report)
    broken["incident_id"] = "INC-broken"
    del broken["root_cause_analysis"]
    outside = copy.deepcopy(tiny_report)
    outside["incident_id"] = "../outside"
    sink = HtmlSink(tmp_path)
    delivery = sink.deliver([broken, outside, tiny_report])
    assert delivery.delivered == 1 and "INC-broken" in delivery.error
    written = sorted(p.name for p in (tmp_path / "html").iterdir())
    assert written == sorted([f"{tiny_report['incident_id']}.html", "index.html", "plotly.min.js"])
    assert not (tmp_path / "outside.html").exists()
    index = (tmp_path / "html" / "index.html").read_text()
    assert tiny_report["incident_id"] in index and "INC-broken" not in index
    err = capsys.readouterr().err
    assert err.count("[melt warning] html: page of") == 2 and "INC-broken" in err and "../outside" in err


def test_html_is_a_known_sink(tmp_path: Path) -> None:
    settings = load_settings().with_overrides({"report.sinks": ["files", "html"]})
    sinks = make_sinks(["html", "stdout", "files"], tmp_path, settings.report)
    assert [s.name for s in sinks] == ["files", "html", "stdout"]
    assert isinstance(sinks[1], HtmlSink) and sinks[1].json_href == "../{id}.json"
    assert make_sinks(["html"], tmp_path)[0].json_href is None


# ----------------------------------------------------------------------------------------- browser
def chromium() -> str | None:
    return os.environ.get("MELT_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    """Headless Chromium on ``url``, with 5 s of virtual time for the scripts to run."""
    command = [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
               "--virtual-time-budget=5000", *flags, url]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


@pytest.mark.skipif(chromium() is None, reason="no chromium binary (.ci/run installs Debian's chromium)")
def test_chromium_draws_the_pages(pages: Path, tmp_path: Path) -> None:
    html_dir = pages / "html"
    first = json.loads((pages / "index.json").read_text())["incidents"][0]
    ident, cause = first["incident_id"], first["top_causes"][0]

    index = browse((html_dir / "index.html").as_uri(), tmp_path / "profile", "--dump-dom").stdout
    assert f'id="row-{ident}"' in index and 'class="main-svg"' in index

    dom = browse((html_dir / f"{ident}.html").as_uri(), tmp_path / "profile", "--dump-dom").stdout
    assert dom.count('class="main-svg"') >= 3  # graph, timeline and the metric plots were drawn
    graph = dom[dom.index('id="fig-graph"'):dom.index('id="fig-timeline"')]
    assert "scatterlayer" in graph and re.search(r'<g class="trace scatter[^"]*"', graph)
    assert re.search(rf"<text[^>]*>#1 {re.escape(cause)}</text>", graph), "the cause's node is labelled"
    report = json.loads((pages / f"{ident}.json").read_text())
    ranked = report["root_cause_analysis"]["ranked_causes"]
    assert graph.count('class="point"') >= len(ranked), "each cause is drawn as a node"
    for cause_row in ranked:
        assert re.search(rf"<text[^>]*>#{cause_row['rank']} {re.escape(cause_row['service'])}</text>", graph)
    assert f'<b id="top-cause">{cause}</b>' in dom
    assert 'class="nojs" style="display: block' not in dom  # plotly.min.js was found and ran

    shot = tmp_path / "incident.png"
    browse((html_dir / f"{ident}.html").as_uri(), tmp_path / "profile", f"--screenshot={shot}",
           "--window-size=1280,1600")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
    if os.environ.get("MELT_SCREENSHOT"):  # `make screenshot`: the picture docs/serve.md shows
        shutil.copyfile(shot, os.environ["MELT_SCREENSHOT"])
