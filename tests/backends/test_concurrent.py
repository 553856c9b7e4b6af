"""The harness that runs interpreted Triton programs at once (:mod:`tests.backends.concurrent`):
programs that wait for each other finish, and one that fails stops the launch at once, with its
own error."""

from __future__ import annotations

import time

import pytest
import torch

pytest.importorskip("triton")
import triton
import triton.language as tl

from gatedrnn.backends import gpu
from tests.backends import concurrent

if torch.cuda.is_available() or not gpu.interpreting():
    pytest.skip("for Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)
if concurrent.unsupported():
    pytest.skip(concurrent.unsupported(), allow_module_level=True)


@triton.jit
def _gather_kernel(X, CNT, OUT, FAIL, N: tl.constexpr):
    """Each program writes its number + 1, waits for all N at a barrier, then stores the sum of
    what they all wrote; program FAIL (if any) fails before the barrier."""
    pid = tl.program_id(0)
    tl.store(X + pid, pid + 1)
    if pid == FAIL:  # shapes that do not broadcast: an error in this program only
        tl.store(X + tl.arange(0, 2), tl.zeros((4,), tl.int32))
    tl.atomic_add(CNT, 1, sem="release")
    spins = 0
    while tl.atomic_add(CNT, 0, sem="acquire") < N:
        spins += 1
    tl.store(OUT + pid, tl.sum(tl.load(X + tl.arange(0, N))))


def _launch(fail: int) -> torch.Tensor:
    N = 8
    x, out = torch.zeros(N, dtype=torch.int32), torch.zeros(N, dtype=torch.int32)
    _gather_kernel[(N,)](x, torch.zeros(1, dtype=torch.int32), out, fail, N=N)
    return out


def test_programs_that_wait_for_each_other_finish():
    with concurrent.concurrent_programs(jitter=0.2):
        out = _launch(fail=-1)
    assert out.tolist() == [36] * 8  # 1 + … + 8, seen by every program after the barrier


def test_a_failing_program_stops_the_launch_with_its_error():
    start = time.perf_counter()
    with concurrent.concurrent_programs(), pytest.raises(Exception) as caught:
        _launch(fail=3)
    assert time.perf_counter() - start < 30
    assert not concurrent._caused_by(caught.value, concurrent._OtherProgramFailed)
    assert "broadcast" in str(caught.value) or "shape" in str(caught.value), caught.value
