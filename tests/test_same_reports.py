"""The comparison of two runs' reports (issue 29's "same reports")."""

from __future__ import annotations

import json
from pathlib import Path

from melt.evaluation.same_reports import compare_runs, differences


def test_equal_values_agree_even_when_they_read_as_numbers_that_cannot_be_subtracted() -> None:
    report = {"evidence": [{"span_id": "inf", "value": "0.068858", "score": float("inf")}], "generated_at": "now"}
    assert differences(report, json.loads(json.dumps(report))) == []
    assert differences({"span_id": "inf"}, {"span_id": "nan"}) == ["/span_id: 'inf' against 'nan'"]


def test_numbers_agree_within_the_tolerance_and_not_beyond() -> None:
    assert differences({"value": "0.068858"}, {"value": 0.0688585}) == []
    assert differences({"value": 1.0}, {"value": 1.00001}) == ["/value: '1.0' against '1.00001'"]
    assert differences({"a": 1}, {"b": 1}) == ["/a: only in the first", "/b: only in the second"]


def test_a_run_equals_itself_and_not_a_run_with_other_incidents(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        folder.mkdir()
    report = {"incident_id": "INC-1", "evidence": [{"span_id": "inf"}]}
    (first / "INC-1.json").write_text(json.dumps(report))
    (second / "INC-2.json").write_text(json.dumps(report))
    assert compare_runs(first, first) == []
    assert compare_runs(first, second) == ["incidents differ: ['INC-1.json', 'INC-2.json']"]
