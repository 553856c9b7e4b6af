"""Backends: interchangeable implementations of the same recurrent layer function.

A backend is chosen by name through one registry and imported only when first used. Each
implements :class:`Backend`: given a :class:`LayerConfig`, a time-major padded input, optional
sequence lengths, the initial states and the weights of every layer direction, it returns the
output sequence and the final states. ``reference`` is the readable oracle every other backend is
tested against; ``cudnn`` is torch's own fused kernels (cuDNN on CUDA, torch's native kernels on
the CPU) for the cells torch.nn has. ``"auto"`` picks the first backend in :data:`AUTO_ORDER`
that supports the call; asking for a named backend that cannot serve the call raises
:class:`BackendUnsupportedError` with the reason, never a silent fallback.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from gatedrnn.nn.spec import CellSpec

__all__ = [
    "AUTO_ORDER",
    "Backend",
    "BackendUnsupportedError",
    "LayerConfig",
    "available_backends",
    "backward_by_rerun",
    "constant_when_compiled",
    "get_backend",
    "load_backends",
    "register_backend",
    "resolve_backend",
    "run_eagerly",
    "tracing",
    "untraceable",
    "without_data",
]


class BackendUnsupportedError(RuntimeError):
    """A backend was asked for a configuration, device or dtype it cannot compute."""


@dataclass(frozen=True)
class LayerConfig:
    """The shape of a recurrent layer stack, as a backend sees it (batch_first is resolved
    by the layer: backends always see time-major tensors)."""

    spec: CellSpec
    input_size: int
    hidden_size: int
    num_layers: int = 1
    bias: bool = True
    dropout: float = 0.0
    bidirectional: bool = False
    proj_size: int = 0

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of h per direction: P when projecting, else H."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size


class Backend(Protocol):
    """What every backend implements."""

    name: str
    twice_differentiable: bool  # whether double backward (gradgradcheck, Hessians) works
    # Optional, False if absent: whether torch.compile runs it between graphs (run_eagerly), so
    # that "auto" passes it over while compiling
    between_graphs: bool

    def unsupported(self, config: LayerConfig, input: Tensor) -> str | None:
        """Why this backend cannot run ``config`` on ``input`` (its device and dtype), or None."""

    def auto_declines(self, config: LayerConfig, input: Tensor) -> str | None:
        """Optional: why ``"auto"`` should pass over this backend although it could run the call
        (another is measured faster there), or None. Naming the backend still uses it."""

    def forward(
        self,
        config: LayerConfig,
        input: Tensor,
        lengths: Tensor | None,
        hx: tuple[Tensor, ...],
        weights: Sequence[Mapping[str, Tensor]],
        training: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Run the layer stack.

        Args:
            input: (T, B, H_in), time-major. Steps at or past a sequence's length are padding.
            lengths: (B,) int64 on the CPU, each in [1, T], or None when every sequence has T.
            hx: the initial states, each (L·D, B, ·): (h,) or (h, c) for the LSTM.
            weights: one mapping per layer direction, index ``layer * D + direction``, from base
                names (``weight_ih``, ``bias_hh`` …) to tensors.
            training: whether dropout between layers is active.

        Returns:
            ``output`` (T, B, D·H_out) with zeros at padded steps, and the final states, each
            (L·D, B, ·), taken at each sequence's last valid step.
        """


def run_eagerly(fn):
    """``fn``, which ``torch.compile`` runs as it is, between graphs, instead of tracing into it:
    for backend code that is not PyTorch operations (extensions, Triton launches, the GPU's
    properties, files). While Dynamo traces, the call goes through ``torch.compiler.disable``
    (one clean graph break, no warnings); otherwise straight to ``fn``, without importing
    Dynamo (a second, at the first layer a process builds) or its wrapper's per-call cost."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if torch.compiler.is_compiling():
            return torch.compiler.disable(fn)(*args, **kwargs)
        return fn(*args, **kwargs)

    return call


def constant_when_compiled(fn):
    """``fn``, a question about the machine whose answer never changes in a process (finding it
    may build or load something): ``torch.compile`` calls it while tracing and keeps the answer
    in its graph as a constant, where :func:`run_eagerly` would break the graph (and a
    ``fullgraph`` compile). The mark :func:`torch.compiler.assume_constant_result` sets, set
    here without importing Dynamo (which that function does)."""
    fn._dynamo_marked_constant = True
    return fn


def without_data(tensor: Tensor) -> bool:
    """Whether ``tensor`` has no data to compute on: a fake tensor (``FakeTensorMode``: shape
    inference, memory estimates) or another tensor subclass, a meta tensor, or one without
    storage (batched by ``vmap``, as the gradients a backward gets under
    ``is_grads_batched=True``). Kernels that read memory themselves (extensions, Triton
    launches) cannot take it; torch's dispatch can."""
    return type(tensor) is not torch.Tensor or tensor.is_meta or not _has_storage(tensor)


_has_storage = getattr(torch._C, "_has_storage", lambda tensor: True)


def backward_by_rerun(*grads: Tensor | None) -> bool:
    """Whether a fused backend's backward, given these output gradients, must rerun the
    reference loop differentiably (:func:`~gatedrnn.backends.reference.differentiable_backward`)
    instead of its own loops: with ``create_graph=True`` (grad mode on in backward), and for
    gradients batched by ``vmap`` (``torch.autograd.grad(..., is_grads_batched=True)``,
    ``jacobian(vectorize=True)``, ``gradcheck``'s batched check), which the loops cannot read."""
    return (
        torch.is_grad_enabled()
        or tracing() == "torch.func transforms"
        or any(g is not None and without_data(g) for g in grads)
    )


def tracing() -> str | None:
    """What must see the current call as PyTorch operations, if anything: ``"torch.export"``
    while exporting, ``"torch.jit.trace"`` while ``torch.jit.trace`` records (the TorchScript
    ONNX exporter, ``torch.onnx.export(..., dynamo=False)``, traces so too), ``"forward-mode
    AD"`` inside ``torch.autograd.forward_ad.dual_level()``
    (dual tensors: each operation's forward derivative), ``"torch.func transforms"`` inside
    ``grad``, ``vmap``, ``jacrev`` …; None otherwise, and under ``torch.compile`` (there a
    backend that cannot be traced runs between graphs, eagerly)."""
    exporting = getattr(torch.compiler, "is_exporting", None)  # torch ≥ 2.6
    if exporting is not None and exporting():
        return "torch.export"
    if torch.jit.is_tracing():
        return "torch.jit.trace"
    if getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0:
        return "forward-mode AD"
    if torch.compiler.is_compiling():
        return None
    level = getattr(torch._C._functorch, "maybe_current_level", None)
    if level is not None and level() is not None:
        return "torch.func transforms"
    return None


def untraceable(what: str) -> str | None:
    """For a backend whose loops are not PyTorch operations (``what`` they are): why it cannot
    run the call while :func:`tracing` says something traces it, with the way out; else None."""
    context = tracing()
    if context is None:
        return None
    if context == "torch.export":
        instead = "a layer exports with backend='cudnn' or 'reference' (backend='auto' picks one)"
    elif context == "torch.jit.trace":
        instead = (
            "a layer traces with backend='cudnn' (torch.nn's cells: any length, and the ONNX "
            "exporter's RNN ops) or 'reference' (backend='auto' picks one)"
        )
    elif context == "forward-mode AD":  # a hand-written backward gives no forward derivative
        instead = "use backend='reference', which backend='auto' picks there"
    else:  # torch's fused cells have gradients but no vmap rule
        instead = (
            "use backend='reference', which backend='auto' picks there ('cudnn' works under grad "
            "alone: torch's fused cells have no vmap rule)"
        )
    verb = "differentiate" if context == "forward-mode AD" else "trace"
    return f"its {what}, which {context} cannot {verb}; {instead}"


# name -> "module:attribute" of a zero-argument factory; imported on first use.
_REGISTRY: dict[str, str] = {
    "reference": "gatedrnn.backends.reference:ReferenceBackend",
    "cudnn": "gatedrnn.backends.cudnn:CudnnBackend",
    "cpu": "gatedrnn.backends.cpu:CpuBackend",
    "cpu-python": "gatedrnn.backends.cpu:CpuPythonBackend",
    "triton": "gatedrnn.backends.gpu:TritonBackend",
}
_LOADED: dict[str, Backend] = {}

AUTO_ORDER: list[str] = ["cpu", "triton", "cudnn", "reference"]
"""The order in which ``backend="auto"`` tries backends: fastest first, ``reference`` last."""


def register_backend(name: str, target: str, *, auto_priority: int | None = None) -> None:
    """Register ``target`` ("module:Factory") under ``name``.

    With ``auto_priority`` the backend joins :data:`AUTO_ORDER` at that index (0 = tried first).
    """
    _REGISTRY[name] = target
    _LOADED.pop(name, None)
    if auto_priority is not None and name not in AUTO_ORDER:
        AUTO_ORDER.insert(auto_priority, name)


def available_backends() -> list[str]:
    """Names of every registered backend."""
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    """The backend registered as ``name``, imported on first use."""
    if name not in _REGISTRY:
        known = ", ".join(available_backends())
        raise ValueError(f"unknown backend {name!r}; expected 'auto' or one of: {known}")
    if name not in _LOADED:
        module_name, _, attr = _REGISTRY[name].partition(":")
        _LOADED[name] = getattr(importlib.import_module(module_name), attr)()
    return _LOADED[name]


def load_backends(name: str) -> None:
    """Import the backend ``name`` (for ``"auto"``: every backend in :data:`AUTO_ORDER`) now.
    The layers call it when built, so that their first call has nothing to import: an import
    is where ``torch.compile`` cannot trace (it would break a ``fullgraph`` compile)."""
    for candidate in AUTO_ORDER if name == "auto" else (name,):
        get_backend(candidate)


# Why auto passes over a backend that runs between torch.compile's graphs (``between_graphs``):
# even asking it (its checks read the GPU and files: run_eagerly) would break the graph, which a
# ``fullgraph`` compile refuses; a layer that names it still runs it so, graph break and all.
_BETWEEN_GRAPHS = (
    "under torch.compile its launches run between graphs (a graph break, which fullgraph=True "
    "refuses), so auto takes a backend that compiles into the graph; backend='{name}' runs it "
    "there anyway"
)


def resolve_backend(name: str, config: LayerConfig, input: Tensor) -> Backend:
    """The backend to run ``config`` on ``input``: ``name`` itself, or for ``"auto"`` the first
    in :data:`AUTO_ORDER` that supports the call (under ``torch.compile``, not one marked
    ``between_graphs``). Raises with the reason when none can."""
    if name != "auto":
        backend = get_backend(name)
        reason = backend.unsupported(config, input)
        if reason is not None:
            raise BackendUnsupportedError(
                f"backend {name!r} cannot run {config.spec.name}: {reason}"
            )
        return backend
    reasons = []
    for candidate in AUTO_ORDER:
        backend = get_backend(candidate)
        if getattr(backend, "between_graphs", False) and torch.compiler.is_compiling():
            reasons.append(f"{candidate}: {_BETWEEN_GRAPHS.format(name=candidate)}")
            continue
        reason = backend.unsupported(config, input)
        if reason is None and hasattr(backend, "auto_declines"):
            reason = backend.auto_declines(config, input)
        if reason is None:
            return backend
        reasons.append(f"{candidate}: {reason}")
    raise BackendUnsupportedError(f"no backend can run {config.spec.name}: " + "; ".join(reasons))
