"""The seed trace-anomaly tools' API over ``gat_gae``: ``TraceAnomalyDetector(config).fit(df)``,
``.predict_score(df)``, ``.save(dir)``, ``.load(dir)``, ``.get_model_info()``.

Users of those tools keep their scripts: a span DataFrame in (the bundle's traces schema, which is
their span file's), one score per trace out. Everything else is the ``gat_gae`` plugin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Self

import pandas as pd

from detectors.traces.gat_gae import GATGraphAutoencoderDetector
from melt.bundle import MeltBundle
from melt.errors import ConfigError


@dataclass
class ModelConfig:
    """The seeds' ``ModelConfig`` fields, mapped onto ``gat_gae``'s parameters."""

    epochs: int = 30
    learning_rate: float = 3e-3
    latent_dim: int = 16
    hidden_dim: int = 32
    gat_heads: int = 4
    batch_size: int = 128
    loss_alpha: float = 0.5
    patience: int = 5
    lr_factor: float = 0.5
    lr_patience: int = 2
    aggregation: str = "max"
    device: str = "auto"
    seed: int = 0

    @classmethod
    def from_any(cls, config: ModelConfig | dict[str, Any] | None) -> ModelConfig:
        """A config from a ``ModelConfig``, a dict (unknown keys are an error) or None (defaults)."""
        if config is None or isinstance(config, ModelConfig):
            return config or cls()
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"ModelConfig: unknown key '{unknown[0]}' (known: {', '.join(sorted(known))})")
        return cls(**config)


class TraceAnomalyDetector:
    """Trace-level anomaly scores from a GAT graph autoencoder, with the seed tools' methods.

    Args:
        config: a :class:`ModelConfig`, a dict of its fields, or None for the defaults.
    """

    def __init__(self, config: ModelConfig | dict[str, Any] | None = None) -> None:
        self.config = ModelConfig.from_any(config)
        self.detector = GATGraphAutoencoderDetector(**asdict(self.config))

    def fit(self, df: pd.DataFrame) -> Self:
        """Train on normal spans (one row per span)."""
        self.detector.fit_calibrated(MeltBundle(traces=df))
        return self

    def predict_score(self, df: pd.DataFrame, aggregation: str | None = None) -> pd.DataFrame:
        """One row per trace: ``trace_id``, ``anomaly_score`` (reconstruction error), ``calibrated_score``,
        ``service`` (worst-reconstructed), ``start_time`` and ``span_count``."""
        table, _, _ = self.detector.trace_scores(MeltBundle(traces=df), aggregation=aggregation)
        table = table.rename(columns={"score": "anomaly_score"})
        table["calibrated_score"] = self.detector.calibrator_.transform(table["anomaly_score"].to_numpy())
        return table[["trace_id", "anomaly_score", "calibrated_score", "service", "start_time", "span_count"]]

    def save(self, directory: str | Path) -> Path:
        """Save as a melt model directory (manifest, parameters, state, network)."""
        return self.detector.save(directory)

    @classmethod
    def load(cls, directory: str | Path) -> TraceAnomalyDetector:
        detector = GATGraphAutoencoderDetector.load(directory)
        known = {f.name for f in fields(ModelConfig)}
        out = cls({k: v for k, v in detector.get_params().items() if k in known})
        out.detector = detector
        return out

    def get_model_info(self) -> dict[str, Any]:
        """Configuration, vocabulary sizes, parameter count and training history."""
        detector = self.detector
        fitted = getattr(detector, "network_", None) is not None
        return {
            "model": "gat_gae", "config": asdict(self.config), "fitted": fitted,
            "services": len(detector.services_) if fitted else None,
            "operations": len(detector.operations_) if fitted else None,
            "parameters": sum(p.numel() for p in detector.network_.parameters()) if fitted else None,
            "epochs_run": len(detector.history_) if fitted else 0,
            "history": [{"train_loss": t, "validation_loss": v, "learning_rate": lr}
                        for t, v, lr in getattr(detector, "history_", [])],
        }
