"""Synthetic MELT data: topology, workload, fault injection and propagation, ground truth."""

from synth.generate import SynthConfig, generate

__all__ = ["SynthConfig", "generate"]
