"""The Ray executor (``[executor] kind = "ray"``, or ``gatedrnn study run … --executor ray``).

Each trial is a Ray task asking for ``cpus_per_trial`` CPUs (and one GPU when the trial's device
is CUDA); it trains exactly as a local worker does (:func:`gatedrnn.study.runner._run_trial`),
resuming from its checkpoint, and sends every epoch to the driver through a Ray queue. The driver
alone writes the SQLite database, so the store's guarantees are those of the local executor: a
killed study loses nothing committed, and re-running it resumes. After the trials, each task and
width arm's interleaved timing (the speed claim's) runs as one task with a trial's resources,
one arm at a time. Checkpoints are written where the driver puts them, so on a multi-machine
cluster the output folder must be on a file system every node sees. ``address`` joins an
existing cluster; without one a local Ray instance starts with the cores this process may run
on (:func:`gatedrnn.study.runner.available_cores`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["run_on_ray"]


def _ray():
    try:
        import ray
    except ImportError:
        raise RuntimeError(
            "the Ray executor needs Ray: pip install 'gatedrnn[ray]' (or use --executor local)"
        ) from None
    return ray


def run_on_ray(spec, store, todo, checkpoints: Path, progress, data_dir) -> None:
    """Run ``todo`` as Ray tasks, recording epochs and results in ``store`` from the driver."""
    from gatedrnn.study.runner import _drain, _report, _run_trial, _settle, available_cores
    from gatedrnn.train.loop import environment

    ray = _ray()
    from ray.util.queue import Empty, Queue

    started_here = not ray.is_initialized()
    if started_here:
        options = (
            {"address": spec.executor.address}
            if spec.executor.address
            else {"num_cpus": available_cores()}
        )
        ray.init(ignore_reinit_error=True, log_to_driver=False, include_dashboard=False, **options)
    try:
        # [executor] workers = N: N trials at a time, sharing the cluster's CPUs; else one CPU each
        resources = ray.cluster_resources()
        cluster_cpus = int(resources.get("CPU", 1))
        workers = spec.executor.workers
        cpus = max(1, cluster_cpus // workers) if workers else 1
        if todo:
            store.set_meta(
                "environment",
                environment(todo[0].config)
                | {"executor": "ray", "cpus_per_trial": cpus,
                   "cluster": {k: v for k, v in resources.items()
                               if k in ("CPU", "GPU", "memory")}},
            )  # fmt: skip
        events = Queue()
        remote = ray.remote(_run_trial)
        running = {}
        for trial in todo:
            gpus = 1 if trial.config.device.startswith("cuda") else 0
            store.mark_running(trial.key)
            ref = remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=0).remote(
                trial.config.to_dict(),
                str(checkpoints / f"{trial.key}.pt"),
                trial.key,
                events,
                cpus,
                str(data_dir) if data_dir else None,
            )
            running[ref] = trial
        _report(store, progress)

        while running:
            done, _ = ray.wait(list(running), num_returns=1, timeout=0.5)
            _drain(events, store, Empty)
            for ref in done:
                _settle(store, running.pop(ref), lambda ref=ref: ray.get(ref))
            _report(store, progress)
        _drain(events, store, Empty)
        _time_arms_on_ray(ray, spec, store, cpus, progress, data_dir)
    finally:
        if started_here:
            ray.shutdown()


def _time_arms_on_ray(ray, spec, store, cpus: int, progress, data_dir) -> None:
    """Each arm's interleaved timing as one Ray task with a trial's resources, one arm at a
    time (:func:`gatedrnn.study.runner.time_arms`)."""
    from gatedrnn.study.runner import time_arm, time_arms

    remote = ray.remote(time_arm)
    data = str(data_dir) if data_dir else None

    def timed(configs: dict[str, dict]):
        gpus = 1 if next(iter(configs.values()))["device"].startswith("cuda") else 0
        options = remote.options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        return ray.get(options.remote(configs, cpus, data, spec.timing_rounds))

    time_arms(store, spec.trials(), timed, progress, spec.timing_rounds)
