"""Multi30k translation: parallel files in the real layout, their error paths, BLEU against
sacrebleu's own output, greedy = beam of width 1, batches, and the real splits' sizes."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from gatedrnn.data.registry import DataMissingError, locate
from gatedrnn.tasks import build_task
from gatedrnn.tasks.translate import SPLIT_FILES, bleu, read_parallel

sacrebleu = pytest.importorskip("sacrebleu")
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def _gz(path: Path, lines: list[str]) -> Path:
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def write_multi30k(folder: Path) -> Path:
    tok = folder / "tok"
    tok.mkdir(parents=True)
    de = ["ein hund läuft .", "zwei kinder spielen .", "ein mann isst"] * 6
    en = ["a dog runs .", "two children play .", "a man eats"] * 6
    for stem in SPLIT_FILES.values():
        _gz(tok / f"{stem}.lc.norm.tok.de.gz", de)
        _gz(tok / f"{stem}.lc.norm.tok.en.gz", en)
    return folder


def test_parallel_files(tmp_path):
    pairs = read_parallel(
        _gz(tmp_path / "a.de.gz", ["ein hund ."]), _gz(tmp_path / "a.en.gz", ["a dog ."])
    )
    assert pairs == [(["ein", "hund", "."], ["a", "dog", "."])]


def test_parallel_files_errors(tmp_path):
    de, en = _gz(tmp_path / "x.de.gz", ["a", "b"]), _gz(tmp_path / "x.en.gz", ["a"])
    with pytest.raises(ValueError, match=r"x\.de\.gz has 2 lines but .*x\.en\.gz has 1"):
        read_parallel(de, en)
    de, en = _gz(tmp_path / "y.de.gz", ["a", ""]), _gz(tmp_path / "y.en.gz", ["a", "b"])
    with pytest.raises(ValueError, match=r"y\.de\.gz, line 2: empty sentence"):
        read_parallel(de, en)


def test_bleu_is_sacrebleus():
    hyp = [["the", "cat", "sat", "on", "the", "mat"], ["a", "dog", "runs"]]
    ref = [["the", "cat", "is", "on", "the", "mat"], ["a", "dog", "is", "running"]]
    expected = sacrebleu.corpus_bleu(
        ["the cat sat on the mat", "a dog runs"],
        [["the cat is on the mat", "a dog is running"]],
        tokenize="none",
    ).score
    assert bleu(hyp, ref) == pytest.approx(expected)
    assert bleu(ref, ref) == pytest.approx(100.0)


def _task(tmp_path, monkeypatch, **options):
    import gatedrnn.tasks.translate as translate

    folder = write_multi30k(tmp_path / "multi30k")
    monkeypatch.setattr(translate, "locate", lambda name, data_dir: folder)
    translate._read_split.cache_clear()
    return build_task("multi30k", min_count=1, **options)


def test_batches_wrap_targets_in_bos_and_eos(tmp_path, monkeypatch):
    task = _task(tmp_path, monkeypatch)
    batch = next(task.batches("train", 3))
    vocab = task.target_vocabulary.index
    assert batch.inputs.shape == (4, 3) and batch.lengths.tolist() == [4, 4, 3]
    assert batch.targets[0].tolist() == [vocab["<bos>"]] * 3
    assert batch.targets[5, 0] == vocab["<eos>"] and batch.targets[5, 2] == 0  # padding
    assert batch.targets[4, 2] == vocab["<eos>"] and batch.inputs[3, 2] == 0


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_beam_of_width_one_is_greedy_and_training_learns(tmp_path, monkeypatch, cell):
    torch.manual_seed(0)
    task = _task(tmp_path, monkeypatch, beam=3)
    model = task.build_model(cell, 24)
    model.eval()
    greedy = task.translate(model, "valid", beam=1)
    model_beam1 = [
        [list(task.target_vocabulary.index)[i] for i in model.beam(b.inputs[: int(n), j : j + 1],
         int(n), task.max_length, 2, 3, width=1)]
        for b in task.batches("valid", 64)
        for j, n in enumerate(b.lengths)
    ]  # fmt: skip
    assert model_beam1 == greedy
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for epoch in range(30):
        for batch in task.batches("train", 6, shuffle=True, seed=epoch):
            loss, n = task.loss(model, batch)
            optimizer.zero_grad()
            (loss / n).backward()
            optimizer.step()
    metrics = task.evaluate(model, "test")  # beam 3
    assert metrics["bleu"] > 90 and metrics["ppl"] < 1.5, metrics


@pytest.mark.realdata
def test_real_multi30k_splits():
    try:
        locate("multi30k", SHARED, verify=False)
    except DataMissingError:
        pytest.skip("../shared/data holds no multi30k")
    task = build_task("multi30k", data_dir=SHARED)  # checksums verified
    assert [len(task.pairs[s]) for s in ("train", "valid", "test")] == [29000, 1014, 1000]
    assert sum(len(t) for _, t in task.pairs["train"]) == 377_534
    assert sum(len(s) for s, _ in task.pairs["train"]) == 360_706


@pytest.mark.parametrize(
    "cell, options, attributes",
    [
        ("lstm", {"peepholes": True, "forget_bias": 1.0, "init": "orthogonal"},
         {"peepholes": True, "forget_bias": 1.0, "init": "orthogonal"}),
        ("lstm", {"coupled": True, "bias": False}, {"coupled": True, "bias": False}),
        ("rnn", {"nonlinearity": "relu"}, {"nonlinearity": "relu"}),
        ("gru", {"reset": "before"}, {"reset": "before"}),
        ("mingru", {"scan": "sequential"}, {}),  # a cell steps once: no scan to choose
    ],
)  # fmt: skip
def test_the_decoder_is_the_encoders_cell_with_its_options(cell, options, attributes):
    """The variant under study is the decoder too (it used to get only reset and init: an LSTM
    with peepholes decoded with a plain LSTM cell)."""
    from gatedrnn.tasks.translate import Seq2Seq

    model = Seq2Seq(cell, 12, 14, 8, backend="reference", **options)
    for name, value in attributes.items():
        assert getattr(model.encoder, name) == value
        assert getattr(model.decoder, name) == value


@pytest.mark.parametrize("cell", ["gru", "lstm", "rnn", "mgu"])
def test_mixed_precision_training_runs(tmp_path, monkeypatch, cell):
    """``--amp`` (CPU autocast, bfloat16): the encoder's layer gives a bfloat16 state that the
    decoder's cell takes with its own input (every cell refused it before, so the run stopped
    at its first batch), and the loss and gradients come out finite."""
    torch.manual_seed(0)
    task = _task(tmp_path, monkeypatch)
    model = task.build_model(cell, 16)
    batch = next(task.batches("train", 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, n = task.loss(model, batch)
    (loss / n).float().backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32, name
        assert torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_teacher_forcing_is_the_decoding_steps(cell):
    """The teacher-forced forward (the output layer once over every step's features, through
    our GEMM from 128 rows) gives the logits that decoding step by step does, and the same
    gradients."""
    from gatedrnn.tasks.translate import Seq2Seq

    torch.manual_seed(2)
    model = Seq2Seq(cell, 12, 14, 8).eval()
    source, lengths = torch.randint(1, 12, (5, 40)), torch.randint(1, 6, (40,))
    target = torch.randint(1, 14, (6, 40))
    logits = model(source, lengths, target)
    memory, keys, mask, state = model.encode(source, lengths)
    steps = []
    for t in range(5):
        step_logits, state = model.step(target[t], state, memory, keys, mask)
        steps.append(step_logits)
    torch.testing.assert_close(logits, torch.stack(steps), rtol=1e-5, atol=1e-5)
    weights = torch.randn_like(logits)
    got = torch.autograd.grad((logits * weights).sum(), list(model.parameters()))
    want = torch.autograd.grad((torch.stack(steps) * weights).sum(), list(model.parameters()))
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
