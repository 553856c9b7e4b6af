"""The ``gatedrnn`` command line. The CLI owns the console; library code only logs."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gatedrnn.atomic import write_json
from gatedrnn.nn.counting import count_parameters, hidden_for_budget
from gatedrnn.nn.spec import CellSpec, make_spec
from gatedrnn.train.config import HELP, TrainConfig

if TYPE_CHECKING:  # the report pulls in matplotlib: imported when a command needs it
    from gatedrnn.report import Report

# The cells `gatedrnn cells` lists: every kind, and the variants the literature compares.
CELL_TABLE: tuple[CellSpec, ...] = (
    make_spec("rnn"),
    make_spec("rnn", nonlinearity="relu"),
    make_spec("lstm"),
    make_spec("lstm", peepholes=True),
    make_spec("lstm", coupled=True),
    make_spec("gru"),
    make_spec("gru", reset="before"),
    make_spec("mgu"),
    make_spec("mingru"),
    make_spec("minlstm"),
)


# TrainConfig fields that `gatedrnn train` exposes as flags (the option tables stay in the API)
TRAIN_OPTIONS = tuple(
    name
    for name in TrainConfig.__dataclass_fields__
    if name not in ("cell_options", "task_options")
)


def _cells(args: argparse.Namespace, console: Console) -> int:
    title = f"Cells at input size {args.input_size}, hidden size {args.hidden_size}"
    if args.budget:
        title += f"; H@budget = hidden size for {args.budget} parameters"
    table = Table(
        title=title,
        caption="per time step, sequence and layer direction: mats = weight matrices, "
        "matmul/pointw = FLOPs, nonlin = sigmoid/tanh/… evaluations",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    table.add_column("cell", no_wrap=True)
    for column in ("params", "gates", "mats", "states", "matmul", "pointw", "nonlin"):
        table.add_column(column, justify="right")
    if args.budget:
        table.add_column("H@budget", justify="right")
    for spec in CELL_TABLE:
        cost = spec.step_cost(args.input_size, args.hidden_size)
        params = count_parameters(spec, args.input_size, args.hidden_size, args.layers)
        row = [
            spec.name,
            params,
            cost.gates,
            cost.weight_matrices,
            cost.state_tensors,
            cost.matmul_flops,
            cost.pointwise_flops,
            cost.nonlinearities,
        ]
        if args.budget:
            row.append(hidden_for_budget(spec, args.budget, args.input_size, args.layers))
        table.add_row(*map(str, row))
    console.print(table)
    return 0


def _bench(args: argparse.Namespace, console: Console) -> int:
    from gatedrnn.bench import run_benchmark, to_json

    if args.smoke:
        args.hidden, args.batch, args.steps, args.repeats, args.warmup = [32], [4], 10, 2, 1
    device, dtype = _device(args.device), getattr(torch, args.dtype)
    if args.backends is None:  # ours that a user of this device would run
        args.backends = ["triton"] if device.type == "cuda" else ["cpu"]
    if device.type == "cpu":
        _prepare_cpu_loops(console)
    with console.status("timing") as status:
        results = run_benchmark(
            args.cells,
            args.hidden,
            args.batch,
            args.steps,
            args.repeats,
            args.warmup,
            args.backends,
            progress=lambda text: status.update(f"timing: {text} done"),
            device=device,
            dtype=dtype,
            layers=args.layers,
            bidirectional=args.bidirectional,
        )
    by_key = {(r.cell, r.hidden, r.batch, r.mode, r.impl): r for r in results}
    where = (
        f"{torch.cuda.get_device_name(device)}, torch.nn on cuDNN"
        if device.type == "cuda"
        else f"{torch.get_num_threads()} threads"
    )
    if args.dtype != "float32":
        where += f", {args.dtype}"
    if args.layers > 1:
        where += f", {args.layers} layers"
    if args.bidirectional:
        where += ", bidirectional"
    table = Table(
        title=f"Time against torch.nn (T={args.steps}, median of {args.repeats}, {where}); "
        "ratio < 1 is faster",
        box=box.SIMPLE_HEAD,
    )
    memory = Table(title="Bytes saved for backward, ours / torch.nn", box=box.SIMPLE_HEAD)
    for column in ("cell", "against", "H", "B", "mode", "torch ms"):
        table.add_column(
            column, justify="left" if column in ("cell", "against", "mode") else "right"
        )
    for column in ("cell", "against", "H", "B", "torch MB"):
        memory.add_column(column, justify="left" if column in ("cell", "against") else "right")
    for backend in args.backends:
        table.add_column(f"{backend} ms", justify="right")
        table.add_column("ratio", justify="right")
        memory.add_column(backend, justify="right")
    for r in results:
        if r.impl != "torch.nn":
            continue
        against = r.against.removeprefix("torch.nn.")  # a variant: its family's standard layer
        row = [r.cell, against, str(r.hidden), str(r.batch), _short(r.mode), f"{r.median_ms:.2f}"]
        saved = [r.cell, against, str(r.hidden), str(r.batch),
                 f"{(r.saved_bytes or 0) / 1e6:.2f}"]  # fmt: skip
        for backend in args.backends:
            ours = by_key[(r.cell, r.hidden, r.batch, r.mode, f"gatedrnn:{backend}")]
            if ours.median_ms is None:  # the backend cannot run this cell
                row += ["—", "—"]
                saved.append("—")
                continue
            row += [f"{ours.median_ms:.2f}", f"{ours.median_ms / r.median_ms:.2f}"]
            if r.saved_bytes:
                saved.append(f"{ours.saved_bytes / r.saved_bytes:.2f}")
        table.add_row(*row)
        if r.saved_bytes:
            memory.add_row(*saved)
    console.print(table)
    console.print(memory)
    if "gru" in args.cells and "lstm" in args.cells:
        ratios = Table(title="GRU time / LSTM time (arithmetic says 0.75)", box=box.SIMPLE_HEAD)
        for column in ("H", "B", "mode", "torch.nn", *args.backends):
            ratios.add_column(column, justify="left" if column == "mode" else "right")
        for r in results:
            if r.cell != "gru" or r.impl != "torch.nn":
                continue
            row = [
                str(r.hidden),
                str(r.batch),
                r.mode.replace("forward", "fwd").replace("backward", "bwd"),
            ]
            for impl in ("torch.nn", *(f"gatedrnn:{b}" for b in args.backends)):
                gru = by_key[("gru", r.hidden, r.batch, r.mode, impl)].median_ms
                lstm = by_key[("lstm", r.hidden, r.batch, r.mode, impl)].median_ms
                row.append(f"{gru / lstm:.2f}" if gru and lstm else "—")
            ratios.add_row(*row)
        console.print(ratios)
    reasons = sorted({r.skipped for r in results if r.skipped})
    for reason in reasons:
        console.print(f"—: {escape(reason)}", soft_wrap=True)
    if args.out:
        write_json(args.out, to_json(results, device, dtype, args.layers, args.bidirectional))
        console.print(f"wrote {args.out}")
    return 0


def _prepare_cpu_loops(console: Console) -> None:
    """Load the ``cpu`` backend's compiled loops in this process, built first if they are not
    (~40 seconds, once; cached by torch), under a status line, before a run that would
    otherwise wait on that build without a word (a study's first trials showed 0 done while
    their workers built it). Nothing where they cannot be built (the first layer call warns why)."""
    from gatedrnn.backends import compiled

    if compiled.unavailable_reason() is not None:
        return
    with console.status(
        "loading the compiled CPU loops (the first time they are built: ~40 seconds, once)"
    ):
        compiled.compiled_loops()


def _device(name: str) -> torch.device:
    """``--device``, refused with the reason where this machine cannot run it."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device: expected a torch device such as 'cpu' or 'cuda', got {name!r}"
        ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"--device {name}: this machine has no CUDA GPU (torch.cuda.is_available() is False)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected 'cpu' or 'cuda', got {name!r}")
    return device


def _gpu_tune(args: argparse.Namespace, console: Console) -> int:
    from gatedrnn.backends import gpu, gpu_tune

    dtypes = gpu_tune.DTYPES
    bad = [c for c in args.cells if c not in ("gru", "lstm", "rnn")]
    bad += [d for d in args.dtypes if d not in dtypes]
    bad += [d for d in args.directions if d not in ("forward", "both")]
    if bad:
        raise ValueError(
            f"unknown {', '.join(map(repr, bad))}: cells are gru, lstm, rnn; dtypes float32, "
            "bfloat16, float16; directions forward, both"
        )
    if not torch.cuda.is_available():
        raise RuntimeError("gpu-tune measures the triton backend on a CUDA GPU; there is none")
    if gpu.triton_unavailable():
        raise RuntimeError(gpu.triton_unavailable())
    device = torch.device("cuda", torch.cuda.current_device())
    name = gpu._device_name(device)
    table = Table(
        title=f"triton against cuDNN on {name} (time ratio < {gpu.AUTO_MARGIN}: auto takes "
        "triton); into " + str(gpu_tune.local_table_path()),
        box=box.SIMPLE_HEAD,
    )
    for column in ("cell", "dtype", "H", "B", "direction", "cuDNN ms", "ratio", "variant", "auto"):
        table.add_column(column, justify="right" if column in ("H", "B", "ratio") else "left")
    sizes = [
        (cell, dtype, grad, H, B)
        for cell in args.cells
        for dtype in args.dtypes
        for grad in [d == "both" for d in args.directions]
        for H in args.hidden
        for B in args.batch
    ]
    with console.status("measuring") as status:
        for cell, dtype, grad, H, B in sizes:
            direction = "both" if grad else "forward"
            status.update(f"measuring {cell} {dtype} H={H} B={B} {direction}")
            size = (cell, dtypes[dtype], grad, H, B, device)
            start = [cell, dtype, str(H), str(B), direction]
            if dtype == "float32" and gpu.fp32_precision() != "tf32":
                table.add_row(*start, "skipped: the table's float32 is TF32 (allow_tf32 is off)")
                continue
            try:
                gpu_tune.measure(*size, force=args.force)
            except Exception as error:  # one size failing leaves the others to measure
                table.add_row(*start, f"error: {type(error).__name__}: {error}"[:80])
                continue
            row = gpu._exact_row(*size)
            if row is None:  # launch overrides set in gpu.TUNING: nothing measured
                table.add_row(*start, "not measured (gatedrnn.backends.gpu.TUNING is set)")
                continue
            ratio = row["ratio"]
            cudnn = row.get("measured", {}).get("cudnn")
            table.add_row(
                *start,
                f"{cudnn:.3f}" if cudnn else "(shipped)",
                "failed" if ratio is None else f"{ratio:.2f}",
                " ".join(f"{k}={v}" for k, v in row.get("tuning", {}).items()) or "-",
                "triton" if ratio is not None and ratio <= gpu.AUTO_MARGIN else "cudnn",
            )  # fmt: skip
    console.print(table)
    return 0


def _short(mode: str) -> str:
    return mode.replace("forward", "fwd").replace("backward", "bwd")


def _csv(kind: Callable[[str], object]) -> Callable[[str], list]:
    def parse(text: str) -> list:
        try:
            items = [kind(item) for item in text.split(",") if item]
        except (ValueError, argparse.ArgumentTypeError) as error:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list: {error}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return items

    return parse


def _count(minimum: int) -> Callable[[str], int]:
    """An argument type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a number >= {minimum}, got {value}")
        return value

    return parse


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as an int, a float, true/false, or else kept as text."""
    from gatedrnn.nn.spec import literal

    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, literal(raw)


def _dataset_state(name: str, data_dir: str | None) -> str:
    from gatedrnn.data import CorruptDataError, DataMissingError, get_dataset, locate

    try:
        return f"present ({locate(name, data_dir)})"
    except DataMissingError:
        return "embedded" if get_dataset(name).embedded else "missing"
    except CorruptDataError:
        return "corrupt (run `gatedrnn data verify`)"


def _tasks(args: argparse.Namespace, console: Console) -> int:
    from gatedrnn.tasks import TASKS

    table = Table(title="Registered tasks", box=box.SIMPLE_HEAD)
    for column in ("task", "what", "metric", "data"):
        table.add_column(column)
    for name, task in sorted(TASKS.items()):
        metric = ", ".join(f"{m.name} {'↑' if m.higher_is_better else '↓'}" for m in task.metrics)
        data = (
            _dataset_state(task.dataset, args.data_dir)
            if task.dataset
            else "your file (path=…)"
            if task.reads_user_file
            else "generated"
        )
        table.add_row(name, task.description, metric, data)
    console.print(table)
    return 0


def _data(args: argparse.Namespace, console: Console) -> int:
    from gatedrnn.data import DATASETS, fetch

    if args.action == "list":
        table = Table(title="Datasets", box=box.SIMPLE_HEAD)
        for column in ("name", "size", "license", "state"):
            table.add_column(column, justify="right" if column == "size" else "left")
        for name, info in sorted(DATASETS.items()):
            state = _dataset_state(name, args.data_dir)
            table.add_row(name, f"{info.size / 1e6:.2f} MB", info.license, state)
        console.print(table)
        return 0
    names = args.names or sorted(DATASETS)
    unknown = [name for name in names if name not in DATASETS]
    if unknown:
        raise ValueError(
            f"unknown dataset {unknown[0]!r}; expected one of: {', '.join(sorted(DATASETS))}"
        )
    failed = []
    for name in names:  # each in turn: one that fails is reported, and the next is tried
        try:
            if args.action == "fetch":
                with console.status(f"fetching {name}") as status:
                    folder = fetch(
                        name,
                        args.data_dir,
                        progress=lambda f, done, total, name=name: status.update(
                            f"fetching {name}/{f}: {done / 1e6:.1f} of {total / 1e6:.1f} MB"
                        ),
                    )
                console.print(f"{name}: fetched and verified in {folder}")
            else:
                console.print(f"{name}: {_verified(name, args.data_dir)}")
        except (ValueError, OSError) as error:  # missing, corrupt, unreachable
            failed.append(name)
            _print_error(error)
    if failed and len(names) > 1:
        _print_error(f"{len(failed)} of {len(names)} failed: {', '.join(failed)}")
    return 2 if failed else 0


def _verified(name: str, data_dir: str | None) -> str:
    """Where dataset ``name`` was verified: the folder holding its registered files or, where
    none does and the package ships a copy, that copy. Raises as :func:`~gatedrnn.data.locate`
    does otherwise."""
    from gatedrnn.data import DataMissingError, embedded_copy, get_dataset, locate

    try:
        return f"verified in {locate(name, data_dir)}"
    except DataMissingError:
        info = get_dataset(name)
        if info.embedded is None:
            raise
        embedded_copy(name)
        return (
            f"verified the copy inside the package ({info.embedded}), which the tasks read; "
            f"the registered {', '.join(f.path for f in info.files)} is not here "
            f"(`gatedrnn data fetch {name}`)"
        )


def _train(args: argparse.Namespace, console: Console) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from gatedrnn.tasks import check_datasets
    from gatedrnn.train import train
    from gatedrnn.train.loop import check_backend

    options: dict = {}
    if args.preset:
        from gatedrnn.tasks.language import PRESETS

        options.update(PRESETS[args.preset])
    options.update({k: getattr(args, k) for k in TRAIN_OPTIONS if getattr(args, k) is not None})
    for field, pairs in (("task_options", args.task_option), ("cell_options", args.cell_option)):
        if pairs:
            options[field] = {**options.get(field, {}), **dict(pairs)}
    config = TrainConfig.from_dict(options)
    _device(config.device)
    check_backend(config)
    check_datasets([config.task], args.data_dir)
    if torch.device(config.device).type == "cpu":
        _prepare_cpu_loops(console)
    shape = f"hidden {config.hidden_size} × {config.num_layers}"
    setup = f"{config.optimizer} lr {config.lr}, seed {config.seed}"
    console.print(f"training {config.cell} on {config.task}: {shape}, {setup}")
    console.print(
        f"{'epoch':>5} {'train loss':>11} {'valid':>18} {'lr':>9} {'s':>7} {'units/s':>9}"
    )
    with Progress(
        TextColumn("epoch {task.fields[epoch]}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as progress:
        bar = progress.add_task("train", total=None, epoch=1)

        def on_batch(epoch: int, batches: int) -> None:
            progress.update(bar, completed=batches, epoch=epoch)

        def on_epoch(r) -> None:
            valid = " ".join(f"{k} {v:.4f}" for k, v in r.valid.items())
            progress.console.print(
                f"{r.epoch:>5} {r.train_loss:>11.4f} {valid:>18} {r.lr:>9.2e} "
                f"{r.seconds:>7.2f} {r.units_per_second:>9.0f}"
            )
            progress.update(bar, total=progress.tasks[0].completed or None, completed=0)

        result = train(
            config,
            checkpoint=args.checkpoint,
            on_epoch=on_epoch,
            on_batch=on_batch,
            data_dir=args.data_dir,
        )
    best = f"best epoch {result.best_epoch}" if result.best_epoch else "no finished epoch"
    why = f" ({result.reason})" if result.reason else ""
    test = ", ".join(f"{k} {v:.4f}" for k, v in (result.test or {}).items()) or "not run"
    console.print(f"{result.status}{why}; {best}; test {test}")
    console.print(f"{result.parameters} parameters; backend {result.backend}")
    if args.out:
        write_json(args.out, result.to_dict())
        console.print(f"wrote {args.out}")
    return 0 if result.status != "diverged" else 1


def _study(args: argparse.Namespace, console: Console) -> int:
    import dataclasses

    from gatedrnn.study import StudyStore, load_study

    spec = load_study(args.file)
    if args.executor or args.address:
        executor = dataclasses.replace(
            spec.executor,
            kind=args.executor or spec.executor.kind,
            address=args.address or spec.executor.address,
        )
        spec = dataclasses.replace(spec, executor=executor)
    db_path = _run_with_progress(spec, args, console)
    store = StudyStore(db_path)
    counts = store.counts()
    store.close()
    console.print(f"done: {_summary(counts)}")
    return 0 if not _show_failures(db_path, console) else 1


_STATUSES = ("completed", "diverged", "running", "interrupted", "failed", "pending")


def _summary(counts: dict[str, int]) -> str:
    """``{"completed": 40, "failed": 2}`` → "40 completed, 2 failed", in a fixed order."""
    order = [*_STATUSES, *sorted(set(counts) - set(_STATUSES))]
    return ", ".join(f"{counts[s]} {s}" for s in order if counts.get(s)) or "no trials"


def _study_database(path: Path) -> Path:
    """A study's database from its folder (``runs/<name>``) or the database itself."""
    return path / "study.sqlite" if path.is_dir() else path


def _study_status(args: argparse.Namespace, console: Console) -> int:
    """How far a study has come, read from its database (nothing runs, nothing is written).
    ``args.study`` is its TOML file, or its folder or database (the spec stored in it then says
    which trials it plans: how `compare` runs are seen)."""
    from collections import Counter

    from gatedrnn.study import StudyStore, load_study, stored_study, study_paths
    from gatedrnn.study.store import check_study_file

    path = Path(args.study)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such study file or folder")
    spec = None
    if path.is_dir() or path.suffix == ".sqlite":
        db_path = _study_database(path)
    else:
        spec = load_study(path)
        db_path, _ = study_paths(spec, args.out)
        if not db_path.exists():
            planned = len(spec.trials())
            console.print(f"study {spec.name!r}: not started ({planned} trials; {db_path} absent)")
            return 0
    check_study_file(db_path)
    store = StudyStore(db_path)
    try:
        if spec is None:
            stored = store.get_meta("spec")
            if stored is None:
                raise ValueError(f"{db_path}: holds no study spec (its run never started)")
            spec = stored_study(stored)
        statuses, epochs, seeds_of = store.statuses(), store.epoch_counts(), store.trial_seeds()
    finally:
        store.close()
    planned = spec.trials()
    groups: dict[tuple[str, str, str], Counter] = {}
    done_epochs: Counter = Counter()
    for trial in planned:
        group = (trial.task, trial.width, trial.cell.label)
        groups.setdefault(group, Counter())[statuses.get(trial.key, "pending")] += 1
        done_epochs[group] += epochs.get(trial.key, 0)
    total = sum(groups.values(), Counter())
    shown = [s for s in _STATUSES if total[s]]  # the statuses some trial has
    table = Table(box=box.SIMPLE_HEAD)
    for column in ("task", "width", "cell", *shown, "epochs"):
        table.add_column(column, justify="left" if column in ("task", "width", "cell") else "right")
    for (task, width, cell), counts in groups.items():
        row = [str(counts[s]) if counts[s] else "·" for s in shown]
        table.add_row(task, width, cell, *row, str(done_epochs[task, width, cell]))
    console.print(f"study {spec.name!r} ({db_path}): {len(planned)} trials: {_summary(total)}")
    console.print(table)
    keys = {t.key for t in planned}
    beyond = sum(seed >= spec.seeds for key, seed in seeds_of.items() if key not in keys)
    stale = len(set(statuses) - keys) - beyond
    if beyond:
        console.print(
            f"{beyond} trials of seeds beyond the {spec.seeds} planned are in the database "
            "(a run with more seeds reuses them)"
        )
    if stale:
        console.print(
            f"{stale} trials in the database are not in the file any more (it changed since); "
            "the report still reads them"
        )
    _show_failures(db_path, console)
    return 0


def _show_failures(db_path: Path, console: Console) -> int:
    """Print what made the study's trials fail (each distinct error once, with how many it
    stopped); returns how many failed."""
    from collections import Counter

    from gatedrnn.study import StudyStore

    store = StudyStore(db_path)
    failed = [t for t in store.trials() if t["status"] == "failed"]
    store.close()
    errors = Counter((t["error"] or "no error recorded").strip().splitlines()[-1] for t in failed)
    for error, n in errors.most_common(3):
        console.print(f"[red]{n} failed:[/] {escape(error)}", soft_wrap=True)
    if len(errors) > 3:
        console.print(f"and {len(errors) - 3} other errors: the report lists every failed trial")
    return len(failed)


def _verdict_table(summary: dict[str, tuple[str, str]], title: str) -> Table:
    colours = {"supported": "green", "contradicted": "red", "inconclusive": "yellow"}
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("claim", "verdict", "scopes"):
        table.add_column(column)
    for claim, (verdict, counts) in summary.items():
        table.add_row(claim, f"[{colours[verdict]}]{verdict}[/]", counts)
    return table


def _print_verdicts(report: Report, args: argparse.Namespace, console: Console) -> None:
    """The verdict table, then how many seeds (and timing rounds) would settle what it left
    open."""
    title = f"{args.candidate} vs {args.baseline}: the claims"
    console.print(_verdict_table(report.summary, title))
    for advice, option, key, kept in (
        (report.advice, "--seeds", "seeds", "the seeds done are reused"),
        (report.rounds_advice, "--timing-rounds", "timing_rounds", "only the timing runs again"),
    ):
        if advice:
            again = (
                f"`gatedrnn compare {option} N` with the same other options"
                if args.command == "compare"
                else f"the study with {key} = N"
            )
            console.print(f"{advice} Run {again}: {kept}.")


def _run_with_progress(spec, args, console: Console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from gatedrnn.study import run_study, study_paths

    planned = spec.trials()
    if torch.device(spec.train.get("device", "cpu")).type == "cpu":
        _prepare_cpu_loops(console)  # which every trial's worker would otherwise wait on
    db_path, _ = study_paths(spec, args.out)
    before = _done_before(db_path, spec, planned)
    console.print(f"study {spec.name!r}: {len(planned)} trials{before} → {db_path}")
    total = len(planned)
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        bar = progress.add_task("trials", total=total)

        def update(counts: dict[str, int]) -> None:
            done = counts.get("completed", 0) + counts.get("diverged", 0)
            text = (
                f"running {counts.get('running', 0)}, failed {counts.get('failed', 0)}, "
                f"diverged {counts.get('diverged', 0)}"
            )
            if counts.get("timing"):
                text = f"timing the cells interleaved: arm {counts['timing']} of {counts['arms']}"
            progress.update(bar, completed=done, description=text)

        run_study(
            spec,
            args.out,
            workers=args.workers,
            progress=update,
            data_dir=getattr(args, "data_dir", None),
        )
    return db_path


def _done_before(db_path: Path, spec, planned) -> str:
    """What an earlier run of the study left done, for the line that starts a run:
    "" when nothing, else e.g. " (12 done before; from 3 to 7 seeds; timing from 7 to 15
    rounds)"."""
    from gatedrnn.study import StudySpec, StudyStore
    from gatedrnn.study.store import DONE, check_study_file

    if not db_path.is_file():
        return ""
    check_study_file(db_path)  # another program's file is not opened for writing
    store = StudyStore(db_path)
    try:
        statuses, stored = store.statuses(), store.get_meta("spec")
    finally:
        store.close()
    done = sum(statuses.get(t.key) in DONE for t in planned)
    changes = []
    if stored is not None:
        seeds = stored.get("seeds")
        rounds = stored.get("timing_rounds", StudySpec.timing_rounds)  # stored before it was set
        if seeds != spec.seeds:
            changes.append(f"from {seeds} to {spec.seeds} seeds")
        if rounds != spec.timing_rounds:
            changes.append(f"timing from {rounds} to {spec.timing_rounds} rounds")
    if not done and not changes:
        return ""
    return f" ({'; '.join([f'{done} done before', *changes])})"


def _compare(args: argparse.Namespace, console: Console) -> int:
    import time

    from gatedrnn.report import build_report
    from gatedrnn.study.presets import compare_study

    spec = compare_study(
        args.scale,
        tasks=args.tasks,
        cells=args.cells,
        seeds=args.seeds,
        timing_rounds=args.timing_rounds,
        device=args.device,
        executor=args.executor,
        data=args.data,
        backend=args.backend,
    )
    labels = [choice.label for choice in spec.cells]
    for role in ("candidate", "baseline"):
        if getattr(args, role) not in labels:  # before the study runs, not after
            raise ValueError(
                f"--{role} {getattr(args, role)!r} is not one of the study's cells {labels}: add "
                f"it to --cells, or choose the {role} among them"
            )
    start = time.perf_counter()
    db_path = _run_with_progress(spec, args, console)
    report = build_report(db_path, candidate=args.candidate, baseline=args.baseline)
    minutes = (time.perf_counter() - start) / 60
    _print_verdicts(report, args, console)
    console.print(f"report: {report.html} (and {report.markdown}); {minutes:.1f} minutes")
    return 0 if not _show_failures(db_path, console) else 1


def _report(args: argparse.Namespace, console: Console) -> int:
    from gatedrnn.report import build_report

    db_path = _study_database(Path(args.dir))
    if not db_path.is_file():
        raise FileNotFoundError(f"{db_path}: no study database (expected DIR/study.sqlite)")
    report = build_report(db_path, candidate=args.candidate, baseline=args.baseline)
    _print_verdicts(report, args, console)
    console.print(f"report: {report.html} (and {report.markdown})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatedrnn",
        description="Gated recurrent layers, and a harness that checks the claims made for GRUs.",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    cells = commands.add_parser("cells", help="the registered cells: parameters, gates, FLOPs")
    cells.add_argument(
        "--input-size", type=_count(1), default=88, help="input features (default 88)"
    )
    cells.add_argument(
        "--hidden-size", type=_count(1), default=100, help="hidden size (default 100)"
    )
    cells.add_argument("--layers", type=_count(1), default=1, help="stacked layers (default 1)")
    cells.add_argument(
        "--budget",
        type=_count(0),
        default=0,
        help="also solve the hidden size for this parameter budget",
    )
    cells.set_defaults(run=_cells)

    bench = commands.add_parser("bench", help="layer speed and memory against torch.nn")
    bench.add_argument(
        "--cells",
        type=_csv(str),
        default=["rnn", "lstm", "gru"],
        help="comma-separated cells (default rnn,lstm,gru); a variant as CELL:KEY=VALUE, e.g. "
        "lstm:peepholes=true, or mgu, runs against torch.nn's standard cell of its family",
    )
    bench.add_argument(
        "--hidden", type=_csv(_count(1)), default=[128, 256, 512], help="hidden sizes"
    )
    bench.add_argument("--batch", type=_csv(_count(1)), default=[1, 32], help="batch sizes")
    bench.add_argument(
        "--steps", type=_count(1), default=100, help="sequence length T (default 100)"
    )
    bench.add_argument("--repeats", type=_count(1), default=7, help="timed repeats (default 7)")
    bench.add_argument("--warmup", type=_count(0), default=2, help="untimed repeats first")
    bench.add_argument(
        "--backends",
        type=_csv(str),
        help="our backends to time (default: cpu on the CPU, triton on a GPU)",
    )
    bench.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    bench.add_argument(
        "--dtype",
        choices=("float32", "float64", "bfloat16", "float16"),
        default="float32",
        help="both sides' layers and inputs (default float32)",
    )
    bench.add_argument(
        "--layers", type=_count(1), default=1, help="layers in each stack (default 1)"
    )
    bench.add_argument(
        "--bidirectional", action="store_true", help="both sides' layers bidirectional"
    )
    bench.add_argument("--out", help="write every timing and the environment to this JSON file")
    bench.add_argument("--smoke", action="store_true", help="a tiny run that takes seconds")
    bench.set_defaults(run=_bench)

    tune = commands.add_parser(
        "gpu-tune",
        help="measure the triton backend against cuDNN on this GPU, for auto and the launches",
    )
    tune.add_argument("--cells", type=_csv(str), default=["gru", "lstm"], help="gru, lstm, rnn")
    tune.add_argument(
        "--dtypes", type=_csv(str), default=["bfloat16", "float32"], help="float32, bfloat16, …"
    )
    tune.add_argument(
        "--hidden", type=_csv(_count(1)), default=[256, 512, 1024], help="hidden sizes"
    )
    tune.add_argument("--batch", type=_csv(_count(1)), default=[1, 16, 64], help="batch sizes")
    tune.add_argument(
        "--directions",
        type=_csv(str),
        default=["forward", "both"],
        help="forward (inference), both (training: forward + backward); default both of them",
    )
    tune.add_argument(
        "--force", action="store_true", help="measure sizes the shipped table holds too"
    )
    tune.set_defaults(run=_gpu_tune)

    tasks = commands.add_parser("tasks", help="the registered tasks and their data state")
    tasks.add_argument("--data-dir", help="look for datasets here first")
    tasks.set_defaults(run=_tasks)

    data = commands.add_parser("data", help="datasets: list, fetch, verify")
    data.add_argument("action", choices=("list", "fetch", "verify"))
    data.add_argument("names", nargs="*", help="datasets (default: all)")
    data.add_argument("--data-dir", help="where to look first and to fetch into")
    data.set_defaults(run=_data)

    train = commands.add_parser("train", help="one training run, with progress and checkpoints")
    defaults = TrainConfig()
    for name in TRAIN_OPTIONS:
        default = getattr(defaults, name)
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            train.add_argument(
                flag,
                action=argparse.BooleanOptionalAction,
                default=None,
                help=f"{HELP[name]} (default {default})",
            )
        else:
            train.add_argument(
                flag, type=type(default), default=None, help=f"{HELP[name]} (default {default})"
            )
    train.add_argument(
        "--task-option",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="a task option, repeatable: path=mine.tsv, steps=200, bptt=35 …",
    )
    train.add_argument(
        "--cell-option",
        type=_key_value,
        action="append",
        metavar="KEY=VALUE",
        help="a layer option, repeatable: reset=before, forget_bias=1 …",
    )
    train.add_argument(
        "--preset",
        choices=("zaremba-small", "zaremba-medium"),
        help="Zaremba et al. 2014's PTB settings (other flags override them)",
    )
    train.add_argument("--checkpoint", help="save every epoch here; an existing one resumes")
    train.add_argument("--out", help="write the result as JSON")
    train.add_argument("--data-dir", help="look for datasets here first")
    train.set_defaults(run=_train)

    study = commands.add_parser(
        "study", help="run a study file (re-running resumes), or see how far it has come"
    )
    study_commands = study.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    study_run = study_commands.add_parser("run", help="run every unfinished trial of STUDY.toml")
    study_run.add_argument("file", help="the study file (TOML)")
    study_run.add_argument("--out", default="runs", help="results go to OUT/<name>/ (default runs)")
    study_run.add_argument(
        "--workers",
        type=_count(1),
        help="processes (default: the file's, else all cores; on CUDA one per GPU)",
    )
    study_run.add_argument("--executor", choices=("local", "ray"), help="override the file's")
    study_run.add_argument("--address", help="ray: the cluster to join (default: start one here)")
    study_run.add_argument("--data-dir", help="look for datasets here first")
    study_run.set_defaults(run=_study)
    status = study_commands.add_parser(
        "status", help="how far STUDY.toml's study has come (reads its database; runs nothing)"
    )
    status.add_argument("study", help="the study file (TOML), or a study's folder (runs/<name>)")
    status.add_argument(
        "--out", default="runs", help="with a study file: it ran in OUT/<name>/ (default runs)"
    )
    status.set_defaults(run=_study_status)

    compare = commands.add_parser("compare", help="RNN vs LSTM vs GRU: run the study, report")
    compare.add_argument(
        "--scale",
        choices=("smoke", "default", "full"),
        default="default",
        help="smoke: seconds; default: minutes on 2 cores; full: longer runs, more seeds",
    )
    compare.add_argument("--tasks", type=_csv(str), help="comma-separated (default jsb,adding)")
    compare.add_argument(
        "--cells",
        type=_csv(str),
        help="comma-separated (default rnn,lstm,gru); a variant as CELL:KEY=VALUE, e.g. "
        "gru:reset=before, which is also its name for --candidate and --baseline",
    )
    compare.add_argument("--seeds", type=_count(1), help="seeds per configuration")
    compare.add_argument(
        "--timing-rounds",
        type=_count(2),
        help="interleaved rounds timing each task and width arm for the speed claim (default 7)",
    )
    compare.add_argument("--device", help="cpu (default) or cuda")
    compare.add_argument(
        "--backend",
        help="one backend for every cell (default: auto, per cell; time and memory are judged "
        "only between cells on the same backend)",
    )
    compare.add_argument(
        "--executor", choices=("local", "ray"), help="local process pool (default) or Ray"
    )
    compare.add_argument(
        "--data",
        help="your file for the generic tasks: .npz/.csv (seqcls) or .tsv (textcls); those tasks "
        "become the default",
    )
    compare.add_argument("--data-dir", help="look for datasets here first")
    compare.add_argument(
        "--workers", type=_count(1), help="processes (default: all cores; on CUDA one per GPU)"
    )
    compare.add_argument("--out", default="runs", help="results go to OUT/<study>/ (default runs)")
    compare.add_argument("--candidate", default="gru", help="the cell the claims are about")
    compare.add_argument("--baseline", default="lstm", help="the cell it is compared with")
    compare.set_defaults(run=_compare)

    report = commands.add_parser("report", help="rebuild a study's report from its database")
    report.add_argument("dir", help="the study folder (holding study.sqlite)")
    report.add_argument(
        "--candidate", default="gru", help="the cell the claims are about (default gru)"
    )
    report.add_argument(
        "--baseline",
        default="lstm",
        help="the cell it is compared with (default lstm); another pair than gru/lstm is "
        "written to report-<candidate>-vs-<baseline>.*",
    )
    report.set_defaults(run=_report)
    return parser


def _print_error(error: object) -> None:
    """One line on stderr (results go to stdout). Escaped: a message may hold brackets ("[train]
    backend", a path) that rich would otherwise take for markup and drop."""
    Console(stderr=True).print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)


def _stdout_console() -> Console:
    """The console results are printed on: a terminal's own width; piped or redirected, where
    rich assumes 80 columns and cut the wider tables (``bench`` with several backends) to
    "…", wide enough for every table (``COLUMNS`` still sets it)."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return Console()
    return Console(width=_PIPED_WIDTH)


_PIPED_WIDTH = 200


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console = _stdout_console()
    try:
        return args.run(args, console)
    except (ValueError, FileNotFoundError, OSError, RuntimeError) as error:
        _print_error(error)
        return 2
    except KeyboardInterrupt:
        resumable = args.run in (_compare, _study)
        Console(stderr=True).print(
            "[yellow]interrupted[/]"
            + (": finished trials and epochs are kept; run the same command again to resume"
               if resumable else "")
        )  # fmt: skip
        return 130


if __name__ == "__main__":
    sys.exit(main())
