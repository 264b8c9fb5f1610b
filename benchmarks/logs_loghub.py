"""Log template mining on loghub-2k: grouping and parsing accuracy, and throughput against plain drain3.

Usage: python benchmarks/logs_loghub.py DATA_DIR [--synthetic-hours 6]

DATA_DIR is loghub-2k (one folder per system with ``<S>_2k.log_structured.csv``). Drain runs on the
``Content`` column, as in the published evaluation. For each system it reports:
- GA, grouping accuracy: the share of lines whose predicted group holds exactly the lines of their
  labelled template (Zhu et al., ICSE-SEIP 2019; the figure the published Drain table gives);
- PA, parsing accuracy: the share of lines whose template text equals the labelled template;
with the per-system Drain settings of ``benchmarks/loghub_settings.yaml`` and with melt's single
default setting (config.yaml ``detectors.log_templates``).

Throughput: melt's ``TemplateMiner.fit`` (vectorised masking, one Drain call per distinct masked
line) against the plain loop, drain3's own ``TemplateMiner`` with the same masks calling
``add_log_message`` on every line, on the same lines. It checks that both give the same grouping.
The lines are all loghub systems, and a synthetic bundle's logs (``--synthetic-hours`` of the
default generator).
"""

from __future__ import annotations

import argparse
import re
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from detectors.logs.drain_tree import prefix_tree_drain
from detectors.logs.templates import DEFAULT_MASKS, TemplateMiner
from melt.core.settings import SynthSettings
from melt.evaluation.scoring import grouping_accuracy
from synth.generate import generate

PUBLISHED_DRAIN = {"HDFS": 0.9975, "Spark": 0.92, "Zookeeper": 0.9665, "OpenStack": 0.7325, "OpenSSH": 0.7875,
                   "HealthApp": 0.78, "Proxifier": 0.5265, "Android": 0.911}
SETTINGS = Path(__file__).with_name("loghub_settings.yaml")


def _normalise(template: str) -> str:
    text = re.sub(r"\s+", " ", str(template)).strip()
    return re.sub(r"(<\*>\s*)+", "<*> ", text).strip()


def parsing_accuracy(truth_templates: pd.Series, predicted_templates: pd.Series) -> float:
    return float((truth_templates.map(_normalise) == predicted_templates.map(_normalise)).mean())


def plain_drain3(lines: list[str], masks: list[list[str]], sim_th: float, depth: int, numeric: bool) -> np.ndarray:
    """The obvious baseline: drain3 with the same masks and tree, ``add_log_message`` on every line.

    The masks are applied with ``re.sub`` per line, as drain3's masker does, but here rather than
    through drain3's ``MaskingInstruction``: that one cannot express a back-reference (``\\1<NUM>``).
    """
    import re

    from drain3 import TemplateMiner as Drain3Miner
    from drain3.template_miner_config import TemplateMinerConfig

    config = TemplateMinerConfig()
    config.drain_sim_th, config.drain_depth = sim_th, depth
    config.parametrize_numeric_tokens = numeric
    config.masking_instructions = []
    miner = Drain3Miner(config=config)
    miner.drain = prefix_tree_drain(config, miner.profiler)
    compiled = [(re.compile(pattern), token) for pattern, token in masks]
    ids = []
    for line in lines:
        for pattern, token in compiled:
            line = pattern.sub(token, line)
        ids.append(miner.add_log_message(line)["cluster_id"])
    return np.array(ids)


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


def throughput(name: str, lines: pd.Series, masks: list[list[str]], sim_th: float, depth: int, numeric: bool,
               repeats: int = 5) -> str:
    plain_s, plain = best_of(repeats, lambda: plain_drain3(lines.astype(str).tolist(), masks, sim_th, depth, numeric))
    miners = []

    def fit() -> np.ndarray:
        miners.append(TemplateMiner(masks=masks, sim_th=sim_th, depth=depth, numeric_tokens=numeric))
        return miners[-1].fit(lines)

    fit_s, fast = best_of(repeats, fit)
    match_s, (matched, masked) = best_of(repeats, lambda: miners[-1].match(lines))
    n, distinct = len(lines), len(set(masked))
    return (f"| {name} | {n:,} | {distinct:,} | {n / plain_s:,.0f} | {n / fit_s:,.0f} | **{plain_s / fit_s:.1f}x** | "
            f"{n / match_s:,.0f} | {'yes' if same_grouping(plain, fast) else 'NO'} | "
            f"{'yes' if same_grouping(fast, matched) else 'NO'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--synthetic-hours", type=float, default=6.0)
    args = parser.parse_args()
    settings = yaml.safe_load(SETTINGS.read_text())
    print("| system | published Drain GA | melt GA (per-system settings) | melt PA (per-system) | melt GA (one default setting) | templates (labelled / found) |")
    print("|---|---|---|---|---|---|")
    frames, rows = {}, []
    for system, published in PUBLISHED_DRAIN.items():
        files = list((args.data / system).glob("*_2k.log_structured.csv"))
        if not files:
            sys.exit(f"{args.data / system}: no *_2k.log_structured.csv (is DATA_DIR loghub-2k?)")
        frame = pd.read_csv(files[0])
        frames[system] = frame
        s = settings[system]
        miner = TemplateMiner(masks=s["masks"], sim_th=s["sim_th"], depth=s["depth"], numeric_tokens=True)
        ids = miner.fit(frame["Content"])
        templates = pd.Series(ids).map(miner.templates())
        ga, pa = grouping_accuracy(frame["EventId"], ids), parsing_accuracy(frame["EventTemplate"], templates)
        default_ga = grouping_accuracy(frame["EventId"], TemplateMiner().fit(frame["Content"]))
        rows.append((ga, pa, default_ga, published))
        print(f"| {system} | {published:.4f} | {ga:.4f} ({ga - published:+.4f}) | {pa:.4f} | {default_ga:.4f} | "
              f"{frame['EventId'].nunique()} / {len(set(ids))} |")
    ga, pa, default_ga, published = (np.mean(c) for c in zip(*rows, strict=True))
    print(f"| **mean** | {published:.4f} | **{ga:.4f}** | {pa:.4f} | {default_ga:.4f} | |")

    print("\n| lines | count | distinct after masking | plain drain3 lines/s | melt fit lines/s | speed-up | melt match lines/s | same groups as plain | match = fit |")
    print("|---|---|---|---|---|---|---|---|---|")
    every = pd.concat([f["Content"] for f in frames.values()], ignore_index=True)
    print(throughput("loghub, all 8 systems", every, DEFAULT_MASKS, 0.4, 4, False))
    logs = generate(SynthSettings.of(seed=1, duration=f"{args.synthetic_hours}h", faults=0)).logs["message"]
    print(throughput(f"synthetic, {args.synthetic_hours:g} h default generator", logs, DEFAULT_MASKS, 0.4, 4, False))
    print(f"\npeak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")


if __name__ == "__main__":
    main()
