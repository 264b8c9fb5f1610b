"""What the torch detectors share: device choice, early stopping, and saving the network.

A torch detector keeps its network in ``network_``, builds it with ``_build(input_size)`` and says
its input size with ``_input_size()``; mixing in :class:`TorchNetworkMixin` (before ``Detector``)
saves the weights as ``network.pt`` next to the other learned state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np


def torch_device(name: str):
    """``auto`` picks a GPU when one is present; otherwise ``cpu`` or ``cuda`` as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


@contextmanager
def reproducible_threads(device: Any) -> Iterator[None]:
    """Train on CPU in one thread, then restore the thread count.

    With several threads, PyTorch's CPU kernels may split a reduction differently on the first
    call of a process than on later ones; the float sums then differ in the last bits, training
    amplifies that, and the same seed stops giving the same weights (house rule 2). Scoring is
    unaffected and keeps every thread.
    """
    import torch

    if getattr(device, "type", str(device)) != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class EarlyStopping:
    """Stop after ``patience`` epochs whose validation loss is not below ``best * (1 - min_gain) -
    min_delta``; keep the best weights."""

    def __init__(self, patience: int, min_gain: float = 0.0, min_delta: float = 0.0) -> None:
        self.patience, self.min_gain, self.min_delta = patience, min_gain, min_delta
        self.best, self.waited, self.best_state = float("inf"), 0, None

    def should_stop(self, loss: float, network: Any) -> bool:
        if loss < self.best * (1 - self.min_gain) - self.min_delta:
            self.best, self.waited = loss, 0
            self.best_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
            return False
        self.waited += 1
        return self.waited >= self.patience

    def restore(self, network: Any) -> None:
        if self.best_state is not None:
            network.load_state_dict(self.best_state)


class TorchNetworkMixin:
    """Persistence of ``network_``: left out of the joblib state, saved as a state_dict."""

    def learned_state(self) -> dict:
        state = super().learned_state()  # type: ignore[misc]
        state.pop("network_", None)
        return state

    def _save_state(self, root: Path) -> None:
        import torch

        super()._save_state(root)  # type: ignore[misc]
        torch.save(self.network_.state_dict(), root / "network.pt")  # type: ignore[attr-defined]

    def _load_state(self, root: Path) -> None:
        import torch

        super()._load_state(root)  # type: ignore[misc]
        self.network_ = self._build(self._input_size())  # type: ignore[attr-defined]
        self.network_.load_state_dict(torch.load(root / "network.pt", map_location="cpu", weights_only=True))


class HeldOutCalibrationMixin:
    """Calibrate on the scores of the trailing units ``fit`` held out (from ``holdout_start_`` on)."""

    def calibration_scores(self, bundle: Any) -> np.ndarray:
        """Scores of the held-out, later traces of the training data."""
        scores = self._checked(self.score(bundle))  # type: ignore[attr-defined]
        if self.holdout_start_ is None:  # type: ignore[attr-defined]
            return scores["score"].to_numpy()
        held_out = scores[scores["timestamp"] >= self.holdout_start_]  # type: ignore[attr-defined]
        return (held_out if len(held_out) else scores)["score"].to_numpy()
