"""Interleaved timing of training steps: the configurations a speed claim compares, trained in one
process in turn, block after block, so that the machine's drift and its other tenants touch them
alike.

A study's trials time their own epochs, but they run in a pool beside other trials, and a trial's
neighbours (and whatever else the machine runs meanwhile) move its epochs by tens of percent, the
same way for all of them (seen here: one RNN trial at 31 ms per epoch, the same trial with the
next seed at 67 ms). Here every configuration runs the same batches for the same number of
steps, twice per round in mirrored order (A B C C B A, the order rotated each round: B C A A C B
next), and each round gives one ratio; the interval is over rounds.

Interleaving cancels a drift, not a program that takes the cores while some configurations run
and not others (seen here: a test suite started during a study's timing read one cell 1.6× as
slow as it is, in every round, tightly enough for a verdict). So each round also measures how
long this process's threads waited for a core (the kernel's run-queue delay, where
``/proc/self/task/*/schedstat`` tells it); a round in which they waited more than
:data:`CONTENDED` of their time is run again, up to :data:`RETRIES` times, and each round's
share is returned with the times for the verdict to judge.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from gatedrnn.train.config import TrainConfig
from gatedrnn.train.loop import _build_model, _build_task, _Diverged, _step, _to

__all__ = ["CONTENDED", "RETRIES", "contended", "time_steps", "waited_seconds"]

CONTENDED = 0.10
"""A round whose threads waited for a core more than this share of their time (other programs
had the cores) is contended: run again, and past :data:`RETRIES`, flagged."""

RETRIES = 3
"""How many times a contended round is run again before it is kept, flagged; all the rounds
together run again at most as many times as there are rounds (a machine that stays busy at
most doubles the timing, to the same end)."""


def contended(shares: Sequence[float] | None) -> bool:
    """Whether a timing's rounds (their shares of the time spent waiting for a core, as
    :func:`time_steps` returns them) waited more than :data:`CONTENDED` on average: taken on a
    busy machine, they decide nothing, and a study times the arm again."""
    return bool(shares) and statistics.fmean(shares) > CONTENDED


def waited_seconds() -> float | None:
    """Seconds this process's threads have spent runnable but waiting for a core (the kernel's
    run-queue delay, summed over ``/proc/self/task/*/schedstat``); None where the system does
    not tell it (not Linux, or no scheduler statistics)."""
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return None
    total, read = 0, False
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/schedstat") as stats:
                total += int(stats.read().split()[1])
            read = True
        except (OSError, IndexError, ValueError):  # a thread that ended meanwhile
            continue
    return total / 1e9 if read else None


def time_steps(
    configs: Mapping[str, TrainConfig],
    *,
    rounds: int = 7,
    block: float = 0.05,
    batches: int = 8,
    data_dir: str | Path | None = None,
) -> tuple[dict[str, list[float]], int, list[float | None]]:
    """Seconds per training step of each configuration, one value per round; the steps each
    configuration ran per round; and per round the share of its time the process's threads
    waited for a core (None where the system does not tell it).

    Each model is built as its run builds it (layers, backend, optimizer, initialized from its seed)
    and trains on the first ``batches`` batches of the run's first epoch, cycled. After a warm-up
    through every batch (their shapes differ where sequence lengths do, and the first steps at a new
    shape allocate), each of ``rounds`` rounds runs every configuration twice, in an order and then
    reversed (A B C C B A), so that a drift of the machine's speed within the round cancels, the
    order rotated by one each round (B C A A C B), so that no configuration is always the one run
    twice in a row, with its weights in cache; each run is the same number of steps for all (equal
    work), enough that the fastest configuration's two runs take ``block`` seconds. The
    configurations must share a device and a task with its data and batch size (a GPU is
    synchronized around each run). A round whose threads waited for a core more than
    :data:`CONTENDED` of their time is run again, up to :data:`RETRIES` times (then kept, its
    share telling; at most ``rounds`` runs again in all). Raises ``RuntimeError`` where a
    configuration's loss or gradients stop being finite.
    """
    if not configs:
        raise ValueError("time_steps: no configurations to time")
    if rounds < 2:
        raise ValueError(f"time_steps: rounds must be at least 2 (an interval), got {rounds}")
    devices = {c.device for c in configs.values()}
    tasks = {
        (c.task, json.dumps(c.task_options, sort_keys=True), c.smoke, c.fraction, c.seed,
         c.batch_size)
        for c in configs.values()
    }  # fmt: skip
    if len(devices) > 1 or len(tasks) > 1:
        raise ValueError(
            "time_steps: the configurations must share device, task, data and batches; got "
            f"devices {sorted(devices)} and {len(tasks)} task settings"
        )
    device = torch.device(devices.pop())
    shared = next(iter(configs.values()))
    torch.manual_seed(shared.seed)
    task = _build_task(shared, data_dir)  # one task: the same data and batches for all
    first = task.batches("train", shared.batch_size, shuffle=True, seed=shared.seed * 100_003 + 1)
    data = [_to(b, device) for b in itertools.islice(first, batches)]
    runs = {}
    for label, config in configs.items():
        torch.manual_seed(config.seed)
        model, optimizer = _build_model(config, task, device)
        model.train()
        runs[label] = (model, optimizer, config, itertools.cycle(data))

    def run(label: str, steps: int) -> float:
        """Seconds for ``steps`` steps of ``label``; adds its threads' wait for a core, and
        the time they could have run, to ``waits``."""
        model, optimizer, config, batches = runs[label]
        torch.use_deterministic_algorithms(config.deterministic, warn_only=True)  # as train()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        before = waited_seconds()
        start = time.perf_counter()
        for step in range(1, steps + 1):
            try:
                _step(task, model, optimizer, config, device, next(batches), step)
            except _Diverged as error:
                raise RuntimeError(f"time_steps: {label} diverged: {error}") from None
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        after = waited_seconds()
        if before is not None and after is not None:
            waits[0] += after - before
            waits[1] += seconds * torch.get_num_threads()
        return seconds

    labels = list(configs)
    waits = [0.0, 0.0]  # a round's seconds waiting for a core, and seconds its threads ran
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        for label in labels:  # warm-up: first calls, caches, the allocator at every batch
            run(label, len(data))
        fastest = min(run(label, len(data)) for label in labels) / len(data)
        steps = max(1, math.ceil(block / 2 / max(fastest, 1e-6)))  # per half block
        seconds: dict[str, list[float]] = {label: [] for label in labels}
        shares: list[float | None] = []
        spare = rounds  # rounds run again, in all
        for r in range(rounds):
            # A B … B A: a drift within the round cancels. The one run that follows a run of its
            # own configuration (in the middle) finds its weights in cache; rotating the order
            # each round gives that to each configuration in turn (unrotated, it went to the
            # last every round, and the first gained likewise across rounds: identical copies
            # then differed by over 5%)
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for attempt in range(1 + RETRIES):
                spent = dict.fromkeys(labels, 0.0)
                waits[:] = [0.0, 0.0]
                for label in order + order[::-1]:
                    spent[label] += run(label, steps)
                share = waits[0] / waits[1] if waits[1] > 0 else None
                if share is None or share <= CONTENDED or attempt == RETRIES or not spare:
                    break
                spare -= 1
            for label in labels:
                seconds[label].append(spent[label] / (2 * steps))
            shares.append(share)
    finally:
        torch.use_deterministic_algorithms(previous)
    return seconds, 2 * steps, shares
