"""Shared test helpers: tolerance per dtype, and the largest error seen per dtype (in every
worker), reported at the end of the run."""

from __future__ import annotations

import os
from collections import defaultdict

import pytest
import torch

# Without a GPU, the triton backend's kernels run in Triton's CPU interpreter (one program, tiny
# sizes; tests/backends/concurrent.py runs a GPU grid's programs at once); Triton reads this when
# a kernel is defined, so it is set before any test imports one. tests/interpreter.py spares it
# patching the language again at every helper's call.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
if os.environ.get("TRITON_INTERPRET") == "1":
    from tests.interpreter import patch_once_per_launch

    patch_once_per_launch()  # where Triton's internals allow it: the same kernels, faster

# The suite runs in one worker process per core (pytest-xdist, pyproject.toml), each on one
# thread: two threads per worker on two cores made it slower than one. Tests of the loops split
# across threads set their count themselves.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5}
_LARGEST: dict[str, float] = defaultdict(float)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, what: str = "") -> None:
    """Elementwise |actual − expected| ≤ tol·(1 + |expected|), tol by dtype; records the error."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    tol = TOLERANCE[expected.dtype]
    diff = (actual.detach() - expected.detach()).abs()
    scaled = diff / (1 + expected.detach().abs())
    worst = scaled.max().item() if scaled.numel() else 0.0
    key = str(expected.dtype).removeprefix("torch.")
    _LARGEST[key] = max(_LARGEST[key], worst)
    assert worst <= tol, f"{what}: largest error {worst:.3g} > {tol:g} ({expected.dtype})"


def pytest_sessionfinish(session):
    worker_output = getattr(session.config, "workeroutput", None)  # in an xdist worker
    if worker_output is not None:
        worker_output["largest_error"] = dict(_LARGEST)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):  # xdist's controller, as each worker finishes
    for dtype, err in getattr(node, "workeroutput", {}).get("largest_error", {}).items():
        _LARGEST[dtype] = max(_LARGEST[dtype], err)


def pytest_terminal_summary(terminalreporter):
    if _LARGEST:
        terminalreporter.section("largest error against the reference, per dtype")
        for dtype, err in sorted(_LARGEST.items()):
            terminalreporter.write_line(f"{dtype}: {err:.3g} (|a-b| / (1+|b|))")


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(1234)
    yield


@pytest.fixture(autouse=True)
def _quiet_machine(request, monkeypatch):
    """The studies' timing runs a round again where the machine was busy (another program had
    the cores), which beside the other tests' workers it always is: tests see a quiet machine,
    so that what they assert does not hang on the load. Tests marked ``real_waits`` read the
    real run-queue delay; the retry logic's tests fake their own."""
    if request.node.get_closest_marker("real_waits") is None:
        from gatedrnn.train import timing

        monkeypatch.setattr(timing, "waited_seconds", lambda: 0.0)
    yield
