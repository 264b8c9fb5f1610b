"""LSTM autoencoder over sliding windows of a unit's metrics (Malhotra et al., 2016, "LSTM-based
encoder-decoder for multi-sensor anomaly detection"; the LSTM-AE of the SKAB leaderboard).

Each (service, instance) unit gives one window per timestamp: the last ``window`` rows of its
scaled metrics (padded with the unit's first row at its start). The encoder's last hidden state,
projected to a small code, is repeated and decoded back to the window. The score of a timestamp is
the squared reconstruction error of its row, averaged over metrics; the metrics with the largest
errors are the evidence. One model is shared by all units. The last ``validation_fraction`` of the
training period is held out for early stopping and for calibration, so thresholds do not come
from data the network has memorised. CPU by default, a GPU when one is present.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from detectors.metrics.matrix import (
    UNIT_KEYS,
    pool_scaler,
    sampled,
    scale,
    scorable_wide,
    score_frame,
    series_metric,
    series_scales,
    smooth,
    unit_codes,
    wide_metrics,
)
from detectors.metrics.surprise import Points, SurpriseMixin
from detectors.torch_model import EarlyStopping, TorchNetworkMixin, torch_device
from melt.core.bundle import MeltBundle
from melt.core.detector import Detector, empty_scores


def window_index(units: np.ndarray, window: int) -> np.ndarray:
    """rows x window matrix of row indices: each row's last ``window`` rows in its unit, padded at the start."""
    n = units.size
    rows = np.arange(n)
    first = pd.Series(rows).groupby(units, sort=False).transform("min").to_numpy()
    offsets = np.arange(window) - (window - 1)
    return np.maximum(rows[:, None] + offsets[None, :], first[:, None])


SALT = "melt-lstm-ae"  # the training windows' hash sample, apart from iforest's rows


class LSTMAutoencoder(TorchNetworkMixin, SurpriseMixin, Detector):
    """Sequence-to-sequence LSTM autoencoder; reconstruction error is the anomaly score.

    Args:
        window: rows per window.
        hidden: LSTM hidden size; ``latent`` the size of the code between encoder and decoder.
        epochs: maximum epochs; ``patience`` epochs without validation improvement stop training.
        batch_size, learning_rate: Adam settings.
        max_train_windows: about this many windows sampled for training, a hash sample of the rows
            (keeps big bundles to seconds per epoch; a quarter as many validate).
        validation_fraction: trailing share of the training period held out (early stopping, calibration).
        smooth_window: trailing mean of the score over this many rows of a unit (1 = off).
        expected_sigmas: half-width of ``expected_range`` in robust sigmas around the reconstruction.
        device: "auto" (GPU if present), "cpu" or "cuda".
        seed: seed of initialisation, sampling and shuffling.
        history: score each unit's smoothed reconstruction error as its surprise against the unit's
            own errors so far, starting from the held-out tail of training
            (:class:`~detectors.metrics.surprise.SurpriseMixin`); false = the calibrated score.
        adapt: an error joins that history once it is this old; ``None``: as soon as it leaves the
            smoothing window.
        alert_budget: alert episodes (surprise >= 4) a unit may raise per day of scoring; beyond that
            rate its scores are divided by ``(rate / alert_budget) ** 0.25``
            (:mod:`detectors.metrics.alert_budget`); ``None``: off.
    """

    name = "lstm_ae"
    signal = "metrics"
    partition = "service"
    series_names = tuple(UNIT_KEYS)

    def __init__(self, window: int = 10, hidden: int = 32, latent: int = 8, epochs: int = 40, patience: int = 4,
                 batch_size: int = 128, learning_rate: float = 3e-3, max_train_windows: int = 20000,
                 validation_fraction: float = 0.2, smooth_window: int = 3, expected_sigmas: float = 3.0,
                 device: str = "auto", seed: int = 0, history: bool = True,
                 adapt: str | None = "2h", alert_budget: float | None = 0.5) -> None:
        self.window = window
        self.hidden = hidden
        self.latent = latent
        self.epochs = epochs
        self.patience = patience
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_train_windows = max_train_windows
        self.validation_fraction = validation_fraction
        self.smooth_window = smooth_window
        self.expected_sigmas = expected_sigmas
        self.device = device
        self.seed = seed
        self.history = history
        self.adapt = adapt
        self.alert_budget = alert_budget

    # ------------------------------------------------------------------ model
    def _input_size(self) -> int:
        return len(self.features_)

    def _build(self, n_features: int):
        import torch
        from torch import nn

        class Network(nn.Module):
            def __init__(self, features: int, hidden: int, latent: int) -> None:
                super().__init__()
                self.encoder = nn.LSTM(features, hidden, batch_first=True)
                self.to_code = nn.Linear(hidden, latent)
                self.decoder = nn.LSTM(latent, hidden, batch_first=True)
                self.output = nn.Linear(hidden, features)

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                _, (h, _) = self.encoder(x)
                code = self.to_code(h[-1]).unsqueeze(1).expand(-1, x.size(1), -1)
                out, _ = self.decoder(code.contiguous())
                return self.output(out)

        torch.manual_seed(self.seed)
        return Network(n_features, self.hidden, self.latent)

    def _windows(self, wide: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        z = scale(wide, self.scaler_, self.features_)
        units = unit_codes(wide)
        return z[window_index(units, self.window)].astype(np.float32), z, units

    def _reconstruct(self, windows: np.ndarray) -> np.ndarray:
        import torch

        device = torch_device(self.device)
        self.network_.to(device).eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(windows), 4096):
                batch = torch.from_numpy(windows[start:start + 4096]).to(device)
                out.append(self.network_(batch).cpu().numpy())
        return np.concatenate(out) if out else np.zeros_like(windows)

    # ------------------------------------------------------------------ contract
    # Fitting runs as map/reduce rounds, whole (one part) or service by service on a Dask cluster
    # (``Detector.fit_calibrated_by_parts``); both learn the same network. A unit's windows lie in
    # its service, and the training windows are a hash sample of the rows (``sampled``), so every
    # part draws its share of the windows a whole fit draws.
    fit_rounds = 4  # the series' scales and time span; the rows before and in the tail; the sampled windows; the history
    trains_on_worker = True

    def fit_map(self, bundle: MeltBundle, step: int) -> object:
        frame = self.require(bundle)
        if step == 3:
            return self.history_sums(bundle)
        wide = wide_metrics(frame)
        times = wide.index.get_level_values("timestamp")
        if step == 0:
            return {"scales": series_scales(frame), "features": set(series_metric(frame).unique()),
                    "span": (times.min(), times.max()) if len(times) else None}
        held_out = np.asarray(times >= self.holdout_start_)
        if step == 1:
            return int((~held_out).sum()), int(held_out.sum())
        keys = wide.index.to_frame(index=False)
        chosen = np.where(held_out, sampled(keys, self.validation_share_, self.seed, SALT),
                          sampled(keys, self.train_share_, self.seed, SALT))
        windows = self._windows(wide)[0]
        return keys[chosen].reset_index(drop=True), windows[chosen], held_out[chosen]

    def fit_reduce(self, step: int, parts: list) -> None:
        if step == 0:
            self.scaler_ = pool_scaler([p["scales"] for p in parts])
            self.features_ = sorted(set().union(*(p["features"] for p in parts)))
            spans = [p["span"] for p in parts if p["span"] is not None]
            first, last = min(s[0] for s in spans), max(s[1] for s in spans)
            self.holdout_start_ = first + (last - first) * (1 - self.validation_fraction)
        elif step == 1:
            before, tail = sum(p[0] for p in parts), sum(p[1] for p in parts)
            self.train_share_ = min(1.0, self.max_train_windows / max(before, 1))
            self.validation_share_ = min(1.0, max(self.max_train_windows // 4, 1) / max(tail, 1))
        elif step == 2:
            keys = pd.concat([k for k, _, _ in parts], ignore_index=True)
            order = keys.sort_values(list(keys.columns), kind="stable").index.to_numpy()
            windows = np.concatenate([w for _, w, _ in parts])[order]
            held_out = np.concatenate([h for _, _, h in parts])[order]
            del self.train_share_, self.validation_share_
            self._train(windows[~held_out], windows[held_out])
        else:
            self.pool_history([p for p in parts if p is not None])

    def _train(self, train: np.ndarray, validation: np.ndarray) -> None:
        """Fit the network on the training windows, stopping early on the validation windows."""
        import torch

        device = torch_device(self.device)
        network = self._build(len(self.features_)).to(device)
        optimiser = torch.optim.Adam(network.parameters(), lr=self.learning_rate)
        x_train = torch.from_numpy(train).to(device)
        x_val = torch.from_numpy(validation).to(device) if len(validation) else x_train
        generator = torch.Generator().manual_seed(self.seed)
        stopper = EarlyStopping(self.patience, min_delta=1e-5)
        self.history_: list[tuple[float, float]] = []
        for _ in range(self.epochs):
            network.train()
            order = torch.randperm(len(x_train), generator=generator)
            total = 0.0
            for start in range(0, len(order), self.batch_size):
                batch = x_train[order[start:start + self.batch_size].to(device)]
                optimiser.zero_grad()
                loss = torch.mean((network(batch) - batch) ** 2)
                loss.backward()
                optimiser.step()
                total += float(loss.detach()) * len(batch)
            network.eval()
            with torch.no_grad():
                val = float(torch.mean((network(x_val) - x_val) ** 2))
            self.history_.append((total / max(len(x_train), 1), val))
            if stopper.should_stop(val, network):
                break
        stopper.restore(network)
        self.network_ = network.cpu()

    def points(self, bundle: MeltBundle) -> Points | None:
        """Each (service, instance, timestamp) row's reconstruction error, unsmoothed."""
        wide = scorable_wide(self.require(bundle), self.scaler_)
        return None if wide.empty else self._reconstruction(wide)[0]

    def prior_points(self, bundle: MeltBundle) -> Points | None:
        """The held-out tail of training: the network fits the rest closely (as for calibration)."""
        points = self.points(bundle)
        if points is None:
            return None
        held_out = (points.timestamps >= self.holdout_start_).to_numpy()
        if not held_out.any():
            return points
        return points.where(held_out)

    def _reconstruction(self, wide: pd.DataFrame) -> tuple[Points, np.ndarray, np.ndarray]:
        """The rows' point scores, their squared errors per metric, and the reconstruction."""
        windows, z, units = self._windows(wide)
        reconstruction = self._reconstruct(windows)[:, -1, :]
        error = (reconstruction - z) ** 2
        points = Points.of_units(error.mean(axis=1), units, wide)
        return points, error, reconstruction

    def calibration_scores(self, bundle: MeltBundle) -> np.ndarray:
        """Scores of the held-out tail of the training period (not seen by the optimiser)."""
        scores = self._checked(self.score(bundle))
        held_out = scores[scores["timestamp"] >= self.holdout_start_]
        return (held_out if len(held_out) else scores)["score"].to_numpy()

    def score(self, bundle: MeltBundle) -> pd.DataFrame:
        wide = scorable_wide(self.require(bundle), self.scaler_)
        if wide.empty:
            return empty_scores()
        points, error, reconstruction = self._reconstruction(wide)
        raw = self.surprised(points) if getattr(self, "score_history_", None) is not None else \
            smooth(points.deviation, points.series, self.smooth_window)
        return score_frame(self.name, wide, raw, error, self.features_, self.scaler_, reconstruction, self.expected_sigmas)
