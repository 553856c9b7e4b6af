"""Verdicts from real (tiny) studies: a cell against itself never differs; the GRU's facts."""

from __future__ import annotations

import math

import pytest

from gatedrnn.claims import evaluate_claims, overall
from gatedrnn.study import StudyStore, parse_study, run_study

TINY = {
    "tasks": ["adding", "jsb"],
    "widths": ["equal_hidden", "equal_params"],
    "hidden_size": 12,
    "budget": 2000,
    "seeds": 3,
    "fractions": [0.5, 1.0],
    "train": {"epochs": 3, "smoke": True, "lr": 0.01},
}


@pytest.fixture(scope="module")
def self_db(tmp_path_factory):
    """On one core: the suite runs a worker per core, and a study timing on every core beside
    another worker is oversubscribed, its intervals ten times wider (an identical copy of the GRU
    once came out 'faster')."""
    from gatedrnn.study import runner

    spec = parse_study(
        {**TINY, "name": "self", "cells": ["gru", {"cell": "gru", "label": "gru-copy"}, "lstm"]}
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(runner, "available_cores", lambda: 1)
        return run_study(spec, tmp_path_factory.mktemp("runs"), workers=1)


@pytest.fixture(scope="module")
def self_study(self_db):
    return StudyStore(self_db).trials()


def test_a_cell_against_itself_never_differs(self_db, self_study):
    timings = StudyStore(self_db).timings()
    assert set(timings) == {(t, w) for t in TINY["tasks"] for w in TINY["widths"]}
    verdicts = evaluate_claims(self_study, "gru", "gru-copy", timings)
    assert sum("interleaved rounds" in v.measurement for v in verdicts) == 4
    for v in verdicts:
        if v.claim == "comparable performance":
            assert v.verdict != "contradicted", v  # identical results are equivalent
        else:
            assert v.verdict == "inconclusive", v


def test_gru_against_lstm_facts(self_study):
    summary = overall(evaluate_claims(self_study, "gru", "lstm"))
    assert summary["simpler"][0] == "supported"
    assert summary["fewer parameters"][0] == "supported"  # at equal hidden size
    assert summary["lower memory"][0] == "supported"
    assert set(summary) == {
        "simpler",
        "fewer parameters",
        "faster training",
        "faster convergence",
        "lower memory",
        "better generalization",
        "comparable performance",
    }


def test_unknown_labels_are_named(self_study):
    with pytest.raises(ValueError, match=r"no 'mgu' cell to compare; its cells are \["):
        evaluate_claims(self_study, "mgu", "lstm")


@pytest.mark.parametrize(
    "candidate, baseline, expected",
    [
        ([0.20, 0.21, 0.19], [0.30, 0.31, 0.29], "supported"),  # a third faster, timed
        ([0.30, 0.31, 0.29], [0.20, 0.21, 0.19], "contradicted"),
        ([0.002, 0.0021, 0.0019], [0.003, 0.0031, 0.0029], "inconclusive"),  # too short to time
    ],
)
def test_speed_needs_epochs_long_enough_to_time(candidate, baseline, expected):
    from gatedrnn.claims.verdicts import _speed

    def trials(seconds):
        return [
            {"seconds_per_epoch": s, "environment": {"device": "cpu"}, "backend": "cpu"}
            for s in seconds
        ]

    verdict = _speed(trials(candidate), trials(baseline), "task / equal_hidden")
    assert verdict.verdict == expected, verdict
    if expected == "inconclusive":
        assert "too short to time" in verdict.measurement


@pytest.mark.parametrize(
    "candidate, baseline, expected",
    [
        ([0.0020, 0.0021, 0.0019], [0.0030, 0.0031, 0.0029], "supported"),
        ([0.0030, 0.0031, 0.0029], [0.0020, 0.0021, 0.0019], "contradicted"),
        ([0.0020, 0.0021, 0.0019], [0.0020, 0.0020, 0.0020], "inconclusive"),
        ([0.0020, 0.0030, 0.0019], [0.0030, 0.0020, 0.0029], "inconclusive"),  # no interval
    ],
)
def test_speed_from_interleaved_rounds(candidate, baseline, expected):
    """Where the arm was timed interleaved, its rounds decide (paired by round), whatever the
    epoch times say; the epochs' ratio is shown beside it, and their length does not matter."""
    from gatedrnn.claims.verdicts import _speed

    trials = [{"seconds_per_epoch": s, "environment": {"device": "cpu"}, "backend": "cpu"}
              for s in (0.002, 0.009, 0.003)]  # fmt: skip
    verdict = _speed(trials, trials, "task / equal_hidden", (candidate, baseline))
    assert verdict.verdict == expected, verdict
    assert "time per training step ratio" in verdict.measurement
    assert "over 3 interleaved rounds" in verdict.measurement
    assert "per epoch in the trials 1 " in verdict.measurement
    assert "too short" not in verdict.measurement
    assert verdict.details["epoch_ratio"]["estimate"] == 1
    ratio = verdict.details["ratio"]
    within = ratio["low"] >= 0.95 and ratio["high"] <= 1.05
    assert ("lies within ±5%: as fast" in verdict.measurement) == within


def test_speed_within_the_practical_margin_says_more_timing_would_not_decide():
    from gatedrnn.claims.verdicts import _speed

    trials = [{"seconds_per_epoch": 0.05, "environment": {"device": "cpu"}, "backend": "cpu"}] * 3
    close = ([0.0200, 0.0202, 0.0199, 0.0201], [0.0201, 0.0203, 0.0200, 0.0203])  # ~0.995
    verdict = _speed(trials, trials, "task / equal_hidden", close)
    assert verdict.verdict == "inconclusive"
    assert "lies within ±5%: as fast, for this claim" in verdict.measurement
    wide = ([0.0200, 0.0250, 0.0150], [0.0200, 0.0200, 0.0200])  # the interval spans past 5%
    assert "lies within" not in _speed(trials, trials, "t / w", wide).measurement


def test_the_study_timings_reach_the_speed_verdict(self_study):
    rounds = {"gru": [0.002] * 4, "lstm": [0.003, 0.0031, 0.0029, 0.003]}
    timings = {("adding", "equal_hidden"): rounds}
    speed = {
        v.scope: v for v in evaluate_claims(self_study, "gru", "lstm", timings)
        if v.claim == "faster training"
    }  # fmt: skip
    assert speed["adding / equal_hidden"].verdict == "supported"
    assert "over 4 interleaved rounds" in speed["adding / equal_hidden"].measurement
    assert "time per epoch ratio" in speed["jsb / equal_hidden"].measurement  # not timed


def test_convergence_seconds_use_the_interleaved_step_time():
    """Updates decide; where the arm was timed, its seconds are updates x the median time per
    step, not the trials' clocks."""
    from gatedrnn.claims.verdicts import _convergence

    def run(updates_to_target, elapsed):
        history = [
            {"valid": {"nll": 5.0}, "updates": updates_to_target - 10, "elapsed": 1.0},
            {"valid": {"nll": 4.0}, "updates": updates_to_target, "elapsed": elapsed},
        ]
        return {"best_valid": {"nll": 4.0}, "history": history}  # fmt: skip

    a = [run(20, 9.0), run(20, 9.5), run(20, 8.5)]  # the candidate's clock ran slow
    b = [run(40, 4.0), run(40, 4.1), run(40, 3.9)]
    plain = _convergence(a, b, "t / w", "nll", higher=False)
    assert plain.verdict == "supported" and "updates to the target, ratio 0.5 " in plain.measurement
    assert plain.details["seconds"]["estimate"] > 2
    timed = _convergence(a, b, "t / w", "nll", False, ([0.001] * 3, [0.002] * 3))
    assert "seconds at the interleaved time per step 0.25 " in timed.measurement
    assert timed.details["seconds"]["estimate"] == pytest.approx(0.25)


def _history(epochs_to_target: int, updates_per_epoch: int = 10) -> dict:
    """A run validated at each epoch's end that first meets the target (nll 4) at the given
    epoch, and goes on two epochs more."""
    history = [
        {"epoch": e, "valid": {"nll": 5.0 if e < epochs_to_target else 4.0},
         "updates": e * updates_per_epoch, "elapsed": float(e)}
        for e in range(1, epochs_to_target + 3)
    ]  # fmt: skip
    return {"best_valid": {"nll": 4.0}, "history": history}


@pytest.mark.parametrize(
    "candidate, baseline, expected",
    [
        ([2, 2], [3, 3], "inconclusive"),  # 2 vs 3 epochs: the truth may be 20 vs 21 updates
        ([2, 2, 2], [3, 3, 3], "inconclusive"),
        ([4, 4, 5], [8, 9, 8], "supported"),  # even 40 against 71 updates is faster
        ([8, 9, 8], [4, 4, 5], "contradicted"),
        ([1, 1, 1], [3, 3, 3], "supported"),  # 10 against more than 20
        ([3, 3, 3], [1, 1, 1], "contradicted"),
        ([1, 1, 1], [1, 1, 1], "inconclusive"),  # both in the first epoch: no bound
        ([5, 6, 5], [5, 6, 5], "inconclusive"),
    ],
)
def test_convergence_counts_are_known_to_within_an_epoch(candidate, baseline, expected):
    """Validation at epoch ends only brackets the update at which the target is met; identical
    epochs across seeds used to give a zero-width interval, and a verdict from two seeds."""
    from gatedrnn.claims.verdicts import _convergence

    a, b = [_history(e) for e in candidate], [_history(e) for e in baseline]
    verdict = _convergence(a, b, "t / w", "nll", higher=False)
    assert verdict.verdict == expected, verdict
    assert "updates to the target, ratio" in verdict.measurement
    first = (min(candidate) == 1, min(baseline) == 1)
    bound = {(False, False): "–", (True, False): "at most",
             (False, True): "at least", (True, True): "no bound"}[first]  # fmt: skip
    assert bound in verdict.measurement, verdict.measurement


def test_probes_within_epochs_narrow_the_convergence_counts():
    """Validations within epochs (``TrainConfig.probes``) bracket the update where the target is
    met more closely: 15 against 30 updates, which epoch ends alone leave at 20 against 20."""
    from gatedrnn.claims.verdicts import _bounds_to, _convergence

    def probed(met_at: int) -> dict:  # validated every 5 updates, 10 to an epoch
        run = _history(3)
        for record in run["history"]:
            middle = record["updates"] - 5
            value = 4.0 if middle >= met_at else 5.0
            record["probes"] = [{"valid": {"nll": value}, "updates": middle,
                                 "elapsed": middle / 10}]  # fmt: skip
            record["valid"]["nll"] = 4.0 if record["updates"] >= met_at else 5.0
        return run

    fast, slow = probed(15), probed(30)
    assert _bounds_to(fast["history"], "nll", 4.0, False, "updates") == (10, 15)
    assert _bounds_to(slow["history"], "nll", 4.0, False, "updates") == (25, 30)
    assert _bounds_to(fast["history"], "nll", 4.0, False, "elapsed") == (1.0, 1.5)
    verdict = _convergence([fast] * 3, [slow] * 3, "t / w", "nll", higher=False)
    assert verdict.verdict == "supported", verdict
    assert "(between validations: 0.333–0.6)" in verdict.measurement
    for run in (fast, slow):  # the same runs validated at epoch ends only
        for record in run["history"]:
            del record["probes"]
    verdict = _convergence([fast] * 3, [slow] * 3, "t / w", "nll", higher=False)
    assert verdict.verdict == "inconclusive", verdict


def test_a_timing_on_a_busy_machine_decides_nothing():
    """Where the timing's threads waited for a core more than CONTENDED of their time (other
    programs had the cores), the rounds may favour either cell consistently: no verdict, and
    the measurement says why and what to do."""
    from gatedrnn.claims.verdicts import _speed

    trials = [{"seconds_per_epoch": 1.0, "environment": {"device": "cpu"}, "backend": "cpu"}] * 3
    rounds = ([1.6, 1.62, 1.58, 1.61], [1.0, 1.01, 0.99, 1.0])  # as a busy timing read it
    quiet = _speed(trials, trials, "t / w", rounds, [0.01, 0.02, 0.0, 0.01])
    assert quiet.verdict == "contradicted" and quiet.details["waited"] == pytest.approx(0.01)
    busy = _speed(trials, trials, "t / w", rounds, [0.3, 0.4, 0.35, 0.35])
    assert busy.verdict == "inconclusive" and busy.details["waited"] == pytest.approx(0.35)
    assert "the machine was busy while it was timed" in busy.measurement
    assert "waited for a core 35% of the time" in busy.measurement
    assert "rounds would decide" not in busy.measurement
    unknown = _speed(trials, trials, "t / w", rounds, None)  # stored before it was measured
    assert unknown.verdict == "contradicted" and unknown.details["waited"] is None


def test_time_and_memory_need_one_backend():
    """A GRU on one backend against an LSTM on another measures the implementations: the time
    and memory verdicts are inconclusive and say why (the claims compare on one backend)."""
    from gatedrnn.claims.verdicts import _memory, _speed

    def trials(seconds, saved, backend):
        common = {"saved_bytes": saved, "parameters": 1000, "backend": backend}
        return [
            {"seconds_per_epoch": s, "environment": {"device": "cuda"}, **common} for s in seconds
        ]

    fast, slow = [0.20, 0.21, 0.19], [0.30, 0.31, 0.29]
    same = _speed(trials(fast, 1e6, "triton"), trials(slow, 2e6, "triton"), "t / w")
    assert same.verdict == "supported" and "triton vs triton" in same.measurement
    mixed = _speed(trials(fast, 1e6, "triton"), trials(slow, 2e6, "cudnn"), "t / w")
    assert mixed.verdict == "inconclusive"
    assert "different backends (triton vs cudnn)" in mixed.measurement
    noisy = ([0.0180, 0.0200, 0.0160], [0.0200, 0.0200, 0.0200])  # more rounds would not help
    mixed = _speed(trials(fast, 1e6, "triton"), trials(slow, 2e6, "cudnn"), "t / w", noisy)
    assert "would decide" not in mixed.measurement and "as fast" not in mixed.measurement
    assert not mixed.details.get("rounds_needed")
    assert _memory(trials(fast, 1e6, "cpu"), trials(slow, 2e6, "cpu"), "t").verdict == "supported"
    memory = _memory(trials(fast, 1e6, "cpu"), trials(slow, 2e6, "cpu,cudnn"), "t")
    assert memory.verdict == "inconclusive" and "compares implementations" in memory.measurement


@pytest.mark.parametrize(
    "peaks, expected",
    [
        (None, "supported"),  # on the CPU: the count alone
        ((3e6, 5e6), "supported"),  # the device's peak agrees with the count
        ((5e6, 3e6), "inconclusive"),  # it does not
        ((4e6, 4e6), "inconclusive"),  # no difference on the device
    ],
)
def test_memory_on_cuda_needs_the_peak_to_agree(peaks, expected):
    from gatedrnn.claims.verdicts import _memory

    def trials(saved, peak):
        return [
            {"saved_bytes": saved, "parameters": 1000, "backend": "cudnn", "peak_cuda_bytes": peak}
            for _ in range(3)
        ]

    pa, pb = peaks or (None, None)
    verdict = _memory(trials(1e6, pa), trials(2e6, pb), "t / equal_hidden")
    assert verdict.verdict == expected, verdict
    if peaks:
        assert f"CUDA peak {pa / 1e6:.2f} MB vs {pb / 1e6:.2f} MB" in verdict.measurement
        assert verdict.details["peak_cuda_candidate"] == pa
    else:
        assert "CUDA" not in verdict.measurement
    if peaks and peaks[0] > peaks[1]:
        assert "disagree" in verdict.measurement


def test_simpler_reads_the_variant_and_its_biases_from_the_options():
    """A run's cell options hold layer keywords (bias, init, forget_bias) besides the variant;
    the definition's cost takes the variant and the biases."""
    from gatedrnn.claims.verdicts import _simpler

    gru = {"cell": "gru", "cell_options": {"bias": False, "init": "orthogonal"}}
    lstm = {"cell": "lstm", "cell_options": {"forget_bias": 1.0, "peepholes": True}}
    verdict = _simpler(gru, lstm, "gru", "lstm")
    assert verdict.verdict == "supported"
    assert (
        verdict.details["candidate"]["pointwise_flops"]
        < (
            _simpler({"cell": "gru", "cell_options": {}}, lstm, "gru", "lstm").details["candidate"][
                "pointwise_flops"
            ]
        )
    )


def test_generalization_needs_a_reduced_training_set(self_study):
    """Trained on the whole training set only, the test difference is the 'comparable' claim's;
    'better generalization on small data' is then not measured, and says why."""
    whole = [t for t in self_study if t["fraction"] == 1.0]
    verdicts = evaluate_claims(whole, "gru", "lstm")
    assert not [v for v in verdicts if v.claim == "better generalization"]
    summary = overall(verdicts)
    assert summary["better generalization"] == (
        "inconclusive",
        "not measured: needs a training fraction below 1",
    )
    assert [v.scope for v in evaluate_claims(self_study, "gru", "lstm")
            if v.claim == "better generalization"] == [
        "adding / equal_hidden / 0.5 of train", "adding / equal_params / 0.5 of train",
        "jsb / equal_hidden / 0.5 of train", "jsb / equal_params / 0.5 of train",
    ]  # fmt: skip


def _tested(values: list[float]) -> list[dict]:
    return [{"test": {"nll": v}, "train": {"nll": v - 1.0}} for v in values]


def test_an_inconclusive_verdict_over_seeds_says_how_many_would_decide_it():
    """Where seeds left the interval across the line, the verdict says how many seeds would
    settle it at the observed mean and spread; a decided one does not."""
    from gatedrnn.claims.stats import seeds_for_equivalence, seeds_to_exclude
    from gatedrnn.claims.verdicts import _comparable, _generalization

    gru, lstm = [4.0, 4.6, 3.9], [4.3, 4.4, 4.5]  # GRU better by 0.23 on average, noisily
    diffs = [a - b for a, b in zip(gru, lstm, strict=True)]
    wide = _generalization(_tested(gru), _tested(lstm), "t / w / 0.3", "nll", higher=False)
    assert wide.verdict == "inconclusive"
    needed = seeds_to_exclude(diffs)
    assert needed is not None and wide.details["seeds_needed"] == needed
    assert f"; ~{needed} seeds would decide it at this mean and spread" in wide.measurement

    same = _comparable(_tested(gru), _tested(lstm), "t / w", "nll", higher=False)
    assert same.verdict == "inconclusive"  # the mean, 0.23, is past the 2% margin (0.088)
    assert same.details["seeds_needed"] == seeds_to_exclude(diffs, -same.details["margin"])

    close = [4.30, 4.45, 4.35]  # within the margin on average: more seeds would show it
    near = _comparable(_tested(close), _tested(lstm), "t / w", "nll", higher=False)
    assert near.verdict == "inconclusive"
    margin = near.details["margin"]
    expected = seeds_for_equivalence([a - b for a, b in zip(close, lstm, strict=True)], margin)
    assert near.details["seeds_needed"] == expected is not None

    clear = _generalization(_tested([3.0, 3.1, 3.05]), _tested(lstm), "t", "nll", higher=False)
    assert clear.verdict == "supported" and "seeds" not in clear.measurement
    assert clear.details["seeds_needed"] is None
    noise = _generalization(_tested([4.3, 4.6, 4.3]), _tested(lstm), "t", "nll", higher=False)
    assert "; not decided by up to 1000 seeds" in noise.measurement


def test_an_inconclusive_convergence_verdict_says_how_many_seeds_would_decide_it():
    """The seeds are counted on the least favourable ends of each count (the ones the verdict
    reads); where those do not clear the margin on average, no number of seeds would."""
    from gatedrnn.claims.stats import seeds_to_exclude
    from gatedrnn.claims.verdicts import _convergence

    a, b = [_history(e) for e in (3, 7, 3)], [_history(e) for e in (8, 8, 9)]
    noisy = _convergence(a, b, "t / w", "nll", higher=False)
    assert noisy.verdict == "inconclusive"
    logs = [math.log(x / y) for x, y in zip((30, 70, 30), (70, 70, 80), strict=True)]
    needed = seeds_to_exclude(logs, math.log(0.95))
    assert needed is not None and noisy.details["seeds_needed"] == needed
    assert f"~{needed} seeds would decide it" in noisy.measurement

    # 20 against 30 updates, but the ends of the epochs allow 20 against 20: the epochs are
    # too coarse for any number of seeds, and the verdict says so (not "up to 1000 seeds")
    close = _convergence([_history(2)] * 2, [_history(3)] * 2, "t / w", "nll", higher=False)
    assert close.details["seeds_needed"] is None
    assert "more seeds would not decide it" in close.measurement
    assert "the ratio is 1; validating within epochs (train.probes)" in close.measurement
    even = _convergence([_history(3), _history(4)], [_history(4), _history(3)], "t / w", "nll",
                        higher=False)  # fmt: skip
    assert "not decided by up to 1000 seeds" in even.measurement  # a ratio of 1: seeds it is
    slower = _convergence(b, a, "t / w", "nll", higher=False)  # the same counts, swapped
    assert slower.verdict == "inconclusive"
    assert slower.details["seeds_needed"] == seeds_to_exclude([-x for x in logs], math.log(1.05))


def test_the_seed_advice_counts_the_scopes_each_number_would_decide():
    from gatedrnn.claims import ClaimVerdict, seeds_advice

    def verdict(needed, outcome="inconclusive"):
        return ClaimVerdict("better generalization", "t", outcome, "", {"seeds_needed": needed})

    speed = ClaimVerdict("faster training", "t", "inconclusive", "", {})  # not over seeds
    found = [verdict(7), verdict(4), verdict(None), verdict(4), verdict(5, "supported"), speed]
    assert seeds_advice(found) == (
        "Of the 4 inconclusive scopes measured over seeds, at their observed means and spreads "
        "4 seeds in all would decide 2 of them, 7 seeds 3; 1 would need more than 1000."
    )
    assert seeds_advice([verdict(None)]).endswith("none would be decided by 1000 seeds.")
    assert seeds_advice([verdict(5, "supported"), speed]) is None


def test_speed_over_rounds_says_how_many_rounds_would_decide():
    """An inconclusive ratio over interleaved rounds says how many rounds would decide it at its
    mean and spread (and the advice sums them up), or that its mean lies within the margin, where
    more rounds would only show the two as fast."""
    from gatedrnn.claims.stats import paired_ratio
    from gatedrnn.claims.verdicts import _speed, rounds_advice

    trials = [{"seconds_per_epoch": 0.05, "environment": {"device": "cpu"}, "backend": "cpu"}] * 3
    noisy = ([0.0180, 0.0200, 0.0160], [0.0200, 0.0200, 0.0200])  # ~0.90, a wide interval
    verdict = _speed(trials, trials, "t / w", noisy)
    needed = verdict.details["rounds_needed"]
    assert verdict.verdict == "inconclusive" and needed > 3
    assert f"~{needed} interleaved rounds would decide it" in verdict.measurement
    # that many rounds with the same mean and spread do decide it, one fewer does not
    a, b = noisy

    def rounds(n):
        return (a * (n // 3 + 1))[:n], (b * (n // 3 + 1))[:n]

    assert paired_ratio(*rounds(needed * 3)).high < 0.95  # the spread shrinks as it should
    assert rounds_advice([verdict]) == (
        "Of the inconclusive speed scopes timed in interleaved rounds, at their observed means "
        f"and spreads {needed} rounds would decide 1 of them."
    )
    near = ([0.0196, 0.0216, 0.0176], [0.0200, 0.0200, 0.0200])  # ~0.98, as wide
    verdict = _speed(trials, trials, "t / w", near)
    assert verdict.verdict == "inconclusive" and verdict.details["rounds_needed"] is None
    assert "its mean is within ±5%: more rounds would show the two as fast" in verdict.measurement
    assert rounds_advice([verdict]) is None
