"""Sequence classification: SST-2 sentiment (``sst2``), spoken digits (``fsdd``, MFCC sequences),
and the user's own data, text (``textcls``, a TSV of label and text) or feature sequences
(``seqcls``, an ``.npz`` or a long-format CSV).

The model reads the whole sequence (packed: padding never reaches the state) and classifies from
the final state of the last layer; text goes through a learned embedding first. Metrics: accuracy
(the validation target) and cross-entropy per sequence; ``seqcls`` with real-valued labels is a
regression scored by MSE.

Your own files (no code needed)::

    gatedrnn train --task textcls --task-option path=reviews.tsv        # label<TAB>text per line
    gatedrnn train --task seqcls --task-option path=signals.npz         # features, lengths, labels

Splits: the file's own (``train``/``valid``/``test`` paths, or an npz ``split`` array, or a CSV
``split`` column), else a seeded stratified 80 / 10 / 10 split.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.data.registry import locate
from gatedrnn.data.speech import SPEAKERS, mfcc, read_fsdd
from gatedrnn.data.text import Vocabulary, read_labelled_lines
from gatedrnn.nn.packing import pack_padded_sequence
from gatedrnn.tasks.base import (
    Batch,
    Metric,
    Task,
    classification_metrics,
    evaluating,
    register_task,
)
from gatedrnn.tasks.models import make_layer

__all__ = [
    "SST2",
    "LastStateModel",
    "SequenceClassification",
    "SpokenDigits",
    "TextClassification",
    "UserSequences",
    "UserText",
    "read_sequence_csv",
    "read_sequence_npz",
    "read_text_tsv",
    "stratified_split",
]

PAD, UNK = "<pad>", "<unk>"
SPLITS = ("train", "valid", "test")


class LastStateModel(nn.Module):
    """(optional embedding) → gatedrnn layer → final state of the last layer → dropout → linear."""

    def __init__(self, cell: str, input_size: int, hidden_size: int, outputs: int,
                 num_layers: int = 1, *, vocabulary: int = 0, io_dropout: float = 0.0,
                 **layer_options) -> None:  # fmt: skip
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, input_size, padding_idx=0) if vocabulary else None
        self.rnn = make_layer(cell, input_size, hidden_size, num_layers, **layer_options)
        self.drop = nn.Dropout(io_dropout)  # on the final state; the layer's own via options
        self.head = nn.Linear(hidden_size, outputs)

    def forward(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        x = self.embedding(inputs) if self.embedding is not None else inputs
        _, state = self.rnn(pack_padded_sequence(x, lengths, enforce_sorted=False))
        h = state[0] if isinstance(state, tuple) else state
        return self.head(self.drop(h[-1]))  # (B, outputs)


def stratified_split(labels: Sequence, seed: int, where: str) -> dict[str, list[int]]:
    """Indices of a seeded 80 / 10 / 10 split that keeps each class's share in every part."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts: dict[str, list[int]] = {s: [] for s in SPLITS}
    for value in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == value))
        n_valid = n_test = round(0.1 * len(members))
        parts["valid"] += members[:n_valid].tolist()
        parts["test"] += members[n_valid : n_valid + n_test].tolist()
        parts["train"] += members[n_valid + n_test :].tolist()
    for split in SPLITS:
        if not parts[split]:
            raise ValueError(
                f"{where}: too few examples for an 80/10/10 split ({len(labels)}); give the "
                "splits yourself"
            )
    return {s: sorted(v) for s, v in parts.items()}


class SequenceClassification(Task):
    """Shared by the classification tasks: ``self.data[split]`` holds (inputs, label) pairs, inputs
    a (T,) LongTensor of token ids or a (T, F) FloatTensor; ``self.classes`` the label names (an
    empty tuple for regression)."""

    metrics = (Metric("accuracy", higher_is_better=True), Metric("xent", higher_is_better=False))
    data: dict[str, list[tuple[Tensor, float]]]
    classes: tuple[str, ...]
    vocabulary_size = 0
    embedding_size = 0
    dropout = 0.0

    @property
    def regression(self) -> bool:
        return not self.classes

    def _subsample(self, smoke: bool, fraction: float, seed: int) -> None:
        if smoke:
            self.data = {s: v[: 256 if s == "train" else 64] for s, v in self.data.items()}
        elif fraction < 1:
            train = self.data["train"]
            keep = max(1, round(fraction * len(train)))
            order = np.random.default_rng(seed).permutation(len(train))[:keep]
            self.data["train"] = [train[i] for i in sorted(order)]

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> Iterator[Batch]:  # fmt: skip
        examples = self.data[split]
        order = np.random.default_rng(seed).permutation(len(examples)) if shuffle else None
        order = list(range(len(examples))) if order is None else order.tolist()
        for start in range(0, len(order), batch_size):
            chosen = [examples[i] for i in order[start : start + batch_size]]
            lengths = torch.tensor([len(x) for x, _ in chosen])
            T = int(lengths.max())
            first = chosen[0][0]
            inputs = first.new_zeros((T, len(chosen), *first.shape[1:]))
            for b, (x, _) in enumerate(chosen):
                inputs[: len(x), b] = x
            dtype = torch.float32 if self.regression else torch.long
            targets = torch.tensor([y for _, y in chosen], dtype=dtype)
            yield Batch(inputs, lengths, targets)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1,
                    **layer_options) -> nn.Module:  # fmt: skip
        embedded = self.embedding_size or hidden_size
        input_size = embedded if self.vocabulary_size else self.input_size
        outputs = 1 if self.regression else len(self.classes)
        return LastStateModel(
            cell, input_size, hidden_size, outputs, num_layers, vocabulary=self.vocabulary_size,
            io_dropout=self.dropout, **layer_options,
        )  # fmt: skip

    def _outputs(self, model: nn.Module, batch: Batch) -> Tensor:
        out = model(batch.inputs, batch.lengths)
        return out.squeeze(-1) if self.regression else out

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        out = self._outputs(model, batch)
        if self.regression:
            return F.mse_loss(out, batch.targets, reduction="sum"), batch.size
        return F.cross_entropy(out, batch.targets, reduction="sum"), batch.size

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        if self.regression:  # the mean of the loss: MSE
            return super().evaluate(model, split, batch_size)
        with evaluating(model):
            batches = self.eval_batches(model, split, batch_size)
            return classification_metrics((self._outputs(model, b), b.targets) for b in batches)


class TextClassification(SequenceClassification):
    """Token sequences with a vocabulary from the training split (``<pad>`` 0, ``<unk>`` 1 for
    words first seen in valid or test)."""

    def _encode(self, examples: dict[str, list[tuple[int, list[str]]]], where: str) -> None:
        self.vocabulary = Vocabulary(
            (w for _, words in examples["train"] for w in words), extra=(PAD, UNK)
        )
        self.vocabulary_size = self.input_size = len(self.vocabulary)
        self.output_size = len(self.classes)
        self.data = {
            split: [
                (torch.tensor(self.vocabulary.encode(words, unknown=UNK)), label)
                for label, words in pairs
            ]
            for split, pairs in examples.items()
        }


@register_task
class SST2(TextClassification):
    name = "sst2"
    description = "SST-2 sentence sentiment (stsa.binary); accuracy"
    dataset = "sst2"
    classes = ("negative", "positive")

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 data_dir: str | Path | None = None, embedding_size: int = 0,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        folder = locate(self.dataset, data_dir)
        files = {"train": "stsa.binary.train.gz", "valid": "stsa.binary.dev.gz",
                 "test": "stsa.binary.test.gz"}  # fmt: skip
        examples = {s: read_labelled_lines(folder / f, {0, 1}) for s, f in files.items()}
        self._encode(examples, str(folder))
        self.embedding_size, self.dropout = embedding_size, dropout
        self._subsample(smoke, fraction, seed)


def read_text_tsv(path: str | Path) -> list[tuple[str, list[str]]]:
    """``label<TAB>text`` per line (an optional ``label<TAB>text`` header): (label, words)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a TSV of label<TAB>text)")
    rows = []
    with open(path, encoding="utf-8", newline="") as f:
        for number, line in enumerate(f, 1):
            line = line.rstrip("\n").rstrip("\r")
            if not line.strip():
                continue
            label, tab, text = line.partition("\t")
            if number == 1 and (label.strip().lower(), text.strip().lower()) == ("label", "text"):
                continue
            if not tab:
                raise ValueError(f"{path}, line {number}: expected label<TAB>text, found no tab")
            if not label.strip():
                raise ValueError(f"{path}, line {number}: the label is empty")
            if not text.split():
                raise ValueError(f"{path}, line {number}: the text is empty")
            rows.append((label.strip(), text.lower().split()))
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def _classes(labels: Sequence[str], where: str) -> tuple[str, ...]:
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise ValueError(f"{where}: only one class ({classes[0]!r}); classification needs two")
    return classes


@register_task
class UserText(TextClassification):
    name = "textcls"
    reads_user_file = True
    description = "your text: TSV of label<TAB>text (path=… or train=/valid=/test=); accuracy"

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 path: str | None = None, train: str | None = None, valid: str | None = None,
                 test: str | None = None, embedding_size: int = 0, dropout: float = 0.0,
                 split_seed: int = 0) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        given = {"train": train, "valid": valid, "test": test}
        if path and any(given.values()):
            raise ValueError("textcls: give either path= or train=/valid=/test=, not both")
        if path:
            rows = read_text_tsv(path)
            parts = stratified_split([label for label, _ in rows], split_seed, str(path))
            split_rows = {s: [rows[i] for i in parts[s]] for s in SPLITS}
        elif all(given.values()):
            split_rows = {s: read_text_tsv(p) for s, p in given.items()}
        else:
            raise ValueError(
                "textcls: needs path=FILE.tsv (split 80/10/10 for you) or all of train=, valid=, "
                f"test=; got {', '.join(k for k, v in given.items() if v) or 'none'}"
            )
        where = str(path or train)
        self.classes = _classes([label for label, _ in split_rows["train"]], where)
        index = {c: i for i, c in enumerate(self.classes)}
        for split, rows in split_rows.items():
            unknown = sorted({label for label, _ in rows} - set(index))
            if unknown:
                raise ValueError(f"{given[split] or where}: labels {unknown} never seen in train")
        self._encode({s: [(index[lab], w) for lab, w in r] for s, r in split_rows.items()}, where)
        self.embedding_size, self.dropout = embedding_size, dropout
        self._subsample(smoke, fraction, seed)


def read_sequence_npz(path: str | Path):
    """An ``.npz`` (no pickle) of ``features`` — (N, T, F) padded, or (total steps, F) with the
    sequences one after another — ``lengths`` (N,), ``labels`` (N,), optional ``split`` (N,) of
    "train"/"valid"/"test". Returns (list of (T, F) float32 arrays, labels, split or None)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no such file (expected an .npz of features, lengths, labels)"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as error:
        raise ValueError(f"{path}: not a readable .npz file ({error})") from error
    with archive:
        missing = [k for k in ("features", "labels") if k not in archive.files]
        if missing:
            raise ValueError(f"{path}: missing {missing}; found keys {sorted(archive.files)}")
        features, labels = archive["features"], archive["labels"]
        lengths = archive["lengths"] if "lengths" in archive.files else None
        split = archive["split"] if "split" in archive.files else None
    one_feature = features.ndim == 2 and lengths is None  # (N, T): one feature per step
    if one_feature:
        features = features[:, :, None]
    if labels.ndim != 1:
        raise ValueError(f"{path}: labels has shape {labels.shape}, expected (N,)")
    N = len(labels)
    if features.ndim == 3:  # padded (N, T, F)
        if features.shape[0] != N:
            hint = (
                " (2-D features without lengths read as (N, T) sequences of one feature; ragged "
                "sequences need lengths)"
                if one_feature
                else ""
            )
            raise ValueError(
                f"{path}: features holds {features.shape[0]} sequences, labels {N}{hint}"
            )
        if lengths is None:
            lengths = np.full(N, features.shape[1])
        sequences = [features[i, : int(n)] for i, n in enumerate(lengths)]
        if lengths.shape != (N,) or (lengths < 0).any() or (lengths > features.shape[1]).any():
            raise ValueError(
                f"{path}: lengths must be (N,) = ({N},) with each in [1, {features.shape[1]}]"
            )
    elif features.ndim == 2:  # ragged: steps one after another
        if lengths is None or lengths.shape != (N,):
            raise ValueError(
                f"{path}: features is (total steps, F) = {features.shape}: ragged sequences need "
                f"lengths of shape ({N},)"
            )
        if int(lengths.sum()) != features.shape[0]:
            raise ValueError(
                f"{path}: lengths sum to {int(lengths.sum())} but features has "
                f"{features.shape[0]} steps"
            )
        sequences = np.split(features, np.cumsum(lengths)[:-1])
    else:
        raise ValueError(f"{path}: features has shape {features.shape}, expected 2 or 3 dims")
    for i, seq in enumerate(sequences):
        if len(seq) == 0:
            raise ValueError(f"{path}: sequence {i} is empty")
        if not np.isfinite(seq).all():
            raise ValueError(f"{path}: sequence {i} holds NaN or infinite features")
    return [s.astype(np.float32) for s in sequences], labels, split


def read_sequence_csv(path: str | Path):
    """A long-format CSV: one row per time step with columns ``id``, ``t``, feature columns, and
    ``label`` (constant within a sequence); an optional ``split`` column. Returns the same as
    :func:`read_sequence_npz`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (expected a CSV with id, t, …, label)")
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in ("id", "t", "label") if c not in header]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; header is {header}")
        feature_columns = [c for c in header if c not in ("id", "t", "label", "split")]
        if not feature_columns:
            raise ValueError(f"{path}: no feature columns besides id, t, label, split")
        steps: dict[str, list[tuple[float, list[float]]]] = {}
        label_of: dict[str, str] = {}
        split_of: dict[str, str] = {}
        for number, row in enumerate(reader, 2):
            key = row["id"]
            try:
                t = float(row["t"])
                values = [float(row[c]) for c in feature_columns]
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}, line {number}: not a number ({error})") from error
            if not np.isfinite(values).all():
                raise ValueError(f"{path}, line {number}: NaN or infinite feature")
            label = (row["label"] or "").strip()
            if not label:
                raise ValueError(f"{path}, line {number}: the label is missing")
            if label_of.setdefault(key, label) != label:
                raise ValueError(
                    f"{path}, line {number}: sequence {key!r} changes label "
                    f"({label_of[key]!r} → {label!r})"
                )
            if "split" in header:
                split_of.setdefault(key, (row["split"] or "").strip())
            steps.setdefault(key, []).append((t, values))
    if not steps:
        raise ValueError(f"{path}: no rows")
    keys = list(steps)
    sequences = [
        np.array([v for _, v in sorted(steps[k], key=lambda s: s[0])], dtype=np.float32)
        for k in keys
    ]
    labels = np.array([label_of[k] for k in keys])
    split = np.array([split_of[k] for k in keys]) if split_of else None
    return sequences, labels, split


@register_task
class UserSequences(SequenceClassification):
    name = "seqcls"
    reads_user_file = True
    description = "your sequences: .npz or long CSV (path=…); accuracy, or MSE for real labels"

    @classmethod
    def layer_input_size(cls, options: dict) -> int | None:
        return cls(**options).input_size  # the file's feature count

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 path: str | None = None, dropout: float = 0.0, split_seed: int = 0,
                 standardize: bool = True) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        if not path:
            raise ValueError("seqcls: needs path=FILE.npz or path=FILE.csv")
        reader = read_sequence_csv if str(path).endswith(".csv") else read_sequence_npz
        sequences, labels, split = reader(path)
        widths = {s.shape[1] for s in sequences}
        if len(widths) != 1:
            raise ValueError(f"{path}: sequences have different feature counts {sorted(widths)}")
        self.input_size = widths.pop()
        self.output_size = 1
        numeric = labels.dtype.kind in "fc"
        if numeric and not np.all(np.mod(labels, 1) == 0):  # real-valued: regression
            self.classes = ()
            self.metrics = (Metric("mse", higher_is_better=False),)
            targets = labels.astype(np.float64).tolist()
        else:
            names = [str(int(v)) if numeric else str(v) for v in labels]
            self.classes = _classes(names, str(path))
            index = {c: i for i, c in enumerate(self.classes)}
            targets = [index[n] for n in names]
            self.output_size = len(self.classes)
        if split is not None:
            split = np.char.strip(split.astype(str))
            bad = sorted(set(split.tolist()) - set(SPLITS))
            if bad:
                raise ValueError(f"{path}: split values {bad}; expected train, valid, test")
            parts = {s: np.flatnonzero(split == s).tolist() for s in SPLITS}
            empty = [s for s in SPLITS if not parts[s]]
            if empty:
                raise ValueError(f"{path}: the split column leaves {empty} empty")
        else:
            strata = targets if not self.regression else [0] * len(targets)
            parts = stratified_split(strata, split_seed, str(path))
        if standardize:  # per feature, from the training split only
            train_steps = np.concatenate([sequences[i] for i in parts["train"]])
            mean, std = train_steps.mean(0), train_steps.std(0)
            std[std == 0] = 1.0
            sequences = [(s - mean) / std for s in sequences]
        self.data = {
            s: [(torch.from_numpy(np.ascontiguousarray(sequences[i])), targets[i]) for i in idx]
            for s, idx in parts.items()
        }
        self.dropout = dropout
        self._subsample(smoke, fraction, seed)


@functools.cache
def _fsdd_features(folder: str, n_mfcc: int) -> tuple[list, list[np.ndarray]]:
    """Every recording of ``folder`` and its MFCCs, computed once per process."""
    recordings = read_fsdd(Path(folder))
    return recordings, [mfcc(r.samples, n_mfcc) for r in recordings]


@register_task
class SpokenDigits(SequenceClassification):
    """FSDD spoken digits from MFCC sequences. ``split="repo"``: the dataset's own rule, indices
    0–4 of each speaker and digit are the test set, 5–9 validation, 10–49 training.
    ``split="speaker"``: held-out speakers, ``test_speaker`` for test and ``valid_speaker`` for
    validation, the other four for training."""

    name = "fsdd"
    description = "Free Spoken Digit Dataset, MFCC sequences; accuracy (repo or speaker split)"
    dataset = "fsdd"
    classes = tuple(str(d) for d in range(10))

    @classmethod
    def layer_input_size(cls, options: dict) -> int | None:
        return int(options.get("n_mfcc", 13))

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 data_dir: str | Path | None = None, split: str = "repo",
                 valid_speaker: str = "theo", test_speaker: str = "jackson", n_mfcc: int = 13,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        if split not in ("repo", "speaker"):
            raise ValueError(f"fsdd: split must be 'repo' or 'speaker', got {split!r}")
        for role, who in (("valid_speaker", valid_speaker), ("test_speaker", test_speaker)):
            if who not in SPEAKERS:
                raise ValueError(f"fsdd: {role} {who!r} is not one of {', '.join(SPEAKERS)}")
        if split == "speaker" and valid_speaker == test_speaker:
            raise ValueError("fsdd: valid_speaker and test_speaker must differ")
        folder = locate(self.dataset, data_dir)
        if smoke:  # MFCCs of a few recordings only
            recordings = read_fsdd(folder)
            recordings = [r for r in recordings if r.index < 10 or r.index % 10 == 0]
            features = [mfcc(r.samples, n_mfcc) for r in recordings]
        else:
            recordings, features = _fsdd_features(str(folder), n_mfcc)

        def part(r) -> str:
            if split == "repo":
                return "test" if r.index < 5 else "valid" if r.index < 10 else "train"
            return {test_speaker: "test", valid_speaker: "valid"}.get(r.speaker, "train")

        parts = {s: [i for i, r in enumerate(recordings) if part(r) == s] for s in SPLITS}
        train_steps = np.concatenate([features[i] for i in parts["train"]])
        mean, std = train_steps.mean(0), train_steps.std(0)
        std[std == 0] = 1.0
        self.data = {
            s: [(torch.from_numpy((features[i] - mean) / std), recordings[i].digit) for i in idx]
            for s, idx in parts.items()
        }
        self.input_size, self.output_size = n_mfcc, 10
        self.dropout = dropout
        self._subsample(smoke, fraction, seed)
