"""Scoring a detector against labelled normal and anomalous units: metrics and plots.

``binary_evaluation`` gives what the trace-anomaly seed tools report (ROC AUC, precision, recall,
F1, specificity, the separation ratio of mean anomalous to mean normal score, and score
statistics per class); ``plot_evaluation`` draws the ROC and PR curves, the confusion matrix and
the score distributions as PNG files (matplotlib, Agg backend, no display needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from melt.core.errors import MeltError
from melt.evaluation.scoring import pointwise


def _stats(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"count": 0}
    return {"count": int(values.size), "mean": float(values.mean()), "std": float(values.std()),
            "min": float(values.min()), "p50": float(np.percentile(values, 50)),
            "p95": float(np.percentile(values, 95)), "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def binary_evaluation(scores: np.ndarray, labels: np.ndarray, flagged: np.ndarray) -> dict[str, Any]:
    """Metrics of ``scores`` (higher = more anomalous) against ``labels`` (1 = anomalous).

    Args:
        scores: the ranking score of each unit (ROC AUC, average precision, statistics).
        labels: 1 for anomalous units, 0 for normal ones; both classes must be present.
        flagged: the detector's decision per unit (precision, recall, F1, specificity).

    Raises:
        MeltError: a class is missing.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    scores, labels = np.asarray(scores, float), np.asarray(labels, int)
    if labels.min(initial=1) == labels.max(initial=0):
        raise MeltError("evaluation needs both normal and anomalous units (one class is empty)")
    decisions = pointwise(labels, flagged)
    normal, anomalous = scores[labels == 0], scores[labels == 1]
    return {
        "roc_auc": float(roc_auc_score(labels, scores)),
        "average_precision": float(average_precision_score(labels, scores)),
        "precision": decisions["precision"], "recall": decisions["recall"], "f1": decisions["f1"],
        "specificity": 1.0 - decisions["far"],
        "separation_ratio": float(anomalous.mean() / normal.mean()) if normal.mean() > 0 else None,
        "confusion_matrix": decisions["confusion_matrix"],
        "scores": {"normal": _stats(normal), "anomalous": _stats(anomalous)},
    }


def plot_evaluation(scores: np.ndarray, labels: np.ndarray, flagged: np.ndarray, out_dir: str | Path,
                    title: str = "") -> list[Path]:
    """Write roc_curve.png, pr_curve.png, confusion_matrix.png and score_distribution.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import precision_recall_curve, roc_curve

    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    labels = np.asarray(labels, int)
    written = []

    def save(figure: Any, name: str) -> None:
        figure.tight_layout()
        figure.savefig(root / name, dpi=110)
        plt.close(figure)
        written.append(root / name)

    fpr, tpr, _ = roc_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.plot(fpr, tpr)
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC {title}".strip())
    save(figure, "roc_curve.png")

    precision, recall, _ = precision_recall_curve(labels, scores)
    figure, axes = plt.subplots(figsize=(4.5, 4))
    axes.plot(recall, precision)
    axes.set(xlabel="recall", ylabel="precision", title=f"precision-recall {title}".strip())
    save(figure, "pr_curve.png")

    counts = pointwise(labels, flagged)["confusion_matrix"]
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]])
    figure, axes = plt.subplots(figsize=(4, 3.6))
    axes.imshow(matrix, cmap="Blues")
    for (row, column), value in np.ndenumerate(matrix):
        axes.text(column, row, str(value), ha="center", va="center")
    axes.set(xticks=[0, 1], yticks=[0, 1], xticklabels=["normal", "anomalous"], yticklabels=["normal", "anomalous"],
             xlabel="predicted", ylabel="true", title="confusion matrix")
    save(figure, "confusion_matrix.png")

    figure, axes = plt.subplots(figsize=(5, 3.6))
    bins = np.histogram_bin_edges(scores, bins=50)
    axes.hist(np.asarray(scores)[labels == 0], bins=bins, alpha=0.6, label="normal", density=True)
    axes.hist(np.asarray(scores)[labels == 1], bins=bins, alpha=0.6, label="anomalous", density=True)
    axes.set(xlabel="anomaly score", ylabel="density", title="score distribution")
    axes.legend()
    save(figure, "score_distribution.png")
    return written
