"""Running a study: every trial of the grid once, resumable, on the local cores (a process pool)
or a Ray cluster. Only the driver writes the database; workers report each epoch through a queue.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import queue
import signal
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from multiprocessing.managers import SyncManager
from pathlib import Path
from typing import Any

import torch

from gatedrnn.backends.compiled import compiled_loops
from gatedrnn.study.spec import StudySpec, Trial
from gatedrnn.study.store import DONE, StudyStore
from gatedrnn.tasks import check_datasets
from gatedrnn.train import TrainConfig, train
from gatedrnn.train.loop import check_backend, environment
from gatedrnn.train.timing import contended, time_steps

__all__ = ["run_study", "study_paths"]

logger = logging.getLogger(__name__)
Progress = Callable[[dict[str, int]], None]


def study_paths(spec: StudySpec, out: str | Path) -> tuple[Path, Path]:
    """The study's database and checkpoint folder under ``out``."""
    root = Path(out) / spec.name
    return root / "study.sqlite", root / "checkpoints"


def _run_trial(
    config: dict[str, Any], checkpoint: str, key: str, events, threads: int, data_dir: str | None
) -> dict[str, Any]:
    """One trial in a worker: trains (resuming from its checkpoint) and reports every epoch."""
    if threads:
        torch.set_num_threads(threads)

    def on_epoch(record) -> None:
        events.put((key, asdict(record)))

    result = train(
        TrainConfig.from_dict(config), checkpoint=checkpoint, on_epoch=on_epoch, data_dir=data_dir
    )
    if result.status == "interrupted":
        raise KeyboardInterrupt
    return result.to_dict()


def run_study(
    spec: StudySpec,
    out: str | Path = "runs",
    *,
    workers: int | None = None,
    progress: Progress | None = None,
    data_dir: str | Path | None = None,
) -> Path:
    """Run every unfinished trial of ``spec``; returns the database path.

    Re-running skips completed and diverged trials and resumes interrupted ones from their
    checkpoints, also with another executor; a spec that differs from the stored one in its
    number of seeds runs the seeds not done yet (more) or none (fewer), and from then on the
    study has that many; with more timing rounds its arms are timed again. Any other difference
    (outside :data:`CHANGEABLE`) is another study, refused.
    ``workers`` (default: the spec's, then all cores; on CUDA one per GPU, :func:`local_workers`)
    processes share the cores, and on CUDA the GPUs, one each in turn.
    On the local executor a CUDA study without a GPU, and a study whose datasets are missing or
    corrupt, are refused before anything is written; after its trials, each task and width
    arm's cells are timed against each other in this process (:func:`time_steps`) for the speed
    claim.
    """
    device = torch.device(spec.train.get("device", "cpu"))
    if spec.executor.kind != "ray" and device.type == "cuda" and not torch.cuda.is_available():
        # here, not in each trial (every one would fail the same way); a Ray cluster's workers
        # may have the GPUs its driver lacks
        raise ValueError(
            f"train.device: {str(device)!r}, but this machine has no CUDA GPU "
            "(torch.cuda.is_available() is False); use device 'cpu', or --executor ray on a "
            "cluster with GPUs"
        )
    if spec.executor.kind != "ray":
        check_datasets(spec.tasks, data_dir)
        # a backend that cannot run a cell: refused before any trial, once per cell (its label
        # names the cell and its options)
        for label, trial in {t.cell.label: t for t in spec.trials()}.items():
            try:
                check_backend(trial.config)
            except ValueError as error:
                raise ValueError(f"train.{error} (cell {label!r})") from None
    db_path, checkpoints = study_paths(spec, out)
    store = StudyStore(db_path)
    try:  # closed at the end: the last connection's close folds the WAL into the database file
        _run_stored(spec, store, db_path, checkpoints, workers, progress, data_dir)
    finally:
        store.close()
    return db_path


# What a study's spec may change between runs and stay the same study: more or fewer seeds or
# timing rounds, another executor (where the trials run)
CHANGEABLE = ("seeds", "timing_rounds", "executor")


_ABSENT = object()


def _differences(stored: dict, current: dict, most: int = 3) -> str:
    """How a stored spec and the ``current`` one differ outside :data:`CHANGEABLE`, key path by
    key path ("train.probes: 0 stored, 1 now"; a key one of them lacks is "absent" there), the
    first ``most`` of them."""

    def flat(value: Any, path: str = "") -> dict[str, Any]:
        if isinstance(value, dict) and value:
            out: dict[str, Any] = {}
            for key, item in value.items():
                out |= flat(item, f"{path}.{key}" if path else str(key))
            return out
        return {path: value}

    before, after = flat(stored), flat(current)
    changed = [
        key for key in sorted(before.keys() | after.keys())
        if key.split(".")[0] not in CHANGEABLE
        and before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]  # fmt: skip

    def said(values: dict[str, Any], key: str) -> str:
        return repr(values[key]) if key in values else "absent"

    shown = [f"{key}: {said(before, key)} stored, {said(after, key)} now" for key in changed[:most]]
    more = f" and {len(changed) - most} more" if len(changed) > most else ""
    return "; ".join(shown) + more


def _run_stored(spec, store, db_path, checkpoints, workers, progress, data_dir) -> None:
    """The study's unfinished trials, then its timing, recorded in the open ``store``."""
    stored, current = store.get_meta("spec"), json.loads(json.dumps(spec.to_dict()))
    if stored is not None and stored != current:
        if {**stored, **{key: current[key] for key in CHANGEABLE}} != current:
            differs = _differences(stored, current)
            raise ValueError(
                f"{db_path} holds another study named {spec.name!r} ({differs}); "
                "rename the study or choose another output folder (a study may change only its "
                "number of seeds, its timing rounds and its executor between runs)"
            )
        if stored.get("seeds") != spec.seeds:
            logger.info("study %r: from %s to %s seeds", spec.name, stored.get("seeds"), spec.seeds)
    store.set_meta("spec", current)
    trials = spec.trials()
    store.add_trials(trials)
    todo = [t for t in trials if store.status(t.key) not in DONE]
    if spec.executor.kind == "ray":
        from gatedrnn.study.ray_executor import run_on_ray

        run_on_ray(spec, store, todo, checkpoints, progress, data_dir)
        return
    cores = available_cores()
    device = torch.device(spec.train.get("device", "cpu"))
    workers = local_workers(workers or spec.executor.workers, device, len(todo))
    threads = max(1, cores // workers)
    store.set_meta(
        "environment",
        environment(trials[0].config) | {"workers": workers, "threads_per_worker": threads},
    )
    if workers == 1:
        _run_here(store, todo, checkpoints, progress, threads, data_dir)
    else:
        gpus = _gpus_to_give(device)
        _run_pool(store, todo, checkpoints, progress, workers, threads, data_dir, gpus)
    data = str(data_dir) if data_dir else None
    rounds = spec.timing_rounds
    time_arms(
        store, trials, lambda configs: time_arm(configs, threads, data, rounds), progress, rounds
    )


def available_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform reports one (so
    ``taskset`` and a container's cpuset are honoured: ``os.cpu_count()`` counts the host's),
    else every core."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # no affinity on this platform (macOS, Windows)
        return os.cpu_count() or 1


def local_workers(requested: int, device: torch.device, trials: int) -> int:
    """How many processes the local executor runs: ``requested`` (the command's, else the
    spec's; 0: the default), at most one per trial. The default: all cores on the CPU (those it
    may run on: :func:`available_cores`); on CUDA one process per visible GPU (``device``
    'cuda': each worker is given one, in turn), one for a GPU named by index. More processes
    than GPUs share them: slower per trial, and the triton backend's persistent kernels need
    every multiprocessor of their GPU (under MPS, kernels of other processes beside them can
    hold some, and a barrier then times out)."""
    if not requested:
        cuda = device.type == "cuda"
        requested = max(1, len(_gpus_to_give(device))) if cuda else available_cores()
    return max(1, min(requested, max(trials, 1)))


def _gpus_to_give(device: torch.device) -> list[str]:
    """The GPUs the pool's workers take in turn: every visible one for device 'cuda', none
    for the CPU or a GPU named by index (every worker then uses that one)."""
    return _visible_gpus() if device.type == "cuda" and device.index is None else []


def _visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` names them for a child
    process: its own list where set, else their indices."""
    count = torch.cuda.device_count()
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [name.strip() for name in listed.split(",") if name.strip()][:count]
    return [str(index) for index in range(count)]


def _start_worker(counter, gpus: list[str]) -> None:
    """A pool worker's start (:func:`_leave_interrupts_to_the_driver`); with ``gpus``, it
    takes the next of them in turn (``counter``: a shared count of workers started) as its only
    visible GPU, before CUDA is initialised: its trials' device 'cuda' is then that one."""
    _leave_interrupts_to_the_driver()
    if gpus:
        with counter.get_lock():
            number = counter.value
            counter.value += 1
        os.environ["CUDA_VISIBLE_DEVICES"] = gpus[number % len(gpus)]


def time_arm(
    configs: dict[str, dict], threads: int, data_dir: str | None, rounds: int
) -> tuple[dict[str, list[float]], int, list[float | None]]:
    """One arm's interleaved timing (:func:`time_steps`, ``rounds`` rounds) on ``threads``
    threads, as a trial of the study had; here in the driver, or as a Ray task."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        parsed = {label: TrainConfig.from_dict(config) for label, config in configs.items()}
        return time_steps(parsed, rounds=rounds, data_dir=data_dir)
    finally:
        torch.set_num_threads(previous)


def time_arms(
    store: StudyStore,
    trials: list[Trial],
    timed: Callable[[dict[str, dict]], tuple[dict[str, list[float]], int, list[float | None]]],
    progress: Progress | None,
    rounds: int,
) -> None:
    """Time each arm the store holds no timing of at least ``rounds`` rounds for, or only one
    taken on a busy machine (with two cells or more: seed 0's configurations at the largest
    training fraction) through ``timed``
    (:func:`time_arm`, here or as a Ray task) and record it, replacing a shorter one; an arm
    that cannot be timed is logged and left to the epoch times (or its shorter timing)."""
    waits = store.timing_waits()
    done = {
        arm
        for arm, cells in store.timings().items()
        if min(map(len, cells.values())) >= rounds and not contended(waits.get(arm))
    }
    largest = max(t.fraction for t in trials)
    arms: dict[tuple[str, str], dict[str, dict]] = {}
    for t in trials:
        if t.seed == 0 and t.fraction == largest and (t.task, t.width) not in done:
            arms.setdefault((t.task, t.width), {})[t.cell.label] = t.config.to_dict()
    arms = {arm: configs for arm, configs in arms.items() if len(configs) > 1}
    for number, ((task, width), configs) in enumerate(arms.items(), 1):
        if progress:
            progress(store.counts() | {"timing": number, "arms": len(arms)})
        try:
            seconds, steps, waited = timed(configs)
        except Exception as error:
            cause = getattr(error, "cause", None) or error  # Ray wraps the task's own exception
            logger.warning("timing %s / %s failed: %s", task, width, cause)
            continue
        store.record_timings(task, width, seconds, steps, waited)
    if progress and arms:
        progress(store.counts())


class _DirectEvents:
    def __init__(self, store: StudyStore) -> None:
        self.store = store

    def put(self, event) -> None:
        self.store.record_epoch(*event)


def _run_here(store, todo: list[Trial], checkpoints: Path, progress, threads, data_dir) -> None:
    events = _DirectEvents(store)
    for trial in todo:
        store.mark_running(trial.key)
        _report(store, progress)
        try:
            result = _run_trial(
                trial.config.to_dict(),
                str(checkpoints / f"{trial.key}.pt"),
                trial.key,
                events,
                0,
                str(data_dir) if data_dir else None,
            )
        except KeyboardInterrupt:
            store.fail(trial.key, "interrupted")
            raise
        except Exception as error:
            store.fail(trial.key, _describe(error))
            logger.error("trial %s failed: %s", trial.key, error)
        else:
            store.finish(trial.key, result)
        _report(store, progress)


def _run_pool(store, todo, checkpoints, progress, workers, threads, data_dir, gpus=()) -> None:
    compiled_loops()  # build the compiled loops here, once, rather than racing in every worker
    context = multiprocessing.get_context("spawn")  # no forked OpenMP or torch thread state
    manager = SyncManager(ctx=context)
    manager.start(_leave_interrupts_to_the_driver)
    pool = ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker,
        initargs=(context.Value("i", 0), list(gpus)),
    )  # fmt: skip
    with manager, pool:
        events = manager.Queue()
        running: dict[Future, Trial] = {}
        pending = list(todo)

        def submit() -> None:
            while pending and len(running) < workers:
                trial = pending.pop(0)
                store.mark_running(trial.key)
                future = pool.submit(
                    _run_trial,
                    trial.config.to_dict(),
                    str(checkpoints / f"{trial.key}.pt"),
                    trial.key,
                    events,
                    threads,
                    str(data_dir) if data_dir else None,
                )
                running[future] = trial

        try:
            submit()
            _report(store, progress)
            while running:
                done, _ = wait(running, timeout=0.5, return_when=FIRST_COMPLETED)
                _drain(events, store)
                for future in done:
                    _settle(store, running.pop(future), future.result)
                submit()
                _report(store, progress)
            _drain(events, store)
        except KeyboardInterrupt:
            # the store says which were running (the interrupt may fall between marking a trial
            # and submitting it, or between its end and its record); the next run resumes them
            for trial in todo:
                if store.status(trial.key) == "running":
                    store.fail(trial.key, "interrupted")
            _stop(pool)
            raise


def _leave_interrupts_to_the_driver() -> None:
    """In the pool's workers and the queue's manager: a Ctrl-C (which the terminal sends to
    every process of the group) is the driver's to handle; it records the running trials as
    interrupted and ends the workers (:func:`_stop`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _stop(pool: ProcessPoolExecutor) -> None:
    """Cancel the trials not started and end the running ones now, rather than wait for them
    to finish (a Ctrl-C reaches the workers too, but a SIGINT sent to the driver alone does
    not); a trial loses at most the epoch it was in, its checkpoints being per epoch."""
    processes = list((getattr(pool, "_processes", None) or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        process.terminate()


def _drain(events, store: StudyStore, empty: type[Exception] = queue.Empty) -> None:
    """Record every epoch waiting in ``events`` (whose ``get_nowait`` raises ``empty`` when
    there is none)."""
    while True:
        try:
            store.record_epoch(*events.get_nowait())
        except empty:
            return


def _settle(store: StudyStore, trial: Trial, result: Callable[[], dict[str, Any]]) -> None:
    """Record a finished trial: its result, or the error ``result()`` raises."""
    try:
        store.finish(trial.key, result())
    except Exception as error:
        cause = getattr(error, "cause", None) or error  # Ray wraps the trial's own exception
        store.fail(trial.key, _describe(cause))
        logger.error("trial %s failed: %s", trial.key, cause)


def _describe(error: BaseException) -> str:
    lines = traceback.format_exception_only(type(error), error)
    return "".join(lines).strip()[-2000:]


def _report(store: StudyStore, progress: Progress | None) -> None:
    if progress:
        progress(store.counts())
