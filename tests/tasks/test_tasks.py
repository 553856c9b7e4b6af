"""Tasks: metrics against hand-computed values, fractions, and a smoke training run for every
task × cell whose loss drops."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gatedrnn.tasks import TASKS, build_task
from gatedrnn.tasks.adding import TRIVIAL_MSE


class _Constant(nn.Module):
    def __init__(self, value: float, per_step: bool) -> None:
        super().__init__()
        self.value, self.per_step = value, per_step

    def forward(self, inputs, lengths=None):
        shape = (*inputs.shape[:2], 88) if self.per_step else (inputs.shape[1],)
        return torch.full(shape, self.value)


def test_music_nll_of_even_odds_is_88_log_2_per_step():
    task = build_task("jsb", smoke=True)
    metrics = task.evaluate(_Constant(0.0, per_step=True), "valid")  # every key p = 1/2
    assert metrics["nll"] == pytest.approx(88 * math.log(2), rel=1e-6)


def test_adding_trivial_predictor_scores_one_sixth():
    task = build_task("adding", steps=30)
    mse = task.evaluate(_Constant(1.0, per_step=False), "test")["mse"]
    assert mse == pytest.approx(TRIVIAL_MSE, abs=0.02)  # 1000 samples of Var(u1 + u2)


def test_adding_markers_one_in_each_half():
    task = build_task("adding", smoke=True, steps=10)
    inputs, targets = task.splits["train"]
    markers = inputs[..., 1]
    assert torch.equal(markers[:5].sum(0), torch.ones(markers.shape[1]))
    assert torch.equal(markers[5:].sum(0), torch.ones(markers.shape[1]))
    assert torch.allclose((inputs[..., 0] * markers).sum(0), targets)


def test_fraction_keeps_a_seeded_subset():
    full, tenth = build_task("jsb"), build_task("jsb", fraction=0.1, seed=3)
    assert len(tenth.splits["train"]) == 23
    assert len(tenth.splits["valid"]) == len(full.splits["valid"])
    again = build_task("jsb", fraction=0.1, seed=3)
    pairs = zip(tenth.splits["train"], again.splits["train"], strict=True)
    assert all((a == b).all() for a, b in pairs)
    with pytest.raises(ValueError, match=r"fraction must be in \(0, 1\], got 1.5"):
        build_task("jsb", fraction=1.5)


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'nope'; expected one of: adding, jsb"):
        build_task("nope")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_smoke_training_lowers_the_loss(task_name, cell):
    torch.manual_seed(0)
    task = build_task(task_name, smoke=True)
    model = task.build_model(cell, 32)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)

    def train_loss():
        total, count = 0.0, 0
        with torch.no_grad():
            for batch in task.batches("train", 64):
                loss, n = task.loss(model, batch)
                total, count = total + float(loss), count + n
        return total / count

    before = train_loss()
    for epoch in range(8):
        for batch in task.batches("train", 16, shuffle=True, seed=epoch):
            loss, n = task.loss(model, batch)
            optimizer.zero_grad()
            (loss / n).backward()
            optimizer.step()
    after = train_loss()
    assert after < 0.9 * before, f"{task_name}/{cell}: {before:.4f} -> {after:.4f}"
