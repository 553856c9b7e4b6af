"""The studies `gatedrnn compare` runs: RNN vs LSTM vs GRU on the embedded data, at three scales.

default: JSB Chorales (embedded) and the adding problem (T = 50, 2,000 sequences); equal hidden
size (64) and equal recurrent-layer budget (20K parameters, as Chung et al. 2014); 3 seeds; 30%
and all of the training set; 15 epochs for every cell, the best by validation tested. No early
stopping: the adding problem sits at chance for epochs before a cell solves it, and stopping
after 5 flat epochs cut off LSTM runs that were about to (a cell that leaves the plateau later
would lose its epochs, not just its time). A few minutes on 2 cores.
Every scale validates once more in the middle of each epoch (``probes = 1``), for the
convergence claim: on the adding problem many runs meet the target within their first epoch,
where epoch ends alone bound nothing.
smoke: the same grid at the tasks' smoke sizes, 2 seeds, 3 epochs: well under a minute.
full: 5 seeds, 10/30/100% of the training set, up to 100 epochs with early stopping after 20
without progress, the adding problem at T = 100 with 10,000 sequences.
"""

from __future__ import annotations

from typing import Any

from gatedrnn.nn.spec import parse_cell
from gatedrnn.study.spec import StudySpec, parse_study

__all__ = ["SCALES", "cell_entry", "compare_study"]

SCALES = ("smoke", "default", "full")

_COMMON: dict[str, Any] = {
    "tasks": ["jsb", "adding"],
    "cells": ["rnn", "lstm", "gru"],
    "widths": ["equal_hidden", "equal_params"],
    "hidden_size": 64,
    "budget": 20_000,
}
_SCALE: dict[str, dict[str, Any]] = {
    "smoke": {
        "seeds": 2, "fractions": [0.5, 1.0], "hidden_size": 16, "budget": 3_000,
        "train": {"epochs": 3, "smoke": True, "lr": 1e-2, "batch_size": 16, "probes": 1},
    },
    "default": {
        "seeds": 3, "fractions": [0.3, 1.0],
        "train": {"epochs": 15, "lr": 3e-3, "batch_size": 32, "patience": 0, "probes": 1},
        "task_options": {"adding": {"steps": 50, "train_size": 2000}},
    },
    "full": {
        "seeds": 5, "fractions": [0.1, 0.3, 1.0],
        "train": {"epochs": 100, "lr": 1e-3, "batch_size": 32, "patience": 20, "probes": 1},
    },
}  # fmt: skip


def cell_entry(text: str) -> str | dict[str, Any]:
    """A cell as ``--cells`` writes it: ``gru``, or a variant, ``gru:reset=before`` or
    ``lstm:peepholes=true:forget_bias=1``, labelled as written.

    >>> cell_entry("gru:reset=before")
    {'cell': 'gru', 'label': 'gru:reset=before', 'reset': 'before'}
    """
    try:
        cell, options = parse_cell(text)
    except ValueError as error:
        raise ValueError(f"--cells: {error}") from None
    return {"cell": cell, "label": text, **options} if options else cell


def compare_study(
    scale: str = "default",
    *,
    tasks: list[str] | None = None,
    cells: list[str] | None = None,
    seeds: int | None = None,
    timing_rounds: int | None = None,
    device: str | None = None,
    executor: str | None = None,
    workers: int = 0,
    data: str | None = None,
    backend: str | None = None,
) -> StudySpec:
    """The comparison study at ``scale``, with any of its choices overridden. ``data`` is the
    user's file for the generic tasks: ``seqcls`` (.npz, .csv) or ``textcls`` (.tsv), which
    become the default tasks."""
    if scale not in SCALES:
        raise ValueError(f"scale: expected one of {list(SCALES)}, got {scale!r}")
    raw = {**_COMMON, **_SCALE[scale], "name": f"compare-{scale}"}
    raw["train"] = dict(raw["train"])
    if data:
        from pathlib import Path

        from gatedrnn.tasks import TASKS

        generic = "textcls" if data.endswith(".tsv") else "seqcls"
        tasks = tasks or [generic]
        users = [t for t in tasks if t in TASKS and TASKS[t].reads_user_file]
        if not users:
            raise ValueError(
                f"--data {data}: none of the tasks {tasks} reads a user's file; use --tasks "
                "seqcls (.npz or .csv) or textcls (.tsv)"
            )
        raw["task_options"] = {
            **raw.get("task_options", {}),
            **{t: {"path": str(Path(data).resolve())} for t in users},
        }
        raw["name"] += "-" + Path(data).stem.replace("/", "_")
    if tasks:
        raw["tasks"] = tasks
        options = raw.get("task_options", {})
        raw["task_options"] = {t: o for t, o in options.items() if t in tasks}
    if cells:
        raw["cells"] = [cell_entry(text) for text in cells]
    if seeds is not None:
        raw["seeds"] = seeds
    if timing_rounds is not None:
        raw["timing_rounds"] = timing_rounds
    if device:
        raw["train"]["device"] = device
    if backend:
        raw["train"]["backend"] = backend
    raw["executor"] = {"kind": executor or "local", "workers": workers}
    labels = [c if isinstance(c, str) else c["label"] for c in raw["cells"]]
    # not the seeds or timing rounds: a run with more (or fewer) is the same study, and reuses
    # its trials
    suffix = "-".join(raw["tasks"]) + "-" + "-".join(labels)
    if device:  # a study's name is its folder: runs on two devices must not share one
        suffix += f"-{device.replace(':', '')}"
    if backend:
        suffix += f"-{backend}"
    if (tasks, cells, device, backend) != (None, None, None, None):
        raw["name"] += "-" + suffix.replace("/", "_").replace(":", "_")
    return parse_study(raw)
