"""The ``cpu`` backend: the recurrent loops of haste and cuDNN, on the CPU.

For each layer direction: one GEMM computes the input projections of the whole sequence; each step
then does one GEMM for the recurrent part and the pointwise work, in place in preallocated
buffers. A custom :class:`torch.autograd.Function` holds a hand-written backward through time
that saves only what it needs (gate activations, the states) and computes the weight gradients
as one GEMM over all steps after its loop.

The per-step loops exist twice with one contract: compiled C++ (``csrc/loops.cpp``: our packed
GEMM for the step's product, with the pointwise work vectorised and, on AVX-512, fused into the
product's epilogue; the same GEMM serves the input projection, dx and the weight gradients'
sums over the steps), built on first use by :mod:`gatedrnn.backends.compiled`, and the PyTorch
twins below (a few in-place ops per step, the step-independent derivative factors computed for
all steps before the backward loop). The twins run when the build is not possible (one warning
says why) and as the ``cpu-python`` backend.

Variable lengths use the packed layout without packing: the batch is sorted by decreasing length,
so at step t only the first ``batch_sizes[t]`` rows are live and every op works on that prefix.
The reverse direction reads each sequence reversed within its own length.

Under ``torch.compile`` each layer direction is one custom operator (``gatedrnn::cpu_direction``,
its backward ``gatedrnn::cpu_direction_backward``), opaque to Dynamo and kept in its graph, so
``fullgraph`` compiles work, and a bidirectional layer's two are one
(``gatedrnn::cpu_bidirectional``), whose loops run side by side as eager calls' do (below); so is
each direction under ``torch.export`` (when the backend is named: ``auto`` exports standard
operators) and for fake and meta tensors (its fake implementation gives the shapes). Eager calls go
through :class:`_Directions`, an autograd Function for a layer's directions, around the same forward
and backward functions; a bidirectional layer's two compiled loops run there side by side, one
thread each, forward and backward, where each alone would run on one thread (:func:`_side_by_side`),
its directions' other work (the input projection, the weight gradients) one after the other on every
thread.

Covers RNN (tanh, relu), GRU (reset after and before), LSTM (standard, with peepholes, with the
coupled input-forget gate, or both; each with or without the projection, ``proj_size``), MGU, and
the minimal cells (minGRU, minLSTM), whose gates do not read the state: after the input
projection, each element's recurrence h_t = (1 − z_t) h_{t−1} + z_t h̃_t is its own loop over
time (compiled: one pass, in parallel over the batch and the units; the layers' ``scan`` option
chooses the reference backend's algorithm and changes nothing here). Layers in bfloat16 or
float16 (CPU autocast gives every layer its dtype) are computed in float32, their results and
gradients rounded back (:meth:`CpuBackend.forward`). Twice
differentiable, as torch.nn is on the CPU: with ``create_graph=True`` the backward reruns the
reference loop on the saved input and differentiates that (:func:`_twice`). ``"auto"`` takes it
where it measured faster than torch's own kernels: every cell it covers with the compiled loops,
but for the LSTM forward alone from batch 16, and from batch 8 at H ≥ 256 (oneDNN's ties or wins
there), and the GRU and RNN on sequences of one step (two forward-only at batch ≤ 8), too short
for our setup to pay; with the PyTorch loops,
RNN, GRU and the projected LSTM for training only. For the variants torch has no kernel for, where
the other choice is the reference loop, ``auto`` takes it always, compiled or not, but for the
minimal cells' PyTorch loop below batch × hidden 256, where the reference's parallel scan wins
(see :meth:`CpuBackend.auto_declines`).
"""

from __future__ import annotations

import contextlib
import functools
import os
import platform
from collections.abc import Mapping, Sequence
from typing import Optional

import torch
from torch import Tensor

from gatedrnn.backends import (
    LayerConfig,
    backward_by_rerun,
    constant_when_compiled,
    tracing,
    untraceable,
    without_data,
)
from gatedrnn.backends.compiled import compiled_loops
from gatedrnn.backends.reference import (
    differentiable_backward,
    fused_arguments,
    project_inputs,
    run_stack,
)
from gatedrnn.nn.functional import g as candidate_activation
from gatedrnn.nn.spec import CellSpec, make_spec

__all__ = ["CpuBackend", "CpuPythonBackend", "linear"]


# The backward loops carry the gradient w.r.t. the state in a (B, H) buffer that starts as the
# final state's gradient: going backwards, a sequence first becomes live at its own last step and
# its row is untouched before then, so its final-state gradient enters at exactly that step.


def _buffer(like: Tensor, shape: tuple[int, ...], padded: bool) -> Tensor:
    """A work buffer. Padded steps are never written by the loops, so they start at zero (outputs
    must be zero there, and weight-gradient GEMMs read them); otherwise every element is written
    and zero-filling would only cost a pass over memory."""
    return like.new_zeros(shape) if padded else like.new_empty(shape)


def _live(batch_sizes: list[int], t: int, B: int) -> int:
    """Rows live at step t: ``batch_sizes[t]``, or all B when the list is empty (no padding)."""
    return batch_sizes[t] if batch_sizes else B


def _last(seq: Tensor, lengths: Tensor | None) -> Tensor:
    """Each sequence's state at its last valid step: ``seq`` (T, B, H) → (B, H)."""
    if lengths is None:
        return seq[-1].clone()
    return seq[lengths - 1, torch.arange(seq.shape[1])]


def _previous(h0: Tensor, out: Tensor) -> Tensor:
    """h_{t−1} for every step: h0 then the outputs shifted by one, (T, B, H). Rows not live at t
    hold other values, but their gradients are zero, so products with them vanish."""
    return torch.cat([h0.unsqueeze(0), out[:-1]])


def _grad_recurrent(dgates: Tensor, h0: Tensor, out: Tensor, compiled: bool) -> Tensor:
    """Σ_t dgates_tᵀ h_{t−1} (step 0 reads h0, the rest the shifted outputs): through our GEMM
    where :func:`_sums_module` says (h_{t−1} written transposed at once, its A operand), else
    as two GEMMs of torch's."""
    T, B, G = dgates.shape
    H = out.shape[-1]
    module = _sums_module(compiled, dgates, G, H)
    if module is not None and T * B >= _FEW_ROWS:
        previous_t = torch.empty(H, T * B, dtype=out.dtype)
        previous_t[:, :B] = h0.t()
        previous_t[:, B:] = out[:-1].reshape(-1, H).t()
        return _chunked_sums(module, previous_t, dgates.reshape(-1, G)).t().contiguous()
    grad = torch.mm(dgates[0].t(), h0)
    if T > 1:
        grad.addmm_(dgates[1:].reshape(-1, G).t(), out[:-1].reshape(-1, H))
    return grad


# Rows (steps × batch rows) summed in one call of our GEMM by :func:`_chunked_sums`: it adds
# along K in one sequence, so longer sums lose accuracy (against float64 at R = 3200 rows,
# relative errors 1.0e-6 whole, 5.7e-7 in chunks of 1024, 4.0e-7 of 512, 2.9e-7 of 256;
# torch's MKL 2.6e-7), and chunks of 512–2048 were also the fastest (2-core AMD EPYC, Zen 5:
# 1.5–1.8× MKL's speed at H = 64–256, R = 3200–16384).
_SUM_ROWS = 512
# Narrower weight gradients stay with torch's BLAS: the transposed copy of one operand that
# ours needs costs about what a narrow product saves (the recurrent weight's over 3200 rows:
# (256 × 64) 0.95 of MKL's time, (192 × 64) and (288 × 96) level, (144 × 48) 1.75, (128 × 128)
# 1.31, (64 × 64) 1.47) ...
_SUM_MIN_WIDTH = 256
# ... but for one at most this thin on one side (W_ih over a few inputs: the adding problem's
# two), whose transposed copy is nothing, MKL's product was the slow one: (256 × 2) over 1600
# rows 369 µs against ours 59, (192 × 2) 191 against 49, (64 × 2) 66 against 30.
_SUM_THIN = 16


def _sums_module(compiled: bool, a: Tensor, width: int, narrow: int):
    """The compiled loops where a weight gradient of (width, narrow) elements summed over rows
    goes to our GEMM (:func:`_sum_products`), else None: compiled, on a machine whose many-row
    products are ours (:func:`blas_products`), float32 or float64, at least
    :data:`_SUM_MIN_WIDTH` wide or at most :data:`_SUM_THIN` thin."""
    if not compiled or blas_products() or a.dtype not in (torch.float32, torch.float64):
        return None
    wide, thin = max(width, narrow), min(width, narrow)
    return compiled_loops() if wide >= _SUM_MIN_WIDTH or thin <= _SUM_THIN else None


def _chunked_sums(module, left_t: Tensor, right: Tensor) -> Tensor:
    """left_t · right for left_t (M, R) with unit column stride and right (R, N), any strides,
    through our packed GEMM in chunks of :data:`_SUM_ROWS` of R, added up."""
    total = None
    for r0 in range(0, right.shape[0], _SUM_ROWS):
        rows = slice(r0, r0 + _SUM_ROWS)
        part = module.matmul(left_t[:, rows], right[rows], None)
        total = part if total is None else total.add_(part)
    return total


def _sum_products(a: Tensor, b: Tensor, compiled: bool) -> Tensor:
    """aᵀ b = Σ_r a_rᵀ b_r for a (R, M), b (R, N) (any strides): a weight gradient, summed
    over the R steps × batch rows, (M, N). Our packed GEMM where :func:`_sums_module` says (on
    an AMD EPYC torch's MKL ran these at about half its speed), with the narrower of the two
    copied transposed (its operand A must be row-major along R); else torch's."""
    module = _sums_module(compiled, a, a.shape[1], b.shape[1])
    if module is None or a.shape[0] < _FEW_ROWS:
        return torch.mm(a.t(), b)
    if b.shape[1] <= a.shape[1]:  # (bᵀ a)ᵀ
        return _chunked_sums(module, b.t().contiguous(), a).t().contiguous()
    return _chunked_sums(module, a.t().contiguous(), b)


@functools.cache
def blas_products() -> bool:
    """Whether the many-row products (the input projection, dx, the weight gradients' sums over
    the steps: :func:`_sum_products`) go to torch's BLAS rather than our packed GEMM: on Intel
    CPUs with torch's MKL, which ran them 1.2–1.5× faster than ours on a Xeon (Sapphire Rapids;
    layers 6–19% faster at H ≥ 256), where on AMD EPYCs ours ran level (an earlier machine) or
    1.5–2.2× as fast (a Zen 5, CPU family 26: MKL there at ~190 GFLOP/s, ours at 300–440).
    Fixed per machine, so runs repeat bit for bit; ``GATEDRNN_CPU_GEMM=blas|ours`` picks one."""
    choice = os.environ.get("GATEDRNN_CPU_GEMM", "")
    if choice in ("blas", "ours"):
        return choice == "blas"
    vendor = cpu_info("vendor_id") or ("GenuineIntel" if "Intel" in platform.processor() else "")
    return torch.backends.mkl.is_available() and vendor == "GenuineIntel"


def cpu_info(name: str) -> str | None:
    """A field of /proc/cpuinfo (``vendor_id``, ``model name`` …) for the first CPU; None where
    there is no such file (not Linux) or field."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


# Rows below which a one-off product goes to torch's BLAS: our GEMM packs the whole weight first
# (a pass reading and writing all of it), which a few rows do not repay. Against torch.addmm
# (K = H 32–512, N = H, 3H, 4H; 2-core AMD EPYC) ours took 1.0–2.7× its time at 1 row (the
# larger the weight, the more), 0.7–1.2× at 4, 0.95–1.25× at 10–16, level at 31, and from ~100
# rows it is ~10% faster; whole layers (T = 10, B = 1) ran 0.8–1.2× as long with torch's product
# at 10 rows, but 0.7–0.95× at one (T = 1: a decoder step, H ≥ 128).
_FEW_ROWS = 8


def _product(a: Tensor, r: Tensor, bias: Tensor | None, compiled: bool) -> Tensor:
    """a r (+ bias) for a (M, K), r (K, N): the compiled packed GEMM when the loops are compiled,
    there are at least ``_FEW_ROWS`` rows and :func:`blas_products` does not send these products
    to torch's BLAS, else torch's."""
    module = compiled_loops() if compiled and not blas_products() else None
    if module is not None and a.shape[0] >= _FEW_ROWS:
        return module.matmul(a.contiguous(), r, bias)
    return torch.mm(a, r) if bias is None else torch.addmm(bias, a, r)


_LINEAR_MIN_ROWS = 128


class _Linear(torch.autograd.Function):
    """x Wᵀ + b for x (N, in) through our packed GEMM (:func:`linear`); the backward's dx and dW
    through it too, or, with ``create_graph=True``, through torch's differentiable products."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _product(x, weight.t(), bias, True)

    @staticmethod
    def backward(ctx, dy: Tensor):
        x, weight = ctx.saved_tensors
        needs = ctx.needs_input_grad
        if torch.is_grad_enabled():  # a double backward: torch's products, differentiable
            dx = dy.mm(weight) if needs[0] else None
            dw = dy.t().mm(x) if needs[1] else None
        else:
            dy = dy.contiguous()
            dx = _product(dy, weight, None, True) if needs[0] else None
            dw = _sum_products(dy, x, True) if needs[1] else None
        db = dy.sum(0) if ctx.has_bias and needs[2] else None
        return dx, dw, db


def _functorch_wrapped(x: Tensor) -> bool:
    check = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    return bool(check and check(x))


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``torch.nn.functional.linear(x, weight, bias)``, the product (and the backward's two)
    through our packed GEMM where it takes the many-row products (:func:`blas_products`): for
    the tasks' output layers over a vocabulary (:class:`gatedrnn.tasks.models.OutputLayer`),
    the largest part of a language model's training step on an AMD EPYC whose MKL ran at half
    our GEMM's speed. Anywhere else torch's own: another device or dtype than float32/float64,
    fewer than :data:`_LINEAR_MIN_ROWS` rows (ours packs the whole weight first, which a
    decoder's step of a few dozen rows would not repay against a vocabulary-wide weight),
    autocast, torch.compile, tracing, functorch's transforms, the compiled loops unavailable."""
    use = (
        x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and weight.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
        and x.numel() >= _LINEAR_MIN_ROWS * x.shape[-1] > 0
        and not blas_products()
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not _functorch_wrapped(x)
        and compiled_loops() is not None
    )
    if not use:
        return torch.nn.functional.linear(x, weight, bias)
    out = _Linear.apply(x.reshape(-1, x.shape[-1]), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


def _project(x: Tensor, w_ih: Tensor, bias: Tensor | None, compiled: bool) -> Tensor:
    """x W_ihᵀ + bias for all steps at once, (T, B, I) → (T, B, G)."""
    if not compiled:
        return project_inputs(x, w_ih, bias)
    T, B, I = x.shape
    return _product(x.reshape(T * B, I), w_ih.t(), bias, compiled).view(T, B, -1)


def _weight_grads(
    dgates: Tensor,
    x: Tensor,
    h0: Tensor,
    out: Tensor,
    needs: tuple[bool, ...],
    w_ih: Tensor,
    compiled: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """dx, dW_ih, dW_hh as GEMMs over all steps."""
    G = dgates.shape[-1]
    flat = dgates.reshape(-1, G)
    dx = _product(flat, w_ih, None, compiled).view(*dgates.shape[:2], -1) if needs[0] else None
    dw_ih = _sum_products(flat, x.reshape(-1, x.shape[-1]), compiled) if needs[1] else None
    dw_hh = _grad_recurrent(dgates, h0, out, compiled) if needs[2] else None
    return dx, dw_ih, dw_hh


def _twice(spec: CellSpec, inputs, needs, lengths, grads) -> tuple[Tensor | None, ...]:
    """One direction's backward with ``create_graph=True`` (grad mode on in backward) or batched
    gradients (:func:`~gatedrnn.backends.backward_by_rerun`): the reference loop rerun on its
    saved inputs (x, the states, W_ih, W_hh, b_ih, b_hh, peepholes, W_hr) and differentiated
    (:func:`~gatedrnn.backends.reference.differentiable_backward`); the loops' hand-written
    backward gives first derivatives of plain gradients only. ``lengths``: each sequence's
    length, sorted as x is."""
    if inputs[0] is None:
        raise RuntimeError(
            "the 'cpu' backend differentiates twice (or takes batched gradients) by rerunning the "
            "layer on its input, which it does not keep when neither the input nor weight_ih "
            "needs a gradient; build the layer with backend='reference' for this backward"
        )
    return differentiable_backward(spec, inputs, needs, lengths, grads)


def _sum_bias(dgates: Tensor, wanted: bool) -> Tensor | None:
    return dgates.sum((0, 1)) if wanted else None


def _rnn_forward_loop(out, h0, w_hh, batch_sizes, relu):
    """The RNN forward loop, in place; the compiled ``rnn_forward`` is its twin. ``out``
    (T, B, H) holds x W_ihᵀ + b_ih + b_hh on entry and h on exit (live rows only)."""
    T, B, _ = out.shape
    w_hh_t = w_hh.t()
    act = torch.relu_ if relu else torch.tanh_
    for t in range(T):
        n = _live(batch_sizes, t, B)
        h_prev = h0[:n] if t == 0 else out[t - 1, :n]
        act(out[t, :n].addmm_(h_prev, w_hh_t))


def _rnn_backward_loop(grad_out, dh, out, w_hh, dpre, batch_sizes, relu):
    """The RNN backward loop, in place; the compiled ``rnn_backward`` is its twin. ``dh`` (B, H)
    enters as the final state's gradient and leaves as h0's; ``dpre`` receives the
    pre-activation gradients."""
    T, B, _ = out.shape
    slope = (out > 0).to(out.dtype) if relu else 1 - out * out  # act' for all steps
    for t in reversed(range(T)):
        n = _live(batch_sizes, t, B)
        g = dh[:n].add_(grad_out[t, :n])
        torch.mul(g, slope[t, :n], out=dpre[t, :n])
        torch.mm(dpre[t, :n], w_hh, out=dh[:n])


def _rnn_forward(
    x, states, w_ih, w_hh, b_ih, b_hh, _peep, _w_hr, batch_sizes, lengths, relu, compiled
):
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t−1} + b_hh) over a whole sequence: (out, finals,
    the activations the backward reads besides out)."""
    T, B, _ = x.shape
    (h0,) = states
    bias = None if b_ih is None else b_ih + b_hh
    out = _project(x, w_ih, bias, compiled)  # (T, B, H): pre-activations, then h in place
    forward_loop, _ = _loops("rnn", compiled)
    yield forward_loop(out, h0, w_hh, list(batch_sizes or ()), relu)
    if batch_sizes is not None:  # steps past a sequence's end hold no state
        out.mul_(_mask(batch_sizes, T, B, out))
    return out, (_last(out, lengths),), ()


def _rnn_backward(grad_out, grad_finals, inputs, out, extra, batch_sizes, relu, compiled, needs):
    """The gradients of (x, h0, W_ih, W_hh, b_ih, b_hh, peepholes, W_hr), None where not
    needed."""
    x, h0, w_ih, w_hh, b_ih, _, _, _ = inputs
    dpre = _buffer(out, out.shape, batch_sizes is not None)
    dh = grad_finals[0].clone()
    _, backward_loop = _loops("rnn", compiled)
    yield backward_loop(grad_out, dh, out, w_hh, dpre, list(batch_sizes or ()), relu)
    dx, dw_ih, dw_hh = _weight_grads(
        dpre, x, h0, out, (needs[0], needs[2], needs[3]), w_ih, compiled
    )
    db = _sum_bias(dpre, b_ih is not None and (needs[4] or needs[5]))
    return dx, dh if needs[1] else None, dw_ih, dw_hh, db, db, None, None


def _mask(batch_sizes: tuple[int, ...], T: int, B: int, like: Tensor) -> Tensor:
    live = torch.tensor(batch_sizes).unsqueeze(1) > torch.arange(B)  # (T, B)
    return live.unsqueeze(-1).to(like.dtype)


def _gru_forward_loop(gates, out, rec, h0, w_hh, b_hh, batch_sizes, reset_after):
    """The GRU forward loop, in place; the compiled ``gru_forward`` is its twin.

    ``gates`` (T, B, 3H) holds x W_ihᵀ + b_ih on entry and r|z|n on exit; ``out`` (T, B, H)
    receives h; ``rec`` (T, B, H) receives W_hn h + b_hn (reset after) or r ⊙ h (reset before).
    ``batch_sizes`` lists the live rows per step, or is empty when all B are.
    """
    T, B, _ = gates.shape
    H = out.shape[2]
    w_hh_t = w_hh.t()
    scratch = gates.new_empty(B, 3 * H)
    w_rz_t, w_n_t = w_hh_t[:, : 2 * H], w_hh_t[:, 2 * H :]
    b_rz, b_n = (None, None) if b_hh is None else (b_hh[: 2 * H], b_hh[2 * H :])
    for t in range(T):
        n = _live(batch_sizes, t, B)
        h_prev = h0[:n] if t == 0 else out[t - 1, :n]
        g = gates[t, :n]
        rz, cand = g[:, : 2 * H], g[:, 2 * H :]
        r, z = g[:, :H], g[:, H : 2 * H]
        if reset_after:
            gh = scratch[:n]
            if b_hh is None:
                torch.mm(h_prev, w_hh_t, out=gh)
            else:
                torch.addmm(b_hh, h_prev, w_hh_t, out=gh)
            rz.add_(gh[:, : 2 * H]).sigmoid_()
            rec[t, :n] = gh[:, 2 * H :]
            cand.addcmul_(r, rec[t, :n]).tanh_()
        else:
            gh = scratch[:n, : 2 * H]
            if b_rz is None:
                torch.mm(h_prev, w_rz_t, out=gh)
            else:
                torch.addmm(b_rz, h_prev, w_rz_t, out=gh)
            rz.add_(gh).sigmoid_()
            rh = torch.mul(r, h_prev, out=rec[t, :n])
            cand.addmm_(rh, w_n_t)
            if b_n is not None:
                cand.add_(b_n)
            cand.tanh_()
        torch.lerp(cand, h_prev, z, out=out[t, :n])  # (1 − z) ⊙ n + z ⊙ h


def _gru_backward_loop(
    grad_out, dh, gates, rec, out, h0, w_hh, dgates, dn_all, batch_sizes, reset_after
):
    """The GRU backward loop, in place; the compiled ``gru_backward`` is its twin.

    ``dh`` (B, H) enters as the final state's gradient and leaves as h0's. ``dgates`` (T, B, 3H)
    receives the r|z|n pre-activation gradients as the recurrent side sees them (after: the n
    block is dn ⊙ r) and ``dn_all`` (T, B, H, reset after only) receives dn itself.
    """
    T, B, _ = gates.shape
    H = out.shape[2]
    r, z, cand = gates[..., :H], gates[..., H : 2 * H], gates[..., 2 * H :]
    h_prev = _previous(h0, out)
    # ∂h/∂(pre-activations), for all steps at once:
    f_n = (1 - z) * (1 - cand * cand)  # through n
    f_z = (h_prev - cand) * z * (1 - z)  # through z
    f_r = (rec if reset_after else h_prev) * r * (1 - r)  # through r, per unit of dn or d(rh)
    w_rz, w_n = w_hh[: 2 * H], w_hh[2 * H :]
    for t in reversed(range(T)):
        n = _live(batch_sizes, t, B)
        g = dh[:n].add_(grad_out[t, :n])
        d = dgates[t, :n]
        torch.mul(g, f_z[t, :n], out=d[:, H : 2 * H])
        carry = torch.mul(g, z[t, :n])
        if reset_after:
            dn = torch.mul(g, f_n[t, :n], out=dn_all[t, :n])
            torch.mul(dn, f_r[t, :n], out=d[:, :H])
            torch.mul(dn, r[t, :n], out=d[:, 2 * H :])
            torch.addmm(carry, d, w_hh, out=dh[:n])
        else:
            dn = torch.mul(g, f_n[t, :n], out=d[:, 2 * H :])
            drh = torch.mm(dn, w_n)  # ∂/∂(r ⊙ h)
            torch.mul(drh, f_r[t, :n], out=d[:, :H])
            carry.addcmul_(drh, r[t, :n])
            torch.addmm(carry, d[:, : 2 * H], w_rz, out=dh[:n])


def _loops(kind: str, compiled: bool):
    """The (forward, backward) loops of ``kind`` as job makers: called with a loop's arguments,
    each returns the call unmade, a job that runs it when called (see :func:`_drive`). The
    compiled loops when asked for and available (a ``Job`` of the module, which
    ``side_by_side`` can run with another on a thread of its own), else the PyTorch twins
    defined here."""
    module = compiled_loops() if compiled else None
    if module is None:
        forward, backward = _PYTHON_LOOPS[kind]
        return functools.partial(functools.partial, forward), functools.partial(
            functools.partial, backward
        )
    return getattr(module, f"{kind}_forward_job"), getattr(module, f"{kind}_backward_job")


def _gru_forward(
    x, states, w_ih, w_hh, b_ih, b_hh, _peep, _w_hr, batch_sizes, lengths, reset_after, compiled
):
    """GRU over a whole sequence, gate order r|z|n, either reset placement: (out, finals, the
    activations the backward reads besides out: r|z|n and the recurrent candidate term)."""
    T, B, _ = x.shape
    (h0,) = states
    H = h0.shape[1]
    padded = batch_sizes is not None
    gates = _project(x, w_ih, b_ih, compiled)  # (T, B, 3H): pre-activations, then r|z|n
    out = _buffer(x, (T, B, H), padded)
    rec = _buffer(x, (T, B, H), padded)
    forward_loop, _ = _loops("gru", compiled)
    yield forward_loop(gates, out, rec, h0, w_hh, b_hh, list(batch_sizes or ()), reset_after)
    return out, (_last(out, lengths),), (gates, rec)


def _gru_backward(
    grad_out, grad_finals, inputs, out, extra, batch_sizes, reset_after, compiled, needs
):
    """The gradients of (x, h0, W_ih, W_hh, b_ih, b_hh, peepholes, W_hr), None where not
    needed."""
    x, h0, w_ih, w_hh, b_ih, _, _, _ = inputs
    gates, rec = extra
    H = h0.shape[1]
    padded = batch_sizes is not None
    dgates = _buffer(gates, gates.shape, padded)
    dn_all = _buffer(out, out.shape, padded) if reset_after else None
    dh = grad_finals[0].clone()
    _, backward_loop = _loops("gru", compiled)
    yield backward_loop(
        grad_out, dh, gates, rec, out, h0, w_hh, dgates, dn_all, list(batch_sizes or ()),
        reset_after,
    )  # fmt: skip
    has_bias = b_ih is not None
    if reset_after:
        dw_hh = _grad_recurrent(dgates, h0, out, compiled)
        db_hh = _sum_bias(dgates, has_bias and needs[5])
        dgates[..., 2 * H :] = dn_all  # the input side sees dn itself
    else:
        flat = dgates.reshape(-1, 3 * H)
        dw_hh = torch.cat(
            [
                _grad_recurrent(dgates[..., : 2 * H], h0, out, compiled),
                _sum_products(flat[:, 2 * H :], rec.reshape(-1, H), compiled),
            ]
        )
        db_hh = _sum_bias(dgates, has_bias and needs[5])
    dx, dw_ih, _ = _weight_grads(dgates, x, h0, out, (needs[0], needs[2], False), w_ih, compiled)
    db_ih = _sum_bias(dgates, has_bias and needs[4])
    dw_hh = dw_hh if needs[3] else None
    return dx, dh if needs[1] else None, dw_ih, dw_hh, db_ih, db_hh, None, None


def _lstm_blocks(H: int, coupled: bool) -> tuple[slice, slice | None, slice, slice]:
    """Where the gates lie in the LSTM's gate dimension: i|f|g|o, or i|g|o with the coupled
    gate (no f block: f = 1 − i)."""
    if coupled:
        return slice(0, H), None, slice(H, 2 * H), slice(2 * H, 3 * H)
    return slice(0, H), slice(H, 2 * H), slice(2 * H, 3 * H), slice(3 * H, 4 * H)


def _peepholes(peep: Tensor | None, coupled: bool) -> tuple[Tensor | None, ...]:
    """(p_i, p_f, p_o) from ``weight_peep`` (p_i|p_f|p_o, or p_i|p_o coupled); None for absent."""
    if peep is None:
        return None, None, None
    if coupled:
        p_i, p_o = peep.chunk(2)
        return p_i, None, p_o
    return tuple(peep.chunk(3))


def _lstm_forward_loop(gates, out, cells, h0, c0, w_hh, peep, w_hr, raw, batch_sizes, coupled):
    """The LSTM forward loop, in place; the compiled ``lstm_forward`` is its twin.

    ``gates`` (T, B, G·H) holds x W_ihᵀ + b_ih + b_hh on entry and the gates on exit, i|f|g|o
    (G = 4) or, with the coupled gate, i|g|o (G = 3); ``out`` (T, B, P) and ``cells`` (T, B, H)
    receive h and c. ``peep``: the peephole weights (:func:`_peepholes`) or None. With the
    projection ``w_hr`` (P, H), ``raw`` (T, B, H) receives o ⊙ tanh(c) and h is raw W_hrᵀ
    (P < H); without, both are None and P = H.
    """
    T, B, _ = gates.shape
    H = cells.shape[2]
    w_hh_t = w_hh.t()
    w_hr_t = None if w_hr is None else w_hr.t()
    standard = peep is None and not coupled
    i_, f_, g_, o_ = _lstm_blocks(H, coupled)
    p_i, p_f, p_o = _peepholes(peep, coupled)
    for t in range(T):
        n = _live(batch_sizes, t, B)
        h_prev = h0[:n] if t == 0 else out[t - 1, :n]
        c_prev = c0[:n] if t == 0 else cells[t - 1, :n]
        g = gates[t, :n].addmm_(h_prev, w_hh_t)
        c = cells[t, :n]
        h = out[t, :n] if w_hr is None else raw[t, :n]
        if standard:
            g[:, : 2 * H].sigmoid_()
            g[:, 2 * H : 3 * H].tanh_()
            g[:, 3 * H :].sigmoid_()
            torch.mul(g[:, H : 2 * H], c_prev, out=c).addcmul_(g[:, :H], g[:, 2 * H : 3 * H])
            torch.mul(g[:, 3 * H :], torch.tanh(c), out=h)
        else:
            _lstm_variant_step(g, c, c_prev, h, p_i, p_f, p_o, i_, f_, g_, o_, coupled)
        if w_hr is not None:
            torch.mm(h, w_hr_t, out=out[t, :n])


def _lstm_variant_step(g, c, c_prev, h, p_i, p_f, p_o, i_, f_, g_, o_, coupled):
    """One step's pointwise work of a variant LSTM (:func:`_lstm_forward_loop`), in place: the
    gate pre-activations ``g`` become the gates, ``c`` and ``h`` receive the cell and
    o ⊙ tanh(c)."""
    i, cand, o = g[:, i_], g[:, g_].tanh_(), g[:, o_]
    if p_i is not None:
        i.addcmul_(c_prev, p_i)
    i.sigmoid_()
    if coupled:
        torch.lerp(c_prev, cand, i, out=c)  # (1 − i) ⊙ c + i ⊙ g
    else:
        f = g[:, f_]
        if p_f is not None:
            f.addcmul_(c_prev, p_f)
        torch.mul(f.sigmoid_(), c_prev, out=c).addcmul_(i, cand)
    if p_o is not None:
        o.addcmul_(c, p_o)  # the output gate looks at the new cell
    torch.mul(o.sigmoid_(), torch.tanh(c), out=h)


def _lstm_backward_loop(
    grad_out, dh, dc, gates, cells, c0, w_hh, peep, w_hr, dproj, dgates, batch_sizes, coupled
):
    """The LSTM backward loop, in place; the compiled ``lstm_backward`` is its twin. ``dh``
    (B, P) and ``dc`` (B, H) enter as the final states' gradients and leave as h0's and c0's;
    ``dgates`` receives the gates' pre-activation gradients (the layout of ``gates``). With the
    projection ``w_hr``, ``dproj`` (T, B, P) receives each step's gradient of h (for W_hr's);
    without, both are None."""
    T, B, _ = gates.shape
    H = cells.shape[2]
    i_, f_, g_, o_ = _lstm_blocks(H, coupled)
    i, g, o = gates[..., i_], gates[..., g_], gates[..., o_]
    f = 1 - i if coupled else gates[..., f_]
    c_prev = _previous(c0, cells)
    tanh_c = torch.tanh(cells)
    # Factors for all steps: dc += dh ⊙ f_c (then + do ⊙ p_o); the i|f|g pre-activation grads
    # are dc ⊙ f_i|f_f|f_g, the o one dh ⊙ f_o; dc_{t−1} = dc ⊙ f (+ di ⊙ p_i + df ⊙ p_f)
    f_c = o * (1 - tanh_c * tanh_c)
    f_o = tanh_c * o * (1 - o)

    def grad_h(t: int, n: int) -> Tensor:  # ∂/∂h_t, or through the projection ∂/∂(o ⊙ tanh c)
        gh = dh[:n].add_(grad_out[t, :n])
        if w_hr is None:
            return gh
        return torch.mm(dproj[t, :n].copy_(gh), w_hr)

    if peep is None and not coupled:
        f_ifg = torch.stack([g * i * (1 - i), c_prev * f * (1 - f), i * (1 - g * g)], dim=2)
        dgates4 = dgates.view(T, B, 4, H)
        for t in reversed(range(T)):
            n = _live(batch_sizes, t, B)
            gh = grad_h(t, n)
            gc = dc[:n].addcmul_(gh, f_c[t, :n])
            torch.mul(gc.unsqueeze(1), f_ifg[t, :n], out=dgates4[t, :n, :3])
            torch.mul(gh, f_o[t, :n], out=dgates4[t, :n, 3])
            gc.mul_(f[t, :n])
            torch.mm(dgates[t, :n], w_hh, out=dh[:n])
        return
    p_i, p_f, p_o = _peepholes(peep, coupled)
    f_i = (g - c_prev if coupled else g) * i * (1 - i)  # coupled: c = c_prev + i ⊙ (g − c_prev)
    f_f = None if coupled else c_prev * f * (1 - f)
    f_g = i * (1 - g * g)
    for t in reversed(range(T)):
        n = _live(batch_sizes, t, B)
        d = dgates[t, :n]
        gh = grad_h(t, n)
        do = torch.mul(gh, f_o[t, :n], out=d[:, o_])
        gc = dc[:n].addcmul_(gh, f_c[t, :n])
        if p_o is not None:
            gc.addcmul_(do, p_o)
        di = torch.mul(gc, f_i[t, :n], out=d[:, i_])
        torch.mul(gc, f_g[t, :n], out=d[:, g_])
        df = None if f_f is None else torch.mul(gc, f_f[t, :n], out=d[:, f_])
        gc.mul_(f[t, :n])
        if p_i is not None:
            gc.addcmul_(di, p_i)
        if p_f is not None:
            gc.addcmul_(df, p_f)
        torch.mm(d, w_hh, out=dh[:n])


def _lstm_forward(
    x, states, w_ih, w_hh, b_ih, b_hh, peep, w_hr, batch_sizes, lengths, coupled, compiled
):
    """LSTM over a whole sequence, gate order i|f|g|o (i|g|o coupled): (out, finals, the
    activations the backward reads besides out: the gates, the cells, and with the projection
    o ⊙ tanh(c))."""
    T, B, _ = x.shape
    h0, c0 = states
    P, H = h0.shape[1], c0.shape[1]
    padded = batch_sizes is not None
    bias = None if b_ih is None else b_ih + b_hh
    gates = _project(x, w_ih, bias, compiled)  # (T, B, G·H): pre-activations, then the gates
    out = _buffer(x, (T, B, P), padded)
    cells = _buffer(x, (T, B, H), padded)
    raw = None if w_hr is None else _buffer(x, (T, B, H), padded)
    forward_loop, _ = _loops("lstm", compiled)
    yield forward_loop(
        gates, out, cells, h0, c0, w_hh, peep, w_hr, raw, list(batch_sizes or ()), coupled
    )
    extra = (gates, cells) if raw is None else (gates, cells, raw)
    return out, (_last(out, lengths), _last(cells, lengths)), extra


def _lstm_backward(
    grad_out, grad_finals, inputs, out, extra, batch_sizes, coupled, compiled, needs
):
    """The gradients of (x, h0, c0, W_ih, W_hh, b_ih, b_hh, peepholes, W_hr), None where not
    needed."""
    x, h0, c0, w_ih, w_hh, b_ih, _, peep, w_hr = inputs
    gates, cells, *raw = extra
    H = c0.shape[1]
    padded = batch_sizes is not None
    dgates = _buffer(gates, gates.shape, padded)
    dproj = None if w_hr is None else _buffer(out, out.shape, padded)
    dh, dc = grad_finals[0].clone(), grad_finals[1].clone()
    _, backward_loop = _loops("lstm", compiled)
    yield backward_loop(
        grad_out, dh, dc, gates, cells, c0, w_hh, peep, w_hr, dproj, dgates,
        list(batch_sizes or ()), coupled,
    )  # fmt: skip
    dx, dw_ih, dw_hh = _weight_grads(
        dgates, x, h0, out, (needs[0], needs[3], needs[4]), w_ih, compiled
    )
    db = _sum_bias(dgates, b_ih is not None and (needs[5] or needs[6]))
    dpeep = None
    if peep is not None and needs[7]:  # Σ over steps and rows of d(pre-activation) ⊙ the cell
        i_, f_, _, o_ = _lstm_blocks(H, coupled)
        c_prev = _previous(c0, cells)
        parts = [(dgates[..., i_] * c_prev).sum((0, 1))]
        if f_ is not None:
            parts.append((dgates[..., f_] * c_prev).sum((0, 1)))
        parts.append((dgates[..., o_] * cells).sum((0, 1)))
        dpeep = torch.cat(parts)
    dw_hr = None
    if w_hr is not None and needs[8]:  # Σ_t ∂h_tᵀ (o ⊙ tanh c)_t
        dw_hr = _sum_products(dproj.reshape(-1, dproj.shape[-1]), raw[0].reshape(-1, H), compiled)
    dc = dc if needs[2] else None
    return dx, dh if needs[1] else None, dc, dw_ih, dw_hh, db, db, dpeep, dw_hr


def _mgu_forward_loop(gates, out, rec, h0, w_hh, b_hh, batch_sizes):
    """The MGU forward loop, in place; the compiled ``mgu_forward`` is its twin.

    ``gates`` (T, B, 2H) holds x W_ihᵀ + b_ih on entry and f|n on exit; ``out`` (T, B, H)
    receives h and ``rec`` (T, B, H) f ⊙ h_{t−1}, the recurrent candidate's input.
    """
    T, B, _ = gates.shape
    H = out.shape[2]
    w_f_t, w_n_t = w_hh[:H].t(), w_hh[H:].t()
    b_f, b_n = (None, None) if b_hh is None else (b_hh[:H], b_hh[H:])
    for t in range(T):
        n = _live(batch_sizes, t, B)
        h_prev = h0[:n] if t == 0 else out[t - 1, :n]
        g = gates[t, :n]
        f = g[:, :H].addmm_(h_prev, w_f_t)
        if b_f is not None:
            f.add_(b_f)
        f.sigmoid_()
        cand = g[:, H:].addmm_(torch.mul(f, h_prev, out=rec[t, :n]), w_n_t)
        if b_n is not None:
            cand.add_(b_n)
        torch.lerp(h_prev, cand.tanh_(), f, out=out[t, :n])  # (1 − f) ⊙ h + f ⊙ n


def _mgu_backward_loop(grad_out, dh, gates, out, h0, w_hh, dgates, batch_sizes):
    """The MGU backward loop, in place; the compiled ``mgu_backward`` is its twin. ``dh`` (B, H)
    enters as the final state's gradient and leaves as h0's; ``dgates`` (T, B, 2H) receives the
    f|n pre-activation gradients."""
    T, B, _ = gates.shape
    H = out.shape[2]
    f, cand = gates[..., :H], gates[..., H:]
    h_prev = _previous(h0, out)
    # ∂h/∂(pre-activations), for all steps at once:
    f_n = f * (1 - cand * cand)  # through n
    slope = f * (1 - f)
    f_f = (cand - h_prev) * slope  # through f on the update path
    f_fh = h_prev * slope  # through f, per unit of d(f ⊙ h)
    keep = 1 - f  # the direct path, h_{t−1} → h_t
    w_f, w_n = w_hh[:H], w_hh[H:]
    for t in reversed(range(T)):
        n = _live(batch_sizes, t, B)
        g = dh[:n].add_(grad_out[t, :n])
        d = dgates[t, :n]
        dfh = torch.mm(torch.mul(g, f_n[t, :n], out=d[:, H:]), w_n)  # ∂/∂(f ⊙ h)
        df = torch.mul(g, f_f[t, :n], out=d[:, :H]).addcmul_(dfh, f_fh[t, :n])
        carry = torch.mul(g, keep[t, :n]).addcmul_(dfh, f[t, :n])
        torch.addmm(carry, df, w_f, out=dh[:n])


def _mgu_forward(
    x, states, w_ih, w_hh, b_ih, b_hh, _peep, _w_hr, batch_sizes, lengths, _flag, compiled
):
    """MGU over a whole sequence, gate order f|n: (out, finals, the activations the backward
    reads besides out: f|n and f ⊙ h_{t−1})."""
    T, B, _ = x.shape
    (h0,) = states
    H = h0.shape[1]
    padded = batch_sizes is not None
    gates = _project(x, w_ih, b_ih, compiled)  # (T, B, 2H): pre-activations, then f|n
    out = _buffer(x, (T, B, H), padded)
    rec = _buffer(x, (T, B, H), padded)
    forward_loop, _ = _loops("mgu", compiled)
    yield forward_loop(gates, out, rec, h0, w_hh, b_hh, list(batch_sizes or ()))
    return out, (_last(out, lengths),), (gates, rec)


def _mgu_backward(grad_out, grad_finals, inputs, out, extra, batch_sizes, _flag, compiled, needs):
    """The gradients of (x, h0, W_ih, W_hh, b_ih, b_hh, peepholes, W_hr), None where not
    needed."""
    x, h0, w_ih, w_hh, b_ih, _, _, _ = inputs
    gates, rec = extra
    H = h0.shape[1]
    dgates = _buffer(gates, gates.shape, batch_sizes is not None)
    dh = grad_finals[0].clone()
    _, backward_loop = _loops("mgu", compiled)
    yield backward_loop(grad_out, dh, gates, out, h0, w_hh, dgates, list(batch_sizes or ()))
    dw_hh = None
    if needs[3]:  # U_f reads h_{t−1}, U_n reads f ⊙ h_{t−1}
        flat_n = dgates[..., H:].reshape(-1, H)
        dw_hh = torch.cat(
            [
                _grad_recurrent(dgates[..., :H], h0, out, compiled),
                _sum_products(flat_n, rec.reshape(-1, H), compiled),
            ]
        )
    dx, dw_ih, _ = _weight_grads(dgates, x, h0, out, (needs[0], needs[2], False), w_ih, compiled)
    db = _sum_bias(dgates, b_ih is not None and (needs[4] or needs[5]))
    return dx, dh if needs[1] else None, dw_ih, dw_hh, db, db, None, None


def _candidate_slope(k_h: Tensor, cand: Tensor) -> Tensor:
    """g′(k_h) of the minimal cells' candidate h̃ = g(k_h) (:func:`gatedrnn.nn.functional.g`):
    1 for k_h ≥ 0, σ′(k_h) = h̃(1 − h̃) below. g′ jumps at 0 (from ¼ to 1), so the side is taken
    from the sign of k_h, as the reference's ``where`` does, not from h̃ (σ(k) rounds to ½ for a
    tiny negative k)."""
    return torch.where(k_h >= 0, 1.0, cand * (1 - cand))


def _min_update(gates: Tensor, H: int, lstm: bool) -> Tensor:
    """The update gate z of every step from the stored gates (z itself, or i/(i + f) for the
    minLSTM, whose h_t = f/(f + i) h_{t−1} + i/(f + i) h̃_t is the same lerp)."""
    if not lstm:
        return gates[..., :H]
    i, f = gates[..., :H], gates[..., H : 2 * H]
    return i / (i + f)


def _min_forward_loop(gates, out, h0, batch_sizes, lstm):
    """The minGRU/minLSTM forward loop, in place; the compiled ``min_forward`` is its twin.

    ``gates`` (T, B, G·H) holds x W_ihᵀ + b_ih on entry; on exit its gate blocks hold the gates
    (z, or i|f for the minLSTM) and the last block still holds the candidate's pre-activation
    k_h (its derivative needs the sign). ``out`` (T, B, H) receives h. No gate reads the state,
    so the gates of all steps are computed first; the loop is one lerp a step.
    """
    T, B, G = gates.shape
    H = out.shape[2]
    gates[..., : G - H].sigmoid_()
    z = _min_update(gates, H, lstm)
    cand = candidate_activation(gates[..., G - H :])
    for t in range(T):
        n = _live(batch_sizes, t, B)
        h_prev = h0[:n] if t == 0 else out[t - 1, :n]
        torch.lerp(h_prev, cand[t, :n], z[t, :n], out=out[t, :n])  # (1 − z) ⊙ h + z ⊙ h̃


def _min_backward_loop(grad_out, dh, gates, out, h0, dgates, batch_sizes, lstm):
    """The minGRU/minLSTM backward loop, in place; the compiled ``min_backward`` is its twin.
    ``dh`` (B, H) enters as the final state's gradient and leaves as h0's; ``dgates`` (the
    layout of ``gates``) receives the pre-activation gradients, z|h̃ or i|f|h̃. The loop carries
    ∂h back through the direct path only (dh_{t−1} = dh_t ⊙ (1 − z_t)), each step's total
    landing in the h̃ block; the rest is computed for all steps after it."""
    T, B, G = gates.shape
    H = out.shape[2]
    z = _min_update(gates, H, lstm)
    keep = 1 - z
    grad_h = dgates[..., G - H :]
    for t in reversed(range(T)):
        n = _live(batch_sizes, t, B)
        g = torch.add(dh[:n], grad_out[t, :n], out=grad_h[t, :n])
        torch.mul(g, keep[t, :n], out=dh[:n])
    k_h = gates[..., G - H :]
    cand = candidate_activation(k_h)
    slope = _candidate_slope(k_h, cand)
    dz = grad_h * (cand - _previous(h0, out)) * z * keep
    if lstm:  # z = i/(i + f): ∂z/∂k_i = z(1 − z)(1 − i), ∂z/∂k_f = −z(1 − z)(1 − f)
        torch.mul(dz, 1 - gates[..., :H], out=dgates[..., :H])
        torch.mul(dz, gates[..., H : 2 * H] - 1, out=dgates[..., H : 2 * H])
    else:
        dgates[..., :H] = dz
    grad_h.mul_(z * slope)


def _min_forward(
    x, states, w_ih, _w_hh, b_ih, _b_hh, _peep, _w_hr, batch_sizes, lengths, lstm, compiled
):
    """minGRU or minLSTM over a whole sequence, blocks z|h or i|f|h: (out, finals, the
    activations the backward reads besides out: the gates and k_h)."""
    T, B, _ = x.shape
    (h0,) = states
    gates = _project(x, w_ih, b_ih, compiled)  # (T, B, G·H): pre-activations, then the gates
    out = _buffer(x, (T, B, h0.shape[1]), batch_sizes is not None)
    forward_loop, _ = _loops("min", compiled)
    yield forward_loop(gates, out, h0, list(batch_sizes or ()), lstm)
    return out, (_last(out, lengths),), (gates,)


def _min_backward(grad_out, grad_finals, inputs, out, extra, batch_sizes, lstm, compiled, needs):
    """The gradients of (x, h0, W_ih, W_hh, b_ih, b_hh, peepholes, W_hr), None where not
    needed (there is no W_hh or b_hh)."""
    x, h0, w_ih, _, b_ih, _, _, _ = inputs
    (gates,) = extra
    dgates = _buffer(gates, gates.shape, batch_sizes is not None)
    dh = grad_finals[0].clone()
    _, backward_loop = _loops("min", compiled)
    yield backward_loop(grad_out, dh, gates, out, h0, dgates, list(batch_sizes or ()), lstm)
    dx, dw_ih, _ = _weight_grads(dgates, x, h0, out, (needs[0], needs[2], False), w_ih, compiled)
    db = _sum_bias(dgates, b_ih is not None and needs[4])
    return dx, dh if needs[1] else None, dw_ih, None, db, None, None, None


# kind → (forward, backward) over one direction; ``flag``: see _flag. Each is a generator: it
# prepares (the input projection, the buffers), yields its time loop as a job (:func:`_loops`),
# and once that ran finishes and returns its results (:func:`_drive`)
_DIRECTIONS = {
    "rnn": (_rnn_forward, _rnn_backward),
    "gru": (_gru_forward, _gru_backward),
    "lstm": (_lstm_forward, _lstm_backward),
    "mgu": (_mgu_forward, _mgu_backward),
    "mingru": (_min_forward, _min_backward),
    "minlstm": (_min_forward, _min_backward),
}


def _flag(spec) -> bool:
    """The one option a direction's loops take: relu for the RNN, reset after for the GRU, the
    coupled gate for the LSTM (its peepholes are a weight: present or None), which minimal cell
    for the minimal loops (the minLSTM's); none for the MGU."""
    if spec.kind == "rnn":
        return spec.nonlinearity == "relu"
    if spec.kind == "gru":
        return spec.reset == "after"
    if spec.kind in ("mingru", "minlstm"):
        return spec.kind == "minlstm"
    return spec.coupled if spec.kind == "lstm" else False


# bfloat16 and float16 layers run in float32 (the loops have no bfloat16 or float16 arithmetic):
# inputs, states and weights cast up once per call, outputs and final states rounded back, so the
# layer keeps its dtype, gradients included (the casts are differentiated)
_WIDENED = (torch.bfloat16, torch.float16)


def _float32_arithmetic():
    """A context that turns autocast off on the CPU for the loops, where it is on: under
    ``torch.autocast`` their products would run in bfloat16 and not fit their float32 buffers.
    Nothing where it is off (an exported program then holds no autocast region)."""
    if torch.is_autocast_enabled("cpu"):
        return torch.autocast("cpu", enabled=False)
    return contextlib.nullcontext()


def _drive(directions: list, together: bool) -> list:
    """Runs direction generators (:data:`_DIRECTIONS`) and returns their results. ``together``:
    each prepares, then their compiled loops run side by side, one thread each (the module's
    ``side_by_side``), then each finishes; else one after the other, each loop on all the
    threads ATen's parallel regions take. Only compiled loops run together
    (:func:`_side_by_side` says so for no others)."""
    if not together:
        return [_finish(direction) for direction in directions]
    compiled_loops().side_by_side([next(direction) for direction in directions])
    return [_result(direction) for direction in directions]


def _finish(direction):
    """Runs one direction generator to its end: its loop, on all threads; its results."""
    next(direction)()
    return _result(direction)


def _result(direction):
    """What a direction generator returns once its loop ran."""
    try:
        next(direction)
    except StopIteration as done:
        return done.value
    raise AssertionError("a direction yields its loop once")


def _side_by_side(x: Tensor, w_hh: Tensor | None, compiled: bool) -> bool:
    """Whether a bidirectional layer's two compiled loops run side by side, one thread each, for
    one direction's input and recurrent weight: where each alone would run on one thread
    (loops.cpp's threads_for gives a loop a thread per 64K multiply-adds of a step's product,
    and a second from 128K). There, side by side, the layer took 0.70–0.89 of its time one
    after the other, forward or with the backward (GRU and LSTM, H 64–128, B 1–8, 2 cores;
    ``benchmarks/bidirectional_speed.py``); where each loop already split its steps over two
    threads the two ways tied (0.97–1.04, the loops alone). Never for the minimal cells, whose
    loops split their units over every thread at any size. (Two halves of one direction's batch,
    side by side, ran slower: a small batch's step is bound by streaming W_hh, which each half
    would stream whole.)"""
    if not compiled or w_hh is None or torch.get_num_threads() < 2 or compiled_loops() is None:
        return False
    return x.shape[1] * w_hh.numel() < 1 << 17


def _forward_directions(spec, batch_sizes, lengths, compiled, together, inputs):
    """The forward of :class:`_Directions` (its arguments), without autograd: each direction's
    (out, the final states, the activations its backward reads), and the number of inputs a
    direction takes."""
    forward, _ = _DIRECTIONS[spec.kind]
    states = 2 if spec.kind == "lstm" else 1
    width, flag = 7 + states, _flag(spec)  # x, the states, W_ih, W_hh, b_ih, b_hh, peep, W_hr
    runs = [
        forward(inputs[k], inputs[k + 1 : k + 1 + states], *inputs[k + 1 + states : k + width],
                batch_sizes, lengths, flag, compiled)
        for k in range(0, len(inputs), width)
    ]  # fmt: skip
    return _drive(runs, together), width


class _Directions(torch.autograd.Function):
    """The directions of one layer in eager mode, one or a bidirectional layer's two: the loops
    forward, their hand-written backward (:func:`_twice` under ``create_graph=True``), the two
    directions' loops side by side where :func:`_side_by_side` says so, forward and backward.
    ``inputs``: for each direction in turn, x, the states, W_ih, W_hh, b_ih, b_hh, the peephole
    weights, W_hr (None for absent biases, peepholes and projection); returns each direction's
    out and final states, in turn."""

    @staticmethod
    def forward(ctx, spec, batch_sizes, lengths, compiled, together, *inputs):
        results, width = _forward_directions(spec, batch_sizes, lengths, compiled, together, inputs)
        states, starts = width - 7, range(0, len(inputs), width)
        needs, saved, ctx.activations = ctx.needs_input_grad, [], []
        for k, (out, _, extra) in zip(starts, results, strict=True):
            # x, for dW_ih and a rerun (_twice), only where it or W_ih needs a gradient: a
            # frozen W_ih and a plain input keep no input alive (the weights are the module's
            # own tensors, kept no longer than it keeps them)
            x = inputs[k] if needs[5 + k] or needs[6 + k + states] else None
            saved += (x, *inputs[k + 1 : k + width], out, *extra)
            ctx.activations.append(1 + len(extra))
        ctx.save_for_backward(*saved)
        ctx.spec, ctx.batch_sizes, ctx.lengths = spec, batch_sizes, lengths
        ctx.compiled, ctx.together, ctx.width = compiled, together, width
        return tuple(t for out, finals, _ in results for t in (out, *finals))

    @staticmethod
    def backward(ctx, *grads):
        spec, width = ctx.spec, ctx.width
        states = width - 7
        needs, saved = ctx.needs_input_grad[5:], ctx.saved_tensors
        rerun = backward_by_rerun(*grads)
        _, backward = _DIRECTIONS[spec.kind]
        flag, batch_sizes = _flag(spec), ctx.batch_sizes
        runs, start = [], 0
        for d, count in enumerate(ctx.activations):
            inputs = saved[start : start + width]
            out, *extra = saved[start + width : start + width + count]
            start += width + count
            wanted = needs[d * width : (d + 1) * width]
            grad_out, *finals = grads[d * (1 + states) : (d + 1) * (1 + states)]
            if rerun:  # each direction's reference loop, differentiably
                runs.append(_twice(spec, inputs, wanted, ctx.lengths, (grad_out, *finals)))
            else:  # each direction's backward generator, driven below
                args = (out, extra, batch_sizes, flag, ctx.compiled, wanted)
                runs.append(backward(grad_out.contiguous(), finals, inputs, *args))
        found = runs
        if not rerun:
            with _float32_arithmetic():
                found = _drive(runs, ctx.together)
        return None, None, None, None, None, *(g for grads_d in found for g in grads_d)


@constant_when_compiled
@functools.cache
def _onednn_bfloat16() -> bool:
    """Whether oneDNN computes bfloat16 natively on this CPU (AVX-512 BF16, AMX), as torch asks
    for its bfloat16 kernels."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@constant_when_compiled  # it may build them (files, a compiler): torch.compile asks once
def _have_compiled_loops() -> bool:
    """Whether the compiled loops are here (built or loaded on the first call)."""
    return compiled_loops() is not None


def _spec_of(kind: str, flag: bool, peepholes: bool) -> CellSpec:
    """The cell a direction operator computes, from its kind, :func:`_flag` and whether it has
    peephole weights (a projection is a weight of the layer, not part of the cell)."""
    if kind == "rnn":
        return make_spec("rnn", nonlinearity="relu" if flag else "tanh")
    if kind == "gru":
        return make_spec("gru", reset="after" if flag else "before")
    if kind == "lstm":
        return make_spec("lstm", coupled=flag, peepholes=peepholes)
    return make_spec(kind)


def _direction_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr) -> tuple[Tensor | None, ...]:
    """The operator's tensor arguments as the direction functions take them: (x, the states,
    W_ih, W_hh, b_ih, b_hh, the peepholes, W_hr), c0 only for the LSTM."""
    return (x, h0, *(() if c0 is None else (c0,)), w_ih, w_hh, b_ih, b_hh, peep, w_hr)


def _batch_sizes(lengths: Tensor | None, T: int) -> tuple[int, ...] | None:
    """The live rows at each step of a batch sorted by decreasing ``lengths``; None without."""
    if lengths is None:
        return None
    live = lengths.unsqueeze(0) > torch.arange(T).unsqueeze(1)  # (T, B)
    return tuple(live.sum(1).tolist())


# Under torch.compile and torch.export, and for fake and meta tensors, a direction is one custom
# operator, forward and backward (the loops are opaque to Dynamo: an extension, or Python writing
# in place), so a model holding our layers compiles into one graph (fullgraph) and Inductor fuses
# what is around them (under torch.compile a bidirectional layer's two directions are one,
# _bidirectional_op, below, which runs their loops side by side where eager calls would).
# Eager calls go through _Directions instead: a custom operator costs ~25 µs more per call,
# forward, and ~50 µs with its backward (measured on 2 cores), about what a small layer's whole
# step costs.
@torch.library.custom_op("gatedrnn::cpu_direction", mutates_args=())
def _direction_op(
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],  # noqa: UP045 (torch infers the schema: typing.Optional since 2.4)
    w_ih: Tensor,
    w_hh: Optional[Tensor],  # noqa: UP045 (None: the minimal cells)
    b_ih: Optional[Tensor],  # noqa: UP045
    b_hh: Optional[Tensor],  # noqa: UP045
    peep: Optional[Tensor],  # noqa: UP045
    w_hr: Optional[Tensor],  # noqa: UP045
    lengths: Optional[Tensor],  # noqa: UP045
    kind: str,
    flag: bool,
    compiled: bool,
) -> list[Tensor]:
    """One direction: [out, the final states, the activations its backward reads]."""
    states = (h0,) if c0 is None else (h0, c0)
    forward, _ = _DIRECTIONS[kind]
    batch_sizes = _batch_sizes(lengths, x.shape[0])
    out, finals, extra = _finish(
        forward(x, states, w_ih, w_hh, b_ih, b_hh, peep, w_hr, batch_sizes, lengths, flag, compiled)
    )
    return [out, *finals, *extra]


@_direction_op.register_fake
def _direction_shapes(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr, lengths, kind, flag, compiled):
    T, B, _ = x.shape
    P = h0.shape[1]  # h's features: H, or the projection's
    outputs = [x.new_empty(T, B, P), h0.new_empty(B, P)]
    if kind == "lstm":  # c_T, then the gates, the cells and with the projection o ⊙ tanh(c)
        H = c0.shape[1]
        outputs += [c0.new_empty(B, H), x.new_empty(T, B, w_ih.shape[0]), x.new_empty(T, B, H)]
        if w_hr is not None:
            outputs.append(x.new_empty(T, B, H))
    elif kind in ("gru", "mgu"):  # the gates and the recurrent candidate's term
        outputs += [x.new_empty(T, B, w_ih.shape[0]), x.new_empty(T, B, P)]
    elif kind in ("mingru", "minlstm"):  # the gates and the candidate's pre-activation
        outputs.append(x.new_empty(T, B, w_ih.shape[0]))
    return outputs


@torch.library.custom_op("gatedrnn::cpu_direction_backward", mutates_args=())
def _direction_backward_op(
    grads: list[Tensor],
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],  # noqa: UP045
    w_ih: Tensor,
    w_hh: Optional[Tensor],  # noqa: UP045
    b_ih: Optional[Tensor],  # noqa: UP045
    b_hh: Optional[Tensor],  # noqa: UP045
    peep: Optional[Tensor],  # noqa: UP045
    w_hr: Optional[Tensor],  # noqa: UP045
    out: Tensor,
    extra: list[Tensor],
    lengths: Optional[Tensor],  # noqa: UP045
    kind: str,
    flag: bool,
    compiled: bool,
    needs: list[bool],
) -> list[Tensor]:
    """The hand-written backward of :func:`_direction_op`: the gradients of (x, the states,
    W_ih, W_hh, b_ih, b_hh, the peepholes, W_hr), an empty tensor where ``needs`` says none is
    wanted."""
    inputs = _direction_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr)
    _, backward = _DIRECTIONS[kind]
    batch_sizes = _batch_sizes(lengths, x.shape[0])
    with _float32_arithmetic():
        grad_out, finals = grads[0].contiguous(), grads[1:]
        args = (out, extra, batch_sizes, flag, compiled, needs)
        found = _finish(backward(grad_out, finals, inputs, *args))
    result: list[Tensor] = []
    for grad, need in zip(found, needs, strict=True):
        if grad is None or not need:
            result.append(x.new_empty(0))
        else:  # outputs may not alias each other (the two bias gradients are one tensor)
            result.append(grad.clone() if any(grad is r for r in result) else grad)
    return result


@_direction_backward_op.register_fake
def _direction_backward_shapes(
    grads, x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr, out, extra, lengths, kind, flag,
    compiled, needs,
):  # fmt: skip
    inputs = _direction_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr)
    return [
        t.new_empty(t.shape) if need and t is not None else x.new_empty(0)
        for t, need in zip(inputs, needs, strict=True)
    ]


def _direction_setup(ctx, inputs, output) -> None:
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr, lengths, kind, flag, compiled = inputs
    ctx.states = 1 if c0 is None else 2
    out, extra = output[0], output[1 + ctx.states :]
    ctx.save_for_backward(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr, lengths, out, *extra)
    ctx.kind, ctx.flag, ctx.compiled = kind, flag, compiled


def _direction_grad(ctx, grads):
    x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr, lengths, out, *extra = ctx.saved_tensors
    n = ctx.states
    # the operator's tensor inputs, in order, and which of them the backward returns
    positions = [0, 1, *([2] if n == 2 else []), 3, 4, 5, 6, 7, 8]
    inputs = _direction_inputs(x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr)
    needs = [
        bool(ctx.needs_input_grad[i]) and inputs[k] is not None for k, i in enumerate(positions)
    ]
    wanted = (grads[0], *grads[1 : 1 + n])
    # create_graph=True: rerun the reference loop, differentiably. Not backward_by_rerun: while
    # AOTAutograd traces this, the gradients are not plain tensors (without_data would say
    # rerun), and the compiled graph must keep the backward operator
    if torch.is_grad_enabled():
        spec = _spec_of(ctx.kind, ctx.flag, peep is not None)
        found = differentiable_backward(spec, inputs, needs, lengths, wanted)
    else:
        results = _direction_backward_op(
            list(wanted), x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr, out, extra, lengths,
            ctx.kind, ctx.flag, ctx.compiled, needs,
        )  # fmt: skip
        found = [g if need else None for g, need in zip(results, needs, strict=True)]
    grad_inputs: list[Tensor | None] = [None] * 13
    for k, i in enumerate(positions):
        grad_inputs[i] = found[k]
    return tuple(grad_inputs)


_direction_op.register_autograd(_direction_grad, setup_context=_direction_setup)


# Under torch.compile a bidirectional layer's two directions are one operator, so that their
# loops run side by side where _side_by_side says so, as in eager mode (decided as it runs: the
# thread count is the run's, not the trace's). torch.export and torch.jit.trace keep one
# operator per direction (the programs they write name gatedrnn::cpu_direction).
@torch.library.custom_op("gatedrnn::cpu_bidirectional", mutates_args=())
def _bidirectional_op(
    x: Tensor,
    h0: Tensor,
    c0: Optional[Tensor],  # noqa: UP045
    w_ih: Tensor,
    w_hh: Optional[Tensor],  # noqa: UP045
    b_ih: Optional[Tensor],  # noqa: UP045
    b_hh: Optional[Tensor],  # noqa: UP045
    peep: Optional[Tensor],  # noqa: UP045
    w_hr: Optional[Tensor],  # noqa: UP045
    x_r: Tensor,
    h0_r: Tensor,
    c0_r: Optional[Tensor],  # noqa: UP045
    w_ih_r: Tensor,
    w_hh_r: Optional[Tensor],  # noqa: UP045
    b_ih_r: Optional[Tensor],  # noqa: UP045
    b_hh_r: Optional[Tensor],  # noqa: UP045
    peep_r: Optional[Tensor],  # noqa: UP045
    w_hr_r: Optional[Tensor],  # noqa: UP045
    lengths: Optional[Tensor],  # noqa: UP045
    kind: str,
    flag: bool,
    compiled: bool,
) -> list[Tensor]:
    """Both directions of a layer (the reverse one's arguments suffixed ``_r``, its input
    already reversed within each length): each direction's [out, the final states, the
    activations its backward reads], the forward direction's first."""
    forward, _ = _DIRECTIONS[kind]
    batch_sizes = _batch_sizes(lengths, x.shape[0])
    runs = [
        forward(a[0], a[1:2] if a[2] is None else a[1:3], *a[3:], batch_sizes, lengths, flag,
                compiled)
        for a in ((x, h0, c0, w_ih, w_hh, b_ih, b_hh, peep, w_hr),
                  (x_r, h0_r, c0_r, w_ih_r, w_hh_r, b_ih_r, b_hh_r, peep_r, w_hr_r))
    ]  # fmt: skip
    results = _drive(runs, _side_by_side(x, w_hh, compiled))
    return [t for out, finals, extra in results for t in (out, *finals, *extra)]


@_bidirectional_op.register_fake
def _bidirectional_shapes(*args):
    *tensors, lengths, kind, flag, compiled = args
    return [
        t
        for d in (tensors[:9], tensors[9:])
        for t in _direction_shapes(*d, lengths, kind, flag, compiled)
    ]


@torch.library.custom_op("gatedrnn::cpu_bidirectional_backward", mutates_args=())
def _bidirectional_backward_op(
    grads: list[Tensor],
    inputs: list[Optional[Tensor]],  # noqa: UP045 (both directions' 9 tensor arguments)
    outputs: list[Tensor],
    lengths: Optional[Tensor],  # noqa: UP045
    kind: str,
    flag: bool,
    compiled: bool,
    needs: list[bool],
) -> list[Tensor]:
    """The hand-written backward of :func:`_bidirectional_op`, both directions side by side
    where the forward's were: ``grads`` the gradients of each direction's output and final
    states in turn, ``outputs`` each direction's output and the activations its backward reads
    in turn, ``needs`` which of the 18 tensor arguments want a gradient; returns one for each
    (an empty tensor where none is wanted or there is none)."""
    _, backward = _DIRECTIONS[kind]
    x = inputs[0]
    batch_sizes = _batch_sizes(lengths, x.shape[0])
    keep = _kept(inputs[2])
    half, g = len(outputs) // 2, len(grads) // 2
    runs, wanted = [], []
    with _float32_arithmetic():
        for d in range(2):
            wanted.append([needs[9 * d + i] for i in keep])
            out, *extra = outputs[d * half : (d + 1) * half]
            grad_out, *finals = grads[d * g : (d + 1) * g]
            args = _direction_inputs(*inputs[9 * d : 9 * d + 9])
            runs.append(
                backward(grad_out.contiguous(), finals, args, out, extra, batch_sizes, flag,
                         compiled, wanted[d])
            )  # fmt: skip
        found = _drive(runs, _side_by_side(x, inputs[4], compiled))
    result: list[Tensor] = []
    for wanted_d, grads_d in zip(wanted, found, strict=True):
        mine = [x.new_empty(0) for _ in range(9)]
        # outputs may not alias each other (the two bias gradients are one tensor)
        for i, grad, need in zip(keep, grads_d, wanted_d, strict=True):
            if grad is not None and need:
                mine[i] = grad.clone() if any(grad is r for r in result + mine) else grad
        result += mine
    return result


def _kept(c0: Tensor | None) -> list[int]:
    """Which of a direction's 9 operator arguments (x, h0, c0, W_ih, W_hh, b_ih, b_hh, peep,
    W_hr) the direction functions take (:func:`_direction_inputs`): c0 only for the LSTM."""
    return [0, 1, *([] if c0 is None else [2]), 3, 4, 5, 6, 7, 8]


@_bidirectional_backward_op.register_fake
def _bidirectional_backward_shapes(grads, inputs, outputs, lengths, kind, flag, compiled, needs):
    return [
        t.new_empty(t.shape) if need and t is not None else grads[0].new_empty(0)
        for t, need in zip(inputs, needs, strict=True)
    ]


def _bidirectional_setup(ctx, inputs, output) -> None:
    *tensors, lengths, kind, flag, compiled = inputs
    states, half = 1 if tensors[2] is None else 2, len(output) // 2
    kept = [
        t
        for d in (0, 1)
        for t in (output[d * half], *output[d * half + 1 + states : (d + 1) * half])
    ]
    ctx.save_for_backward(*tensors, lengths, *kept)  # each direction's out and activations
    ctx.kind, ctx.flag, ctx.compiled, ctx.states = kind, flag, compiled, states


def _bidirectional_grad(ctx, grads):
    saved = ctx.saved_tensors
    tensors, lengths, outputs = saved[:18], saved[18], saved[19:]
    needs = [bool(ctx.needs_input_grad[i]) and t is not None for i, t in enumerate(tensors)]
    half, g = len(grads) // 2, 1 + ctx.states
    wanted = [grads[d * half + k] for d in range(2) for k in range(g)]  # out and final states
    if torch.is_grad_enabled():  # create_graph=True: each direction's reference loop, rerun
        found: list[Tensor | None] = []
        keep = _kept(tensors[2])
        for d in range(2):
            args = tensors[9 * d : 9 * d + 9]
            spec = _spec_of(ctx.kind, ctx.flag, args[7] is not None)
            got = differentiable_backward(
                spec, _direction_inputs(*args), [needs[9 * d + i] for i in keep], lengths,
                tuple(wanted[d * g : (d + 1) * g]),
            )  # fmt: skip
            mine: list[Tensor | None] = [None] * 9
            for i, grad in zip(keep, got, strict=True):
                mine[i] = grad
            found += mine
    else:
        results = _bidirectional_backward_op(
            wanted, list(tensors), list(outputs), lengths, ctx.kind, ctx.flag, ctx.compiled, needs
        )
        found = [r if need else None for r, need in zip(results, needs, strict=True)]
    return (*found, None, None, None, None)


_bidirectional_op.register_autograd(_bidirectional_grad, setup_context=_bidirectional_setup)


_PYTHON_LOOPS = {
    "rnn": (_rnn_forward_loop, _rnn_backward_loop),
    "gru": (_gru_forward_loop, _gru_backward_loop),
    "lstm": (_lstm_forward_loop, _lstm_backward_loop),
    "mgu": (_mgu_forward_loop, _mgu_backward_loop),
    "min": (_min_forward_loop, _min_backward_loop),
}

# Where the loops run as their operator, gatedrnn::cpu_direction, so that it is what gets
# recorded: a program torch.export saves, a trace torch.jit.save writes (the loops called
# directly would be a Python call in it, which cannot be saved, and which the TorchScript ONNX
# exporter replaced by the recorded ATen calls around it: a wrong model, before)
_AS_OPERATOR = ("torch.export", "torch.jit.trace")


class CpuBackend:
    """Fused loops with a hand-written backward for RNN, GRU, LSTM, MGU, minGRU and minLSTM and
    their variants on the CPU, compiled on first use where possible
    (:mod:`gatedrnn.backends.compiled`)."""

    name = "cpu"
    twice_differentiable = True  # by rerunning the reference loop (_twice)
    compiled = True

    def unsupported(self, config: LayerConfig, input: Tensor) -> str | None:
        spec = config.spec
        if input.device.type not in ("cpu", "meta"):  # meta: shapes, through its operator
            return f"it runs on the CPU only, got a {input.device.type} input"
        if input.dtype not in (torch.float32, torch.float64, *_WIDENED):
            return (
                "its loops compute in float32 or float64 (bfloat16 and float16 in float32), got "
                f"{input.dtype}"
            )
        if spec.kind not in _DIRECTIONS:
            return f"it has no loop for {spec.kind}"
        context = tracing()
        if context is None or context in _AS_OPERATOR:  # _AS_OPERATOR: recorded as its
            return None  # operator, gatedrnn::cpu_direction
        return untraceable(
            "compiled loops are an extension" if self.compiled else "loops write in place"
        )

    def auto_declines(self, config: LayerConfig, input: Tensor) -> str | None:
        context = tracing()
        if context in _AS_OPERATOR:
            verb = "exporting" if context == "torch.export" else "tracing (torch.jit.trace)"
            return (
                f"while {verb}, auto takes standard operators (cudnn, reference), which run "
                "without gatedrnn and export to ONNX; backend='cpu' is recorded as a gatedrnn "
                "operator"
            )
        # Measured with benchmarks/layer_speed.py on 2 cores (T=100, B 1–32, H 128–512); the
        # numbers are in the README. Compiled, our loops beat torch.nn everywhere but the LSTM
        # forward alone: at batch 16 and up oneDNN's fused LSTM tied with them on an AMD EPYC,
        # and on an Intel Xeon (Sapphire Rapids) tied at 16 and won by 13–16% at 32 (below 16:
        # the compiled branch further down). The PyTorch twins lose to oneDNN's LSTM, and to
        # torch's kernels forward-only.
        # The variants torch has no kernel for (the GRU with the reset before, the LSTM's
        # peepholes and coupled gate, the MGU) are ours or the reference loop's, and ours won
        # everywhere (benchmarks/variant_speed.py, H 128–256, B 1–32): the compiled loops
        # 1.4–20× faster than the reference, the PyTorch twins 1.15–2× forward-only and
        # 1.3–3.4× with the backward. For the minimal cells the other choice is the reference's
        # parallel scan, a few whole-sequence operations (T=100 and 500, H 32–512, B 1–32): the
        # compiled loop took 0.11–0.47 of its time; the PyTorch loop, a few operations a step,
        # 0.28–0.62 from batch × hidden 512, level with it around 256, and up to 3.7× its time
        # below (batch 1, H 32).
        spec = config.spec
        compiled = self.compiled and _have_compiled_loops()
        if spec.torch_lacks is not None:
            if not spec.recurrent and not compiled and input.shape[1] * config.hidden_size < 256:
                return (
                    "below batch × hidden 256 the reference's parallel scan beats our PyTorch "
                    "loop for the minimal cells (no compiled loops here)"
                )
            return None
        # A sequence of one step (a decoder fed step by step), or of two forward-only at a small
        # batch, is too short for our setup (the input projection and the loop's buffers, calls
        # of their own) to pay: torch's GRU and RNN took 0.36–1.04 of our compiled loops' time at
        # T = 1 forward-only (H 16–512, B 1–32), 0.61–0.95 with the backward, and 0.53–0.92 at
        # T = 2 forward-only up to batch 8 (0.83–1.23 at batch 32); from there ours led, the GRU
        # from T = 2 with the backward (0.72–1.09 of torch's time), the RNN a little later
        # (1.09–1.30 at T = 2, B ≤ 8 with the backward, left to ours). torch's LSTM (oneDNN) did
        # not lead at T = 1 (ours 0.91–1.06 forward, 0.46–0.98 with the backward).
        # The RNN's step is one small product, so its call's fixed cost is most of it longer:
        # measured again (benchmarks/call_overhead.py --cells rnn --backend cpu, after the
        # calls' own costs were trimmed) ours took 1.27–1.41 of torch's time at T = 2, B ≤ 8
        # with the backward (0.88 at H = 512, B = 8) and 1.07–1.59 at B = 1 forward-only to T = 4
        # (from T = 6, and at B = 8 from T = 3, level or ahead).
        steps, batch = input.shape[0], input.shape[1]
        grad = torch.is_grad_enabled()
        short = steps == 1 or (steps == 2 and batch <= 8 and not grad)
        if spec.kind == "rnn":
            short = short or (steps == 2 and batch <= 8) or (steps <= 4 and batch == 1 and not grad)
        if spec.kind in ("gru", "rnn") and short:
            return (
                f"for a sequence of {steps} step{'s' if steps > 1 else ''}, torch's "
                f"{spec.kind.upper()} kernels beat our loops' setup"
            )
        # With a projection torch runs no fused LSTM (oneDNN has none) but its generic loop,
        # which the compiled loops beat (fwd+bwd 0.13–0.82 of its time, forward-only 0.27–0.89
        # but for 1.09 at H 512, B 32) and the PyTorch ones with the backward (0.67–0.94).
        lstm = spec.kind == "lstm" and not config.proj_size  # oneDNN's fused LSTM
        # In bfloat16 (CPU autocast) our loops compute in float32; torch's kernels in bfloat16,
        # slowly but for oneDNN's LSTM where the CPU has bfloat16 instructions. Measured on an
        # AVX-512 EPYC with them (T=100, H 128/256, B 1–32, compiled; gatedrnn bench --dtype
        # bfloat16): ours took 0.08–0.94 of torch's time for the GRU and 0.13–0.96 for the RNN,
        # but 1.43–1.99 of its LSTM's forward-only and 0.92–1.62 with the backward, except
        # 0.53–0.82 at batch 1; in float16 0.04–0.31 of torch's time for both (it has no fast
        # float16 kernels here).
        training_one = torch.is_grad_enabled() and batch == 1
        if lstm and input.dtype == torch.bfloat16 and _onednn_bfloat16() and not training_one:
            return (
                "in bfloat16 torch's fused LSTM (oneDNN, bfloat16 arithmetic) beats our loops, "
                "which compute in float32"
            )
        if compiled:
            # Forward-only, oneDNN's LSTM caught up earlier on an AVX-512 EPYC with bfloat16
            # instructions (gatedrnn bench --cells lstm --hidden 128,256,512 --batch 2,4,8,16):
            # ours took 0.81–0.98 of its time at batch 2, 0.91–1.08 at batch 4, 0.97 at batch 8
            # with H = 128 but 1.05–1.06 at H ≥ 256, 0.99–1.01 at batch 16; on the Xeon batch 4
            # was ours everywhere (0.57–0.95), batch 8 mixed (0.81–1.13). So oneDNN from batch 8
            # at H ≥ 256, and from batch 16 at any H.
            wide = batch >= 16 or (batch >= 8 and config.hidden_size >= 256)
            if lstm and not torch.is_grad_enabled() and wide:
                return (
                    "forward-only from batch 16, and from batch 8 at hidden size 256 and up, "
                    "torch's fused LSTM (oneDNN) is as fast or faster"
                )
            return None
        if lstm:
            return "torch's fused LSTM (oneDNN) beats our PyTorch loops (no compiled loops here)"
        if not torch.is_grad_enabled():
            return "without autograd, torch's kernels beat our PyTorch loops forward-only"
        return None

    def forward(
        self,
        config: LayerConfig,
        input: Tensor,
        lengths: Tensor | None,
        hx: tuple[Tensor, ...],
        weights: Sequence[Mapping[str, Tensor]],
        training: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        low = input.dtype if input.dtype in _WIDENED else None
        if low is not None:  # computed in float32, the results rounded to the layer's dtype
            input, hx = input.float(), tuple(s.float() for s in hx)
            weights = [{name: w.float() for name, w in layer.items()} for layer in weights]
        with _float32_arithmetic():
            output, finals = self._forward(config, input, lengths, hx, weights, training)
        if low is not None:
            output, finals = output.to(low), tuple(s.to(low) for s in finals)
        return output, finals

    def _forward(self, config, input, lengths, hx, weights, training):
        T = input.shape[0]
        batch_sizes, order = None, None
        # Through the custom operator while Dynamo traces, torch.export exports or
        # torch.jit.trace records, and for tensor subclasses (fake tensors: shape inference,
        # memory estimates) and meta tensors, which torch's dispatch handles and an extension
        # cannot; plain tensors skip the dispatch (~25 µs a call)
        dispatched = (
            torch.compiler.is_compiling() or tracing() in _AS_OPERATOR or without_data(input)
        )
        if lengths is not None:  # sort by length: at step t the live rows are a prefix
            lengths, order = torch.sort(lengths, descending=True, stable=True)
            if not dispatched:  # (the operator finds them)
                batch_sizes = _batch_sizes(lengths, T)
            input = input.index_select(1, order)
            hx = tuple(s.index_select(1, order) for s in hx)

        def direction(x, state, w):
            out, *final = self._dispatch(config, x, state, w, lengths)
            return out, tuple(final)

        def directions(runs):
            return self._run(config, runs, batch_sizes, lengths)

        def operators(runs):  # under torch.compile both directions as one operator
            if len(runs) == 1 or not torch.compiler.is_compiling():
                return [direction(*run) for run in runs]
            return self._dispatch_both(config, runs, lengths)

        output, finals = run_stack(
            config, input, lengths, hx, weights, training, direction,
            directions=operators if dispatched else directions, fresh_finals=True,
        )  # fmt: skip
        if order is not None:
            restore = torch.argsort(order)
            output = output.index_select(1, restore)
            finals = tuple(s.index_select(1, restore) for s in finals)
        return output, finals

    def _run(self, config, runs, batch_sizes, lengths):
        """A layer's directions, ``runs`` [(x, state, weights)], as one :class:`_Directions`:
        [(out, the final states)] for each."""
        inputs: list[Tensor | None] = []
        for x, state, w in runs:
            x, state, args = fused_arguments(x, state, w)
            inputs += [x, *state, *args, w.get("weight_peep"), w.get("weight_hr")]
        together = len(runs) == 2 and _side_by_side(
            inputs[0], runs[0][2].get("weight_hh"), self.compiled
        )
        arguments = (config.spec, batch_sizes, lengths, self.compiled, together)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
            results = _Directions.apply(*arguments, *inputs)
        else:  # nothing to differentiate: the Function's bookkeeping (~20 µs a call) skipped
            found, _ = _forward_directions(*arguments, inputs)
            results = tuple(t for out, finals, _ in found for t in (out, *finals))
        n = len(results) // len(runs)
        return [(results[k], results[k + 1 : k + n]) for k in range(0, len(results), n)]

    def _dispatch_both(self, config, runs, lengths):
        """A layer's two directions as the custom operator :func:`_bidirectional_op`: [(out,
        the final states)] for each."""
        args: list[Tensor | None] = []
        for x, state, w in runs:
            x, state, weights = fused_arguments(x, state, w)
            c0 = state[1] if len(state) == 2 else None
            args += [x, state[0], c0, *weights, w.get("weight_peep"), w.get("weight_hr")]
        spec = config.spec
        results = _bidirectional_op(*args, lengths, spec.kind, _flag(spec), self.compiled)
        half, n = len(results) // 2, 1 + spec.num_states
        return [(results[d * half], tuple(results[d * half + 1 : d * half + n])) for d in (0, 1)]

    def _dispatch(self, config, x, state, w, lengths):
        """One direction as the custom operator :func:`_direction_op`: [out, the final states]."""
        x, state, args = fused_arguments(x, state, w)
        spec, c0 = config.spec, state[1] if len(state) == 2 else None
        results = _direction_op(
            x, state[0], c0, *args, w.get("weight_peep"), w.get("weight_hr"), lengths, spec.kind,
            _flag(spec), self.compiled,
        )  # fmt: skip
        return results[: 1 + len(state)]


class CpuPythonBackend(CpuBackend):
    """The ``cpu`` backend with its PyTorch loops only: the fallback, registered so it is tested
    and can be timed on its own."""

    name = "cpu-python"
    compiled = False
