"""German → English translation on Multi30k (Elliott et al. 2016), with the attention model of
Bahdanau, Cho & Bengio 2015: a bidirectional encoder of the chosen cell, and a decoder cell of the
same kind that attends over the encoder's states at every step.

Data: the dataset's own lower-cased, Moses-tokenised files (train 29,000 pairs, val 1,014,
test_2016_flickr 1,000); vocabularies from the training side with words seen at least
``min_count`` times (others become ``<unk>``). Loss: cross-entropy per target token. Metrics:
``bleu`` (sacrebleu's corpus BLEU on the tokenised text, ``tokenize="none"``; greedy decoding on
the validation split, beam search of width ``beam`` on the test split) and ``ppl``.
"""

from __future__ import annotations

import functools
import inspect
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import gatedrnn
from gatedrnn.data.registry import DataFile, DatasetInfo, locate, register_dataset
from gatedrnn.data.text import Vocabulary
from gatedrnn.nn.packing import pack_padded_sequence, pad_packed_sequence
from gatedrnn.tasks.base import Batch, Metric, Task, evaluating, register_task
from gatedrnn.tasks.models import OutputLayer, make_layer

__all__ = ["CELLS", "Multi30k", "Seq2Seq", "bleu", "read_parallel"]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
SPECIALS = (PAD, UNK, BOS, EOS)

CELLS = {
    "rnn": gatedrnn.RNNCell,
    "lstm": gatedrnn.LSTMCell,
    "gru": gatedrnn.GRUCell,
    "mgu": gatedrnn.MGUCell,
    "mingru": gatedrnn.MinGRUCell,
    "minlstm": gatedrnn.MinLSTMCell,
}

_FILES = {
    "train": (
        ("7e3392f03c0fe978165d22fb5eaf0d0b9b1d9c413283b5193f02d4cb27e50797", 609350),
        ("79d990dd71713faec0e3165cbd3b60acdf6fe11cab2e37a28f374c6bdbb297ec", 557961),
    ),
    "val": (
        ("006ad58fd6a2ad6502094160fe5273d93abf34a207967fdc69eafd7558b5ef39", 23687),
        ("2c7e5e9cf54ba0dff0cc4b84836d5a583f80ecaaab90b37a123d1376306215cd", 21317),
    ),
    "test_2016_flickr": (
        ("2628844bbb7783afa0ba8a9927f174aafeee715871aa8deed3af2c4d0b71a658", 21966),
        ("b95df925929cb222d0cf733f153bcbfba0f00180c85fd61dd5c4fb27f29ee394", 20726),
    ),
}
SPLIT_FILES = {"train": "train", "valid": "val", "test": "test_2016_flickr"}

register_dataset(
    DatasetInfo(
        name="multi30k",
        folder="multi30k",
        files=tuple(
            DataFile(f"tok/{stem}.lc.norm.tok.{lang}.gz", sha, size)
            for stem, pair in _FILES.items()
            for lang, (sha, size) in zip(("de", "en"), pair, strict=True)
        ),
        license="CC BY 4.0 (multi30k/dataset); captions of Flickr30k images",
        citation="Elliott, Frank, Sima'an & Specia 2016",
        description="de→en image captions, tokenised; 29,000 / 1,014 / 1,000 pairs",
    )
)


def read_parallel(source: Path, target: Path) -> list[tuple[list[str], list[str]]]:
    """Aligned lines of two tokenised files (gzip or plain) as (source, target) token lists."""
    from gatedrnn.data.text import _open_text

    try:
        with _open_text(source) as f:
            left = [line.split() for line in f]
        with _open_text(target) as f:
            right = [line.split() for line in f]
    except (OSError, EOFError, UnicodeDecodeError) as error:
        raise ValueError(f"{source} / {target}: not readable text ({error})") from error
    if len(left) != len(right):
        raise ValueError(
            f"{source} has {len(left)} lines but {target} has {len(right)}: not a parallel pair"
        )
    for number, (a, b) in enumerate(zip(left, right, strict=True), 1):
        if not a or not b:
            empty = source if not a else target
            raise ValueError(f"{empty}, line {number}: empty sentence")
    if not left:
        raise ValueError(f"{source}: no sentences")
    return list(zip(left, right, strict=True))


def bleu(hypotheses: list[list[str]], references: list[list[str]]) -> float:
    """Corpus BLEU (sacrebleu, one reference each) of tokenised sentences, on their tokens as
    they are (``tokenize="none"``), 0–100."""
    import sacrebleu

    hyps = [" ".join(h) for h in hypotheses]
    refs = [[" ".join(r) for r in references]]
    # force: the text is tokenised on purpose (the references are), so no detokenising warning
    return float(sacrebleu.corpus_bleu(hyps, refs, tokenize="none", force=True).score)


class Seq2Seq(nn.Module):
    """Bidirectional encoder layer → Bahdanau attention → decoder cell → output layer."""

    def __init__(self, cell: str, source_vocabulary: int, target_vocabulary: int,
                 hidden_size: int, num_layers: int = 1, *, embedding_size: int = 0,
                 io_dropout: float = 0.0, **layer_options) -> None:  # fmt: skip
        super().__init__()
        if cell not in CELLS:
            raise ValueError(f"unknown cell {cell!r}; expected one of: {', '.join(CELLS)}")
        E = embedding_size or hidden_size
        self.cell_kind, self.hidden_size = cell, hidden_size
        self.source_embedding = nn.Embedding(source_vocabulary, E, padding_idx=0)
        self.target_embedding = nn.Embedding(target_vocabulary, E, padding_idx=0)
        self.encoder = make_layer(
            cell, E, hidden_size, num_layers, bidirectional=True, **layer_options
        )
        # the decoder is the same cell: every option its step takes (variants, bias, init)
        takes = inspect.signature(CELLS[cell]).parameters
        cell_options = {k: v for k, v in layer_options.items() if k in takes}
        self.decoder = CELLS[cell](E + 2 * hidden_size, hidden_size, **cell_options)
        self.bridge = nn.Linear(2 * hidden_size, hidden_size)  # initial decoder state
        self.attend_state = nn.Linear(hidden_size, hidden_size, bias=False)
        self.attend_memory = nn.Linear(2 * hidden_size, hidden_size)
        self.score = nn.Linear(hidden_size, 1, bias=False)
        self.drop = nn.Dropout(io_dropout)  # embeddings and decoder outputs
        self.out = OutputLayer(hidden_size + 2 * hidden_size + E, target_vocabulary)

    def encode(self, source: Tensor, lengths: Tensor):
        """Encoder states (S, B, 2H), their attention keys, the pad mask (S, B) and the first
        decoder state."""
        embedded = self.drop(self.source_embedding(source))
        packed = pack_padded_sequence(embedded, lengths, enforce_sorted=False)
        memory = pad_packed_sequence(self.encoder(packed)[0], total_length=source.shape[0])[0]
        mask = torch.arange(source.shape[0]).unsqueeze(1) < lengths.unsqueeze(0)  # (S, B)
        mask = mask.to(memory.device)
        mean = (memory * mask.unsqueeze(-1)).sum(0) / lengths.to(memory.device).unsqueeze(-1)
        h = torch.tanh(self.bridge(mean))
        state = (h, torch.zeros_like(h)) if self.decoder.spec.num_states == 2 else h
        return memory, self.attend_memory(memory), mask, state

    def features(self, previous: Tensor, state, memory: Tensor, keys: Tensor, mask: Tensor):
        """One decoder step from the previous target tokens (B,): what the output layer reads
        (B, 3H + E), and the new state."""
        h = state[0] if isinstance(state, tuple) else state
        scores = self.score(torch.tanh(keys + self.attend_state(h))).squeeze(-1)  # (S, B)
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=0)
        context = (weights.unsqueeze(-1) * memory).sum(0)  # (B, 2H)
        embedded = self.drop(self.target_embedding(previous))
        state = self.decoder(torch.cat([embedded, context], -1), state)
        h = state[0] if isinstance(state, tuple) else state
        return self.drop(torch.cat([h, context, embedded], -1)), state

    def step(self, previous: Tensor, state, memory: Tensor, keys: Tensor, mask: Tensor):
        """One decoder step from the previous target tokens (B,): logits (B, V), new state."""
        features, state = self.features(previous, state, memory, keys, mask)
        return self.out(features), state

    def forward(self, source: Tensor, lengths: Tensor, target: Tensor) -> Tensor:
        """Teacher-forced logits (T−1, B, V) for ``target`` (T, B) that starts with ``<bos>``:
        the output layer once over every step's features (one product over (T−1)·B rows, not
        one per step)."""
        memory, keys, mask, state = self.encode(source, lengths)
        features = []
        for t in range(target.shape[0] - 1):
            step_features, state = self.features(target[t], state, memory, keys, mask)
            features.append(step_features)
        return self.out(torch.stack(features))

    @torch.no_grad()
    def greedy(self, source: Tensor, lengths: Tensor, max_length: int, bos: int, eos: int):
        """The most likely next token at every step, for a whole batch: lists of token ids."""
        memory, keys, mask, state = self.encode(source, lengths)
        B = source.shape[1]
        previous = torch.full((B,), bos, dtype=torch.long, device=source.device)
        out, done = [], torch.zeros(B, dtype=torch.bool, device=source.device)
        for _ in range(max_length):
            logits, state = self.step(previous, state, memory, keys, mask)
            previous = logits.argmax(-1)
            out.append(previous)
            done |= previous == eos
            if bool(done.all()):
                break
        tokens = torch.stack(out, 1).tolist()
        return [seq[: seq.index(eos)] if eos in seq else seq for seq in tokens]

    @torch.no_grad()
    def beam(self, source: Tensor, length: int, max_length: int, bos: int, eos: int,
             width: int = 4, alpha: float = 0.6) -> list[int]:  # fmt: skip
        """Beam search for one sentence (source (S, 1)); hypotheses ranked by log-probability
        over the GNMT length penalty ((5 + n) / 6)^alpha."""
        memory, keys, mask, state = self.encode(source, torch.tensor([length]))
        beams = [(0.0, [bos], state)]
        finished: list[tuple[float, list[int]]] = []

        def penalty(n: int) -> float:
            return ((5 + n) / 6) ** alpha

        for _ in range(max_length):
            previous = torch.tensor([b[1][-1] for b in beams], device=source.device)
            states = [b[2] for b in beams]
            if isinstance(states[0], tuple):
                stacked = tuple(torch.cat([s[k] for s in states]) for k in range(2))
            else:
                stacked = torch.cat(states)
            n = len(beams)
            logits, new_state = self.step(
                previous, stacked, memory.expand(-1, n, -1), keys.expand(-1, n, -1),
                mask.expand(-1, n),
            )  # fmt: skip
            logp = torch.log_softmax(logits, -1)
            candidates = []
            for i, (score, tokens, _) in enumerate(beams):
                top = torch.topk(logp[i], width)
                for value, token in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                    candidates.append((score + value, [*tokens, token], i))
            candidates.sort(key=lambda c: c[0], reverse=True)
            beams = []
            for score, tokens, i in candidates:
                if tokens[-1] == eos:
                    finished.append((score / penalty(len(tokens) - 1), tokens[1:-1]))
                else:
                    if isinstance(new_state, tuple):
                        s = tuple(x[i : i + 1] for x in new_state)
                    else:
                        s = new_state[i : i + 1]
                    beams.append((score, tokens, s))
                if len(beams) == width:
                    break
            if not beams or (
                len(finished) >= width
                and max(f[0] for f in finished) > beams[0][0] / penalty(len(beams[0][1]))
            ):
                break
        finished += [(s / penalty(len(t) - 1), t[1:]) for s, t, _ in beams]
        return max(finished, key=lambda f: f[0])[1]


@functools.cache
def _read_split(folder: str, stem: str) -> tuple:
    base = Path(folder) / "tok"
    return tuple(
        read_parallel(base / f"{stem}.lc.norm.tok.de.gz", base / f"{stem}.lc.norm.tok.en.gz")
    )


@register_task
class Multi30k(Task):
    name = "multi30k"
    description = "Multi30k de→en, attention encoder–decoder; BLEU (sacrebleu)"
    dataset = "multi30k"
    metrics = (Metric("bleu", higher_is_better=True), Metric("ppl", higher_is_better=False))

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 data_dir: str | Path | None = None, min_count: int = 2, beam: int = 4,
                 max_length: int = 50, embedding_size: int = 0,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        if beam < 1 or min_count < 1 or max_length < 1:
            raise ValueError(
                f"multi30k: beam, min_count and max_length must be >= 1, got {beam}, "
                f"{min_count}, {max_length}"
            )
        folder = locate(self.dataset, data_dir)
        pairs = {s: list(_read_split(str(folder), stem)) for s, stem in SPLIT_FILES.items()}
        if smoke:  # short sentences only: trains in seconds
            pairs = {
                s: [p for p in v if len(p[0]) <= 8 and len(p[1]) <= 8][
                    : 256 if s == "train" else 32
                ]
                for s, v in pairs.items()
            }
        elif fraction < 1:
            keep = max(1, round(fraction * len(pairs["train"])))
            order = np.random.default_rng(seed).permutation(len(pairs["train"]))[:keep]
            pairs["train"] = [pairs["train"][i] for i in sorted(order)]
        self.beam, self.max_length = beam, max_length
        self.embedding_size, self.dropout = embedding_size, dropout
        self.source_vocabulary = self._vocabulary([p[0] for p in pairs["train"]], min_count)
        self.target_vocabulary = self._vocabulary([p[1] for p in pairs["train"]], min_count)
        self.input_size = len(self.source_vocabulary)
        self.output_size = len(self.target_vocabulary)
        self.pairs = pairs

    @staticmethod
    def _vocabulary(sentences: list[list[str]], min_count: int) -> Vocabulary:
        counts = Counter(w for s in sentences for w in s)
        return Vocabulary([w for s in sentences for w in s if counts[w] >= min_count],
                          extra=SPECIALS)  # fmt: skip

    def _encode(self, vocabulary: Vocabulary, words: list[str], wrap: bool) -> list[int]:
        ids = vocabulary.encode(words, unknown=UNK)
        return [vocabulary.index[BOS], *ids, vocabulary.index[EOS]] if wrap else ids

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> Iterator[Batch]:  # fmt: skip
        pairs = self.pairs[split]
        order = np.random.default_rng(seed).permutation(len(pairs)) if shuffle else None
        order = list(range(len(pairs))) if order is None else order.tolist()
        for start in range(0, len(order), batch_size):
            chosen = [pairs[i] for i in order[start : start + batch_size]]
            sources = [self._encode(self.source_vocabulary, s, False) for s, _ in chosen]
            targets = [self._encode(self.target_vocabulary, t, True) for _, t in chosen]
            lengths = torch.tensor([len(s) for s in sources])
            src = torch.zeros(int(lengths.max()), len(chosen), dtype=torch.long)
            tgt = torch.zeros(max(len(t) for t in targets), len(chosen), dtype=torch.long)
            for b, (s, t) in enumerate(zip(sources, targets, strict=True)):
                src[: len(s), b] = torch.tensor(s)
                tgt[: len(t), b] = torch.tensor(t)
            yield Batch(src, lengths, tgt)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1,
                    **layer_options) -> nn.Module:  # fmt: skip
        return Seq2Seq(
            cell, len(self.source_vocabulary), len(self.target_vocabulary), hidden_size,
            num_layers, embedding_size=self.embedding_size, io_dropout=self.dropout,
            **layer_options,
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits = model(batch.inputs, batch.lengths, batch.targets)
        gold = batch.targets[1:]
        loss = F.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=0, reduction="sum"
        )
        return loss, int((gold != 0).sum())

    def translate(self, model: Seq2Seq, split: str, beam: int, batch_size: int = 64):
        """Hypotheses (token lists) for every source sentence of ``split``."""
        vocab = self.target_vocabulary
        words = list(vocab.index)
        bos, eos = vocab.index[BOS], vocab.index[EOS]
        hypotheses = []
        for batch in self.eval_batches(model, split, batch_size):
            source = batch.inputs
            if beam == 1:
                ids = model.greedy(source, batch.lengths, self.max_length, bos, eos)
            else:
                ids = [
                    model.beam(source[: int(n), b : b + 1], int(n), self.max_length, bos, eos, beam)
                    for b, n in enumerate(batch.lengths)
                ]
            hypotheses += [[words[i] for i in seq] for seq in ids]
        return hypotheses

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        with evaluating(model):
            total, count = self.loss_totals(model, split, batch_size)
            beam = self.beam if split == "test" else 1
            hypotheses = self.translate(model, split, beam, batch_size)
        references = [t for _, t in self.pairs[split]]
        return {
            "bleu": bleu(hypotheses, references),
            "ppl": float(np.exp(min(total / max(count, 1), 700.0))),
        }
