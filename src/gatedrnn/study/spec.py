"""A study file (TOML) as frozen dataclasses, checked before anything runs, and its trial grid.

    name = "music"
    tasks = ["jsb", "adding"]
    cells = ["rnn", "lstm", "gru", { cell = "gru", label = "gru-before", reset = "before" }]
    widths = ["equal_hidden", "equal_params"]
    hidden_size = 100          # equal_hidden: every cell this wide
    budget = 20000             # equal_params: recurrent-layer parameters; hidden solved per cell
    seeds = 3                  # seeds 0, 1, 2
    fractions = [1.0]          # of the training set (learning curves)
    timing_rounds = 7          # interleaved rounds timing each task and width arm (speed claim)

    [train]                    # TrainConfig fields shared by every trial
    epochs = 20

    [executor]
    kind = "local"             # local | ray
    workers = 0                # 0: all cores (on CUDA: one per GPU)

Every error names the key path (``cells[3].reset``, ``train.lr`` …) and what was expected.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gatedrnn.nn.counting import hidden_for_budget
from gatedrnn.nn.spec import spec_from_options
from gatedrnn.tasks import LAYERS, TASKS, check_layer_options, check_task_options
from gatedrnn.train.config import TrainConfig

__all__ = ["CellChoice", "ExecutorSpec", "StudySpec", "Trial", "load_study", "stored_study"]

WIDTHS = ("equal_hidden", "equal_params")
EXECUTORS = ("local", "ray")


@dataclass(frozen=True)
class CellChoice:
    cell: str  # a layer kind: rnn | lstm | gru | mgu | mingru | minlstm
    label: str  # how results name it
    options: dict[str, Any] = field(default_factory=dict)  # variant options, e.g. reset


@dataclass(frozen=True)
class ExecutorSpec:
    kind: str = "local"
    workers: int = 0  # 0: as many as cores (on CUDA: one per GPU)
    address: str | None = None  # ray: the cluster to join; None starts a local one


@dataclass(frozen=True)
class Trial:
    task: str
    cell: CellChoice
    width: str
    seed: int
    fraction: float
    config: TrainConfig

    @property
    def key(self) -> str:
        """The trial's identity: its configuration, width arm and cell label (two arms may train
        the same configuration, and each keeps its own row)."""
        text = f"{self.config.key}|{self.width}|{self.cell.label}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class StudySpec:
    name: str
    tasks: tuple[str, ...]
    cells: tuple[CellChoice, ...]
    widths: tuple[str, ...] = ("equal_hidden",)
    hidden_size: int = 100
    budget: int = 20_000
    seeds: int = 3
    fractions: tuple[float, ...] = (1.0,)
    timing_rounds: int = 7
    train: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, dict[str, Any]] = field(default_factory=dict)  # per task name
    executor: ExecutorSpec = ExecutorSpec()

    def trials(self) -> list[Trial]:
        """Every trial of the grid: tasks × widths × fractions × seeds × cells. Cells vary
        fastest, so the trials a claim pairs (same seed, other cell) run next to each other
        and see the same machine state, in an order that alternates by seed."""
        hidden: dict[tuple[str, str, str], int] = {}
        for task in self.tasks:
            for choice in self.cells:
                for width in self.widths:
                    hidden[task, choice.label, width] = self._hidden(task, choice, width)
        trials = []
        for task in self.tasks:
            for width in self.widths:
                for fraction in self.fractions:
                    for seed in range(self.seeds):
                        # counterbalanced: the order alternates by seed, so a systematic
                        # first-or-second effect on timing cancels in the paired ratios
                        order = self.cells if seed % 2 == 0 else self.cells[::-1]
                        for choice in order:
                            values = {
                                **self.train,
                                "task": task,
                                "cell": choice.cell,
                                "hidden_size": hidden[task, choice.label, width],
                                "seed": seed,
                                "fraction": fraction,
                                "cell_options": dict(choice.options),
                                "task_options": dict(self.task_options.get(task, {})),
                            }
                            config = TrainConfig.from_dict(values)
                            trials.append(Trial(task, choice, width, seed, fraction, config))
        return trials

    def _hidden(self, task: str, choice: CellChoice, width: str) -> int:
        if width == "equal_hidden":
            return self.hidden_size
        return hidden_for_budget(
            spec_from_options(choice.cell, choice.options),
            self.budget,
            TASKS[task].layer_input_size(dict(self.task_options.get(task, {}))),
            self.train.get("num_layers", 1),
            bias=choice.options.get("bias", True),
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _fail(path: str, message: str) -> ValueError:
    return ValueError(f"{path}: {message}")


def _expect(value: Any, kind: type | tuple[type, ...], path: str, what: str) -> Any:
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(path, f"expected {what}, got {type(value).__name__} {value!r}")
    return value


def _parse_cell(raw: Any, path: str) -> CellChoice:
    if isinstance(raw, str):
        raw = {"cell": raw}
    _expect(raw, dict, path, "a cell name or a table with a 'cell' key")
    raw = dict(raw)
    cell = _expect(raw.pop("cell", None), str, f"{path}.cell", "a cell name")
    if cell not in LAYERS:
        raise _fail(f"{path}.cell", f"unknown cell {cell!r}; expected one of: {', '.join(LAYERS)}")
    label = raw.pop("label", None)
    options = raw
    try:
        check_layer_options(cell, options)
    except ValueError as error:
        raise _fail(path, str(error)) from None
    if label is None:
        label = cell + "".join(f"-{k}={v}" for k, v in sorted(options.items()))
    return CellChoice(cell, _expect(label, str, f"{path}.label", "a string"), options)


def parse_study(raw: dict[str, Any], default_name: str = "study") -> StudySpec:
    """Check a parsed TOML document and build the spec; nothing runs or is written."""
    known = {f.name for f in dataclasses.fields(StudySpec)}
    for key in raw:
        if key not in known:
            raise _fail(key, f"unknown key; expected one of: {', '.join(sorted(known))}")
    name = _expect(raw.get("name", default_name), str, "name", "a string")
    tasks = tuple(_expect(raw.get("tasks"), list, "tasks", "a list of task names"))
    if not tasks:
        raise _fail("tasks", "expected at least one task, got an empty list")
    for i, task in enumerate(tasks):
        if task not in TASKS:
            raise _fail(
                f"tasks[{i}]", f"unknown task {task!r}; expected one of: {', '.join(sorted(TASKS))}"
            )
    raw_cells = _expect(raw.get("cells"), list, "cells", "a list of cells")
    if not raw_cells:
        raise _fail("cells", "expected at least one cell, got an empty list")
    cells = tuple(_parse_cell(c, f"cells[{i}]") for i, c in enumerate(raw_cells))
    labels = [c.label for c in cells]
    if len(set(labels)) != len(labels):
        raise _fail("cells", f"labels must differ, got {labels}")
    widths = tuple(_expect(raw.get("widths", ["equal_hidden"]), list, "widths", "a list"))
    if not widths:
        raise _fail("widths", "expected at least one width mode, got an empty list")
    for i, width in enumerate(widths):
        if width not in WIDTHS:
            raise _fail(f"widths[{i}]", f"expected one of {list(WIDTHS)}, got {width!r}")
    hidden = _expect(raw.get("hidden_size", 100), int, "hidden_size", "an integer")
    budget = _expect(raw.get("budget", 20_000), int, "budget", "an integer")
    seeds = _expect(raw.get("seeds", 3), int, "seeds", "an integer")
    if seeds < 1:
        raise _fail("seeds", f"expected at least 1 seed, got {seeds}")
    if hidden < 1:
        raise _fail("hidden_size", f"expected an integer >= 1, got {hidden}")
    rounds = _expect(raw.get("timing_rounds", 7), int, "timing_rounds", "an integer")
    if rounds < 2:
        raise _fail("timing_rounds", f"expected at least 2 rounds (an interval), got {rounds}")
    fractions = tuple(_expect(raw.get("fractions", [1.0]), list, "fractions", "a list"))
    for i, fraction in enumerate(fractions):
        _expect(fraction, (int, float), f"fractions[{i}]", "a number")
        if not 0 < fraction <= 1:
            raise _fail(f"fractions[{i}]", f"expected a number in (0, 1], got {fraction}")
    train = dict(_expect(raw.get("train", {}), dict, "train", "a table"))
    for key in ("task", "cell", "hidden_size", "seed", "fraction", "cell_options", "task_options"):
        if key in train:
            raise _fail(f"train.{key}", "is set by the study grid, not in [train]")
    TrainConfig.from_dict(train, where="train")  # names and types, before anything runs
    task_options = dict(_expect(raw.get("task_options", {}), dict, "task_options", "a table"))
    for task, options in task_options.items():
        if task not in tasks:
            raise _fail(f"task_options.{task}", f"is not one of the study's tasks {list(tasks)}")
        _expect(options, dict, f"task_options.{task}", "a table")
        try:
            check_task_options(task, options)
        except ValueError as error:
            raise _fail(f"task_options.{task}", str(error)) from None
    executor_raw = dict(_expect(raw.get("executor", {}), dict, "executor", "a table"))
    for key in executor_raw:
        if key not in ("kind", "workers", "address"):
            raise _fail(f"executor.{key}", "unknown key; expected kind, workers or address")
    kind = executor_raw.get("kind", "local")
    if kind not in EXECUTORS:
        raise _fail("executor.kind", f"expected one of {list(EXECUTORS)}, got {kind!r}")
    workers = _expect(executor_raw.get("workers", 0), int, "executor.workers", "an integer")
    spec = StudySpec(
        name=name,
        tasks=tasks,
        cells=cells,
        widths=widths,
        hidden_size=hidden,
        budget=budget,
        seeds=seeds,
        fractions=tuple(float(f) for f in fractions),
        timing_rounds=rounds,
        train=train,
        task_options=task_options,
        executor=ExecutorSpec(kind, workers, executor_raw.get("address")),
    )
    if "equal_params" in widths:
        for task in tasks:
            for i, choice in enumerate(cells):
                try:
                    spec._hidden(task, choice, "equal_params")
                except ValueError as error:
                    raise _fail("budget", f"{error} (cells[{i}] on task {task!r})") from None
    return spec


def stored_study(values: dict[str, Any]) -> StudySpec:
    """The spec a study's database keeps (``StudySpec.to_dict`` as stored), checked again."""
    raw = {key: value for key, value in values.items() if key != "cells"}
    raw["cells"] = [
        {"cell": c["cell"], "label": c["label"], **c["options"]} for c in values["cells"]
    ]
    raw["executor"] = {k: v for k, v in values["executor"].items() if v is not None}
    return parse_study(raw)


def load_study(path: str | Path) -> StudySpec:
    """Read and check a study file; a TOML syntax error names the file, line and column."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such study file") from None
    except tomllib.TOMLDecodeError as error:
        raise ValueError(f"{path}: not valid TOML: {error}") from None
    try:
        return parse_study(raw, default_name=path.stem)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None
