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
from melt.core.bundle import MeltBundle
from melt.core.errors import ConfigError

_DEFAULTS = GATGraphAutoencoderDetector.param_defaults()


@dataclass
class ModelConfig:
    """The seeds' ``ModelConfig`` fields; defaults are ``gat_gae``'s own."""

    epochs: int = _DEFAULTS["epochs"]
    learning_rate: float = _DEFAULTS["learning_rate"]
    latent_dim: int = _DEFAULTS["latent_dim"]
    hidden_dim: int = _DEFAULTS["hidden_dim"]
    gat_heads: int = _DEFAULTS["gat_heads"]
    batch_size: int = _DEFAULTS["batch_size"]
    loss_alpha: float = _DEFAULTS["loss_alpha"]
    patience: int = _DEFAULTS["patience"]
    lr_factor: float = _DEFAULTS["lr_factor"]
    lr_patience: int = _DEFAULTS["lr_patience"]
    aggregation: str = _DEFAULTS["aggregation"]
    device: str = _DEFAULTS["device"]
    seed: int = _DEFAULTS["seed"]

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
        table["calibrated_score"] = self.detector.calibrate(table["anomaly_score"].to_numpy())
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
