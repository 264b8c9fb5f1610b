"""Log template mining on loghub-2k: grouping and parsing accuracy, and throughput against plain drain3.

Usage: python benchmarks/logs_loghub.py DATA_DIR [--synthetic-hours 6]

DATA_DIR is loghub-2k (one folder per system with ``<S>_2k.log_structured.csv``). Parsers run on the
``Content`` column, as in the published evaluation. For each system it reports:
- GA, grouping accuracy: the share of lines whose predicted group holds exactly the lines of their
  labelled template (Zhu et al., ICSE-SEIP 2019; the figure the published Drain table gives);
- PA, parsing accuracy: the share of lines whose template text equals the labelled template, both
  normalised (``melt.evaluation.scoring.normalise_template``);
for melt's default parser (``shapes``, one setting for every system), for Drain with melt's old
single default setting (sim_th 0.4, depth 4, melt's masks), and, as the reference, for Drain with
the published per-system settings of ``benchmarks/loghub_settings.yaml``.

Throughput: melt's ``TemplateMiner.fit`` (vectorised masking, one parser call per distinct masked
line) against the plain loop, drain3's own ``TemplateMiner`` with the same masks calling
``add_log_message`` on every line, on the same lines. It checks that melt's fit groups the lines as
its own parser does when fed one line at a time (``re`` masks per line, no de-duplication), and
that matching the fitted lines gives the fitted groups. The lines are all loghub systems, and a
synthetic bundle's logs (``--synthetic-hours`` of the default generator).
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from detectors.logs.drain_tree import prefix_tree_drain
from detectors.logs.shapes import ShapeParser, line_shape
from detectors.logs.templates import DEFAULT_MASKS, TemplateMiner
from melt.core.settings import SynthSettings
from melt.evaluation.scoring import grouping_accuracy, parsing_accuracy
from synth.generate import generate

PUBLISHED_DRAIN = {"HDFS": 0.9975, "Spark": 0.92, "Zookeeper": 0.9665, "OpenStack": 0.7325, "OpenSSH": 0.7875,
                   "HealthApp": 0.78, "Proxifier": 0.5265, "Android": 0.911}
SETTINGS = Path(__file__).with_name("loghub_settings.yaml")


def plain_drain3(lines: list[str], masks: list[list[str]], sim_th: float, depth: int, numeric: bool) -> np.ndarray:
    """The obvious baseline: drain3 with the same masks and tree, ``add_log_message`` on every line.

    The masks are applied with ``re.sub`` per line, as drain3's masker does, but here rather than
    through drain3's ``MaskingInstruction``: that one cannot express a back-reference (``\\1<NUM>``).
    """
    from drain3 import TemplateMiner as Drain3Miner
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()
    config.drain_sim_th, config.drain_depth = sim_th, depth
    config.parametrize_numeric_tokens = numeric
    config.masking_instructions = []
    miner = Drain3Miner(config=config)
    miner.drain = prefix_tree_drain(config, miner.profiler)
    return np.array([miner.add_log_message(line)["cluster_id"] for line in masked_one_by_one(lines, masks)])


def shapes_line_by_line(lines: list[str], masks: list[list[str]]) -> np.ndarray:
    """melt's default parser fed one line at a time: ``re`` masks per line, every line learned, no
    de-duplication; the groups melt's vectorised ``fit`` must reproduce."""
    parser = ShapeParser()
    ids = [parser.learn(*line_shape(line)) for line in masked_one_by_one(lines, masks)]
    return np.array([parser.find(i) for i in ids])


def masked_one_by_one(lines: list[str], masks: list[list[str]]) -> Iterator[str]:
    """Each line trimmed and masked with Python's ``re``, one line at a time (the baselines' way)."""
    compiled = [(re.compile(pattern), token) for pattern, token in masks]
    for line in lines:
        line = line.strip()
        for pattern, token in compiled:
            line = pattern.sub(token, line)
        yield line


def same_grouping(a: np.ndarray, b: np.ndarray) -> bool:
    frame = pd.DataFrame({"a": a, "b": b})
    return bool((frame.groupby("a")["b"].nunique() == 1).all() and (frame.groupby("b")["a"].nunique() == 1).all())


def best_of(repeats: int, run) -> tuple[float, object]:
    """Fastest wall time of ``repeats`` runs (small inputs are noisy), and the last result."""
    times, result = [], None
    for _ in range(repeats):
        began = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - began)
    return min(times), result


def throughput(name: str, lines: pd.Series, repeats: int = 5) -> str:
    """Best of ``repeats`` after one untimed warm-up run of each (the first fit in a process pays for
    pyarrow's allocator and thread pool: 7x against 12-13x after it, on loghub)."""
    text = lines.astype(str).tolist()
    plain_drain3(text[:2000], DEFAULT_MASKS, 0.4, 4, False)
    TemplateMiner().fit(lines)
    plain_s, _ = best_of(repeats, lambda: plain_drain3(text, DEFAULT_MASKS, 0.4, 4, False))
    miners = []

    def fit() -> np.ndarray:
        miners.append(TemplateMiner())
        return miners[-1].fit(lines)

    fit_s, fast = best_of(repeats, fit)
    match_s, (matched, masked) = best_of(repeats, lambda: miners[-1].match(lines))
    one_by_one = shapes_line_by_line(text, DEFAULT_MASKS)
    n, distinct = len(lines), len(set(masked))
    return (f"| {name} | {n:,} | {distinct:,} | {n / plain_s:,.0f} | {n / fit_s:,.0f} | **{plain_s / fit_s:.1f}x** | "
            f"{n / match_s:,.0f} | {'yes' if same_grouping(one_by_one, fast) else 'NO'} | "
            f"{'yes' if same_grouping(fast, matched) else 'NO'} |")


def _scores(frame: pd.DataFrame, miner: TemplateMiner) -> tuple[float, float, int]:
    ids = miner.fit(frame["Content"])
    templates = pd.Series(ids).map(miner.templates())
    return grouping_accuracy(frame["EventId"], ids), parsing_accuracy(frame["EventTemplate"], templates), len(set(ids))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--synthetic-hours", type=float, default=6.0)
    args = parser.parse_args()
    settings = yaml.safe_load(SETTINGS.read_text())
    print("| system | published Drain GA (per-system settings) | melt Drain GA, PA (per-system settings) | "
          "melt Drain GA, PA (one setting: sim_th 0.4, depth 4) | **melt GA (one default setting)** | **melt PA** | "
          "templates (labelled / found) |")
    print("|---|---|---|---|---|---|---|")
    frames, rows = {}, []
    for system, published in PUBLISHED_DRAIN.items():
        files = list((args.data / system).glob("*_2k.log_structured.csv"))
        if not files:
            sys.exit(f"{args.data / system}: no *_2k.log_structured.csv (is DATA_DIR loghub-2k?)")
        frame = pd.read_csv(files[0])
        frames[system] = frame
        s = settings[system]
        ref_ga, ref_pa, _ = _scores(frame, TemplateMiner(masks=s["masks"], parser="drain", sim_th=s["sim_th"],
                                                         depth=s["depth"], numeric_tokens=True))
        old_ga, old_pa, _ = _scores(frame, TemplateMiner(parser="drain"))
        ga, pa, found = _scores(frame, TemplateMiner())
        rows.append((published, ref_ga, ref_pa, old_ga, old_pa, ga, pa))
        print(f"| {system} | {published:.4f} | {ref_ga:.4f}, {ref_pa:.4f} | {old_ga:.4f}, {old_pa:.4f} | "
              f"**{ga:.4f}** | **{pa:.4f}** | {frame['EventId'].nunique()} / {found} |")
    published, ref_ga, ref_pa, old_ga, old_pa, ga, pa = (np.mean(c) for c in zip(*rows, strict=True))
    print(f"| **mean** | {published:.4f} | {ref_ga:.4f}, {ref_pa:.4f} | {old_ga:.4f}, {old_pa:.4f} | **{ga:.4f}** | "
          f"**{pa:.4f}** | |")
    print(f"| **lowest** | {min(r[0] for r in rows):.4f} | {min(r[1] for r in rows):.4f} | "
          f"{min(r[3] for r in rows):.4f} | **{min(r[5] for r in rows):.4f}** | | |")

    print("\n| lines | count | distinct after masking | plain drain3 lines/s | melt fit lines/s | speed-up | "
          "melt match lines/s | same groups as one line at a time | match = fit |")
    print("|---|---|---|---|---|---|---|---|---|")
    every = pd.concat([f["Content"] for f in frames.values()], ignore_index=True)
    print(throughput("loghub, all 8 systems", every))
    logs = generate(SynthSettings.of(seed=1, duration=f"{args.synthetic_hours}h", faults=0)).logs["message"]
    print(throughput(f"synthetic, {args.synthetic_hours:g} h default generator", logs))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
