"""Entry-point discovery, including a plugin that fails to import."""

from __future__ import annotations

from pathlib import Path

import pytest

from melt.core.errors import PluginError
from melt.core.registry import discover, get_plugin, resolve_models
from tests.conftest import run_melt

BUILTIN = {"zscore": "metrics", "log_templates": "logs", "span_latency": "traces", "change_events": "events"}


def fake_distribution(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> Path:
    """A dist-info on a path entry: how an installed package registers entry points."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (info / "entry_points.txt").write_text(f"[melt.detectors]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)
    return root


def test_builtins_are_discovered_with_signal_and_distribution() -> None:
    loaded, _ = discover()
    for name, signal in BUILTIN.items():
        assert loaded[name].signal == signal
        assert loaded[name].distribution == "melt-rca"


def test_unknown_detector_suggests_a_name() -> None:
    with pytest.raises(PluginError, match="unknown detector 'zscor' \\(did you mean 'zscore'\\?\\)"):
        get_plugin("zscor")


def test_resolve_all_skips_detectors_without_their_signal() -> None:
    chosen, skipped = resolve_models("all", ["metrics"])
    assert "zscore" in chosen and "span_latency" not in chosen
    span_latency = [s for s in skipped if s.detector == "span_latency"]
    assert span_latency and str(span_latency[0]).startswith("span_latency") and not span_latency[0].warn
    with pytest.raises(PluginError, match="needs traces"):
        resolve_models("span_latency", ["metrics"])


def test_broken_plugin_is_listed_apart_with_its_reason(tmp_path) -> None:
    root = fake_distribution(
        tmp_path, "broken_plugin",
        {"broken": "broken_mod:Detector", "notadetector": "plain_mod:Thing"},
        {"broken_mod": "import a_module_that_does_not_exist\n", "plain_mod": "class Thing:\n    pass\n"},
    )
    result = run_melt("plugins", env={"PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr
    listed, _, failed = result.stdout.partition("failed to load:")
    assert "zscore" in listed and "broken" not in listed
    assert "broken (broken_plugin, broken_mod:Detector): ModuleNotFoundError: No module named 'a_module_that_does_not_exist'" in failed
    assert "notadetector (broken_plugin, plain_mod:Thing): not a subclass of melt.detector.Detector" in failed
    result = run_melt("detect", "--data", ".", "--models", "broken", "--out", str(tmp_path / "o"),
                      env={"PYTHONPATH": str(root)})
    assert result.returncode == 2
