"""``melt traces train|predict|evaluate|export``: the trace-anomaly seed tools' workflow over a
trace detector plugin (``gat_gae`` by default, or ``logtraceguard``), on span files or bundles.

The plugin is found through the registry like every detector; it must offer
``trace_scores(bundle, aggregation)`` (one row per trace with ``trace_id`` and ``score``). A
bundle directory also gives the detector the frames it reads besides spans (log lines for
``logtraceguard``); a span file gives spans alone.
"""

from __future__ import annotations

import inspect
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


def read_spans(path: str | Path, reads: tuple[str, ...] = ()) -> MeltBundle:
    """Spans from a parquet or CSV span file, or from a bundle directory (with the frames of
    ``reads`` it holds), as a validated bundle."""
    source = Path(path)
    if source.is_dir():
        return MeltBundle.read(source, signals=["traces", *reads])
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


def read_labels(spec: str | Path | None) -> list[str] | str | None:
    """``--labels``: ``truth`` (the bundle's truth.json fault windows), or a file of trace ids,
    one per line (blank lines and ``#`` comments skipped)."""
    if spec is None or str(spec) == "truth":
        return None if spec is None else "truth"
    source = Path(spec)
    if not source.is_file():
        raise BundleError(f"labels file not found: {source} (give a file of trace ids, one per line, or 'truth')")
    ids = [line.strip() for line in source.read_text().splitlines() if line.strip() and not line.startswith("#")]
    if not ids:
        raise BundleError(f"{source}: no trace ids (one per line)")
    return ids


def train(data: str | Path, output: str | Path, params: dict[str, Any], *, model: str = DEFAULT_MODEL,
          labels: str | Path | None = None, quiet: bool = False) -> Path:
    """Fit ``model`` on normal spans (and, for a detector that takes them, labelled faulty traces) and save it."""
    plugin = get_plugin(model)
    if not hasattr(plugin.cls, "trace_scores"):
        raise MeltError(f"detector '{model}' does not score whole traces (melt traces takes gat_gae or logtraceguard)")
    bundle = read_spans(data, plugin.cls.reads)
    detector = build_detector(model, params)
    known = read_labels(labels)
    log(f"training {model} on {bundle.traces['trace_id'].nunique():,} traces"
        + (f" ({'truth.json fault windows' if known == 'truth' else f'{len(known):,} labelled'} as faulty)" if known else ""),
        quiet)
    if known is None:
        detector.fit_calibrated(bundle)
    elif "labels" not in inspect.signature(detector.fit_calibrated).parameters:
        raise MeltError(f"detector '{model}' learns from normal traces only and takes no --labels (logtraceguard does)")
    else:
        detector.fit_calibrated(bundle, labels=known)
    return detector.save(output)


def export(model_dir: str | Path, output: str | Path) -> Path:
    """Write a trained trace model as TorchScript (detectors with an ``export`` method)."""
    detector = _load(model_dir)
    if not hasattr(detector, "export"):
        raise MeltError(f"detector '{detector.name}' has no TorchScript export (logtraceguard has)")
    return detector.export(output)


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
    detector = _load(model_dir)
    table = score_traces(detector, read_spans(data, detector.reads), aggregation, threshold)
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
    results: dict[str, Any] = {"model": str(model_dir), "detector": detector.name,
                               "aggregation": aggregation or getattr(detector, "aggregation", None),
                               "threshold": threshold, "datasets": {}}
    every = []
    for name, (normal_file, anomalous_file) in pairs.items():
        parts = [score_traces(detector, read_spans(f, detector.reads), aggregation, threshold).assign(label=label)
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


__all__ = ["read_spans", "read_labels", "train", "predict", "evaluate", "export", "score_traces"]
