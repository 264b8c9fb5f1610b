"""Property tests (hypothesis) of the config loader: any value, under any key of the file, any
detector section or any environment override, is either accepted or a ConfigError naming it;
never another exception, and never a value that breaks the run later (issue 33).

"Accepted" goes as far as a run checks before reading data: typed settings
(:func:`load_settings`), every ``detectors.<name>`` section built (:func:`check_detector_settings`)
and the report sinks built (:func:`make_sinks`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from melt.core.config import DEFAULTS, ENV_OVERRIDES, FreeMap, load_settings
from melt.core.errors import ConfigError
from melt.core.registry import discover
from melt.delivery.sinks import make_sinks
from melt.pipeline.fitting import check_detector_settings

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# the strings users mistype: durations, regexes, devices, numbers as text, placeholders
TRICKY_TEXT = ["", "1x", "5m", "-1m", "0s", "10000d", "(", "[a-", "a{2,1}", "cuda", "tpu", "cuda:0", "nan", "inf",
               "-1", "1e309", "${env:NOPE}", "{{ nope }}", "files", "stdout", "webhook", "http://", "not a url",
               "http://127.0.0.1:9/hook", "zscore", "DEBUG", "\x00", "ü" * 3]
SCALARS = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, -1, 0.5, 1.5, -0.1, 1e-12, 1e12, math.nan, math.inf]),
    st.sampled_from(TRICKY_TEXT), st.text(max_size=20),
)
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(st.sampled_from(["a", "zscore", "url", "x"]),
                                                                      inner, max_size=3)),
                      max_leaves=8)


def _leaves(spec: Any, prefix: str = "") -> list[str]:
    """Every settable key of the config, dotted; a free map's own path (it takes any mapping)."""
    if isinstance(spec, FreeMap) or not isinstance(spec, dict):
        return [prefix.rstrip(".")]
    return [leaf for key, child in spec.items() for leaf in _leaves(child, f"{prefix}{key}.")]


KEYS = _leaves(DEFAULTS)
DETECTOR_PARAMS = sorted((name, key) for name, info in discover()[0].items() for key in info.cls.param_defaults())


def _nested(dotted: str, value: Any) -> dict[str, Any]:
    node: Any = value
    for part in reversed(dotted.split(".")):
        node = {part: node}
    return node


def _accepted_or_config_error(document: dict[str, Any], directory: Path, env: dict[str, str] | None = None) -> None:
    """Load ``document`` as a config file (and ``env``) as a run does; only ConfigError may escape."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(document, allow_unicode=True), encoding="utf-8")
    try:
        loaded = load_settings(path, env=env or {})
        check_detector_settings(loaded)
        make_sinks(loaded.report.sinks, directory / "out", loaded.report)
    except ConfigError as exc:
        message = str(exc)
        assert message and "\n" not in message and "Traceback" not in message
        return
    # accepted values are usable: numbers the run divides by or compares with are finite
    for value in (loaded.ensemble.threshold, loaded.detect.train_fraction, loaded.rca.pagerank_alpha):
        assert math.isfinite(value)
    assert 0 < loaded.detect.train_fraction <= 1 and 0 < loaded.rca.pagerank_alpha < 1
    assert loaded.rca.top_k >= 1 and all(weight >= 0 and math.isfinite(weight)
                                         for weight in loaded.ensemble.weights.values())


@PROPERTY
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_any_value_under_any_key_is_accepted_or_one_config_error(tmp_path_factory, key: str, value: Any) -> None:
    _accepted_or_config_error(_nested(key, value), tmp_path_factory.mktemp("config"))


@PROPERTY
@given(param=st.sampled_from(DETECTOR_PARAMS), value=VALUES)
def test_any_detector_parameter_value_is_accepted_or_one_config_error(tmp_path_factory, param: tuple[str, str],
                                                                       value: Any) -> None:
    name, key = param
    _accepted_or_config_error({"detectors": {name: {key: value}}}, tmp_path_factory.mktemp("config"))


@PROPERTY
@given(document=st.dictionaries(st.sampled_from([*DEFAULTS, "zscroe", "detector", "x"]), VALUES, max_size=4))
def test_a_random_document_is_accepted_or_one_config_error(tmp_path_factory, document: dict[str, Any]) -> None:
    _accepted_or_config_error(document, tmp_path_factory.mktemp("config"))


@PROPERTY
@given(variable=st.sampled_from(sorted(ENV_OVERRIDES)),
       raw=st.one_of(st.sampled_from(TRICKY_TEXT), st.text(max_size=12).filter(lambda t: "\x00" not in t)))
def test_any_environment_override_is_accepted_or_one_config_error(tmp_path_factory, variable: str, raw: str) -> None:
    _accepted_or_config_error({}, tmp_path_factory.mktemp("config"), env={variable: raw})
