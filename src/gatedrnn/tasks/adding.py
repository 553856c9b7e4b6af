"""The adding problem (Hochreiter & Schmidhuber 1997, §5.4, in the form of Arjovsky et al. 2016):
a sequence of T pairs (value ~ U(0, 1), marker); exactly two markers are 1, one in each half; the
target is the sum of the two marked values, read from the last step. Predicting the mean, 1,
scores the trivial MSE Var(u1 + u2) = 1/6 ≈ 0.167; solving the task means going well below it.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from gatedrnn.tasks.base import Batch, Metric, Task, generated_splits, register_task
from gatedrnn.tasks.models import make_layer

__all__ = ["TRIVIAL_MSE", "AddingProblem"]

TRIVIAL_MSE = 1 / 6


def adding_batch(
    n: int, steps: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences: inputs (T, n, 2) and targets (n,)."""
    values = torch.rand(steps, n, generator=generator)
    markers = torch.zeros(steps, n)
    half = steps // 2
    first = torch.randint(0, half, (n,), generator=generator)
    second = torch.randint(half, steps, (n,), generator=generator)
    columns = torch.arange(n)
    markers[first, columns] = 1.0
    markers[second, columns] = 1.0
    targets = values[first, columns] + values[second, columns]
    return torch.stack([values, markers], dim=-1), targets


class _LastStep(nn.Module):
    def __init__(self, cell: str, hidden_size: int, num_layers: int, **options) -> None:
        super().__init__()
        self.rnn = make_layer(cell, 2, hidden_size, num_layers, **options)
        self.head = nn.Linear(hidden_size, 1)

    def forward(self, inputs: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.rnn(inputs)[0][-1]).squeeze(-1)  # (B,)


@register_task
class AddingProblem(Task):
    name = "adding"
    description = "adding problem (generated, seeded); MSE against the trivial 1/6"
    metrics = (Metric("mse", higher_is_better=False),)
    input_size, output_size = 2, 1

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 steps: int | None = None, train_size: int = 10_000) -> None:  # fmt: skip
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        self.steps = steps or (20 if smoke else 100)
        self.splits = generated_splits(
            lambda n, generator: adding_batch(n, self.steps, generator),
            smoke=smoke, fraction=fraction, train_size=train_size, seed=seed, salt=10_007,
        )  # fmt: skip

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> Iterator[Batch]:  # fmt: skip
        inputs, targets = self.splits[split]
        n = targets.numel()
        order = (
            torch.randperm(n, generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(n)
        )
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            lengths = torch.full((index.numel(),), self.steps)
            yield Batch(inputs[:, index], lengths, targets[index])

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1,
                    **layer_options) -> nn.Module:  # fmt: skip
        return _LastStep(cell, hidden_size, num_layers, **layer_options)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        prediction = model(batch.inputs)
        return (prediction - batch.targets).square().sum(), batch.size
