"""What the torch detectors share: device choice, early stopping, and saving the network.

A torch detector keeps its network in ``network_``, builds it with ``_build(input_size)`` and says
its input size with ``_input_size()``; mixing in :class:`TorchNetworkMixin` (before ``Detector``)
saves the weights as ``network.pt`` next to the other learned state.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def torch_device(name: str):
    """``auto`` picks a GPU when one is present; otherwise ``cpu`` or ``cuda`` as given."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
