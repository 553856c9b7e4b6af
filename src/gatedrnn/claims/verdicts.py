"""Each claim made for the GRU, measured on a study's stored results, with a verdict.

Verdicts are *supported*, *contradicted* or *inconclusive*, each with the numbers behind it. The
rules are deliberately hard to satisfy by chance:

* intervals are 95% t intervals over seeds, paired by seed (speed: over the rounds of the
  study's interleaved timing, paired by round, where it has one); fewer than two pairs →
  inconclusive;
* a ratio claim (speed, convergence) also needs the whole interval past a 5% practical margin,
  so timing noise between two identical cells does not produce a verdict;
* facts (parameter counts, bytes, gates) that are equal → inconclusive;
* "comparable" is an equivalence test (TOST) against a margin of 2% of the baseline's metric.

Comparing a cell with itself therefore never yields *supported* or *contradicted* (tested).

An inconclusive convergence, generalization or comparable verdict also says how many seeds would
decide it, were the per-seed mean and spread to hold (for convergence, those of the counts' least
favourable ends, which its verdict reads; :func:`~gatedrnn.claims.stats.seeds_to_exclude`,
:func:`~gatedrnn.claims.stats.seeds_for_equivalence`): a plan for the next study, not a test.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from gatedrnn.claims.stats import (
    MOST_SEEDS,
    Interval,
    paired_difference,
    paired_ratio,
    seeds_for_equivalence,
    seeds_to_exclude,
    tost,
)
from gatedrnn.nn.spec import spec_from_options
from gatedrnn.tasks import TASKS
from gatedrnn.train.loop import validations
from gatedrnn.train.timing import RETRIES, contended

__all__ = [
    "CLAIMS",
    "ClaimVerdict",
    "evaluate_claims",
    "overall",
    "rounds_advice",
    "seeds_advice",
]

SUPPORTED, CONTRADICTED, INCONCLUSIVE = "supported", "contradicted", "inconclusive"
PRACTICAL = 0.05  # ratio margin for speed and convergence
# Epochs shorter than this are not timed against each other: at a few milliseconds, scheduler
# quanta, page faults and the host's other tenants move a trial's epoch time by 10% and more, the
# same way for all of a trial's epochs, so that even a cell against itself (same seeds, same
# work) came out "faster" over three seeds.
MIN_TIMED_EPOCH = 0.01  # seconds
EQUIVALENCE = 0.02  # relative margin for "comparable performance"

CLAIMS = (
    "simpler",
    "fewer parameters",
    "faster training",
    "faster convergence",
    "lower memory",
    "better generalization",
    "comparable performance",
)


@dataclass
class ClaimVerdict:
    claim: str
    scope: str  # "cell definitions", or "task / width [/ fraction]"
    verdict: str
    measurement: str  # one line with the numbers
    details: dict[str, Any] = field(default_factory=dict)


def _fact(candidate: float, baseline: float) -> str:
    if candidate < baseline:
        return SUPPORTED
    if candidate > baseline:
        return CONTRADICTED
    return INCONCLUSIVE


def _ratio_verdict(ratio: Interval) -> str:
    if not ratio.defined:
        return INCONCLUSIVE
    if ratio.high < 1 - PRACTICAL:
        return SUPPORTED
    if ratio.low > 1 + PRACTICAL:
        return CONTRADICTED
    return INCONCLUSIVE


def _better_verdict(diff: Interval, higher_is_better: bool) -> str:
    """diff = candidate − baseline of a metric."""
    if not diff.defined:
        return INCONCLUSIVE
    if (diff.low > 0) if higher_is_better else (diff.high < 0):
        return SUPPORTED
    if (diff.high < 0) if higher_is_better else (diff.low > 0):
        return CONTRADICTED
    return INCONCLUSIVE


def _groups(trials: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[int, dict]]]:
    """(task, width, fraction) → cell label → seed → the trial's result (completed ones)."""
    groups: dict[tuple, dict[str, dict[int, dict]]] = defaultdict(lambda: defaultdict(dict))
    for t in trials:
        if t["status"] == "completed" and t["result"]:
            groups[(t["task"], t["width"], t["fraction"])][t["cell"]][t["seed"]] = t["result"]
    return groups


def _pairs(cells: dict[str, dict[int, dict]], candidate: str, baseline: str):
    a, b = cells.get(candidate, {}), cells.get(baseline, {})
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _steps_to(history: list[dict], metric: str, target: float, higher: bool, key: str) -> float:
    return _bounds_to(history, metric, target, higher, key)[1]


def _ratio_unless_zero(a: list[float], b: list[float]) -> Interval:
    """The paired ratio, or an undefined interval where a count is 0."""
    if min(a + b) <= 0:
        return Interval(math.nan, math.nan, math.nan, len(a))
    return paired_ratio(a, b)


def _bounds_to(
    history: list[dict], metric: str, target: float, higher: bool, key: str
) -> tuple[float, float]:
    """Where the target was reached: the run is validated at epoch ends (and at the probes
    within epochs, ``TrainConfig.probes``), so it was crossed after the last validation that
    missed it and by the first that met it; (that earlier count, this one), with 0 before the
    first validation and (inf, inf) if it never was."""
    before = 0.0
    for check in validations(history):
        value = check["valid"][metric]
        if (value >= target) if higher else (value <= target):
            return before, check[key]
        before = check[key]
    return math.inf, math.inf


def evaluate_claims(
    trials: list[dict[str, Any]],
    candidate: str = "gru",
    baseline: str = "lstm",
    timings: dict[tuple[str, str], dict[str, list[float]]] | None = None,
    waits: dict[tuple[str, str], list[float]] | None = None,
) -> list[ClaimVerdict]:
    """Every claim for ``candidate`` against ``baseline`` (cell labels of the study).

    ``timings`` (the store's: (task, width) → cell → seconds per step by round) gives the speed
    claim its interleaved timing; without one for an arm, the trials' epoch times serve.
    ``waits`` (the store's ``timing_waits``: per round, the share of its time the timing waited
    for a core) leaves an arm timed on a busy machine undecided."""
    verdicts: list[ClaimVerdict] = []
    labels = {t["cell"]: t["config"] for t in trials}
    missing = [label for label in (candidate, baseline) if label not in labels]
    if missing:
        raise ValueError(
            f"the study has no {' or '.join(map(repr, missing))} cell to compare; its cells are "
            f"{sorted(labels)}"
        )
    verdicts.append(_simpler(labels[candidate], labels[baseline], candidate, baseline))
    groups = _groups(trials)
    full = {k: v for k, v in groups.items() if k[2] == max(f for _, _, f in groups)}
    for (task, width, fraction), cells in sorted(groups.items()):
        a, b = _pairs(cells, candidate, baseline)
        if not a:
            continue
        metric = TASKS[task].metrics[0]
        scope = f"{task} / {width}"
        if (task, width, fraction) in full:
            if width == "equal_hidden":
                verdicts.append(
                    ClaimVerdict(
                        "fewer parameters",
                        scope,
                        _fact(a[0]["parameters"], b[0]["parameters"]),
                        f"{a[0]['parameters']:,} vs {b[0]['parameters']:,} parameters",
                    )
                )
                verdicts.append(_memory(a, b, scope))
            timed = (timings or {}).get((task, width), {})
            rounds = (
                (timed[candidate], timed[baseline]) if {candidate, baseline} <= set(timed) else None
            )
            busy = (waits or {}).get((task, width)) if rounds is not None else None
            verdicts.append(_speed(a, b, scope, rounds, busy))
            verdicts.append(_convergence(a, b, scope, metric.name, metric.higher_is_better, rounds))
            verdicts.append(_comparable(a, b, scope, metric.name, metric.higher_is_better))
        fractions = sorted({f for t, w, f in groups if t == task and w == width})
        # the smallest training set of this task and width, if smaller than the whole: trained
        # on all of it, the difference is the "comparable performance" one, not small data's
        if fraction == fractions[0] and fraction < 1:
            verdicts.append(
                _generalization(
                    a, b, f"{scope} / {fraction:g} of train", metric.name, metric.higher_is_better
                )
            )
    return verdicts


def _simpler(cand: dict, base: dict, cand_label: str, base_label: str) -> ClaimVerdict:
    def cost(config: dict):
        given = config["cell_options"]
        return spec_from_options(config["cell"], given).step_cost(
            100, 100, bias=given.get("bias", True)
        )

    a, b = cost(cand), cost(base)
    fields = ("gates", "weight_matrices", "state_tensors", "nonlinearities", "flops")
    less = [getattr(a, f) < getattr(b, f) for f in fields]
    more = [getattr(a, f) > getattr(b, f) for f in fields]
    verdict = (
        SUPPORTED
        if any(less) and not any(more)
        else (CONTRADICTED if any(more) and not any(less) else INCONCLUSIVE)
    )
    text = "; ".join(
        f"{f.replace('_', ' ')} {getattr(a, f)} vs {getattr(b, f)}" for f in fields[:4]
    )
    return ClaimVerdict(
        "simpler",
        "cell definitions",
        verdict,
        f"{text} (per step, H = 100)",
        {"candidate": a.__dict__, "baseline": b.__dict__},
    )


def _backends(trials: list[dict]) -> str:
    return "/".join(sorted({r["backend"] for r in trials}))


def _other_backends(a: list[dict], b: list[dict]) -> str | None:
    """Why a time or memory comparison of these trials would measure the implementations rather
    than the cells (the claims compare them on the same device and backend), or None."""
    if _backends(a) == _backends(b):
        return None
    return (
        f"the cells ran on different backends ({_backends(a)} vs {_backends(b)}), so this "
        "compares implementations, not cells: give every cell one backend ([train] backend in "
        "a study, --backend for compare)"
    )


def _memory(a: list[dict], b: list[dict], scope: str) -> ClaimVerdict:
    """The bytes the cells need, counted (device-independent) and, where the trials ran on
    CUDA, the peak the device allocated: the verdict needs both to point the same way."""

    # saved activations + parameters, gradients and Adam's two moments (float32)
    def total(r: dict) -> float:
        return r["saved_bytes"] + 4 * 4 * r["parameters"]

    ta, tb = (sum(total(r) for r in rs) / len(rs) for rs in (a, b))
    verdict = _fact(ta, tb)
    measurement = (
        f"{ta / 1e6:.2f} MB vs {tb / 1e6:.2f} MB (saved for backward + params, grads, Adam state)"
    )
    details: dict[str, Any] = {"candidate": ta, "baseline": tb}
    peaks = [[r.get("peak_cuda_bytes") for r in rs] for rs in (a, b)]
    if all(p is not None for ps in peaks for p in ps):
        pa, pb = (sum(ps) / len(ps) for ps in peaks)
        details.update(peak_cuda_candidate=pa, peak_cuda_baseline=pb)
        measurement += f"; CUDA peak {pa / 1e6:.2f} MB vs {pb / 1e6:.2f} MB (the whole model)"
        if _fact(pa, pb) != verdict:
            measurement += ": the count and the device's peak disagree"
            verdict = INCONCLUSIVE
    other = _other_backends(a, b)  # what a backend saves for its backward is its own
    if other:
        verdict, measurement = INCONCLUSIVE, f"{measurement}; {other}"
    return ClaimVerdict("lower memory", scope, verdict, measurement, details)


def _speed(
    a: list[dict],
    b: list[dict],
    scope: str,
    rounds: tuple[list[float], list[float]] | None = None,
    waited: list[float] | None = None,
) -> ClaimVerdict:
    """Time per training step from the interleaved ``rounds`` where the arm was timed (the
    trials' epoch times shown beside it), else time per epoch from the trials. Where the
    timing's threads ``waited`` for a core more than :data:`~gatedrnn.train.timing.CONTENDED`
    of their time on average over the rounds, other programs had the machine: no verdict."""
    epochs = paired_ratio([r["seconds_per_epoch"] for r in a], [r["seconds_per_epoch"] for r in b])
    where = f"{a[0]['environment'].get('device', '?')}, {_backends(a)} vs {_backends(b)}"
    shortest = min(r["seconds_per_epoch"] for r in a + b)
    details: dict[str, Any] = {"epoch_ratio": epochs.__dict__, "shortest_epoch_seconds": shortest}
    other = _other_backends(a, b)  # then no verdict, and no timing would give one
    too_short = busy = False
    if rounds is not None:
        ratio = paired_ratio(*rounds)
        verdict = _ratio_verdict(ratio)
        measurement = (
            f"time per training step ratio {ratio} over {ratio.n} interleaved rounds ({where}); "
            f"per epoch in the trials {epochs}"
        )
        details["waited"] = statistics.fmean(waited) if waited else None
        busy = contended(waited)
        if busy:
            verdict = INCONCLUSIVE
            measurement += (
                f"; the machine was busy while it was timed (its threads waited for a core "
                f"{details['waited']:.0%} of the time, each round run up to {1 + RETRIES} "
                "times); running the study again when it is quiet times it again"
            )
        elif not other:
            details["rounds_needed"], hint = _rounds_hint(verdict, ratio, rounds)
            measurement += hint
    else:
        ratio = epochs
        measurement = f"time per epoch ratio {ratio} ({where})"
        verdict = _ratio_verdict(ratio)
        if shortest < MIN_TIMED_EPOCH:
            verdict, too_short = INCONCLUSIVE, True
            measurement += (
                f"; epochs of {shortest * 1e3:.1f} ms are too short to time against each other "
                f"(under {MIN_TIMED_EPOCH * 1e3:.0f} ms)"
            )
    if _within_practical(verdict, ratio) and not too_short and not other and not busy:
        measurement += (
            f"; the interval lies within ±{PRACTICAL:.0%}: as fast, for this claim (it asks "
            f"for {PRACTICAL:.0%} or more), so more timing would not decide it"
        )
    if other:
        verdict, measurement = INCONCLUSIVE, f"{measurement}; {other}"
    return ClaimVerdict(
        "faster training", scope, verdict, measurement, {"ratio": ratio.__dict__, **details}
    )


def _rounds_hint(
    verdict: str, ratio: Interval, rounds: tuple[list[float], list[float]]
) -> tuple[int | None, str]:
    """For an inconclusive ratio over interleaved rounds, not already within the margin: how
    many rounds would decide it, were the per-round mean and spread to hold, and the words."""
    if verdict != INCONCLUSIVE or not ratio.defined or _within_practical(verdict, ratio):
        return None, ""
    line = 1 - PRACTICAL if ratio.estimate <= 1 else 1 + PRACTICAL
    if abs(math.log(ratio.estimate)) <= abs(math.log(line)):
        return None, (
            f"; its mean is within ±{PRACTICAL:.0%}: more rounds would show the two as fast, "
            "not decide it"
        )
    needed = _seeds_past(*rounds, line)
    if needed is None:
        return None, f"; not decided by up to {MOST_SEEDS} rounds at this mean and spread"
    return needed, f"; ~{needed} interleaved rounds would decide it at this mean and spread"


def _within_practical(verdict: str, ratio: Interval) -> bool:
    """Whether an inconclusive ratio's whole interval lies within 1 ± :data:`PRACTICAL`: the
    two are equal for the claim's purpose, however precisely timed."""
    return (
        verdict == INCONCLUSIVE
        and ratio.defined
        and ratio.low >= 1 - PRACTICAL
        and ratio.high <= 1 + PRACTICAL
    )


def _convergence(
    a, b, scope, metric: str, higher: bool, rounds: tuple[list[float], list[float]] | None = None
) -> ClaimVerdict:
    """Updates to the worse cell's best validation value, paired by seed (the verdict); and
    seconds: the trials' own, or, where the arm was timed interleaved, updates × the median
    time per step (the trials' clocks ran beside other trials)."""
    updates_a, updates_b, seconds_a, seconds_b = [], [], [], []
    bounds_a, bounds_b = [], []
    for ra, rb in zip(a, b, strict=True):
        best = [ra["best_valid"][metric], rb["best_valid"][metric]]
        target = min(best) if higher else max(best)  # the worse cell's best: both reach it
        bounds_a.append(_bounds_to(ra["history"], metric, target, higher, "updates"))
        bounds_b.append(_bounds_to(rb["history"], metric, target, higher, "updates"))
        seconds_a.append(_steps_to(ra["history"], metric, target, higher, "elapsed"))
        seconds_b.append(_steps_to(rb["history"], metric, target, higher, "elapsed"))
    updates_a, updates_b = [hi for _, hi in bounds_a], [hi for _, hi in bounds_b]
    ratio = paired_ratio(updates_a, updates_b)
    # Each count is known only to within the interval between two validations (an epoch, or
    # less with probes): the verdict takes the candidate's least favourable case for "faster"
    # (it needed all of its interval, the baseline none of its) and its most favourable for
    # "slower". Reached at the first validation, a count's lower end is 0, and nothing can be
    # said. Without this, two seeds reaching the target at the same epochs gave a zero-width
    # interval and a verdict.
    slowest = _ratio_unless_zero(updates_a, [lo for lo, _ in bounds_b])
    fastest = _ratio_unless_zero([lo for lo, _ in bounds_a], updates_b)
    if slowest.defined and slowest.high < 1 - PRACTICAL:
        verdict = SUPPORTED
    elif fastest.defined and fastest.low > 1 + PRACTICAL:
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    # more seeds decide it only where the least favourable ends, on average, clear the margin
    if ratio.estimate <= 1:
        edge, ends = slowest, (updates_a, [lo for lo, _ in bounds_b], 1 - PRACTICAL)
    else:
        edge, ends = fastest, ([lo for lo, _ in bounds_a], updates_b, 1 + PRACTICAL)
    seeds, hint = _seeds_hint(verdict, edge, lambda: _seeds_past(*ends))
    coarse = ratio.estimate < 1 - PRACTICAL or ratio.estimate > 1 + PRACTICAL
    if hint and seeds is None and coarse:  # the validations, not the seeds, hold it open
        hint = (
            f"; more seeds would not decide it: at the least favourable ends of the intervals "
            f"between validations the ratio is {edge.estimate:.3g}; validating within epochs "
            "(train.probes) narrows them"
        )
    low, high = math.isfinite(fastest.estimate), math.isfinite(slowest.estimate)
    within = (
        f" (between validations: {fastest.estimate:.3g}–{slowest.estimate:.3g})"
        if low and high
        else f" (between validations: at most {slowest.estimate:.3g})"
        if high
        else f" (between validations: at least {fastest.estimate:.3g})"
        if low
        else " (both met it at their first validation: no bound)"
    )
    if rounds is not None:
        step_a, step_b = (statistics.median(r) for r in rounds)
        seconds = paired_ratio([u * step_a for u in updates_a], [u * step_b for u in updates_b])
        timed = "seconds at the interleaved time per step"
    else:
        seconds, timed = paired_ratio(seconds_a, seconds_b), "seconds"
    return ClaimVerdict(
        "faster convergence",
        scope,
        verdict,
        f"updates to the target, ratio {ratio}{within}; {timed} {seconds}{hint}",
        {
            "updates": ratio.__dict__,
            "updates_slowest": slowest.__dict__,
            "updates_fastest": fastest.__dict__,
            "seconds": seconds.__dict__,
            "seeds_needed": seeds,
        },
    )


def _generalization(a, b, scope, metric: str, higher: bool) -> ClaimVerdict:
    ta, tb = [r["test"][metric] for r in a], [r["test"][metric] for r in b]
    diff = paired_difference(ta, tb)
    gap = paired_difference(
        [r["test"][metric] - r["train"][metric] for r in a],
        [r["test"][metric] - r["train"][metric] for r in b],
    )
    verdict = _better_verdict(diff, higher)
    seeds, hint = _seeds_hint(
        verdict, diff, lambda: seeds_to_exclude([x - y for x, y in zip(ta, tb, strict=True)])
    )
    return ClaimVerdict(
        "better generalization",
        scope,
        verdict,
        f"test {metric} difference {diff}; train–test gap difference {gap}{hint}",
        {"difference": diff.__dict__, "gap": gap.__dict__, "seeds_needed": seeds},
    )


def _seeds_past(a: list[float], b: list[float], line: float) -> int | None:
    """Seeds for the interval of the paired log ratios a / b to clear log(``line``) on the side
    their mean is on, or None where that mean is not past the line (then no number would do)."""
    logs = [math.log(x / y) for x, y in zip(a, b, strict=True)]
    mean = statistics.fmean(logs)
    past = mean < math.log(line) if line < 1 else mean > math.log(line)
    return seeds_to_exclude(logs, math.log(line)) if past else None


def _seeds_hint(verdict: str, interval: Interval, needed) -> tuple[int | None, str]:
    """For an inconclusive verdict over seeds whose ``interval`` is defined: how many seeds
    ``needed()`` says would decide it, were the per-seed mean and spread to hold, and the words
    that say so."""
    if verdict != INCONCLUSIVE or not interval.defined:
        return None, ""
    seeds = needed()
    if seeds is None:
        return None, f"; not decided by up to {MOST_SEEDS} seeds at this mean and spread"
    return seeds, f"; ~{seeds} seeds would decide it at this mean and spread"


def _comparable(a, b, scope, metric: str, higher: bool) -> ClaimVerdict:
    ta, tb = [r["test"][metric] for r in a], [r["test"][metric] for r in b]
    margin = EQUIVALENCE * abs(sum(tb) / len(tb))
    diffs = [x - y for x, y in zip(ta, tb, strict=True)]
    p = tost(diffs, margin)
    diff = paired_difference(ta, tb)
    if math.isfinite(p) and p < 0.05:
        verdict = SUPPORTED
    elif diff.defined and (diff.low > margin or diff.high < -margin):
        verdict = CONTRADICTED
    else:
        verdict = INCONCLUSIVE
    better = (
        ""
        if verdict != CONTRADICTED
        else (
            "; the candidate is better"
            if (diff.estimate > 0) == higher
            else "; the baseline is better"
        )
    )
    # more seeds would show equivalence where the mean is inside the margin, else a difference
    seeds, hint = _seeds_hint(
        verdict,
        diff,
        lambda: (
            seeds_for_equivalence(diffs, margin)
            if abs(diff.estimate) < margin
            else seeds_to_exclude(diffs, math.copysign(margin, diff.estimate))
        ),
    )
    return ClaimVerdict(
        "comparable performance",
        scope,
        verdict,
        f"test {metric} difference {diff}, margin ±{margin:.4g}, TOST p = {p:.3g}{better}{hint}",
        {"difference": diff.__dict__, "margin": margin, "p": p, "seeds_needed": seeds},
    )


def overall(verdicts: list[ClaimVerdict]) -> dict[str, tuple[str, str]]:
    """Claim → (verdict, counts): supported or contradicted only where every scope agrees."""
    by_claim: dict[str, list[str]] = defaultdict(list)
    for v in verdicts:
        by_claim[v.claim].append(v.verdict)
    result = {}
    for claim in CLAIMS:
        found = by_claim.get(claim, [])
        counts = ", ".join(
            f"{found.count(x)} {x}"
            for x in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)
            if found.count(x)
        )
        if found and all(x == SUPPORTED for x in found):
            result[claim] = (SUPPORTED, counts)
        elif found and all(x == CONTRADICTED for x in found):
            result[claim] = (CONTRADICTED, counts)
        else:
            result[claim] = (INCONCLUSIVE, counts or f"not measured: {_UNMEASURED[claim]}")
    return result


def seeds_advice(verdicts: list[ClaimVerdict]) -> str | None:
    """One sentence for the next study: how many inconclusive scopes measured over seeds each
    number of seeds (in all) would decide, were their means and spreads to hold; None where no
    such scope is inconclusive."""
    pending = [v for v in verdicts if v.verdict == INCONCLUSIVE and "seeds_needed" in v.details]
    if not pending:
        return None
    needed = sorted(v.details["seeds_needed"] for v in pending if v.details["seeds_needed"])
    decided = [(n, sum(m <= n for m in needed)) for n in sorted(set(needed))]
    beyond = len(pending) - len(needed)
    text = f"Of the {len(pending)} inconclusive scopes measured over seeds, at their observed"
    if decided:
        (n, k), rest = decided[0], decided[1:]
        text += f" means and spreads {n} seeds in all would decide {k} of them"
        text += "".join(f", {n} seeds {k}" for n, k in rest)
        return text + (f"; {beyond} would need more than {MOST_SEEDS}." if beyond else ".")
    return text + f" means and spreads none would be decided by {MOST_SEEDS} seeds."


def rounds_advice(verdicts: list[ClaimVerdict]) -> str | None:
    """One sentence for the next study: how many inconclusive speed scopes timed in interleaved
    rounds each number of rounds would decide, were their means and spreads to hold; None where
    no number would decide one."""
    needed = sorted(
        v.details["rounds_needed"]
        for v in verdicts
        if v.verdict == INCONCLUSIVE and v.details.get("rounds_needed")
    )
    if not needed:
        return None
    decided = [(n, sum(m <= n for m in needed)) for n in sorted(set(needed))]
    (n, k), rest = decided[0], decided[1:]
    text = (
        f"Of the inconclusive speed scopes timed in interleaved rounds, at their observed means "
        f"and spreads {n} rounds would decide {k} of them"
    )
    return text + "".join(f", {n} rounds {k}" for n, k in rest) + "."


# Why a claim can have no measurement in a study.
_UNMEASURED = {
    "simpler": "no cells",
    "fewer parameters": "needs the equal_hidden width (at an equal budget the counts match)",
    "lower memory": "needs the equal_hidden width",
    "faster training": "no completed pair of trials",
    "faster convergence": "no completed pair of trials",
    "better generalization": "needs a training fraction below 1",
    "comparable performance": "no completed pair of trials",
}
