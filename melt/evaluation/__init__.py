"""Scoring detectors and incident reports against ground truth."""
