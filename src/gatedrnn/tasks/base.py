"""The small interface between tasks, models and the training loop, and the task registry.

A task owns its data (train / valid / test, a ``fraction`` of the training set for learning
curves, a ``smoke`` size that trains in seconds), the model around the recurrent layer, the loss
and its named metrics. Tasks register under a short name beside their definition.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gatedrnn.data.registry import DataMissingError, get_dataset, locate

__all__ = [
    "TASKS",
    "Batch",
    "Metric",
    "Task",
    "build_task",
    "check_datasets",
    "check_task_options",
    "classification_metrics",
    "evaluating",
    "generated_splits",
    "model_device",
    "register_task",
    "task_option_names",
]


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool


@dataclass
class Batch:
    inputs: Tensor  # (T, B, F) float, or (T, B) token ids; time-major, zero-padded
    lengths: Tensor  # (B,) int64 on the CPU: valid steps per sequence
    targets: Tensor
    carry: bool = False  # continues the previous batch's sequences (truncated BPTT): keep state

    @property
    def size(self) -> int:
        return int(self.lengths.numel())

    def to(self, device: torch.device | str) -> Batch:
        """The batch with inputs and targets on ``device`` (lengths stay on the CPU)."""
        return dataclasses.replace(
            self, inputs=self.inputs.to(device), targets=self.targets.to(device)
        )


def generated_splits(
    make: Callable[[int, torch.Generator], tuple[Tensor, Tensor]],
    *,
    smoke: bool,
    fraction: float,
    train_size: int,
    seed: int,
    salt: int,
) -> dict[str, tuple[Tensor, Tensor]]:
    """Train / valid / test sets drawn by ``make(n, generator)`` for the generated tasks, each
    split from its own seeded generator: the same data for every cell and run of a seed."""
    train = 512 if smoke else train_size
    sizes = {"train": max(1, round(train * fraction)), "valid": 256 if smoke else 1000}
    sizes["test"] = sizes["valid"]
    return {
        split: make(n, torch.Generator().manual_seed(salt * (seed + 1) + offset))
        for offset, (split, n) in enumerate(sizes.items())
    }


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters are (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


class Task(ABC):
    """One benchmark task. ``metrics[0]`` is the validation target (early stopping, convergence)."""

    name: ClassVar[str]
    description: ClassVar[str]
    metrics: ClassVar[tuple[Metric, ...]]
    dataset: ClassVar[str | None] = None  # the registered dataset it reads; None if generated
    reads_user_file: ClassVar[bool] = False  # its data is the user's file (task option path=…)
    input_size: int
    output_size: int

    @classmethod
    def layer_input_size(cls, options: dict) -> int | None:
        """The input width of the recurrent layer under task ``options``, known before the task
        is built (equal-budget studies solve hidden sizes from it): the class's ``input_size``
        if it fixes one, else the ``embedding_size`` option, else None: an embedding as wide as
        the hidden state."""
        size = getattr(cls, "input_size", None)
        if isinstance(size, int):
            return size
        return options.get("embedding_size") or None

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0) -> None:
        if not 0 < fraction <= 1:
            raise ValueError(f"{self.name}: fraction must be in (0, 1], got {fraction}")
        self.smoke, self.fraction, self.seed = smoke, fraction, seed

    @abstractmethod
    def batches(
        self, split: str, batch_size: int, *, shuffle: bool = False, seed: int = 0
    ) -> Iterator[Batch]:
        """The batches of ``split`` ("train", "valid" or "test"), shuffled by ``seed`` if asked."""

    @abstractmethod
    def build_model(
        self, cell: str, hidden_size: int, num_layers: int = 1, **layer_options
    ) -> nn.Module:
        """The model around a gatedrnn layer of ``cell``; ``layer_options`` go to the layer."""

    @abstractmethod
    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, int]:
        """The summed loss over ``batch`` and how many units it sums (steps, sequences …)."""

    def metric_values(self, total_loss: float, count: int) -> dict[str, float]:
        """The metrics from the loss summed over a whole split; by default the mean loss."""
        return {self.metrics[0].name: total_loss / max(count, 1)}

    def eval_batches(self, model: nn.Module, split: str, batch_size: int) -> Iterator[Batch]:
        """The batches of ``split`` in order, on ``model``'s device."""
        device = model_device(model)
        for batch in self.batches(split, batch_size):
            yield batch.to(device)

    def loss_totals(self, model: nn.Module, split: str, batch_size: int) -> tuple[float, int]:
        """Σ loss and the count it is over, for ``split``; call under :func:`evaluating`."""
        total, count = 0.0, 0
        for batch in self.eval_batches(model, split, batch_size):
            loss, n = self.loss(model, batch)
            total, count = total + float(loss), count + n
        return total, count

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, batch_size: int = 64) -> dict[str, float]:
        with evaluating(model):
            total, count = self.loss_totals(model, split, batch_size)
        return self.metric_values(total, count)


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[None]:
    """``model`` in eval mode for the block, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def classification_metrics(outputs: Iterable[tuple[Tensor, Tensor]]) -> dict[str, float]:
    """Cross-entropy per target and accuracy over (logits (N, C), targets (N,)) pairs."""
    total, right, count = 0.0, 0, 0
    for logits, targets in outputs:
        total += float(F.cross_entropy(logits, targets, reduction="sum"))
        right += int((logits.argmax(-1) == targets).sum())
        count += targets.numel()
    return {"xent": total / count, "accuracy": right / count}


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    TASKS[cls.name] = cls
    return cls


# Set by the run (the study grid, the training configuration), never as a task option.
_RUN_ARGUMENTS = ("self", "smoke", "fraction", "seed", "data_dir")


def task_option_names(name: str) -> list[str]:
    """The options task ``name`` takes (its constructor's keywords other than the run's)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of: {', '.join(sorted(TASKS))}")
    parameters = inspect.signature(TASKS[name].__init__).parameters
    return [key for key in parameters if key not in _RUN_ARGUMENTS]


# Bounds of the numeric options, which mean the same in every task that takes them; a task
# checks what depends on its data (a speaker's name, a file) itself.
_COUNT = (lambda v: v >= 1, "an integer >= 1")
_BOUNDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "steps": _COUNT,
    "length": _COUNT,
    "train_size": _COUNT,
    "bptt": _COUNT,
    "n_mfcc": _COUNT,
    "min_count": _COUNT,
    "beam": _COUNT,
    "max_length": _COUNT,
    "embedding_size": (lambda v: v >= 0, "an integer >= 0 (0: the hidden size)"),
    "dropout": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
}


def _admits(annotation: Any, value: Any) -> bool:
    """Whether ``value`` has the annotated type (``int | None``, ``str | Path``, ``float`` …); an
    int is a float, a bool is not an int."""
    kinds = typing.get_args(annotation) or (annotation,)
    for kind in kinds:
        if kind is type(None) and value is None:
            return True
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return True
        if kind in (str, bool) and isinstance(value, kind):
            return True
        if kind is Path and isinstance(value, (str, Path)):
            return True
    return False


def check_task_options(name: str, options: dict[str, Any]) -> None:
    """Refuse an option task ``name`` does not take, naming the ones it does, and a value of the
    wrong type or out of bounds, saying what is expected."""
    accepted = task_option_names(name)
    hints = typing.get_type_hints(TASKS[name].__init__)
    for key, value in options.items():
        if key not in accepted:
            raise ValueError(
                f"unknown option {key!r} for task {name!r}; expected one of: "
                f"{', '.join(accepted) or 'none'}"
            )
        if key in hints and not _admits(hints[key], value):
            expected = getattr(hints[key], "__name__", None) or str(hints[key])
            raise ValueError(
                f"option {key!r} of task {name!r}: expected {expected}, got "
                f"{type(value).__name__} {value!r}"
            )
        if key in _BOUNDS and value is not None and not _BOUNDS[key][0](value):
            raise ValueError(
                f"option {key!r} of task {name!r}: expected {_BOUNDS[key][1]}, got {value!r}"
            )


def check_datasets(tasks: Iterable[str], data_dir: str | Path | None = None) -> None:
    """Every dataset ``tasks`` read, present and intact, before a run starts (it would otherwise
    fail on a missing or corrupt file after the work before it). Raises the registry's error,
    which says where the files go and how to fetch them. An embedded dataset (JSB) needs none."""
    for name in sorted({TASKS[task].dataset for task in tasks} - {None}):
        try:
            locate(name, data_dir)
        except DataMissingError:
            if get_dataset(name).embedded is None:  # else the package's own copy serves
                raise


def build_task(name: str, **kwargs) -> Task:
    """The task registered as ``name``, built with ``kwargs`` (smoke, fraction, seed …)."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of: {', '.join(sorted(TASKS))}")
    return TASKS[name](**kwargs)
