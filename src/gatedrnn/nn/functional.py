"""Pure cell math: one time step of each recurrent cell, and the parallel scan of the minimal cells.

These functions are the definitions. The ``reference`` backend loops over them, the ``*Cell``
modules call them, and every faster backend is tested against them.

Shapes: ``x`` (B, H_in); ``h`` (B, H_out); ``c`` (B, H). Weights use torch.nn's layout: the gate
blocks of ``weight_ih`` (G·H, H_in) and ``weight_hh`` (G·H, H_out) are stacked in the order given
in :mod:`gatedrnn.nn.spec`; σ is the logistic sigmoid and ⊙ the elementwise product.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.nn.spec import CellSpec

__all__ = [
    "cell_step",
    "g",
    "gru_cell",
    "log_g",
    "logcumsumexp",
    "lstm_cell",
    "mgu_cell",
    "min_scan",
    "mingru_cell",
    "minlstm_cell",
    "rnn_cell",
    "scan_log",
]


def rnn_cell(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    nonlinearity: str = "tanh",
) -> Tensor:
    """Elman RNN step: h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu."""
    pre = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_cell(
    x: Tensor,
    state: tuple[Tensor, Tensor],
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    weight_hr: Tensor | None = None,
    weight_peep: Tensor | None = None,
    coupled: bool = False,
) -> tuple[Tensor, Tensor]:
    """LSTM step (torch.nn.LSTM's equations, gate order i|f|g|o), with the optional variants.

    .. math::
        i = σ(W_i x + U_i h + p_i ⊙ c + b_i)          f = σ(W_f x + U_f h + p_f ⊙ c + b_f)
        g = tanh(W_g x + U_g h + b_g)                   c' = f ⊙ c + i ⊙ g
        o = σ(W_o x + U_o h + p_o ⊙ c' + b_o)         h' = W_hr (o ⊙ tanh(c'))

    Peepholes (``weight_peep`` = p_i|p_f|p_o, Graves 2013 eqs. 7–11) look at the previous cell
    for i and f and at the new cell for o. ``coupled`` (CIFG, Greff et al. 2017) drops the forget
    gate's weights and sets f = 1 − i, so the blocks are i|g|o and the peepholes p_i|p_o.
    ``weight_hr`` (P, H) projects h' to P features (Sak et al. 2014; torch's ``proj_size``).
    """
    h, c = state
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)
    if coupled:
        i, g, o = gates.chunk(3, 1)
        p_i, p_o = weight_peep.chunk(2) if weight_peep is not None else (None, None)
    else:
        i, f, g, o = gates.chunk(4, 1)
        p_i, p_f, p_o = weight_peep.chunk(3) if weight_peep is not None else (None,) * 3
    if weight_peep is not None:
        i = i + p_i * c
        if not coupled:
            f = f + p_f * c
    i = torch.sigmoid(i)
    f = 1 - i if coupled else torch.sigmoid(f)
    c_next = f * c + i * torch.tanh(g)
    if weight_peep is not None:
        o = o + p_o * c_next
    h_next = torch.sigmoid(o) * torch.tanh(c_next)
    if weight_hr is not None:
        h_next = F.linear(h_next, weight_hr)
    return h_next, c_next


def gru_cell(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
    reset: str = "after",
) -> Tensor:
    """GRU step, gate order r|z|n.

    .. math::
        r = σ(W_r x + b_ir + U_r h + b_hr)      z = σ(W_z x + b_iz + U_z h + b_hz)
        n = tanh(W_n x + b_in + r ⊙ (U_n h + b_hn))        reset = "after"
        n = tanh(W_n x + b_in + U_n (r ⊙ h) + b_hn)        reset = "before"
        h' = (1 − z) ⊙ n + z ⊙ h

    ``after`` is the form of cuDNN, torch.nn.GRU and Keras (``reset_after=True``); ``before`` is
    Cho et al. 2014 eq. 8 as used by Chung et al. 2014.
    """
    i_r, i_z, i_n = F.linear(x, weight_ih, bias_ih).chunk(3, 1)
    if reset == "after":
        h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + r * h_n)
    else:
        H = h.shape[-1]
        w_rz, w_n = weight_hh.split([2 * H, H])
        b_rz, b_n = bias_hh.split([2 * H, H]) if bias_hh is not None else (None, None)
        h_r, h_z = F.linear(h, w_rz, b_rz).chunk(2, 1)
        r = torch.sigmoid(i_r + h_r)
        z = torch.sigmoid(i_z + h_z)
        n = torch.tanh(i_n + F.linear(r * h, w_n, b_n))
    return (1 - z) * n + z * h


def mgu_cell(
    x: Tensor,
    h: Tensor,
    weight_ih: Tensor,
    weight_hh: Tensor,
    bias_ih: Tensor | None = None,
    bias_hh: Tensor | None = None,
) -> Tensor:
    """Minimal gated unit step (Zhou et al. 2016, eq. 2), gate order f|n.

    .. math::
        f = σ(W_f x + b_if + U_f h + b_hf)
        n = tanh(W_n x + b_in + U_n (f ⊙ h) + b_hn)
        h' = (1 − f) ⊙ h + f ⊙ n

    The single forget gate plays both GRU roles: reset (inside n) and update.
    """
    H = h.shape[-1]
    i_f, i_n = F.linear(x, weight_ih, bias_ih).chunk(2, 1)
    w_f, w_n = weight_hh.split([H, H])
    b_f, b_n = bias_hh.split([H, H]) if bias_hh is not None else (None, None)
    f = torch.sigmoid(i_f + F.linear(h, w_f, b_f))
    n = torch.tanh(i_n + F.linear(f * h, w_n, b_n))
    return (1 - f) * h + f * n


def g(x: Tensor) -> Tensor:
    """The positive activation of Feng et al. 2024 §3.1: x + ½ if x ≥ 0, else σ(x).

    Keeping h̃ > 0 is what lets the scan run in log space.
    """
    return torch.where(x >= 0, x + 0.5, torch.sigmoid(x))


def log_g(x: Tensor) -> Tensor:
    """log g(x), computed without taking the log of a small number."""
    # relu keeps the unused branch of the where finite, so its gradient stays finite too.
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


def mingru_cell(x: Tensor, h: Tensor, weight_ih: Tensor, bias_ih: Tensor | None = None) -> Tensor:
    """minGRU step (Feng et al. 2024, §3.1), blocks z|h. No gate reads h.

    .. math::
        z = σ(W_z x + b_z)      h̃ = g(W_h x + b_h)      h' = (1 − z) ⊙ h + z ⊙ h̃
    """
    k_z, k_h = F.linear(x, weight_ih, bias_ih).chunk(2, 1)
    z = torch.sigmoid(k_z)
    return (1 - z) * h + z * g(k_h)


def minlstm_cell(x: Tensor, h: Tensor, weight_ih: Tensor, bias_ih: Tensor | None = None) -> Tensor:
    """minLSTM step (Feng et al. 2024, §3.2, length-independent scaling), blocks i|f|h.

    .. math::
        i = σ(W_i x + b_i)     f = σ(W_f x + b_f)      h̃ = g(W_h x + b_h)
        h' = f/(f + i) ⊙ h + i/(f + i) ⊙ h̃
    """
    k_i, k_f, k_h = F.linear(x, weight_ih, bias_ih).chunk(3, 1)
    i, f = torch.sigmoid(k_i), torch.sigmoid(k_f)
    return f / (f + i) * h + i / (f + i) * g(k_h)


class _LogCumSumExp(torch.autograd.Function):
    """``torch.logcumsumexp`` over dim 0 with a backward and a forward derivative written in
    differentiable ops (:class:`_ExpCumSum`).

    torch 2.13's own second derivative of logcumsumexp disagrees with finite differences when
    composed as in :func:`scan_log` (found by gradgradcheck); this backward, the formula torch and
    TensorFlow use, is differentiated by autograd instead. Written with ``setup_context`` and
    PyTorch operations only, so ``torch.func`` transforms (``vmap``, ``grad``, ``jvp`` …) and
    forward-mode AD run through it.
    """

    generate_vmap_rule = True  # forward, backward and jvp are PyTorch operations

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.logcumsumexp(x, dim=0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (x,) = inputs
        ctx.save_for_backward(x, output)
        ctx.save_for_forward(x, output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, y = ctx.saved_tensors
        # ∂y_t/∂x_s = exp(x_s − y_t) for s ≤ t: x̄_s = exp(x_s) Σ_{t≥s} ȳ_t·exp(−y_t)
        return _ExpCumSum.apply(grad, -y, x, True)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        x, y = ctx.saved_tensors
        # ẏ_t = exp(−y_t) Σ_{s≤t} ẋ_s·exp(x_s)
        return _ExpCumSum.apply(tangent, x, -y, False)


class _ExpCumSum(torch.autograd.Function):
    """r = exp(outer) ⊙ Σ v ⊙ exp(inner), the sum cumulated over dim 0 (from the end when
    ``reverse``), computed in log space so that neither exponential overflows: the derivatives
    of :class:`_LogCumSumExp`. Linear in v, and its own derivatives are the same sum (the
    other way), so it is differentiable any number of times, in v too (as the log of v alone,
    where v is 0, would not be: the double-backward trick of ``torch.autograd.functional.jvp``
    differentiates a backward at an upstream gradient of zeros)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v: Tensor, inner: Tensor, outer: Tensor, reverse: bool) -> Tensor:
        def scan(a: Tensor) -> Tensor:
            return torch.logcumsumexp(a.flip(0), 0).flip(0) if reverse else torch.logcumsumexp(a, 0)

        # log v is needed: the positive and negative parts are summed apart
        lowest = torch.finfo(v.dtype).min  # log of 0 that stays finite, so no inf − inf
        log_abs = torch.log(torch.where(v != 0, v.abs(), torch.ones_like(v)))
        pos = torch.exp(scan(torch.where(v > 0, log_abs, lowest) + inner) + outer)
        neg = torch.exp(scan(torch.where(v < 0, log_abs, lowest) + inner) + outer)
        return pos - neg

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        v, inner, outer, reverse = inputs
        ctx.reverse = reverse
        ctx.save_for_backward(v, inner, outer, output)
        ctx.save_for_forward(v, inner, outer, output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        v, inner, outer, r = ctx.saved_tensors
        # ∂r_t/∂v_s = exp(outer_t + inner_s) for s before t (or after, reversed): the adjoint is
        # the same sum the other way, with inner and outer exchanged
        adjoint = _ExpCumSum.apply(grad, outer, inner, not ctx.reverse)
        return adjoint, v * adjoint, grad * r, None

    @staticmethod
    def jvp(ctx, v_dot, inner_dot, outer_dot, _):
        v, inner, outer, r = ctx.saved_tensors
        along = v_dot if v_dot is not None else torch.zeros_like(v)
        if inner_dot is not None:
            along = along + v * inner_dot
        result = _ExpCumSum.apply(along, inner, outer, ctx.reverse)
        return result if outer_dot is None else result + outer_dot * r


def logcumsumexp(x: Tensor) -> Tensor:
    """log Σ_{s≤t} exp(x_s) along dim 0, differentiable any number of times, in either mode.
    Under ``torch.jit.trace`` torch's own, since a trace that calls a Python Function cannot be
    saved: its first derivative is right, its second not (see :class:`_LogCumSumExp`)."""
    if torch.jit.is_tracing():
        return torch.logcumsumexp(x, dim=0)
    return _LogCumSumExp.apply(x)


def scan_log(log_a: Tensor, log_b: Tensor, h0: Tensor) -> Tensor:
    """All states of h_t = a_t ⊙ h_{t−1} + b_t for a_t, b_t > 0, from log a and log b (T, B, H).

    Heinsen 2023, as used by Feng et al. 2024 (Appendix B): with a*_t = Σ_{s≤t} log a_s,
    h_t = exp(a*_t) ⊙ h_0 + exp(a*_t + logcumsumexp_{s≤t}(log b_s − a*_s)). The h_0 term is kept
    apart from the log-space sum, so h_0 may have any sign. Returns (T, B, H).
    """
    a_star = torch.cumsum(log_a, dim=0)  # (T, B, H)
    return torch.exp(a_star) * h0 + torch.exp(a_star + logcumsumexp(log_b - a_star))


def min_scan(
    spec: CellSpec, x: Tensor, h0: Tensor, weight_ih: Tensor, bias_ih: Tensor | None
) -> Tensor:
    """Every hidden state of a minGRU or minLSTM over a whole sequence in one parallel scan.

    ``x`` (T, B, H_in), ``h0`` (B, H); returns (T, B, H). Equal to looping :func:`mingru_cell` or
    :func:`minlstm_cell` over time (tested), in O(log T) depth instead of T steps.
    """
    k = F.linear(x, weight_ih, bias_ih)  # (T, B, G·H)
    if spec.kind == "mingru":
        k_z, k_h = k.chunk(2, -1)
        log_a = -F.softplus(k_z)  # log(1 − z)
        log_b = -F.softplus(-k_z) + log_g(k_h)  # log(z ⊙ h̃)
    else:
        k_i, k_f, k_h = k.chunk(3, -1)
        # log f/(f+i) = −softplus(log i − log f), and log σ(k) = −softplus(−k)
        diff = F.softplus(-k_f) - F.softplus(-k_i)  # log i − log f
        log_a = -F.softplus(diff)
        log_b = -F.softplus(-diff) + log_g(k_h)
    return scan_log(log_a, log_b, h0)


def cell_step(
    spec: CellSpec, x: Tensor, state: tuple[Tensor, ...], weights: Mapping[str, Tensor]
) -> tuple[Tensor, ...]:
    """One step of the cell that ``spec`` describes; ``weights`` maps base names (``weight_ih``,
    ``bias_hh`` …) to one layer direction's tensors. Returns the new state tuple, h first."""
    w = weights
    if spec.kind == "lstm":
        return lstm_cell(
            x, (state[0], state[1]), w["weight_ih"], w["weight_hh"], w.get("bias_ih"),
            w.get("bias_hh"), w.get("weight_hr"), w.get("weight_peep"), spec.coupled,
        )  # fmt: skip
    h = state[0]
    if spec.kind == "rnn":
        args = (w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"))
        return (rnn_cell(x, h, *args, nonlinearity=spec.nonlinearity),)
    if spec.kind == "gru":
        args = (w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"))
        return (gru_cell(x, h, *args, reset=spec.reset),)
    if spec.kind == "mgu":
        return (mgu_cell(x, h, w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh")),)
    step = mingru_cell if spec.kind == "mingru" else minlstm_cell
    return (step(x, h, w["weight_ih"], w.get("bias_ih")),)
