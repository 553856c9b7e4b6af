"""The statistics against SciPy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gatedrnn.claims import mean_ci, paired_difference, paired_ratio, tost


def test_mean_ci_is_scipys_t_interval():
    x = [1.0, 2.0, 4.0, 3.5, 2.2]
    ci = mean_ci(x)
    low, high = stats.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=stats.sem(x))
    assert (ci.estimate, ci.low, ci.high, ci.n) == pytest.approx((np.mean(x), low, high, 5))


def test_one_value_has_no_interval():
    ci = mean_ci([3.0])
    assert ci.estimate == 3.0 and not ci.defined and math.isnan(ci.low)


def test_paired_ratio_is_a_geometric_mean_with_a_log_interval():
    a, b = [2.0, 4.0, 3.0], [4.0, 8.0, 6.0]
    ratio = paired_ratio(a, b)
    assert ratio.estimate == pytest.approx(0.5) and ratio.low == ratio.high == pytest.approx(0.5)
    with pytest.raises(ValueError, match="positive"):
        paired_ratio([0.0], [1.0])


def test_paired_difference():
    assert paired_difference([3, 5, 7], [1, 2, 3]).estimate == pytest.approx(3.0)


def test_tost():
    assert tost([0.0, 0.0, 0.0], margin=0.1) == 0.0  # identical: equivalent
    assert tost([0.01, -0.01, 0.02, 0.0, -0.02], margin=0.1) < 0.01
    assert tost([1.0, 1.2, 0.9, 1.1], margin=0.1) > 0.5  # clearly different
    assert math.isnan(tost([0.0], margin=0.1))
