"""``melt traces train|predict|evaluate``: the trace-anomaly seed tools' workflow over a trace
detector plugin (``gat_gae`` by default), on span files or bundles.

The plugin is found through the registry like every detector; it must offer
``trace_scores(bundle, aggregation)`` (one row per trace with ``trace_id`` and ``score``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from melt.core.bundle import MeltBundle
from melt.core.errors import BundleError, MeltError
from melt.core.progress import log
from melt.core.registry import build_detector, get_plugin
from melt.evaluation.binary import binary_evaluation, plot_evaluation

DEFAULT_MODEL = "gat_gae"


def read_spans(path: str | Path) -> MeltBundle:
    """Spans from a parquet or CSV span file, or from a bundle directory, as a validated bundle."""
    source = Path(path)
    if source.is_dir():
        return MeltBundle.read(source, signals=["traces"])
    if not source.is_file():
        raise BundleError(f"span file not found: {source}")
    try:
        frame = pd.read_csv(source) if source.suffix == ".csv" else pd.read_parquet(source)
    except Exception as exc:  # pyarrow and pandas raise many types for a broken file
        raise BundleError(f"{source}: cannot read spans ({str(exc).splitlines()[0][:160]})") from None
    try:
        return MeltBundle(traces=frame)
    except BundleError as exc:
        raise BundleError(f"{source}: {exc}") from None


def train(data: str | Path, output: str | Path, params: dict[str, Any], *, model: str = DEFAULT_MODEL,
          quiet: bool = False) -> Path:
    """Fit ``model`` on normal spans and save it to ``output``."""
    bundle = read_spans(data)
    detector = build_detector(model, params)
    log(f"training {model} on {bundle.traces['trace_id'].nunique():,} traces", quiet)
    detector.fit_calibrated(bundle)
    return detector.save(output)


def _load(model_dir: str | Path) -> Any:
    root = Path(model_dir)
    manifest = root / "manifest.json"
    if not manifest.is_file():
        raise BundleError(f"{root}: not a saved trace model (no manifest.json; create one with 'melt traces train')")
    name = json.loads(manifest.read_text()).get("detector", DEFAULT_MODEL)
    detector = get_plugin(name).cls.load(root)
    if not hasattr(detector, "trace_scores"):
        raise MeltError(f"detector '{name}' does not score whole traces")
    return detector


def score_traces(detector: Any, bundle: MeltBundle, aggregation: str | None, threshold: float) -> pd.DataFrame:
    """One row per trace: raw and calibrated score, the decision, the attributed service."""
    table, _, _ = detector.trace_scores(bundle, aggregation=aggregation)
    table = table.rename(columns={"score": "anomaly_score"})
    table["calibrated_score"] = detector.calibrate(table["anomaly_score"].to_numpy())
    table["is_anomaly"] = table["calibrated_score"] >= threshold
    return table


def predict(model_dir: str | Path, data: str | Path, output: str | Path, *, aggregation: str | None = None,
            threshold: float = 4.0) -> pd.DataFrame:
    """Score every trace of ``data`` and write them to ``output`` (CSV)."""
    table = score_traces(_load(model_dir), read_spans(data), aggregation, threshold)
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(output, index=False)
    return table


def evaluate(model_dir: str | Path, output: str | Path, *, normal: str | Path | None = None,
             anomalous: str | Path | None = None, test_dir: str | Path | None = None,
             aggregation: str | None = None, threshold: float = 4.0) -> dict[str, Any]:
    """Evaluate on one normal/anomalous pair or on every ``dataset*/`` of ``test_dir``.

    Each dataset holds ``normal_traces.parquet`` and ``abnormal_traces.parquet``. Writes
    ``evaluation_results.json`` and the PNG plots (per dataset, and for all of them together).
    """
    detector = _load(model_dir)
    if test_dir is not None:
        pairs = {d.name: (d / "normal_traces.parquet", d / "abnormal_traces.parquet")
                 for d in sorted(Path(test_dir).glob("dataset*")) if d.is_dir()}
        if not pairs:
            raise BundleError(f"{test_dir}: no dataset*/ directory (each with normal_traces.parquet and "
                              "abnormal_traces.parquet)")
    elif normal is not None and anomalous is not None:
        pairs = {"data": (Path(normal), Path(anomalous))}
    else:
        raise MeltError("give --normal-data and --anomaly-data, or --test-dir")
    root = Path(output)
    results: dict[str, Any] = {"model": str(model_dir), "aggregation": aggregation or detector.aggregation,
                               "threshold": threshold, "datasets": {}}
    every = []
    for name, (normal_file, anomalous_file) in pairs.items():
        parts = [score_traces(detector, read_spans(f), aggregation, threshold).assign(label=label)
                 for f, label in ((normal_file, 0), (anomalous_file, 1))]
        table = pd.concat(parts, ignore_index=True)
        every.append(table)
        results["datasets"][name] = _evaluate_table(table, root / name if len(pairs) > 1 else root, name)
    if len(pairs) > 1:
        results["overall"] = _evaluate_table(pd.concat(every, ignore_index=True), root, "all datasets")
    root.mkdir(parents=True, exist_ok=True)
    (root / "evaluation_results.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


def _evaluate_table(table: pd.DataFrame, out_dir: Path, title: str) -> dict[str, Any]:
    scores, labels = table["anomaly_score"].to_numpy(), table["label"].to_numpy()
    flagged = table["is_anomaly"].to_numpy(dtype=bool)
    metrics = binary_evaluation(scores, labels, flagged)
    metrics["plots"] = [str(p) for p in plot_evaluation(scores, labels, flagged, out_dir, title)]
    metrics["traces"] = {"normal": int((labels == 0).sum()), "anomalous": int((labels == 1).sum())}
    return metrics


__all__ = ["read_spans", "train", "predict", "evaluate", "score_traces"]
