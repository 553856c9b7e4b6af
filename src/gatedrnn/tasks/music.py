"""Polyphonic music modelling (Boulanger-Lewandowski et al. 2012; Chung et al. 2014 §4.1): from
the piano roll up to step t, predict which of the 88 keys sound at t + 1.

Loss and metric: the negative log-likelihood of the next step under 88 independent Bernoullis,
summed over keys and averaged over time steps (Chung et al. 2014 Table 2 reports it the same way).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gatedrnn.data.music import KEYS, piano_rolls
from gatedrnn.tasks.base import Batch, Metric, Task, register_task
from gatedrnn.tasks.models import SequenceModel

__all__ = ["JSBChorales", "MuseData", "MusicTask", "Nottingham", "PianoMidi"]


class MusicTask(Task):
    metrics = (Metric("nll", higher_is_better=False),)
    input_size = output_size = KEYS

    def __init__(self, *, smoke: bool = False, fraction: float = 1.0, seed: int = 0,
                 data_dir=None, chunk: int = 0) -> None:  # fmt: skip
        """``chunk`` > 1 cuts training sequences into pieces of at most that many steps (long
        pieces of MuseData and Piano-midi.de run to 4,000 steps); evaluation always reads whole
        sequences."""
        super().__init__(smoke=smoke, fraction=fraction, seed=seed)
        if chunk < 0 or chunk == 1:
            raise ValueError(f"{self.name}: chunk must be 0 (whole sequences) or >= 2, got {chunk}")
        rolls = piano_rolls(self.dataset, data_dir)
        if smoke:  # a few short sequences: trains in seconds
            rolls = {s: [r[:33] for r in rolls[s][: 16 if s == "train" else 8]] for s in rolls}
        train = rolls["train"]
        if fraction < 1:
            keep = max(1, round(fraction * len(train)))
            order = np.random.default_rng(seed).permutation(len(train))[:keep]
            train = [train[i] for i in sorted(order)]
        if chunk:
            train = [r[i : i + chunk] for r in train for i in range(0, len(r) - 1, chunk - 1)]
            train = [r for r in train if len(r) >= 2]
        self.splits = {"train": train, "valid": rolls["valid"], "test": rolls["test"]}

    def batches(self, split: str, batch_size: int, *, shuffle: bool = False,
                seed: int = 0) -> Iterator[Batch]:  # fmt: skip
        rolls = self.splits[split]
        order = (
            np.random.default_rng(seed).permutation(len(rolls)) if shuffle else range(len(rolls))
        )
        order = list(order)
        for start in range(0, len(order), batch_size):
            chosen = [rolls[i] for i in order[start : start + batch_size]]
            lengths = torch.tensor([len(r) - 1 for r in chosen])  # predict steps 1 … T−1
            T = int(lengths.max())
            inputs = torch.zeros(T, len(chosen), KEYS)
            targets = torch.zeros(T, len(chosen), KEYS)
            for b, roll in enumerate(chosen):
                roll = torch.from_numpy(roll)
                inputs[: len(roll) - 1, b] = roll[:-1]
                targets[: len(roll) - 1, b] = roll[1:]
            yield Batch(inputs, lengths, targets)

    def build_model(self, cell: str, hidden_size: int, num_layers: int = 1,
                    **layer_options) -> nn.Module:  # fmt: skip
        return SequenceModel(cell, KEYS, hidden_size, KEYS, num_layers, **layer_options)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[torch.Tensor, int]:
        logits = model(batch.inputs, batch.lengths)  # (T, B, 88)
        nll = F.binary_cross_entropy_with_logits(logits, batch.targets, reduction="none").sum(-1)
        valid = torch.arange(logits.shape[0]).unsqueeze(1) < batch.lengths  # (T, B)
        return (nll * valid).sum(), int(batch.lengths.sum())


@register_task
class JSBChorales(MusicTask):
    name = "jsb"
    description = "JSB Chorales piano rolls (embedded); next-step NLL"
    dataset = "jsb"


@register_task
class Nottingham(MusicTask):
    name = "nottingham"
    description = "Nottingham folk tunes, piano rolls; next-step NLL"
    dataset = "nottingham"


@register_task
class MuseData(MusicTask):
    name = "musedata"
    description = "MuseData classical music, piano rolls; next-step NLL"
    dataset = "musedata"


@register_task
class PianoMidi(MusicTask):
    name = "pianomidi"
    description = "Piano-midi.de classical piano, piano rolls; next-step NLL"
    dataset = "pianomidi"
