"""The example plugin, installed from its own pyproject, is picked up with no change to melt."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO, run_melt


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> str:
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(REPO / "examples" / "custom_detector")], check=True, timeout=300)
    return str(target)


def test_plugins_lists_the_example(installed) -> None:
    result = run_melt("plugins", env={"PYTHONPATH": installed})
    assert result.returncode == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.startswith("error_share"))
    assert row.split()[:3] == ["error_share", "logs", "melt-example-detector"]


def test_detect_runs_the_example(installed, tiny_dir, tmp_path) -> None:
    result = run_melt("detect", "--data", str(tiny_dir), "--models", "error_share,span_latency",
                      "--out", str(tmp_path), env={"PYTHONPATH": installed})
    assert result.returncode == 0, result.stderr
    assert "fitted error_share" in result.stderr and "scored error_share" in result.stderr


def test_the_example_uses_the_public_api_alone() -> None:
    """A plugin imports from ``melt`` itself, never from melt's internal modules."""
    source = (REPO / "examples" / "custom_detector" / "melt_example_detector" / "error_share.py").read_text()
    imports = [line for line in source.splitlines() if line.startswith(("from melt", "import melt"))]
    assert imports and all(line.startswith("from melt import ") for line in imports)


def test_public_names_load_lazily_and_are_the_core_ones() -> None:
    code = ("import sys, melt; assert 'pandas' not in sys.modules and 'melt.core.detector' not in sys.modules; "
            "from melt import Detector, MeltBundle, empty_scores, PluginError; "
            "from melt.core.detector import Detector as D; assert Detector is D; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr
