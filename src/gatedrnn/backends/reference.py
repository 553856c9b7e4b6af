"""The reference backend: a readable Python time loop over the pure cell functions.

It is the documentation of what a layer computes and the oracle for every other backend. It runs
any cell, variant, dtype and device that PyTorch itself does; speed is not its job.

Variable lengths: the reverse direction reads each sequence backwards from its own last step
(padding stays at the end), and the state stops changing once a sequence has ended, so padding
never reaches an output or a final state.

Traced: while ``torch.export`` exports, the time loop runs as torch's ``scan`` operator, so the
program runs any length; ``torch.jit.trace`` records the Python loop step by step, for the traced
length only, and says so.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from gatedrnn.backends import LayerConfig, tracing
from gatedrnn.nn.functional import cell_step, min_scan
from gatedrnn.nn.spec import CellSpec

__all__ = [
    "ReferenceBackend",
    "differentiable_backward",
    "project_inputs",
    "reverse_padded",
    "run_direction",
    "run_stack",
]


def project_inputs(x: Tensor, w_ih: Tensor, bias: Tensor | None) -> Tensor:
    """x W_ihᵀ + bias for all steps at once, one GEMM: (T, B, I) → (T, B, G). The first stage of
    the fused backends, which then loop over time on the recurrent part alone."""
    T, B, I = x.shape
    flat = x.reshape(T * B, I)
    out = torch.mm(flat, w_ih.t()) if bias is None else torch.addmm(bias, flat, w_ih.t())
    return out.view(T, B, -1)


def fused_arguments(
    x: Tensor, state: tuple[Tensor, ...], w: Mapping[str, Tensor]
) -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor | None, ...]]:
    """One direction's inputs as the fused backends' autograd Functions take them: contiguous x
    and states, and (W_ih, W_hh, b_ih, b_hh) with None for absent biases (and W_hh: the
    minimal cells have none)."""
    weights = (w["weight_ih"], w.get("weight_hh"), w.get("bias_ih"), w.get("bias_hh"))
    return x.contiguous(), tuple(s.contiguous() for s in state), weights


def differentiable_backward(
    spec: CellSpec,
    inputs: tuple[Tensor | None, ...],
    needs: Sequence[bool],
    lengths: Tensor | None,
    grads: tuple[Tensor, ...],
) -> tuple[Tensor | None, ...]:
    """A fused backend's backward with ``create_graph=True`` (grad mode on in backward): the
    gradients of one direction's outputs, as a differentiable function of its ``inputs`` (x,
    the states, W_ih, W_hh, b_ih, b_hh and optionally the peepholes and W_hr; None where absent)
    and of ``grads`` (the outputs' and final states' gradients), by rerunning
    :func:`run_direction` on the inputs and differentiating it; hand-written backwards give
    first derivatives only. Costs a reference forward more. ``needs``: the Function's
    ``needs_input_grad`` (its inputs first); returns one gradient or None per entry."""
    x, states, given = inputs[0], inputs[1 : 1 + spec.num_states], inputs[1 + spec.num_states :]
    names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_peep", "weight_hr")
    names = names[: len(given)]
    weights = {k: w for k, w in zip(names, given, strict=True) if w is not None}
    with torch.enable_grad():
        out, final = run_direction(spec, x, lengths, tuple(states), weights)
    wanted = [i for i, t in enumerate(inputs) if t is not None and needs[i]]
    found = torch.autograd.grad(
        (out, *final), [inputs[i] for i in wanted], grads, create_graph=True, allow_unused=True
    )
    result: list[Tensor | None] = [None] * len(needs)
    for i, g in zip(wanted, found, strict=True):
        result[i] = g
    return tuple(result)


def reverse_padded(x: Tensor, lengths: Tensor | None) -> Tensor:
    """Reverse each sequence of ``x`` (T, B, ...) within its own length; padding stays in place."""
    if lengths is None:
        return x.flip(0)
    T, B = x.shape[:2]
    t = torch.arange(T).unsqueeze(1)  # (T, 1)
    last = lengths.unsqueeze(0) - 1  # (1, B)
    index = torch.where(t <= last, last - t, t).to(x.device)  # (T, B)
    index = index.view(T, B, *([1] * (x.dim() - 2))).expand_as(x)
    return x.gather(0, index)


def run_direction(
    spec: CellSpec,
    x: Tensor,
    lengths: Tensor | None,
    state: tuple[Tensor, ...],
    weights: Mapping[str, Tensor],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """One direction of one layer over time-major ``x`` (T, B, F), each sequence ``lengths[b]``
    steps long from the start (None: all T). Returns every h (T, B, H_out), zero at padded steps,
    and the final state, taken at each sequence's last step. The fused backends rerun it for
    double backward: it is differentiable any number of times."""
    valid = None
    if lengths is not None:
        valid = torch.arange(x.shape[0]).unsqueeze(1) < lengths.cpu().unsqueeze(0)  # (T, B)
        valid = valid.unsqueeze(-1).to(x.device)  # (T, B, 1)
    if not spec.recurrent and spec.scan == "parallel":
        outputs = min_scan(spec, x, state[0], weights["weight_ih"], weights.get("bias_ih"))
        if valid is None:
            return outputs, (outputs[-1],)
        last = valid.sum(0, keepdim=True) - 1  # (1, B, 1): index of each sequence's last step
        final = outputs.gather(0, last.expand(1, *outputs.shape[1:])).squeeze(0)
        return outputs * valid, (final,)
    if tracing() == "torch.export":
        return _scanned(spec, x, valid, state, weights)
    outputs = []
    steps = x.unbind(0)  # traced (torch.jit.trace), a list of T: other lengths fail to unpack
    live = valid.unbind(0) if valid is not None else (None,) * len(steps)
    for x_t, live_t in zip(steps, live, strict=True):
        new_state = cell_step(spec, x_t, state, weights)
        if live_t is not None:  # a finished sequence keeps its final state
            new_state = tuple(
                torch.where(live_t, n, s) for n, s in zip(new_state, state, strict=True)
            )
        state = new_state
        outputs.append(state[0])
    out = torch.stack(outputs)
    return (out if valid is None else out * valid), state


def _scanned(
    spec: CellSpec,
    x: Tensor,
    valid: Tensor | None,
    state: tuple[Tensor, ...],
    weights: Mapping[str, Tensor],
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """:func:`run_direction`'s time loop as torch's ``scan`` operator, for torch.export: one step
    in the exported program, run for whatever length comes (the Python loop would be unrolled
    to the exported length, fixing it), which torch.onnx writes as ONNX's ``Scan``."""
    from torch._higher_order_ops.scan import scan

    def step(carry: list[Tensor], inputs: list[Tensor]) -> tuple[list[Tensor], Tensor]:
        old = tuple(carry)
        new = cell_step(spec, inputs[0], old, weights)
        if len(inputs) == 2:  # a finished sequence keeps its final state
            new = tuple(torch.where(inputs[1], n, s) for n, s in zip(new, old, strict=True))
        return list(new), new[0].clone()  # (scan's outputs may not alias its carry)

    # scan compiles its inner run_flattened_scan with Dynamo, whose cache is kept by code
    # object: the guards of an earlier trace (an earlier export of the layer, with other sizes
    # free) would be checked against these tensors and fix their sizes in this export, so that
    # code's cache is dropped first. Fresh tensors, not views into hx and the input, leave no
    # storage offsets to guard on (the second direction's scan fixed the batch size so). Under
    # strict export Dynamo traces this code, and scan then traces the step itself.
    if not torch.compiler.is_dynamo_compiling():
        import torch._dynamo as dynamo

        for code in getattr(getattr(scan, "__code__", None), "co_consts", ()):
            if getattr(code, "co_name", None) == "run_flattened_scan":
                dynamo.reset_code(code)
    init = [s.clone() for s in state]
    xs = [x.clone()] if valid is None else [x.clone(), valid]
    final, outputs = scan(step, init, xs)
    return (outputs if valid is None else outputs * valid), tuple(final)


Run = tuple[Tensor, tuple[Tensor, ...], Mapping[str, Tensor]]  # x, the state, the weights
Direction = Callable[
    [Tensor, tuple[Tensor, ...], Mapping[str, Tensor]], tuple[Tensor, tuple[Tensor, ...]]
]


def run_stack(
    config: LayerConfig,
    input: Tensor,
    lengths: Tensor | None,
    hx: tuple[Tensor, ...],
    weights: Sequence[Mapping[str, Tensor]],
    training: bool,
    direction: Direction,
    directions: Callable[[list[Run]], list[tuple[Tensor, tuple[Tensor, ...]]]] | None = None,
    fresh_finals: bool = False,
) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The layers × directions of a stack, shared by the backends: ``direction(x, state, w)``
    runs one direction over time-major ``x`` (already reversed within each length for the
    backward direction) and returns every h, zero at padded steps, and the final state.
    ``directions``, where given, runs a layer's directions at once instead: a list of
    ``(x, state, w)``, one per direction, in, a list of ``(out, final)`` out. ``fresh_finals``:
    the final states share memory with nothing (not the outputs, not a buffer kept for the
    backward), so a single layer direction's are returned as they are, not copied."""
    D = config.num_directions
    layer_input = input
    finals: list[tuple[Tensor, ...]] = []
    for layer in range(config.num_layers):
        runs = [
            (
                layer_input if d == 0 else reverse_padded(layer_input, lengths),
                tuple(s[layer * D + d] for s in hx),
                weights[layer * D + d],
            )
            for d in range(D)
        ]
        results = directions(runs) if directions else [direction(*run) for run in runs]
        outputs = []
        for d, (out, final) in enumerate(results):
            outputs.append(out if d == 0 else reverse_padded(out, lengths))
            finals.append(final)
        layer_input = torch.cat(outputs, dim=-1) if D == 2 else outputs[0]  # (T, B, D·H_out)
        if training and config.dropout > 0 and layer < config.num_layers - 1:
            layer_input = F.dropout(layer_input, config.dropout, training=True)
    if fresh_finals and len(finals) == 1:  # one layer, one direction: no copy (~2 µs a state)
        return layer_input, tuple(f.unsqueeze(0) for f in finals[0])
    final_states = tuple(torch.stack([f[k] for f in finals]) for k in range(len(hx)))
    return layer_input, final_states


class ReferenceBackend:
    """Loops over layers, directions and time steps, calling :func:`cell_step` once per step."""

    name = "reference"
    twice_differentiable = True

    def unsupported(self, config: LayerConfig, input: Tensor) -> str | None:
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
        spec = config.spec
        if tracing() == "torch.jit.trace" and (spec.recurrent or spec.scan == "sequential"):
            instead = (
                "torch.nn has no such cell to record as one operator"
                if spec.torch_lacks
                else "backend='cudnn' (auto's choice) records it as torch.nn's one operator"
            )
            with warnings.catch_warnings():  # the traced length, as a number
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                steps = int(input.shape[0])
            warnings.warn(
                f"gatedrnn: torch.jit.trace records the reference loop of {spec.name} step by "
                f"step, so the trace runs sequences of {steps} steps only (others raise); "
                f"{instead}",
                torch.jit.TracerWarning,
                stacklevel=2,
            )

        def direction(x, state, w):
            return run_direction(spec, x, lengths, state, w)

        return run_stack(config, input, lengths, hx, weights, training, direction)
