"""The statistics behind the verdicts (SciPy): t intervals over seeds, paired ratios and
differences, and the two one-sided tests (TOST) for equivalence.

Every function takes the per-seed values, so the intervals are over independent training runs.
With fewer than two values an interval is undefined (NaN), and the verdict that reads it is
*inconclusive*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

__all__ = [
    "Interval",
    "mean_ci",
    "paired_difference",
    "paired_ratio",
    "seeds_for_equivalence",
    "seeds_to_exclude",
    "tost",
]

LEVEL = 0.95
MOST_SEEDS = 1000  # beyond this a planning estimate says only "more"


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int

    @property
    def defined(self) -> bool:
        return self.n >= 2 and math.isfinite(self.low) and math.isfinite(self.high)

    def __str__(self) -> str:
        if not self.defined:
            return f"{self.estimate:.4g} (n={self.n}, no interval)"
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}]"


def mean_ci(values: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean and its t interval."""
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    if sem == 0:
        return Interval(mean, mean, mean, n)
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * sem
    return Interval(mean, mean - half, mean + half, n)


def paired_difference(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Mean of a − b over pairs (same seed) and its t interval."""
    return mean_ci(np.asarray(a, dtype=float) - np.asarray(b, dtype=float), level)


def paired_ratio(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Interval:
    """Geometric mean of a / b over pairs, with the t interval of the mean log ratio."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("ratios need positive values")
    logs = mean_ci(np.log(a / b), level)
    return Interval(
        math.exp(logs.estimate),
        math.exp(logs.low) if logs.defined else math.nan,
        math.exp(logs.high) if logs.defined else math.nan,
        logs.n,
    )


def tost(differences: Sequence[float], margin: float) -> float:
    """p-value of the two one-sided tests that the mean difference lies within ±``margin``
    (paired t tests; Schuirmann 1987). Small p: equivalent within the margin."""
    d = np.asarray(differences, dtype=float)
    n = d.size
    if n < 2:
        return math.nan
    sd = float(d.std(ddof=1))
    mean = float(d.mean())
    if sd == 0:
        return 0.0 if abs(mean) < margin else 1.0
    se = sd / math.sqrt(n)
    p_lower = 1 - float(stats.t.cdf((mean + margin) / se, n - 1))  # H0: mean <= -margin
    p_upper = float(stats.t.cdf((mean - margin) / se, n - 1))  # H0: mean >= margin
    return max(p_lower, p_upper)


def seeds_to_exclude(
    values: Sequence[float], bound: float = 0.0, level: float = LEVEL
) -> int | None:
    """How many paired runs (seeds) the t interval of the mean of ``values`` would need to lie
    wholly on the mean's side of ``bound``, were the mean and spread to stay as observed: the
    least n ≥ 2 with t_{n−1} · s / √n < |mean − bound|. A planning estimate for a study that came
    out inconclusive, not a test. None where the mean sits on the bound, where there is no spread
    to go on (fewer than two values, or all equal) or where it would take more than
    :data:`MOST_SEEDS`."""
    x = np.asarray(values, dtype=float)
    if x.size < 2:
        return None
    gap, sd = abs(float(x.mean()) - bound), float(x.std(ddof=1))
    if gap == 0 or sd == 0:
        return None
    return _least_n(lambda n: float(stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n) < gap)


def seeds_for_equivalence(differences: Sequence[float], margin: float) -> int | None:
    """How many paired runs the two one-sided tests (:func:`tost`, at 5%) would need to find the
    mean difference within ±``margin``, were its mean and spread to stay as observed: the least
    n ≥ 2 with t_{n−1, 0.95} · s / √n < margin − |mean|. None where the mean is not inside the
    margin (no number of runs would do), where there is no spread to go on, or beyond
    :data:`MOST_SEEDS`."""
    d = np.asarray(differences, dtype=float)
    if d.size < 2:
        return None
    room, sd = margin - abs(float(d.mean())), float(d.std(ddof=1))
    if room <= 0 or sd == 0:
        return None
    return _least_n(lambda n: float(stats.t.ppf(0.95, n - 1)) * sd / math.sqrt(n) < room)


def _least_n(enough) -> int | None:
    """The least n in [2, MOST_SEEDS] for which ``enough(n)`` holds (it holds from some n on)."""
    if not enough(MOST_SEEDS):
        return None
    low, high = 2, MOST_SEEDS
    while low < high:
        mid = (low + high) // 2
        if enough(mid):
            high = mid
        else:
            low = mid + 1
    return low
