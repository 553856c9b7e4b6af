"""One training loop for every task: optimizer, clipping, schedules, early stopping on the task's
validation metric, divergence detection, atomic checkpoints with exact resume, and the test
metrics of the best epoch.

The loop knows nothing of any task beyond :class:`gatedrnn.tasks.Task`. It logs through
``logging``; the CLI owns the console (``on_epoch`` and ``on_batch`` callbacks feed it).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gatedrnn
from gatedrnn.atomic import write_atomic
from gatedrnn.bench import saved_bytes
from gatedrnn.tasks import TASKS, Batch, Task, build_task
from gatedrnn.train.config import TrainConfig, with_later_fields

__all__ = [
    "EpochRecord",
    "RunResult",
    "build_optimizer",
    "check_backend",
    "environment",
    "train",
    "validations",
]

logger = logging.getLogger(__name__)


@dataclass
class EpochRecord:
    epoch: int
    updates: int  # optimizer steps so far
    seconds: float  # wall time of this epoch's training (evaluation excluded)
    elapsed: float  # training seconds so far
    train_loss: float  # mean over the epoch's units (steps, sequences …)
    valid: dict[str, float]
    lr: float
    units_per_second: float  # training throughput: time steps or sequences per second
    # validations within the epoch (config.probes): {"updates", "elapsed", "valid"} each, for
    # the convergence claim; the epoch's own is the one above
    probes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RunResult:
    config: TrainConfig
    status: str  # "completed" | "diverged" | "interrupted"
    reason: str | None
    history: list[EpochRecord]
    best_epoch: int | None
    best_valid: dict[str, float] | None
    test: dict[str, float] | None
    train: dict[str, float] | None  # the best model on the training split (generalization gap)
    parameters: int
    seconds_per_epoch: float | None  # median
    saved_bytes: int  # saved for backward by the first batch (saved-tensor hooks)
    peak_cuda_bytes: int | None  # most CUDA memory allocated during the run; None off CUDA
    backend: str  # what the layer actually ran on
    environment: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["config"] = self.config.to_dict()
        return data


def environment(config: TrainConfig) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "gatedrnn": gatedrnn.__version__,
        "platform": platform.platform(),
        "device": config.device,
        "threads": torch.get_num_threads(),
        "deterministic": config.deterministic,
        "tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    kwargs = {"lr": config.lr, "weight_decay": config.weight_decay}
    if config.optimizer == "adam":
        return torch.optim.Adam(params, **kwargs)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=config.momentum, **kwargs)
    return torch.optim.RMSprop(params, momentum=config.momentum, **kwargs)


def _build_schedule(config: TrainConfig, optimizer, higher_is_better: bool):
    if config.schedule == "step":  # Zaremba et al. 2014: full lr for `decay_start` epochs
        start, decay = config.decay_start, config.lr_decay
        return torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda e: decay ** max(0, e + 1 - start)
        )
    if config.schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max" if higher_is_better else "min", factor=config.lr_decay,
            patience=1,
        )  # fmt: skip
    return None


def _to(batch: Batch, device: torch.device) -> Batch:
    return batch if device.type == "cpu" else batch.to(device)


def _backends_used(model: torch.nn.Module) -> str:
    """The backends the model's recurrent layers ran on in their latest call."""
    from gatedrnn.nn.base import RecurrentBase

    names = sorted(
        {m.last_backend for m in model.modules() if isinstance(m, RecurrentBase) and m.last_backend}
    )
    return ",".join(names) or "none"


def _precision(config: TrainConfig, device: torch.device):
    """Mixed precision (bfloat16 autocast) when ``config.amp``, else nothing."""
    if config.amp:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _Diverged(Exception):
    pass


def train(
    config: TrainConfig,
    *,
    checkpoint: str | Path | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_batch: Callable[[int, int], None] | None = None,
    data_dir: str | Path | None = None,
) -> RunResult:
    """Train ``config`` to the end (or early stopping, divergence, Ctrl-C) and test the best epoch.

    With ``checkpoint``, the state after every epoch is written there atomically, and a run that
    finds one for the same configuration resumes from it: on the CPU with ``deterministic`` the
    result equals that of an uninterrupted run.
    """
    device = torch.device(config.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device: {config.device!r}, but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False)"
        )
    check_backend(config)
    previous_determinism = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(config.deterministic, warn_only=True)
    try:
        return _train(config, device, Path(checkpoint) if checkpoint else None, on_epoch,
                      on_batch, data_dir)  # fmt: skip
    finally:
        torch.use_deterministic_algorithms(previous_determinism)


def check_backend(config: TrainConfig) -> None:
    """Raises ValueError when the backend ``config`` names cannot run its cell on its device and
    dtype (``cpu`` with peepholes, ``cudnn`` with ``reset=before`` …), before any data is loaded
    or anything printed; the layer would say the same at its first call. ``auto`` always runs."""
    from gatedrnn.backends import LayerConfig, get_backend
    from gatedrnn.nn.spec import spec_from_options

    if config.backend == "auto":
        return
    spec = spec_from_options(config.cell, dict(config.cell_options))
    layer = LayerConfig(spec, config.hidden_size, config.hidden_size, config.num_layers)
    dtype = torch.bfloat16 if config.amp else torch.float32
    probe = torch.empty(1, 1, config.hidden_size, dtype=dtype, device=config.device)
    reason = get_backend(config.backend).unsupported(layer, probe)
    if reason:
        raise ValueError(
            f"backend: {config.backend!r} cannot run {spec.name} on {config.device} ({reason}); "
            "use 'auto', which picks one that can"
        )


def _build_task(config: TrainConfig, data_dir) -> Task:
    task_options = dict(config.task_options)
    if data_dir and TASKS[config.task].dataset:
        task_options["data_dir"] = data_dir
    return build_task(
        config.task, smoke=config.smoke, fraction=config.fraction, seed=config.seed,
        **task_options,
    )  # fmt: skip


def _build_model(config: TrainConfig, task: Task, device: torch.device):
    """The run's model (on ``device``) and its optimizer."""
    layer_options = {"backend": config.backend, **config.cell_options}
    if config.num_layers > 1:
        layer_options["dropout"] = config.dropout
    model = task.build_model(config.cell, config.hidden_size, config.num_layers, **layer_options)
    model.to(device)
    return model, build_optimizer(config, model.parameters())


def _train(config, device, checkpoint, on_epoch, on_batch, data_dir) -> RunResult:
    torch.manual_seed(config.seed)
    task = _build_task(config, data_dir)
    model, optimizer = _build_model(config, task, device)
    if device.type == "cuda":  # this run's peak, not an earlier run's in the same process
        torch.cuda.reset_peak_memory_stats(device)
    metric = task.metrics[0]
    schedule = _build_schedule(config, optimizer, metric.higher_is_better)

    state: dict[str, Any] = {
        "epoch": 0, "updates": 0, "elapsed": 0.0, "best": None, "best_epoch": None,
        "bad_epochs": 0, "history": [], "saved_bytes": 0, "status": "completed", "reason": None,
        "peak_cuda_bytes": None,
    }  # fmt: skip
    best_model: dict[str, torch.Tensor] | None = None
    if checkpoint is not None and checkpoint.is_file():
        saved = _load_checkpoint(checkpoint, device)
        if with_later_fields(saved["config"]) != config.to_dict():
            raise ValueError(
                f"{checkpoint} holds a run of another configuration; remove it or choose "
                "another checkpoint path"
            )
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if schedule is not None:
            schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["rng"])
        state, best_model = saved["state"], saved["best_model"]
        logger.info("resumed %s from epoch %d", checkpoint, state["epoch"])

    first = _to(next(task.batches("train", config.batch_size)), device)
    rng = torch.get_rng_state()  # measuring must not shift the random stream
    with _precision(config, device):
        if not state["saved_bytes"]:
            state["saved_bytes"] = saved_bytes(
                lambda: task.loss(model, first)[0], model.parameters()
            )
        else:  # for the backends the layers choose to train with (with autograd: "auto"
            task.loss(model, first)  # may pick others for forward-only calls)
    torch.set_rng_state(rng)
    backend = _backends_used(model)

    def better(value: float, best: float | None) -> bool:
        if best is None:
            return True
        return value > best if metric.higher_is_better else value < best

    try:
        for epoch in range(state["epoch"] + 1, config.epochs + 1):
            if state["status"] != "completed" or (
                config.patience and state["bad_epochs"] >= config.patience
            ):
                break
            record = _train_epoch(task, model, optimizer, config, device, epoch, state, on_batch)
            _raise_kernel_faults()
            value = record.valid[metric.name]
            if not math.isfinite(value):
                raise _Diverged(f"validation {metric.name} is {value} after epoch {epoch}")
            if better(value, state["best"]):
                state["best"], state["best_epoch"], state["bad_epochs"] = value, epoch, 0
                best_model = copy.deepcopy(model.state_dict())
            else:
                state["bad_epochs"] += 1
            if isinstance(schedule, torch.optim.lr_scheduler.ReduceLROnPlateau):
                schedule.step(value)
            elif schedule is not None:
                schedule.step()
            state["epoch"] = epoch
            state["history"].append(asdict(record))
            state["peak_cuda_bytes"] = _peak_cuda_bytes(device, state.get("peak_cuda_bytes"))
            if checkpoint is not None:
                saved = {
                    "config": config.to_dict(), "model": model.state_dict(),
                    "best_model": best_model, "optimizer": optimizer.state_dict(),
                    "schedule": schedule.state_dict() if schedule is not None else None,
                    "rng": torch.get_rng_state(), "state": state,
                }  # fmt: skip
                write_atomic(checkpoint, lambda tmp, obj=saved: torch.save(obj, tmp))
            if on_epoch:
                on_epoch(record)
        if config.patience and state["bad_epochs"] >= config.patience:
            state["reason"] = f"early stopping after {state['epoch']} epochs"
    except _Diverged as error:
        state["status"], state["reason"] = "diverged", str(error)
        logger.warning("run diverged: %s", error)
    except KeyboardInterrupt:
        state["status"], state["reason"] = "interrupted", f"stopped in epoch {state['epoch'] + 1}"
        logger.warning("interrupted; evaluating the best epoch")

    test = train_metrics = None
    if best_model is not None:
        model.load_state_dict(best_model)
        with _precision(config, device):
            test = task.evaluate(model, "test", config.batch_size)
            train_metrics = task.evaluate(model, "train", config.batch_size)
    history = [EpochRecord(**r) for r in state["history"]]
    return RunResult(
        config=config,
        status=state["status"],
        reason=state["reason"],
        history=history,
        best_epoch=state["best_epoch"],
        best_valid=history[state["best_epoch"] - 1].valid if state["best_epoch"] else None,
        test=test,
        train=train_metrics,
        parameters=sum(p.numel() for p in model.parameters()),
        seconds_per_epoch=statistics.median(r.seconds for r in history) if history else None,
        saved_bytes=state["saved_bytes"],
        peak_cuda_bytes=_peak_cuda_bytes(device, state.get("peak_cuda_bytes")),
        backend=backend,
        environment=environment(config),
    )


_CHECKPOINT_KEYS = {"config", "model", "best_model", "optimizer", "schedule", "rng", "state"}


def _raise_kernel_faults() -> None:
    """Before an epoch's results are kept: a grid-barrier fault of the triton backend's kernels
    that has not surfaced yet (they are checked one call late) fails the run here, before the
    epoch's checkpoint is written, so that a resumed run starts from the epoch before it."""
    gpu = sys.modules.get("gatedrnn.backends.gpu")  # imported only where a layer could use it
    if gpu is not None:
        gpu.raise_pending_faults()


def _load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint this loop wrote (weights only, no code), or a ValueError saying what the
    file is instead and what to do."""
    try:
        saved = torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # truncated, another format, or a pickle with code in it
        # torch's own text is about weights_only, which is not the point here
        why = "torch.load with weights only refused it" if "Weights only" in str(error) else (
            str(error).strip().split(". ")[0][:160]
        )  # fmt: skip
        raise ValueError(
            f"{path}: not a checkpoint of this training loop ({why}); remove it to start the run "
            "over, or choose another checkpoint path"
        ) from None
    if not isinstance(saved, dict) or not set(saved) >= _CHECKPOINT_KEYS:
        found = sorted(saved)[:8] if isinstance(saved, dict) else type(saved).__name__
        raise ValueError(
            f"{path}: not a checkpoint of this training loop (expected the keys "
            f"{sorted(_CHECKPOINT_KEYS)}, found {found}); remove it to start the run over, or "
            "choose another checkpoint path"
        )
    return saved


def _peak_cuda_bytes(device: torch.device, before: int | None) -> int | None:
    """The most CUDA memory this run's tensors have held: since the run (or its resumption)
    began, and before, as its checkpoint remembers it; None off CUDA."""
    if device.type != "cuda":
        return None
    return max(torch.cuda.max_memory_allocated(device), before or 0)


def _step(task, model, optimizer, config, device, batch, update: int) -> tuple[torch.Tensor, int]:
    """One update on ``batch``: the loss (summed over its ``n`` units), backward, clipping and
    the optimizer's step; raises _Diverged at a non-finite loss or gradient norm."""
    clean = _add_weight_noise(model, config.weight_noise) if config.weight_noise > 0 else None
    try:
        with _precision(config, device):
            loss, n = task.loss(model, batch)
        mean = loss / n
        if not torch.isfinite(mean):
            raise _Diverged(f"loss is {mean.item()} at update {update}")
        optimizer.zero_grad(set_to_none=True)
        mean.backward()
    finally:
        if clean is not None:  # the gradient at the noisy weights updates the clean ones
            with torch.no_grad():
                for p, value in zip(model.parameters(), clean, strict=True):
                    p.copy_(value)
    if config.clip_norm > 0:
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
        if not torch.isfinite(norm):
            raise _Diverged(f"gradient norm is {norm.item()} at update {update}")
    optimizer.step()
    return loss, n


def _add_weight_noise(model: torch.nn.Module, std: float) -> list[torch.Tensor]:
    """Adds N(0, std²) noise to every parameter (Graves 2011's weight noise, drawn from torch's
    generator, which the run seeds and its checkpoints keep); returns the clean values."""
    clean = []
    with torch.no_grad():
        for p in model.parameters():
            clean.append(p.detach().clone())
            p.add_(torch.randn_like(p), alpha=std)
    return clean


def _train_epoch(task, model, optimizer, config, device, epoch, state, on_batch) -> EpochRecord:
    model.train()
    total, count, batches = 0.0, 0, 0
    start = time.perf_counter()
    # the shuffle depends only on (seed, epoch), so a resumed run sees the same batches
    stream = task.batches("train", config.batch_size, shuffle=True,
                          seed=config.seed * 100_003 + epoch)  # fmt: skip
    probes, at, probing = [], set(), 0.0
    if config.probes:  # the batches counted first, so that the probes are evenly spaced
        stream = list(stream)
        size = len(stream)
        at = {round(size * k / (config.probes + 1)) for k in range(1, config.probes + 1)}
        at -= {0, size}  # the epoch's end is validated anyway
    for batch in stream:
        batch = _to(batch, device)
        loss, n = _step(task, model, optimizer, config, device, batch, state["updates"] + 1)
        state["updates"] += 1
        total, count, batches = total + float(loss.detach()), count + n, batches + 1
        if on_batch:
            on_batch(epoch, batches)
        if batches in at:
            paused = time.perf_counter()
            trained = paused - start - probing
            valid = _probe(task, model, config, device)
            probes.append(
                {"updates": state["updates"], "elapsed": state["elapsed"] + trained, "valid": valid}
            )
            probing += time.perf_counter() - paused
    seconds = time.perf_counter() - start - probing
    state["elapsed"] += seconds
    with _precision(config, device):
        valid = task.evaluate(model, "valid", config.batch_size)
    return EpochRecord(
        epoch=epoch,
        updates=state["updates"],
        seconds=seconds,
        elapsed=state["elapsed"],
        train_loss=total / max(count, 1),
        valid=valid,
        lr=optimizer.param_groups[0]["lr"],
        units_per_second=count / seconds if seconds > 0 else 0.0,
        probes=probes,
    )


def validations(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every validation of a run's history (its epochs' records as dicts) in order, each with
    its ``epoch``, ``updates``, ``elapsed`` and ``valid``: an epoch's probes, then its end."""
    points: list[dict[str, Any]] = []
    for record in history:
        points += [{**p, "epoch": record["epoch"]} for p in record.get("probes", ())]
        points.append(record)
    return points


def _probe(task: Task, model: torch.nn.Module, config: TrainConfig, device) -> dict[str, float]:
    """The validation metrics in the middle of an epoch, without touching the run: on a copy of
    the model (a language model's carried state, say, stays as training left it), the random
    streams restored after."""
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        with _precision(config, device):
            return task.evaluate(copy.deepcopy(model), "valid", config.batch_size)
    finally:
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, device)
