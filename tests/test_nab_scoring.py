"""NAB's scoring rules (melt.evaluation.nab) against a case worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from melt.evaluation.nab import normalised, probation_rows, scaled_sigmoid, score_series


def test_a_small_case_scores_as_worked_out_by_hand() -> None:
    # 100 rows: probation = floor(0.15 * 100) = 15. Windows (40, 59), width 20, and (80, 89), width 10.
    # 10: in probation, ignored.  20: before any window, -A_FP = -0.11.
    # 45: first in window 1, y = -(59 - 45 + 1) / 20 = -0.75, sigma(-0.75) / sigma(-1) = 0.954045 / 0.986614 = 0.966989.
    # 50: later in the same window, nothing.  70: after window 1, d = 11 / 19, 0.11 * sigma(0.578947) = 0.11 * -0.895172.
    # window 2 missed: -A_FN = -1.  Raw: 0.966989 - 0.11 - 0.098469 - 1 = -0.241480.
    result = score_series(np.array([10, 20, 45, 50, 70]), [(40, 59), (80, 89)], 100)
    assert (result.tp, result.fp, result.fn, result.windows) == (1, 2, 1, 2)
    assert result.raw == pytest.approx(-0.241480, abs=1e-5)
    # normalised over the two windows: 100 (raw + 2) / (2 + 2)
    assert normalised(result.raw, 2) == pytest.approx(43.963, abs=1e-3)


def test_the_sigmoid_the_probation_and_the_edges() -> None:
    assert float(scaled_sigmoid(0.0)) == 0.0
    assert float(scaled_sigmoid(-1.0)) == pytest.approx(2 / (1 + math.exp(-5)) - 1)
    assert float(scaled_sigmoid(3.5)) == -1.0
    assert probation_rows(100) == 15 and probation_rows(100_000) == 750
    # at the left edge a detection is worth A_TP, at the right edge nearly nothing
    assert score_series(np.array([40]), [(40, 59)], 100).raw == pytest.approx(1.0)
    assert score_series(np.array([59]), [(40, 59)], 100).raw == pytest.approx(float(scaled_sigmoid(-1 / 20) / scaled_sigmoid(-1.0)))
    # the null detector scores 0 normalised, the perfect one 100
    null = score_series(np.array([], dtype=int), [(40, 59), (80, 89)], 100)
    perfect = score_series(np.array([40, 80]), [(40, 59), (80, 89)], 100)
    assert normalised(null.raw, 2) == 0.0 and normalised(perfect.raw, 2) == pytest.approx(100.0)
    # a detection long after a window costs the full A_FP (and the window, missed, A_FN)
    assert score_series(np.array([99]), [(20, 25)], 100).raw == pytest.approx(-0.11 - 1.0)
