"""The claims made for the GRU, measured from a study's database, with verdicts."""

from gatedrnn.claims.stats import (
    Interval,
    mean_ci,
    paired_difference,
    paired_ratio,
    seeds_for_equivalence,
    seeds_to_exclude,
    tost,
)
from gatedrnn.claims.verdicts import (
    CLAIMS,
    ClaimVerdict,
    evaluate_claims,
    overall,
    rounds_advice,
    seeds_advice,
)

__all__ = [
    "CLAIMS",
    "ClaimVerdict",
    "Interval",
    "evaluate_claims",
    "mean_ci",
    "overall",
    "paired_difference",
    "paired_ratio",
    "rounds_advice",
    "seeds_advice",
    "seeds_for_equivalence",
    "seeds_to_exclude",
    "tost",
]
