"""The copying memory problem (Hochreiter & Schmidhuber 1997; in the form of Arjovsky et al. 2016,
§4.1): ten symbols drawn from 8 (``length``; three in the smoke size), then ``steps`` blanks, a
delimiter, and as many blanks as symbols, during which the network must output the symbols in
order. Inputs and outputs are one-hot over 10
categories (0 blank, 1–8 symbols, 9 delimiter).

Loss and metrics: cross-entropy per recalled symbol (``xent``; remembering nothing scores the
trivial log 8 ≈ 2.079) and the fraction of recalled symbols right (``accuracy``; chance 1/8).
Only the recall steps count: the blanks elsewhere are free to predict and would dilute the
signal as ``steps`` grows.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gatedrnn.tasks.base import (
    Batch,
    Metric,
    Task,
    classification_metrics,
    evaluating,
    generated_splits,
    register_task,
)
from gatedrnn.tasks.models import SequenceModel

__all__ = ["CATEGORIES", "SYMBOLS", "TRIVIAL_XENT", "CopyProblem", "copy_batch"]

SYMBOLS = 10  # symbols to remember, by default
CATEGORIES = 10  # blank, 8 symbols, delimiter
DELIMITER = 9
TRIVIAL_XENT = math.log(8)


def copy_batch(
    n: int, steps: int, generator: torch.Generator, length: int = SYMBOLS
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of ``steps + 2·length`` steps: inputs (T, n, 10) one-hot and targets
    (T, n) category indices."""
    T = steps + 2 * length
    symbols = torch.randint(1, 9, (length, n), generator=generator)
    inputs = torch.zeros(T, n, dtype=torch.long)
    inputs[:length] = symbols
    inputs[T - length - 1] = DELIMITER
    targets = torch.zeros(T, n, dtype=torch.long)
    targets[T - length :] = symbols
    return F.one_hot(inputs, CATEGORIES).float(), targets


@register_task
class CopyProblem(Task):
    name = "copy"
    description = "copying memory (generated, seeded); recall accuracy against chance 1/8"
    metrics = (Metric("xent", higher_is_better=False), Metric("accuracy", higher_is_better=True))
    input_size = output_size = CATEGORIES

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 steps: int | None = None, length: int | None = None,
                 train_size: int = 10_000) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        self.steps = steps if steps is not None else (5 if smoke else 100)
        self.length = length if length is not None else (3 if smoke else SYMBOLS)
        if self.steps < 1 or self.length < 1:
            raise ValueError(
                f"copy: steps and length must be >= 1, got steps={self.steps}, length={self.length}"
            )
        self.splits = generated_splits(
            lambda n, generator: copy_batch(n, self.steps, generator, self.length),
            smoke=smoke, fraction=fraction, train_size=train_size, seed=seed, salt=20_011,
        )  # fmt: skip

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> Iterator[Batch]:  # fmt: skip
        inputs, targets = self.splits[split]
        n = targets.shape[1]
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            lengths = torch.full((index.numel(),), inputs.shape[0])
            yield Batch(inputs[:, index], lengths, targets[:, index])

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1,
                    **layer_options) -> nn.Module:  # fmt: skip
        return SequenceModel(cell, CATEGORIES, hidden_size, CATEGORIES, num_layers, **layer_options)

    def _recall(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(batch.inputs)[-self.length :]  # (length, B, 10)
        return logits.reshape(-1, CATEGORIES), batch.targets[-self.length :].reshape(-1)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        logits, targets = self._recall(model, batch)
        return F.cross_entropy(logits, targets, reduction="sum"), targets.numel()

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        with evaluating(model):
            batches = self.eval_batches(model, split, batch_size)
            return classification_metrics(self._recall(model, batch) for batch in batches)
