"""Shared fixtures: small generated bundles (no network, no ../shared needed)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from melt.core.bundle import MeltBundle
from melt.core.settings import SynthSettings
from synth.generate import generate

REPO = Path(__file__).resolve().parents[1]
MELT = [sys.executable, "-m", "melt.cli"]


def small_config(**overrides) -> SynthSettings:
    values = dict(seed=11, services=7, duration="50m", requests_per_minute=40.0, faults=1,
                  fault_types=["latency"], fault_duration="8m", warmup_fraction=0.5)
    values.update(overrides)
    return SynthSettings.of(**values)


@pytest.fixture(autouse=True)
def _earlier_tests_heap_frozen() -> Iterator[None]:
    """What earlier tests left alive is set aside from garbage collection while a test runs
    (``gc.freeze``): ``melt serve``'s steps collect garbage after each step, and in the suite's
    process a full collection would otherwise scan every test's leftovers each time (a minute
    of the suite). The test's own objects are collected as in a real process."""
    import gc

    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="session")
def tiny_bundle() -> MeltBundle:
    return generate(small_config())


@pytest.fixture(scope="session")
def tiny_dir(tiny_bundle: MeltBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bundle.write(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="session")
def tiny_models(tiny_bundle: MeltBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every detector fitted as ``melt detect --models all`` fits them on the tiny bundle (its
    training split), saved once for the tests that check what a run writes, not how it fits."""
    from melt.core.config import load_settings
    from melt.core.registry import resolve_models
    from melt.pipeline.fitting import fit_detectors, save_models, training_split

    settings = load_settings(env={})
    names, _ = resolve_models("all", tiny_bundle.signals())
    models = fit_detectors(training_split(tiny_bundle, settings.detect.train_fraction), names, settings, quiet=True)
    return save_models(models, tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="session")
def tiny_report(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real, valid incident report from the tiny bundle (``zscore,span_latency``)."""
    import json

    from click.testing import CliRunner

    from melt.cli import cli

    out = tmp_path_factory.mktemp("reports")
    result = CliRunner().invoke(cli, ["detect", "--data", str(tiny_dir), "--models", "zscore,span_latency",
                                      "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    return json.loads(next(out.glob("INC-*.json")).read_text())


def run_melt(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the CLI as a subprocess, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([*MELT, *args], capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=300)
