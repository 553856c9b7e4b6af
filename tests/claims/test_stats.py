"""The statistics against SciPy and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gatedrnn.claims import (
    mean_ci,
    paired_difference,
    paired_ratio,
    seeds_for_equivalence,
    seeds_to_exclude,
    tost,
)


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


def _with(mean: float, sd: float, n: int) -> np.ndarray:
    """n values with exactly this mean and sample standard deviation."""
    z = np.linspace(-1.0, 1.0, n)
    return mean + sd * (z - z.mean()) / z.std(ddof=1)


@pytest.mark.parametrize(
    ("mean", "sd", "bound"), [(0.3, 1.0, 0.0), (-2.0, 3.0, 0.0), (1.5, 1.0, 1.0)]
)
def test_seeds_to_exclude_is_the_least_n_whose_interval_clears_the_bound(mean, sd, bound):
    """At the returned n, values with the observed mean and spread give an interval wholly on
    the mean's side of the bound; at one fewer they do not."""
    n = seeds_to_exclude(_with(mean, sd, 3), bound)
    assert n is not None and n > 3

    def clears(k):
        ci = mean_ci(_with(mean, sd, k))
        return ci.low > bound if mean > bound else ci.high < bound

    assert clears(n) and not clears(n - 1)


def test_seeds_to_exclude_says_none_where_it_cannot_estimate():
    assert seeds_to_exclude([1.0]) is None  # no spread to go on
    assert seeds_to_exclude([2.0, 2.0, 2.0]) is None
    assert seeds_to_exclude([-1.0, 1.0, 0.0]) is None  # the mean on the bound
    assert seeds_to_exclude(_with(0.001, 1.0, 3)) is None  # beyond MOST_SEEDS


@pytest.mark.parametrize(("mean", "sd", "margin"), [(0.0, 1.0, 0.5), (0.2, 0.3, 0.3)])
def test_seeds_for_equivalence_is_the_least_n_tost_accepts(mean, sd, margin):
    n = seeds_for_equivalence(_with(mean, sd, 3), margin)
    assert n is not None and n > 3
    assert tost(_with(mean, sd, n), margin) < 0.05 <= tost(_with(mean, sd, n - 1), margin)


def test_seeds_for_equivalence_is_none_outside_the_margin():
    assert seeds_for_equivalence(_with(0.6, 0.1, 3), margin=0.5) is None
    assert seeds_for_equivalence([0.1], margin=0.5) is None
