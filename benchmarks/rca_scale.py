"""Root-cause ranking time per incident on a large dependency graph (default 100 services).

Generates a synthetic bundle with ``--services`` services, scores it with ``--models``, groups the
incidents, then times, for each incident, melt's ranking plus report (``report_incidents``: terms,
paths, evidence, explanation, baselines) against the obvious baseline measured in the same run:
plain personalized PageRank over the same graph and scores (``rca.baselines.pagerank_ranking``).
Each incident is timed ``--repeats`` times; the median is reported.

    .venv/bin/python benchmarks/rca_scale.py --services 100
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.timing import median_time  # noqa: E402
from melt.core.config import default_settings  # noqa: E402
from melt.core.settings import SynthSettings  # noqa: E402
from melt.incidents.ensemble import ALERT_SIGNALS, group_incidents  # noqa: E402
from melt.pipeline.batch import report_incidents  # noqa: E402
from melt.pipeline.fitting import fit_detectors, score_all, training_split  # noqa: E402
from rca.baselines import loudest, pagerank_ranking  # noqa: E402
from rca.graph import dependency_graph  # noqa: E402
from rca.rank import rank_root_causes  # noqa: E402
from synth.generate import generate  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--services", type=int, default=100)
    parser.add_argument("--duration", default="2h")
    parser.add_argument("--faults", type=int, default=4)
    parser.add_argument("--models", default="zscore,log_patterns,span_latency")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    config = default_settings()
    began = time.perf_counter()
    bundle = generate(SynthSettings.of(seed=args.seed, services=args.services, duration=args.duration, faults=args.faults))
    with tempfile.TemporaryDirectory() as tmp:  # written and read back, as `melt detect` would see it
        bundle.write(Path(tmp) / "data")
    print(f"generated {len(bundle.traces)} spans, {len(bundle.logs)} logs in {time.perf_counter() - began:.1f}s")
    models = fit_detectors(training_split(bundle, config.detect.train_fraction), args.models.split(","),
                           config, quiet=True)
    signal_of = {name: model.signal for name, model in models.items()}
    scores = score_all(models, bundle, quiet=True)
    graph = dependency_graph(bundle.traces)
    incidents = group_incidents(scores, signal_of, config.ensemble, graph)
    for incident in incidents:
        print(f"  {incident.id}: {incident.start} .. {incident.end}, {len(incident.services)} services")
    print(f"graph: {graph.number_of_nodes()} services, {graph.number_of_edges()} edges; "
          f"{len(scores)} score rows; {len(incidents)} incidents")
    if not incidents:
        sys.exit("no incidents to rank")
    threshold = config.ensemble.threshold
    timings: dict[str, list[float]] = {"ranking": [], "report": [], "pagerank": []}
    rows = []
    for incident in incidents:
        def baseline(i=incident) -> list[str]:
            window = scores[(scores["timestamp"] >= i.start) & (scores["timestamp"] < i.end)
                            & scores["detector"].map(signal_of).isin(ALERT_SIGNALS)]
            return pagerank_ranking(graph, loudest(window, None))

        timings["ranking"].append(median_time(
            lambda i=incident: rank_root_causes(i, scores, graph, signal_of, config.rca, threshold), args.repeats))
        timings["report"].append(median_time(
            lambda i=incident: report_incidents([i], scores, bundle, signal_of, config, graph), args.repeats))
        timings["pagerank"].append(median_time(baseline, args.repeats))
        rows.append(int(((scores["timestamp"] >= incident.start) & (scores["timestamp"] < incident.end)).sum()))
    ms = {name: 1000 * statistics.mean(values) for name, values in timings.items()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"per incident (mean of medians over {len(incidents)} incidents, {statistics.mean(rows):.0f} score rows each):")
    print(f"  melt ranking (rank_root_causes): {ms['ranking']:.1f} ms")
    print(f"  melt ranking + evidence + explanation + baselines (report_incidents): {ms['report']:.1f} ms")
    print(f"  plain PageRank baseline from the same rows: {ms['pagerank']:.1f} ms "
          f"(melt ranking / PageRank = {ms['ranking'] / ms['pagerank']:.1f}x)")
    print(f"peak RSS {peak:.0f} MB")


if __name__ == "__main__":
    main()
