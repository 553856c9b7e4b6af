"""The configuration of one training run: a frozen dataclass with commented defaults.

It is stored, resolved, with every checkpoint and result. Building one checks every value, the
task and cell names and their options (:func:`gatedrnn.tasks.check_layer_options`,
:func:`~gatedrnn.tasks.check_task_options`) before anything runs; :meth:`TrainConfig.from_dict`
also rejects unknown keys and wrong types, naming the key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch

from gatedrnn.backends import available_backends
from gatedrnn.tasks import LAYERS, TASKS, check_layer_options, check_task_options

__all__ = ["HELP", "OPTIMIZERS", "SCHEDULES", "TrainConfig", "with_later_fields"]

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
SCHEDULES = ("none", "step", "plateau")
_ADDED_LATER = {"weight_noise": 0.0, "probes": 0}  # field -> default; see TrainConfig.key


def with_later_fields(values: dict[str, Any]) -> dict[str, Any]:
    """A stored configuration (a checkpoint's, a result's) with the fields added since it was
    written at their defaults: what it meant, to compare with :meth:`TrainConfig.to_dict`."""
    return {**_ADDED_LATER, **values}


HELP: dict[str, str] = {
    "task": "a registered task (gatedrnn tasks)",
    "task_options": "the task's options, e.g. adding: {steps = 50}",
    "cell": "rnn, lstm, gru, mgu, mingru or minlstm",
    "hidden_size": "units per layer",
    "num_layers": "stacked layers",
    "dropout": "between stacked layers",
    "cell_options": "the cell's variant options, e.g. {reset = 'before'}",
    "backend": "auto (each layer picks), cpu, cudnn, triton, reference or cpu-python",
    "optimizer": "adam, adamw, sgd or rmsprop",
    "lr": "learning rate",
    "weight_decay": "the optimizer's weight decay",
    "momentum": "sgd and rmsprop only",
    "clip_norm": "rescale the gradient to this norm when larger; 0 turns it off",
    "weight_noise": "std of Gaussian noise on every parameter for each update's forward and "
    "backward, the gradient applied to the clean ones (Graves 2011; Chung et al. 2014: 0.075)",
    "batch_size": "examples (sequences, or streams for language models) per update",
    "epochs": "the most epochs to train",
    "patience": "epochs without a better validation metric before stopping; 0 = never",
    "probes": "validations within each epoch, evenly spaced, that time the faster-convergence "
    "claim more finely (never choose the model; the training is the same); 0 = epoch ends only",
    "schedule": "none, step (Zaremba et al. 2014) or plateau",
    "lr_decay": "factor for the step and plateau schedules",
    "decay_start": "step schedule: the first epoch (1-based) whose lr is decayed",
    "seed": "initialisation, shuffling and dropout",
    "fraction": "of the training set (learning curves)",
    "smoke": "the task's seconds-long size",
    "deterministic": "torch.use_deterministic_algorithms for the run",
    "device": "cpu, cuda or cuda:N",
    "amp": "autocast to bfloat16 (mixed precision; meant for CUDA, works on the CPU)",
}
"""What each :class:`TrainConfig` field means, for ``gatedrnn train --help``."""


@dataclass(frozen=True)
class TrainConfig:
    task: str = "jsb"  # a registered task name (`gatedrnn tasks`)
    task_options: dict[str, Any] = field(default_factory=dict)  # e.g. adding: {"steps": 50}
    cell: str = "gru"  # rnn | lstm | gru | mgu | mingru | minlstm
    hidden_size: int = 100
    num_layers: int = 1
    dropout: float = 0.0  # between stacked layers
    cell_options: dict[str, Any] = field(default_factory=dict)  # e.g. {"reset": "before"}
    backend: str = "auto"  # auto (each layer picks) | cpu | cudnn | triton | reference | cpu-python
    optimizer: str = "adam"  # adam | adamw | sgd | rmsprop
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd and rmsprop only
    clip_norm: float = 1.0  # gradient-norm clipping; 0 turns it off
    weight_noise: float = 0.0  # Graves 2011's, on every parameter for each update (HELP)
    batch_size: int = 32
    epochs: int = 20
    patience: int = 5  # epochs without a better validation metric before stopping; 0 = never
    probes: int = 0  # validations within each epoch, for the convergence claim only (HELP)
    schedule: str = "none"  # none | step (Zaremba et al. 2014) | plateau
    lr_decay: float = 0.5  # factor for step and plateau schedules
    decay_start: int = 4  # step schedule: first epoch (1-based) whose lr is decayed
    seed: int = 0
    fraction: float = 1.0  # of the training set (learning curves)
    smoke: bool = False  # the task's seconds-long size
    deterministic: bool = True  # torch.use_deterministic_algorithms for the run
    device: str = "cpu"
    amp: bool = False  # autocast to bfloat16 (mixed precision; meant for CUDA, works on the CPU)

    def __post_init__(self) -> None:
        checks = [
            (self.hidden_size >= 1, "hidden_size", "an integer >= 1"),
            (self.num_layers >= 1, "num_layers", "an integer >= 1"),
            (0 <= self.dropout < 1, "dropout", "a number in [0, 1)"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {list(OPTIMIZERS)}"),
            (self.lr > 0, "lr", "a number > 0"),
            (self.weight_decay >= 0, "weight_decay", "a number >= 0"),
            (self.clip_norm >= 0, "clip_norm", "a number >= 0 (0 turns clipping off)"),
            (self.weight_noise >= 0, "weight_noise", "a number >= 0 (0: none)"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.patience >= 0, "patience", "an integer >= 0"),
            (self.probes >= 0, "probes", "an integer >= 0 (0: at epoch ends only)"),
            (self.schedule in SCHEDULES, "schedule", f"one of {list(SCHEDULES)}"),
            (0 < self.lr_decay <= 1, "lr_decay", "a number in (0, 1]"),
            (self.seed >= 0, "seed", "an integer >= 0"),
            (0 < self.fraction <= 1, "fraction", "a number in (0, 1]"),
            (
                self.backend == "auto" or self.backend in available_backends(),
                "backend",
                f"'auto' or one of {available_backends()}",
            ),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"{key}: expected {expected}, got {getattr(self, key)!r}")
        if self.task not in TASKS:
            raise ValueError(f"task: expected one of {sorted(TASKS)}, got {self.task!r}")
        if self.cell not in LAYERS:
            raise ValueError(f"cell: expected one of {list(LAYERS)}, got {self.cell!r}")
        for key, check, name in (
            ("cell_options", check_layer_options, self.cell),
            ("task_options", check_task_options, self.task),
        ):
            try:
                check(name, dict(getattr(self, key)))
            except ValueError as error:
                raise ValueError(f"{key}: {error}") from None
        try:
            torch.device(self.device)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device: expected a torch device such as 'cpu', 'cuda' or 'cuda:1', got "
                f"{self.device!r}"
            ) from None

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "") -> TrainConfig:
        """Build from plain values (a TOML table, a stored result), checking names and types."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        prefix = f"{where}." if where else ""
        for key, value in values.items():
            if key not in fields:
                raise ValueError(
                    f"{prefix}{key}: unknown key; expected one of: {', '.join(sorted(fields))}"
                )
            default = fields[key].default
            expected = (
                dict if fields[key].default_factory is not dataclasses.MISSING else type(default)
            )
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                continue
            if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise ValueError(
                    f"{prefix}{key}: expected {expected.__name__}, got {type(value).__name__} "
                    f"{value!r}"
                )
        values = {k: float(v) if isinstance(fields[k].default, float) else v
                  for k, v in values.items()}  # fmt: skip
        try:
            return cls(**values)
        except ValueError as error:
            raise ValueError(f"{prefix}{error}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        """A short hash of the resolved configuration: the identity of a trial. Fields added
        since the first release count only away from their defaults, so the trials of a study
        stored before keep their identity and resume."""
        values = self.to_dict()
        for name, default in _ADDED_LATER.items():
            if values[name] == default:
                del values[name]
        text = json.dumps(values, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]
