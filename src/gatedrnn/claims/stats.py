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

__all__ = ["Interval", "mean_ci", "paired_difference", "paired_ratio", "tost"]

LEVEL = 0.95


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
