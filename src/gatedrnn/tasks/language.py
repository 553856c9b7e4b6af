"""Word-level language modelling (Mikolov et al. 2010; Zaremba et al. 2014): predict each next
word of Penn Treebank or WikiText-2.

The token stream of a split is cut into ``batch_size`` parallel streams; batches are consecutive
windows of ``bptt`` steps over them, and the model carries its state from one window to the next
(truncated backpropagation through time: the state is detached, so gradients stop at the window's
start). Training batches are never shuffled, which would break the streams. The metric is
perplexity, exp of the mean negative log-likelihood per token.

Zaremba et al.'s presets, as training configurations (:data:`PRESETS`): small, 2 × 200, no
dropout, bptt 20, batch 20, SGD lr 1 halved from epoch 5, clip 5, init ±0.1 (their test
perplexity with an LSTM: 114.5); medium, 2 × 650, dropout 0.5, bptt 35, lr 1 divided by 1.2 from
epoch 7 (82.7).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.data.registry import locate
from gatedrnn.data.text import EOS, Vocabulary, read_token_lines
from gatedrnn.tasks.base import Batch, Metric, Task, register_task
from gatedrnn.tasks.models import OutputLayer, make_layer

__all__ = ["PRESETS", "LanguageModel", "PennTreebank", "WikiText2", "WordLanguageModel"]

PRESETS = {  # TrainConfig fields; add "cell"
    "zaremba-small": {
        "task": "ptb", "task_options": {"bptt": 20, "dropout": 0.0},
        "hidden_size": 200, "num_layers": 2, "dropout": 0.0, "batch_size": 20,
        "optimizer": "sgd", "lr": 1.0, "clip_norm": 5.0, "epochs": 13, "patience": 0,
        "schedule": "step", "decay_start": 5, "lr_decay": 0.5,
    },
    "zaremba-medium": {
        "task": "ptb", "task_options": {"bptt": 35, "dropout": 0.5},
        "hidden_size": 650, "num_layers": 2, "dropout": 0.5, "batch_size": 20,
        "optimizer": "sgd", "lr": 1.0, "clip_norm": 5.0, "epochs": 39, "patience": 0,
        "schedule": "step", "decay_start": 7, "lr_decay": 1 / 1.2,
    },
}  # fmt: skip


class LanguageModel(nn.Module):
    """Embedding → dropout → gatedrnn layer → dropout → linear over the vocabulary. Keeps its
    last state between calls when asked to (``carry``), detached. ``io_dropout`` is the dropout
    on the embedding and the layer's output; the layer's own ``dropout`` (between stacked
    layers) comes with ``layer_options``."""

    def __init__(self, cell: str, vocabulary: int, hidden_size: int, num_layers: int = 1, *,
                 io_dropout: float = 0.0, **layer_options) -> None:  # fmt: skip
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, hidden_size)
        self.rnn = make_layer(cell, hidden_size, hidden_size, num_layers, **layer_options)
        self.drop = nn.Dropout(io_dropout)
        self.head = OutputLayer(hidden_size, vocabulary)
        self.state = None

    def forward(self, tokens: Tensor, lengths: Tensor | None = None, carry: bool = False) -> Tensor:
        state = self.state if carry else None
        outputs, state = self.rnn(self.drop(self.embedding(tokens)), state)
        self.state = (
            tuple(s.detach() for s in state) if isinstance(state, tuple) else state.detach()
        )
        return self.head(self.drop(outputs))  # (T, B, V)


class WordLanguageModel(Task):
    metrics = (Metric("ppl", higher_is_better=False),)
    split_files: ClassVar[dict[str, str]]

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 data_dir: str | Path | None = None, bptt: int | None = None,
                 dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        self.bptt = bptt if bptt is not None else (10 if smoke else 35)
        if self.bptt < 1:
            raise ValueError(f"{self.name}: bptt must be >= 1, got {self.bptt}")
        if not 0 <= dropout < 1:
            raise ValueError(f"{self.name}: dropout must be in [0, 1), got {dropout}")
        self.dropout = dropout
        folder = locate(self.dataset, data_dir)
        words = {s: read_token_lines(folder / f) for s, f in self.split_files.items()}
        self.vocabulary = Vocabulary(words["train"], extra=(EOS,))
        self.input_size = self.output_size = len(self.vocabulary)
        if smoke:  # a few thousand tokens; the vocabulary stays the full one
            words = {"train": words["train"][:3000], "valid": words["valid"][:600],
                     "test": words["test"][:600]}  # fmt: skip
        elif fraction < 1:  # a contiguous prefix: the streams stay text
            words["train"] = words["train"][: max(2, round(fraction * len(words["train"])))]
        self.splits = {
            s: torch.tensor(self.vocabulary.encode(w, where=str(folder / self.split_files[s])))
            for s, w in words.items()
        }

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> Iterator[Batch]:  # fmt: skip
        stream = self.splits[split]
        columns = max(1, min(batch_size, (len(stream) - 1) // 2))
        steps = (len(stream) - 1) // columns
        inputs = stream[: steps * columns].view(columns, steps).t()  # (steps, columns)
        targets = stream[1 : steps * columns + 1].view(columns, steps).t()
        for start in range(0, steps, self.bptt):
            window = slice(start, start + self.bptt)
            lengths = torch.full((columns,), inputs[window].shape[0])
            yield Batch(inputs[window], lengths, targets[window], carry=start > 0)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1,
                    **layer_options) -> nn.Module:  # fmt: skip
        return LanguageModel(
            cell, len(self.vocabulary), hidden_size, num_layers, io_dropout=self.dropout,
            **layer_options,
        )  # fmt: skip

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        logits = model(batch.inputs, carry=batch.carry)
        flat = logits.reshape(-1, logits.shape[-1])
        return F.cross_entropy(flat, batch.targets.reshape(-1), reduction="sum"), flat.shape[0]

    def metric_values(self, total_loss: float, count: int) -> dict[str, float]:
        return {"ppl": math.exp(min(total_loss / max(count, 1), 700.0))}


@register_task
class PennTreebank(WordLanguageModel):
    name = "ptb"
    description = "Penn Treebank words (Mikolov); perplexity, truncated BPTT"
    dataset = "ptb"
    split_files: ClassVar[dict[str, str]] = {
        s: f"ptb.{s}.txt.gz" for s in ("train", "valid", "test")
    }


@register_task
class WikiText2(WordLanguageModel):
    name = "wikitext2"
    description = "WikiText-2 words; perplexity, truncated BPTT"
    dataset = "wikitext2"
    split_files: ClassVar[dict[str, str]] = {
        s: f"wiki.{s}.tokens.gz" for s in ("train", "valid", "test")
    }
