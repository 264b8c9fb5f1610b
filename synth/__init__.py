"""Synthetic MELT data: topology, workload, fault injection and propagation, ground truth."""

from synth.generate import generate

__all__ = ["generate"]
