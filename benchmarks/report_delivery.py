"""Report stage costs: the template explainer per incident, and delivering 1,000 reports to a local webhook.

1. Explainer overhead: for every incident of a generated bundle (detectors fitted and scored once),
   ``build_facts`` plus the template explanation, and ``validate_report`` (the schema check at write
   time), against the report stage they sit in (``report_incidents`` with the template provider).
2. Delivery: ``--reports`` copies of a real report (distinct incident ids and fingerprints) POSTed
   through ``WebhookSink`` (payload template, headers, idempotency key, retry loop) to a threaded
   receiver on 127.0.0.1, against the obvious baseline measured in the same run: ``urllib`` POSTing
   the bare report JSON in a loop. Then the same with the receiver down (every report spooled) and
   ``melt deliver``'s ``drain`` after it comes back.

    .venv/bin/python benchmarks/report_delivery.py [--reports 1000] [--payload generic]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_time  # noqa: E402
from explain.facts import build_facts  # noqa: E402
from explain.template import TemplateExplainer  # noqa: E402
from melt.core.config import default_settings  # noqa: E402
from melt.core.settings import SynthSettings  # noqa: E402
from melt.delivery.sinks import WebhookSink  # noqa: E402
from melt.delivery.spool import drain  # noqa: E402
from melt.incidents.ensemble import group_incidents  # noqa: E402
from melt.pipeline.batch import report_incidents  # noqa: E402
from melt.pipeline.fitting import fit_detectors, score_all, training_split  # noqa: E402
from melt.reports.report import validate_report  # noqa: E402
from rca.graph import dependency_graph  # noqa: E402
from synth.generate import generate  # noqa: E402
from tests.local_servers import WebhookReceiver  # noqa: E402


def explainer_overhead() -> dict:
    """Fit, score and group once; then time each incident's report stage, its facts + template
    explanation, and its schema check."""
    bundle = generate(SynthSettings.of(seed=5, faults=7, duration="4h"))
    config = default_settings()
    models = fit_detectors(training_split(bundle, config.detect.train_fraction),
                           ["zscore", "log_patterns", "span_latency"], config, quiet=True)
    signal_of = {n: m.signal for n, m in models.items()}
    scores = score_all(models, bundle, quiet=True)
    graph = dependency_graph(bundle.traces, None)
    incidents = group_incidents(scores, signal_of, config.ensemble, graph)
    template = TemplateExplainer()
    stage_s, explain_s, validate_s, reports = [], [], [], []
    for incident in incidents:
        stage_s.append(median_time(
            lambda i=incident: reports.append(report_incidents([i], scores, bundle, signal_of, config, graph)[0]), 3))
        report = reports[-1]
        candidates = report["root_cause_analysis"]["ranked_causes"]
        explain_s.append(median_time(
            lambda i=incident, r=report, c=candidates: template.explain(build_facts(i.summary(), c, r["evidence"])), 5))
        validate_s.append(median_time(lambda r=report: validate_report(r), 5))
    return {"incidents": len(incidents), "explain_ms": 1000 * statistics.mean(explain_s),
            "validate_ms": 1000 * statistics.mean(validate_s), "stage_ms": 1000 * statistics.mean(stage_s),
            "report": reports[0]}


def copies(report: dict, n: int) -> list[dict]:
    out = []
    for i in range(n):
        copy = json.loads(json.dumps(report))
        copy["incident_id"] = f"{report['incident_id']}-{i:05d}"
        copy["fingerprint"] = f"{i:020x}"
        out.append(copy)
    return out


def plain_posts(url: str, reports: list[dict]) -> None:
    for report in reports:
        request = urllib.request.Request(url, data=json.dumps(report).encode(),
                                         headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            response.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reports", type=int, default=1000)
    parser.add_argument("--payload", default="generic")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        cost = explainer_overhead()
        print(f"{cost['incidents']} incidents: template explanation (facts + text) {cost['explain_ms']:.2f} ms, "
              f"schema validation {cost['validate_ms']:.2f} ms, whole report stage {cost['stage_ms']:.1f} ms "
              f"per incident ({100 * (cost['explain_ms'] + cost['validate_ms']) / cost['stage_ms']:.1f}% of it)")
        reports = copies(cost["report"], args.reports)
        size = len(json.dumps(reports[0]))
        hook = {"payload": args.payload, "backoff": 0.0, "max_retries": 0,
                "vars": {"jira_project": "OPS", "pagerduty_routing_key": "x"}}
        with WebhookReceiver() as receiver:
            hook["url"] = receiver.url
            webhook = default_settings().with_overrides({f"report.webhook.{k}": v for k, v in hook.items()}).report.webhook
            began = time.perf_counter()
            plain_posts(receiver.url, reports)
            plain_s = time.perf_counter() - began
            receiver.tickets.clear()  # the plain loop sends no idempotency key
            sink = WebhookSink(webhook, root / "spool")
            began = time.perf_counter()
            delivery = sink.deliver(reports)
            sink_s = time.perf_counter() - began
            assert delivery.delivered == len(reports) and len(receiver.tickets) == len(reports)
            receiver.down = True
            began = time.perf_counter()
            spooled = sink.deliver(copies(cost["report"], args.reports))
            spool_s = time.perf_counter() - began
            receiver.down = False
            receiver.tickets.clear()
            began = time.perf_counter()
            drained = drain(root / "spool", webhook)
            drain_s = time.perf_counter() - began
            assert len(drained.sent) == len(reports) and len(receiver.tickets) == len(reports)
        n = len(reports)
        print(f"{n} reports of {size:,} bytes to a local webhook ({args.payload} payload):")
        print(f"  plain urllib POST loop: {plain_s:.2f} s ({n / plain_s:,.0f} reports/s)")
        print(f"  WebhookSink: {sink_s:.2f} s ({n / sink_s:,.0f} reports/s; {sink_s / plain_s:.2f}x the plain loop)")
        print(f"  receiver down: {len(spooled.spooled)} spooled in {spool_s:.2f} s; "
              f"melt deliver drained them in {drain_s:.2f} s ({n / drain_s:,.0f} reports/s), each once")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
