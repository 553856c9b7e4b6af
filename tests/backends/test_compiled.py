"""The compiled GRU loops: they build where a compiler, ninja and AVX2 exist, and otherwise the
cpu backend warns once and runs its PyTorch loops, with the same results."""

from __future__ import annotations

import pytest
import torch

import gatedrnn
from gatedrnn.backends import compiled


def test_compiled_loops_build_where_they_can():
    reason = compiled.unavailable_reason()
    if reason is not None:
        pytest.skip(f"compiled loops unavailable here: {reason}")
    assert compiled.compiled_loops() is not None


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setenv("GATEDRNN_CPU_EXTENSION", "0")
    monkeypatch.setattr(compiled, "_state", {})
    yield
    monkeypatch.setattr(compiled, "_state", {})


def test_fallback_warns_once_and_computes_the_same(no_extension):
    torch.manual_seed(0)
    python = gatedrnn.GRU(4, 6, backend="cpu-python")
    fallback = gatedrnn.GRU(4, 6, backend="cpu")
    fallback.load_state_dict(python.state_dict())
    x = torch.randn(5, 3, 4)
    with pytest.warns(RuntimeWarning, match="GATEDRNN_CPU_EXTENSION=0.*PyTorch loops"):
        out, _ = fallback(x)
    assert torch.equal(out, python(x)[0])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        fallback(x)
