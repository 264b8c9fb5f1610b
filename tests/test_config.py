"""config.yaml matches the code defaults; bad keys and types fail with one line naming the key."""

from __future__ import annotations

import pytest
import yaml

from melt.core.config import default_config, load_config
from melt.core.errors import ConfigError
from melt.core.registry import build_detector, discover
from tests.conftest import REPO


def test_top_level_config_yaml_equals_code_defaults() -> None:
    shipped = load_config(REPO / "config.yaml", env={})
    expected = default_config()
    expected["detectors"] = shipped["detectors"]
    assert shipped == expected


def test_config_yaml_documents_every_builtin_detector_parameter() -> None:
    documented = yaml.safe_load((REPO / "config.yaml").read_text())["detectors"]
    loaded, _ = discover()
    for name, info in loaded.items():
        if info.distribution != "melt-rca":
            continue
        assert documented[name] == info.cls.param_defaults(), name


def write(tmp_path, text: str):
    file = tmp_path / "c.yaml"
    file.write_text(text)
    return file


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ensemble:\n  treshold: 3\n", "unknown key 'ensemble.treshold' (did you mean 'ensemble.threshold'?)"),
        ("ensembel: {}\n", "unknown key 'ensembel' (did you mean 'ensemble'?)"),
        ("ensemble:\n  threshold: high\n", "key 'ensemble.threshold' must be a number"),
        ("synth:\n  services: 2.5\n", "key 'synth.services' must be an integer"),
        ("ensemble:\n  merge_gap: soon\n", "key 'ensemble.merge_gap': 'soon' is not a duration"),
        ("ensemble:\n  combiner: median\n", "key 'ensemble.combiner' must be one of max, mean, weighted"),
        ("ensemble: [1, 2]\n", "section 'ensemble' must be a mapping"),
        ("ensemble: {threshold: 3\n", "not valid YAML at line"),
    ],
)
def test_bad_config_fails_naming_the_key(tmp_path, text, message) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), env={})
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_partial_file_keeps_defaults_and_env_overrides(tmp_path) -> None:
    config = load_config(write(tmp_path, "ensemble:\n  threshold: 3\n"), env={"MELT_LOG_LEVEL": "debug"})
    assert config["ensemble"]["threshold"] == 3.0
    assert config["ensemble"]["combiner"] == "max"
    assert config["log_level"] == "DEBUG"
    config = load_config(write(tmp_path, "{}\n"), env={"MELT_THRESHOLD": "5.5", "MELT_LLM_API_KEY_ENV": "MY_KEY"})
    assert config["ensemble"]["threshold"] == 5.5
    assert config["explain"]["openai"]["api_key_env"] == "MY_KEY"
    with pytest.raises(ConfigError, match="MELT_THRESHOLD must be a number"):
        load_config(write(tmp_path, "{}\n"), env={"MELT_THRESHOLD": "lots"})


def test_detector_parameters_are_checked_against_the_plugin() -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'detectors.zscore.expected_sigma' \(did you mean 'expected_sigmas'"):
        build_detector("zscore", {"expected_sigma": 2})
    with pytest.raises(ConfigError, match="key 'detectors.zscore.min_points' must be int"):
        build_detector("zscore", {"min_points": "ten"})
    assert build_detector("zscore", {"min_points": 4}).min_points == 4


def test_missing_config_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "absent.yaml", env={})


def test_settings_are_parsed_once_into_typed_sections() -> None:
    import re

    import pandas as pd

    from melt.core.config import load_settings

    settings = load_settings(REPO / "config.yaml", env={})
    assert settings.rca.lookback == pd.Timedelta("5min") and settings.ensemble.merge_gap == pd.Timedelta("3min")
    assert isinstance(settings.rca.resource_metrics, re.Pattern) and settings.rca.resource_metrics.search("CpuUsageRate(%)")
    assert settings.detect.retrain_every is None and settings.imports.nezha.service_regex.groupindex == {"service": 1}
    changed = settings.with_overrides({"detect.retrain_every": "10m", "explain.provider": None})
    assert changed.detect.retrain_every == pd.Timedelta("10min") and changed.explain.provider == "template"
    assert settings.detect.retrain_every is None  # the original is unchanged (frozen)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ("ensemble:\n  threshold: .nan\n", {}, "key 'ensemble.threshold' must be a finite number"),
        ("ensemble:\n  threshold: .inf\n", {}, "key 'ensemble.threshold' must be a finite number"),
        ("{}\n", {"MELT_THRESHOLD": "-1"}, "key 'ensemble.threshold' must be > 0"),
        ("{}\n", {"MELT_THRESHOLD": "nan"}, "key 'ensemble.threshold' must be a finite number"),
        ("detect:\n  train_fraction: 1.5\n", {}, "key 'detect.train_fraction' must be <= 1"),
        ("detect:\n  train_fraction: 0\n", {}, "key 'detect.train_fraction' must be > 0"),
        ("rca:\n  top_k: -1\n", {}, "key 'rca.top_k' must be >= 1"),
        ("rca:\n  pagerank_alpha: 1.7\n", {}, "key 'rca.pagerank_alpha' must be < 1"),
        ("rca:\n  resource_metrics: 'cpu(|'\n", {}, "key 'rca.resource_metrics' is not a valid regex"),
        ("ensemble:\n  weights: {zscore: -2}\n", {}, "key 'ensemble.weights.zscore' must be >= 0"),
        ("ensemble:\n  weights: {zscore: heavy}\n", {}, "key 'ensemble.weights.zscore' must be a number"),
        ("explain:\n  openai:\n    timeout: -1\n", {}, "key 'explain.openai.timeout' must be > 0"),
        ("import:\n  nezha:\n    service_regex: '^.+$'\n", {}, "key 'import.nezha.service_regex' needs a group"),
        ("report:\n  sinks: [files, fax]\n", {}, "key 'report.sinks' has an unknown sink 'fax'"),
    ],
)
def test_values_are_checked_for_range_at_load(tmp_path, text, env, message) -> None:
    from melt.core.config import load_settings

    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), env=env)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_override_is_checked_like_a_file_value() -> None:
    from melt.core.config import default_settings
    from melt.core.settings import SynthSettings

    with pytest.raises(ConfigError, match=r"--retrain-every: key 'detect.retrain_every': 'soon' is not a duration"):
        default_settings().with_overrides({"detect.retrain_every": "soon"}, "--retrain-every")
    with pytest.raises(ConfigError, match="unknown key 'detect.retrain'"):
        default_settings().with_overrides({"detect.retrain": "10m"})
    with pytest.raises(ConfigError, match="synth: unknown setting 'sevrices'"):
        SynthSettings.of(sevrices=4)
    assert SynthSettings.of(duration="90m").duration.total_seconds() == 5400


def test_an_override_inside_a_free_section_sets_one_key_and_is_checked_where_it_is_used() -> None:
    from melt.core.config import load_settings

    settings = load_settings(REPO / "config.yaml", env={})
    changed = settings.with_overrides({"detectors.teg.seed": 3, "detectors.zscore.smooth_window": 5})
    assert changed.detector_params("teg") == {**settings.detector_params("teg"), "seed": 3}
    assert changed.detector_params("zscore")["smooth_window"] == 5
    assert build_detector("teg", changed.detector_params("teg")).seed == 3
    typo = settings.with_overrides({"detectors.teg.seedx": 1})
    with pytest.raises(ConfigError, match="unknown key 'detectors.teg.seedx' \\(did you mean 'seed'"):
        build_detector("teg", typo.detector_params("teg"))
    with pytest.raises(ConfigError, match="'ensemble.weights.zscore.x': 'zscore' holds a value"):
        settings.with_overrides({"ensemble.weights.zscore.x": 1})
