"""The suite's faster interpreter (:mod:`tests.interpreter`): a launch patches Triton's language
once, its helpers' calls run under that patch, Triton's own helpers (``tl.zeros``, from
``triton.language.core``) still get theirs, and the language is as it was after the launch."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
import triton
import triton.language as tl
from triton.runtime import interpreter

from gatedrnn.backends import gpu
from tests.interpreter import patch_once_per_launch

if torch.cuda.is_available() or not gpu.interpreting():
    pytest.skip("for Triton's interpreter (TRITON_INTERPRET=1)", allow_module_level=True)


@triton.jit
def _halve(x):
    return x * 0.5


@triton.jit
def _helpers_kernel(X, OUT, N: tl.constexpr):
    offsets = tl.arange(0, N)
    x = tl.load(X + offsets)
    y = tl.zeros((N,), tl.float32)  # a helper of Triton's own, from triton.language.core
    for _ in range(3):
        y += _halve(tl.sigmoid(x))
    tl.store(OUT + offsets, y)


def test_a_launch_patches_the_language_once(monkeypatch):
    assert patch_once_per_launch() is None, "the suite runs the interpreter as Triton has it"
    assert getattr(interpreter._patch_lang, "once_per_launch", False)
    patched = []
    original = interpreter._patch_builtin

    def counting(pkg, builder, scope):
        patched.append(getattr(pkg, "__name__", pkg))
        return original(pkg, builder, scope)

    x = torch.linspace(-3, 3, 8)
    out = torch.empty(8)
    # a first launch: the interpreter, rewriting tl.zeros, adds triton.language to its module's
    # globals, so that from then on its patch would cover both languages
    _helpers_kernel[(2,)](x, out, N=8)
    monkeypatch.setattr(interpreter, "_patch_builtin", counting)
    sigmoid = tl.sigmoid
    _helpers_kernel[(2,)](x, out, N=8)
    torch.testing.assert_close(out, 1.5 * torch.sigmoid(x))
    # triton.language, its tensor and math for the launch, triton.language.core's for tl.zeros
    # (Triton never undoes that one: once per launch, not once per call), the descriptor's
    # twice; not again for each of the three calls of _halve in each of the two programs (as
    # Triton does: 73 patches)
    assert patched.count("triton.language") == 1, patched
    assert patched.count("triton.language.core") == 1, patched
    assert len(patched) == 7, patched
    assert tl.sigmoid is sigmoid  # the launch's patch undone
