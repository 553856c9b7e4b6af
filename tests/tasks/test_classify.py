"""Sequence classification: SST-2 and the user's own files (TSV text, .npz and long CSV feature
sequences): readers on small files in each format, every malformed file's message, splits, the
regression path, and SST-2's real split sizes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gatedrnn.data.registry import DataMissingError, locate
from gatedrnn.tasks import build_task
from gatedrnn.tasks.classify import (
    read_sequence_csv,
    read_sequence_npz,
    read_text_tsv,
    stratified_split,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def write_text(path: Path, n: int = 60) -> Path:
    """A learnable TSV: 'good …' lines are pos, 'bad …' lines neg."""
    rng = np.random.default_rng(0)
    lines = ["label\ttext"]
    for i in range(n):
        label = "pos" if i % 2 else "neg"
        word = "good" if label == "pos" else "bad"
        filler = " ".join(rng.choice(["the", "a", "film", "plot", "was"], 4))
        lines.append(f"{label}\t{filler} {word} {filler}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_npz(path: Path, n: int = 80, ragged: bool = True, regression: bool = False) -> Path:
    """A learnable set: class 1 sequences drift upwards, class 0 downwards."""
    rng = np.random.default_rng(1)
    lengths = rng.integers(3, 9, n)
    labels = np.arange(n) % 2
    seqs = [
        np.cumsum(rng.normal(0.5 if y else -0.5, 0.3, (L, 2)), axis=0)
        for y, L in zip(labels, lengths, strict=True)
    ]
    if ragged:
        features = np.concatenate(seqs)
    else:
        features = np.zeros((n, lengths.max(), 2))
        for i, s in enumerate(seqs):
            features[i, : len(s)] = s
    targets = np.array([s[-1, 0] for s in seqs]) if regression else labels
    np.savez(path, features=features, lengths=lengths, labels=targets)
    return path


def test_text_tsv_with_header(tmp_path):
    rows = read_text_tsv(write_text(tmp_path / "t.tsv", 4))
    assert len(rows) == 4 and rows[0][0] == "neg" and "bad" in rows[0][1]


@pytest.mark.parametrize(
    "text, message",
    [
        ("pos\tfine\nneg no tab here\n", r"line 2: expected label<TAB>text, found no tab"),
        ("pos\tfine\n\tnothing\n", r"line 2: the label is empty"),
        ("pos\tfine\nneg\t   \n", r"line 2: the text is empty"),
        ("\n\n", "no examples"),
    ],
)
def test_malformed_text_tsv(tmp_path, text, message):
    path = tmp_path / "bad.tsv"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        read_text_tsv(path)


def test_missing_user_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.tsv: no such file"):
        build_task("textcls", path=str(tmp_path / "nope.tsv"))
    with pytest.raises(FileNotFoundError, match=r"nope\.npz: no such file"):
        build_task("seqcls", path=str(tmp_path / "nope.npz"))


def test_textcls_splits_and_errors(tmp_path):
    task = build_task("textcls", path=str(write_text(tmp_path / "t.tsv", 100)))
    assert task.classes == ("neg", "pos")
    assert [len(task.data[s]) for s in ("train", "valid", "test")] == [80, 10, 10]
    one = tmp_path / "one.tsv"
    one.write_text("pos\tgood\n" * 30)
    with pytest.raises(ValueError, match=r"one\.tsv: only one class \('pos'\)"):
        build_task("textcls", path=str(one))
    with pytest.raises(ValueError, match="give either path= or train="):
        build_task("textcls", path=str(one), train=str(one))
    with pytest.raises(ValueError, match=r"needs path=FILE\.tsv .* got train"):
        build_task("textcls", train=str(one))
    train, other = write_text(tmp_path / "a.tsv", 10), tmp_path / "b.tsv"
    other.write_text("maybe\tso so\n")
    with pytest.raises(ValueError, match=r"b\.tsv: labels \['maybe'\] never seen in train"):
        build_task("textcls", train=str(train), valid=str(other), test=str(train))


def test_stratified_split_keeps_class_shares():
    labels = [0] * 50 + [1] * 150
    parts = stratified_split(labels, 3, "x")
    assert sorted(parts["train"] + parts["valid"] + parts["test"]) == list(range(200))
    assert sum(labels[i] for i in parts["valid"]) == 15 and len(parts["valid"]) == 20
    with pytest.raises(ValueError, match="too few examples"):
        stratified_split([0, 1, 0], 0, "tiny.tsv")


@pytest.mark.parametrize("ragged", [True, False])
def test_npz_padded_and_ragged_read_the_same(tmp_path, ragged):
    sequences, labels, split = read_sequence_npz(write_npz(tmp_path / "s.npz", 6, ragged))
    reference, _, _ = read_sequence_npz(write_npz(tmp_path / "r.npz", 6, True))
    assert split is None and labels.tolist() == [0, 1, 0, 1, 0, 1]
    assert all(np.allclose(a, b) for a, b in zip(sequences, reference, strict=True))


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"features": np.zeros((5, 2)), "labels": np.zeros(2)}, "ragged sequences need lengths"),
        ({"features": np.zeros((5, 2)), "lengths": np.array([2, 2]), "labels": np.zeros(2)},
         "lengths sum to 4 but features has 5 steps"),
        ({"features": np.zeros((2, 3, 1)), "labels": np.zeros(2), "lengths": np.array([3, 0])},
         "sequence 1 is empty"),
        ({"features": np.full((2, 3, 1), np.nan), "labels": np.zeros(2)}, "sequence 0 holds NaN"),
        ({"features": np.zeros((2, 3, 1))}, r"missing \['labels'\]"),
        ({"features": np.zeros((3, 3, 1)), "labels": np.zeros(2)}, "holds 3 sequences, labels 2"),
        ({"features": np.zeros((2, 3, 1)), "labels": np.zeros(2), "lengths": np.array([3, 9])},
         r"each in \[1, 3\]"),
    ],
)  # fmt: skip
def test_malformed_npz(tmp_path, arrays, message):
    with pytest.raises(ValueError, match=message):
        read_sequence_npz(_npz(tmp_path / "bad.npz", **arrays))


def test_npz_that_is_not_one(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"junk\.npz: not a readable \.npz file"):
        read_sequence_npz(path)


def _csv(path, text):
    path.write_text(text)
    return path


def test_long_csv(tmp_path):
    path = _csv(tmp_path / "s.csv", "id,t,x,y,label\na,1,0.5,1,up\na,0,0.1,2,up\nb,0,3,4,down\n")
    sequences, labels, split = read_sequence_csv(path)
    assert labels.tolist() == ["up", "down"] and split is None
    assert np.allclose(sequences[0], [[0.1, 2], [0.5, 1]])  # sorted by t


@pytest.mark.parametrize(
    "text, message",
    [
        ("id,x,label\na,1,up\n", r"missing columns \['t'\]"),
        ("id,t,label\na,0,up\n", "no feature columns"),
        ("id,t,x,label\na,0,1,up\na,1,2,down\n", "line 3: sequence 'a' changes label"),
        ("id,t,x,label\na,0,nan,up\n", "line 2: NaN or infinite feature"),
        ("id,t,x,label\na,0,1,\n", "line 2: the label is missing"),
        ("id,t,x,label\na,0,abc,up\n", "line 2: not a number"),
    ],
)
def test_malformed_csv(tmp_path, text, message):
    with pytest.raises(ValueError, match=message):
        read_sequence_csv(_csv(tmp_path / "bad.csv", text))


def test_seqcls_regression_and_own_split(tmp_path):
    task = build_task("seqcls", path=str(write_npz(tmp_path / "r.npz", 50, regression=True)))
    assert task.regression and task.metrics[0].name == "mse"
    model = task.build_model("gru", 8)
    assert set(task.evaluate(model, "valid")) == {"mse"}
    split = np.array(["train"] * 40 + ["valid"] * 5 + ["test"] * 5)
    path = tmp_path / "s.npz"
    np.savez(path, features=np.random.rand(50, 4, 3), labels=np.arange(50) % 3, split=split)
    task = build_task("seqcls", path=str(path))
    assert [len(task.data[s]) for s in ("train", "valid", "test")] == [40, 5, 5]
    assert task.classes == ("0", "1", "2") and task.input_size == 3
    np.savez(path, features=np.random.rand(4, 4, 3), labels=np.arange(4) % 2,
             split=np.array(["train", "train", "valid", "dev"]))  # fmt: skip
    with pytest.raises(ValueError, match=r"split values \['dev'\]"):
        build_task("seqcls", path=str(path))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("name", ["textcls", "seqcls"])
def test_user_tasks_learn(tmp_path, name, cell):
    torch.manual_seed(0)
    path = (
        write_text(tmp_path / "t.tsv", 200)
        if name == "textcls"
        else write_npz(tmp_path / "s.npz", 200)
    )
    task = build_task(name, path=str(path))
    model = task.build_model(cell, 16)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = task.evaluate(model, "train")["xent"]
    for epoch in range(6):
        for batch in task.batches("train", 16, shuffle=True, seed=epoch):
            loss, n = task.loss(model, batch)
            optimizer.zero_grad()
            (loss / n).backward()
            optimizer.step()
    after = task.evaluate(model, "valid")
    assert task.evaluate(model, "train")["xent"] < 0.7 * before
    assert after["accuracy"] >= 0.8, after


@pytest.mark.realdata
def test_real_sst2_has_the_published_splits():
    try:
        locate("sst2", SHARED, verify=False)
    except DataMissingError:
        pytest.skip("../shared/data holds no sst")
    task = build_task("sst2", data_dir=SHARED)
    assert [len(task.data[s]) for s in ("train", "valid", "test")] == [6920, 872, 1821]
    labels = [y for _, y in task.data["train"]]
    assert labels.count(1) == 3610 and labels.count(0) == 3310


@pytest.mark.parametrize("name", ["textcls", "seqcls"])
def test_user_tasks_stack_layers_with_dropout(tmp_path, name):
    path = write_text(tmp_path / "t.tsv") if name == "textcls" else write_npz(tmp_path / "s.npz")
    task = build_task(name, path=str(path), dropout=0.2)
    model = task.build_model("lstm", 8, 2, backend="auto", dropout=0.3)
    loss, n = task.loss(model, next(iter(task.batches("train", 4))))
    assert torch.isfinite(loss) and n == 4
