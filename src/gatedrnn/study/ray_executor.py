"""The Ray executor (``[executor] kind = "ray"``): not built yet.

Planned: each trial a Ray task with its CPU/GPU request, epochs reported to the driver through a
Ray queue, the driver alone writing the database, as the local executor does.
"""

from __future__ import annotations


def run_on_ray(spec, store, todo, checkpoints, progress, data_dir) -> None:
    try:
        import ray  # noqa: F401
    except ImportError:
        raise RuntimeError(
            "the Ray executor needs Ray: pip install 'gatedrnn[ray]' (or use --executor local)"
        ) from None
    raise RuntimeError("the Ray executor is not built yet; use --executor local")
