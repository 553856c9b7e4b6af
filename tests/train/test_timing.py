"""Interleaved timing of training steps (the speed claim's measurement): every configuration gets
the same steps on the same batches, round after round; what it measures follows the work."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys

import pytest

from gatedrnn.train import TrainConfig
from gatedrnn.train.timing import time_steps

SMOKE = dict(task="jsb", smoke=True, batch_size=8, lr=1e-2)


def test_every_configuration_gets_every_round_and_equal_steps():
    configs = {
        "gru": TrainConfig(cell="gru", hidden_size=8, **SMOKE),
        "lstm": TrainConfig(cell="lstm", hidden_size=8, **SMOKE),
        "gru-copy": TrainConfig(cell="gru", hidden_size=8, **SMOKE),
    }
    seconds, steps, waited = time_steps(configs, rounds=3, block=0.005)
    assert list(seconds) == ["gru", "lstm", "gru-copy"]
    assert len(waited) == 3 and all(w is None or w >= 0 for w in waited)
    assert all(len(values) == 3 and min(values) > 0 for values in seconds.values())
    assert steps >= 2 and steps % 2 == 0  # A B C C B A: two runs of steps / 2 each


def test_no_configuration_is_always_the_one_run_twice_in_a_row(monkeypatch):
    """Each round runs A B C C B A; the run that follows its own configuration (its weights in
    cache) goes to each configuration in turn, as the order rotates. Unrotated, C had it in every
    round and A at every round's start, and two copies of one cell timed over 5% apart."""
    from gatedrnn.train import timing

    ran = []
    step = timing._step

    def spy(task, model, *args):
        ran.append(id(model))
        return step(task, model, *args)

    monkeypatch.setattr(timing, "_step", spy)
    configs = {label: TrainConfig(cell="gru", hidden_size=8, **SMOKE) for label in "abc"}
    _, steps, _ = time_steps(configs, rounds=3, block=0.005)
    per_run = steps // 2
    runs = [ran[i] for i in range(len(ran) - 3 * 6 * per_run, len(ran), per_run)]  # the rounds
    rounds = [runs[6 * r : 6 * r + 6] for r in range(3)]
    assert all(order[:3] == order[3:][::-1] for order in rounds)  # mirrored
    twice = [order[2] for order in rounds]  # the middle: one configuration twice in a row
    assert len(set(twice)) == 3
    assert all(rounds[r][0] != rounds[r - 1][-1] for r in (1, 2))  # none across rounds


def test_the_slower_configuration_is_measured_slower():
    """Not a speed target: a model with 64× the hidden size (thousands of times the recurrent
    work; 16× the step time on an idle machine) must come out slower, or the labels are
    crossed. Medians over rounds: on a loaded machine single rounds swing several-fold."""
    small = TrainConfig(cell="gru", hidden_size=8, **SMOKE)
    large = TrainConfig(cell="gru", hidden_size=512, **SMOKE)
    seconds, _, _ = time_steps({"small": small, "large": large}, rounds=3, block=0.02)
    assert statistics.median(seconds["large"]) > 2 * statistics.median(seconds["small"])


@pytest.mark.parametrize(
    "configs, rounds, message",
    [
        ({}, 3, "no configurations to time"),
        ({"a": TrainConfig(**SMOKE)}, 1, "rounds must be at least 2"),
        (
            {"a": TrainConfig(**SMOKE), "b": TrainConfig(**{**SMOKE, "batch_size": 4})},
            3,
            "must share device, task, data and batches",
        ),
        (
            {"a": TrainConfig(**SMOKE), "b": TrainConfig(**{**SMOKE, "task": "adding"})},
            3,
            "must share",
        ),
    ],
)
def test_configurations_that_cannot_be_timed_together_are_refused(configs, rounds, message):
    with pytest.raises(ValueError, match=message):
        time_steps(configs, rounds=rounds)


def test_a_diverging_configuration_is_named():
    hot = TrainConfig(task="adding", cell="rnn", optimizer="sgd", lr=1e12, clip_norm=0,
                      smoke=True, hidden_size=16)  # fmt: skip
    cool = TrainConfig(task="adding", cell="gru", smoke=True, hidden_size=16)
    with pytest.raises(RuntimeError, match="time_steps: hot diverged: "):
        time_steps({"cool": cool, "hot": hot}, rounds=2, block=0.01)


def test_each_configuration_runs_under_its_own_determinism_setting(monkeypatch):
    """As train() does, and the process's setting is restored afterwards."""
    import torch

    seen = []
    original = torch.use_deterministic_algorithms

    def spy(mode, **kwargs):
        seen.append(mode)
        original(mode, **kwargs)

    monkeypatch.setattr(torch, "use_deterministic_algorithms", spy)
    configs = {
        "a": TrainConfig(cell="gru", hidden_size=8, deterministic=True, **SMOKE),
        "b": TrainConfig(cell="gru", hidden_size=8, deterministic=False, **SMOKE),
    }
    before = torch.are_deterministic_algorithms_enabled()
    time_steps(configs, rounds=2, block=0.002)
    assert {True, False} <= set(seen[:-1]) and seen[-1] == before
    assert torch.are_deterministic_algorithms_enabled() == before


def timing_unavailable() -> bool:
    from gatedrnn.train.timing import waited_seconds

    return waited_seconds() is None


def test_a_round_on_a_busy_machine_is_run_again(monkeypatch):
    """A round whose threads waited for a core more than CONTENDED of their time runs again (up
    to RETRIES times); its share is returned with the times."""
    from gatedrnn.train import timing

    calls = []

    def waited():  # read before and after each run: four warm-up runs, then the rounds' runs
        calls.append(1)
        return float(sum(9 <= n <= 16 for n in range(1, len(calls) + 1)))  # round 1's first try

    monkeypatch.setattr(timing, "waited_seconds", waited)
    configs = {label: TrainConfig(cell="gru", hidden_size=8, **SMOKE) for label in "ab"}
    seconds, _, shares = time_steps(configs, rounds=2, block=0.002)
    assert len(calls) == 2 * (4 + 3 * 4)  # round 1 twice (A B B A), round 2 once
    assert shares == [0.0, 0.0]  # the attempts kept were quiet
    assert all(len(v) == 2 for v in seconds.values())


def test_a_machine_that_stays_busy_is_flagged(monkeypatch):
    from gatedrnn.train import timing

    calls = []

    def waited():  # always waiting: every attempt of every round is contended
        calls.append(1)
        return float(len(calls))

    monkeypatch.setattr(timing, "waited_seconds", waited)
    configs = {label: TrainConfig(cell="gru", hidden_size=8, **SMOKE) for label in "ab"}
    _, _, shares = time_steps(configs, rounds=2, block=0.002)
    assert len(shares) == 2 and all(s > timing.CONTENDED for s in shares)
    # four warm-up runs; round 1 tried 1 + 2 times (two rounds: two tries more in all), round 2
    # once, four runs each: a busy machine at most doubles the timing
    assert len(calls) == 2 * (4 + (3 + 1) * 4)


@pytest.mark.real_waits
@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or timing_unavailable(),
    reason="needs Linux's scheduler statistics and CPU affinity",
)
def test_the_wait_for_a_core_is_measured():
    """Another process on the timing's core: the threads' run-queue delay shows it (a share well
    above CONTENDED); alone there, far less."""
    import torch

    from gatedrnn.train import timing

    cpu = min(os.sched_getaffinity(0))
    before_affinity, before_threads = os.sched_getaffinity(0), torch.get_num_threads()
    configs = {label: TrainConfig(cell="gru", hidden_size=32, **SMOKE) for label in "ab"}
    hog = subprocess.Popen(
        [sys.executable, "-c", f"import os; os.sched_setaffinity(0, {{{cpu}}})\nwhile True: pass"]
    )
    try:
        os.sched_setaffinity(0, {cpu})
        torch.set_num_threads(1)
        timing.RETRIES, retries = 0, timing.RETRIES
        try:
            _, _, shares = time_steps(configs, rounds=2, block=0.05)
        finally:
            timing.RETRIES = retries
    finally:
        hog.kill()
        hog.wait()
        os.sched_setaffinity(0, before_affinity)
        torch.set_num_threads(before_threads)
    assert min(shares) > 2 * timing.CONTENDED, shares
