"""Tasks: metrics against hand-computed values, fractions, and a smoke training run for every
task × cell whose loss drops."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gatedrnn.data.registry import DataMissingError, get_dataset, locate
from gatedrnn.tasks import TASKS, build_task
from gatedrnn.tasks.adding import TRIVIAL_MSE

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def build_or_skip(name: str, **options):
    """``build_task``, reading ../shared/data for tasks whose data is not embedded (skips where
    it is absent)."""
    if TASKS[name].reads_user_file:
        pytest.skip(
            f"{name} reads the user's file: trained in test_classify.py::test_user_tasks_learn"
        )
    dataset = TASKS[name].dataset
    if dataset and get_dataset(dataset).embedded is None:
        try:
            locate(dataset, SHARED, verify=False)
        except DataMissingError:
            pytest.skip(f"{name}: ../shared/data holds no {dataset!r}")
        options["data_dir"] = SHARED
    return build_task(name, **options)


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
    with pytest.raises(ValueError, match="unknown task 'nope'; expected one of: adding, "):
        build_task("nope")


def test_music_chunks_cover_every_transition_once():
    whole = build_task("jsb", smoke=True)
    cut = build_task("jsb", smoke=True, chunk=10)
    assert max(len(r) for r in cut.splits["train"]) == 10
    transitions = sum(len(r) - 1 for r in whole.splits["train"])
    assert sum(len(r) - 1 for r in cut.splits["train"]) == transitions
    with pytest.raises(ValueError, match=r"chunk must be 0 .* or >= 2, got 1"):
        build_task("jsb", chunk=1)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_smoke_training_lowers_the_loss(task_name, cell):
    torch.manual_seed(0)
    task = build_or_skip(task_name, smoke=True)
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


def test_copy_layout_and_chance_scores():
    from gatedrnn.tasks.copy import DELIMITER, SYMBOLS, TRIVIAL_XENT

    task = build_task("copy", steps=7)
    inputs, targets = task.splits["train"]
    T = 7 + 2 * SYMBOLS
    assert inputs.shape[0] == T and targets.shape[0] == T
    symbols = inputs[:SYMBOLS].argmax(-1)
    assert bool(((symbols >= 1) & (symbols <= 8)).all())
    assert bool((inputs[T - SYMBOLS - 1].argmax(-1) == DELIMITER).all())
    assert torch.equal(targets[-SYMBOLS:], symbols)
    assert bool((targets[:-SYMBOLS] == 0).all())

    class Uniform(nn.Module):  # every symbol 1–8 equally likely, nothing else
        def forward(self, inputs, lengths=None):
            logits = torch.full((*inputs.shape[:2], 10), -1e9)
            logits[..., 1:9] = 0.0
            return logits

    metrics = task.evaluate(Uniform(), "valid")
    assert metrics["xent"] == pytest.approx(TRIVIAL_XENT, rel=1e-6)
    assert 0.08 < metrics["accuracy"] < 0.17  # argmax picks symbol 1: right 1/8 of the time


def _lm_task(tmp_path, monkeypatch, **options):
    """A ptb task over small gzip'd files in the real format (the registry's checksums are for
    the real files, so ``locate`` is pointed at these)."""
    import gzip

    import gatedrnn.tasks.language as language

    folder = tmp_path / "ptb"
    folder.mkdir()
    lines = {"train": " a b c d\n e f a b\n c d e f\n", "valid": " a b\n f\n", "test": " c\n"}
    for split, text in lines.items():
        with gzip.open(folder / f"ptb.{split}.txt.gz", "wt") as f:
            f.write(text * 4)
    monkeypatch.setattr(language, "locate", lambda name, data_dir: folder)
    return build_task("ptb", **options)


def test_language_model_batches_continue_each_stream(tmp_path, monkeypatch):
    task = _lm_task(tmp_path, monkeypatch, bptt=3)
    stream = task.splits["train"]
    batches = list(task.batches("train", 2))
    assert [b.carry for b in batches] == [False] + [True] * (len(batches) - 1)
    steps = (len(stream) - 1) // 2
    column0 = torch.cat([b.inputs[:, 0] for b in batches])
    assert torch.equal(column0, stream[:steps])  # the first stream, in order, window after window
    assert torch.equal(torch.cat([b.targets[:, 0] for b in batches]), stream[1 : steps + 1])


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size(tmp_path, monkeypatch):
    task = _lm_task(tmp_path, monkeypatch, bptt=4)

    class Uniform(nn.Module):
        def forward(self, tokens, lengths=None, carry=False):
            return torch.zeros(*tokens.shape, len(task.vocabulary))

    assert task.evaluate(Uniform(), "valid")["ppl"] == pytest.approx(len(task.vocabulary))


def test_language_model_carries_state_only_when_asked(tmp_path, monkeypatch):
    task = _lm_task(tmp_path, monkeypatch, bptt=3)
    model = task.build_model("gru", 8)
    first = next(iter(task.batches("train", 2)))
    fresh = model(first.inputs)
    again = model(first.inputs, carry=True)  # starts from the state the first call left
    assert not torch.allclose(fresh, again)
    assert torch.allclose(model(first.inputs), fresh)  # carry=False starts from zeros again
    assert not model.state.requires_grad  # detached: gradients stop at the window


def test_zaremba_presets_are_valid_train_configs():
    from gatedrnn.tasks.language import PRESETS
    from gatedrnn.train.config import TrainConfig

    for preset in PRESETS.values():
        config = TrainConfig.from_dict({**preset, "cell": "lstm"})
        assert config.schedule == "step" and config.num_layers == 2


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_truncated_bptt_windows_equal_one_pass(tmp_path, monkeypatch, cell):
    task = _lm_task(tmp_path, monkeypatch, bptt=3)
    torch.manual_seed(0)
    model = task.build_model(cell, 8).eval()
    batches = list(task.batches("train", 2))
    with torch.no_grad():
        windowed = torch.cat([model(b.inputs, carry=b.carry) for b in batches])
        whole = model(torch.cat([b.inputs for b in batches]))
    torch.testing.assert_close(windowed, whole, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task_name", sorted(TASKS))
def test_stacked_models_take_the_layer_options_the_loop_passes(task_name):
    task = build_or_skip(task_name, smoke=True)
    model = task.build_model("gru", 8, 2, backend="auto", dropout=0.3, reset="before")
    loss, n = task.loss(model, next(iter(task.batches("train", 4))))
    assert torch.isfinite(loss) and n > 0


def test_output_layer_is_nn_linear_wherever_it_runs():
    """The language model's head (:class:`OutputLayer`): nn.Linear's parameters and state_dict,
    and its results and gradients, whichever GEMM runs it (ours from 128 rows on the CPU where
    ours takes the many-row products; torch's below)."""
    from gatedrnn.tasks.language import LanguageModel
    from gatedrnn.tasks.models import OutputLayer

    model = LanguageModel("gru", 50, 16)
    assert isinstance(model.head, OutputLayer) and isinstance(model.head, nn.Linear)
    plain = nn.Linear(16, 50)
    plain.load_state_dict(model.head.state_dict())
    assert model.head.state_dict().keys() == plain.state_dict().keys()
    for rows in (4, 200):
        x = torch.randn(rows, 16, requires_grad=True)
        ours, theirs = model.head(x), plain(x)
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
        dy = torch.randn_like(ours)
        got = torch.autograd.grad(ours, [x, model.head.weight, model.head.bias], dy)
        want = torch.autograd.grad(theirs, [x, plain.weight, plain.bias], dy)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
