"""Input and state checks shared by the layers and the cells: each error says what was expected
and what came. Also what they do with an input that is not a tensor but torch.fx's Proxy
(:func:`fx_leaf_call`)."""

from __future__ import annotations

import numbers
import sys

import torch
from torch import Tensor

__all__ = [
    "InputDtypeError",
    "MismatchError",
    "StateDtypeError",
    "autocast_dtype",
    "check_input",
    "check_positive_int",
    "check_states",
    "current_weight",
    "fx_leaf_call",
]


class InputDtypeError(TypeError, ValueError):
    """An input whose dtype the parameters do not have. A ``TypeError``, and a ``ValueError`` as
    torch.nn's recurrent layers raise for it, so that code catching either keeps working."""


class MismatchError(ValueError, RuntimeError):
    """An input or state whose features, shape, length or device do not match the module or the
    input. A ``ValueError``, and a ``RuntimeError`` as torch.nn's recurrent layers and cells
    raise for it, so that code catching either keeps working."""


class StateDtypeError(TypeError, RuntimeError):
    """A state whose dtype is not the input's. A ``TypeError``, and a ``RuntimeError`` as
    torch.nn's recurrent layers and cells raise for it."""


def autocast_dtype(x: Tensor, parameter_dtype: torch.dtype) -> torch.dtype | None:
    """The dtype torch.autocast asks for on ``x``'s device, if it is on and the parameters are
    float32 (autocast leaves other dtypes alone), else None: the layers and cells then compute
    in it, inputs, states and weights cast (differentiably) to it."""
    kind = x.device.type
    if parameter_dtype != torch.float32 or kind == "meta":  # meta: autocast has no such device
        return None
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return None


def current_weight(module: torch.nn.Module, name: str) -> Tensor:
    """``module``'s weight ``name`` as it is now: a plain parameter straight from
    ``_parameters`` (attribute access through Module.__getattr__ costs ~1 µs), else the
    attribute, which a parametrization, weight norm or pruning computes."""
    weight = module._parameters.get(name)
    return getattr(module, name) if weight is None else weight


def check_positive_int(owner: str, name: str, value: object, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{owner}: {name} must be an integer, got {type(value).__name__}")
    if value < 0 or (value == 0 and not allow_zero):
        bound = "non-negative" if allow_zero else "greater than zero"
        raise ValueError(f"{owner}: {name} must be {bound}, got {value}")
    return int(value)


def check_input(
    owner: str, x: Tensor, input_size: int, param_dtype: torch.dtype, param_device: torch.device
) -> None:
    """Check a time-major (T, B, H_in) or (B, H_in) input against the module's parameters:
    floating point, their dtype, their device (a backend handed weights on another device than
    its input would fail deep inside, or, for compiled CPU loops given GPU memory, crash), and
    ``input_size`` features."""
    if not x.is_floating_point():
        raise InputDtypeError(f"{owner}: expected a floating-point input, got dtype {x.dtype}")
    if x.dtype != param_dtype:
        raise InputDtypeError(
            f"{owner}: expected input of dtype {param_dtype} (the parameters' dtype), got "
            f"{x.dtype}; convert one with .to()"
        )
    if x.device != param_device:
        raise MismatchError(
            f"{owner}: expected input on {param_device} (the parameters' device), got input on "
            f"{x.device}; move one with .to()"
        )
    if x.shape[-1] != input_size:
        raise MismatchError(
            f"{owner}: expected input with {input_size} features (input_size) in its last "
            f"dimension, got shape {tuple(x.shape)}"
        )


def check_states(
    owner: str,
    names: tuple[str, ...],
    states: tuple[Tensor, ...],
    shapes: tuple[tuple[int, ...], ...],
    like: Tensor,
) -> None:
    """Check each state tensor's type, shape, dtype and device against the input ``like``."""
    for name, state, shape in zip(names, states, shapes, strict=True):
        if not isinstance(state, Tensor):
            raise TypeError(f"{owner}: expected {name} to be a Tensor, got {type(state).__name__}")
        if tuple(state.shape) != shape:
            raise MismatchError(
                f"{owner}: expected {name} of shape {shape}, got {tuple(state.shape)}"
            )
        if state.dtype != like.dtype:
            raise StateDtypeError(
                f"{owner}: expected {name} of dtype {like.dtype} (the input's), got {state.dtype}"
            )
        if state.device != like.device:
            raise MismatchError(
                f"{owner}: expected {name} on {like.device} (the input's device), got "
                f"{state.device}"
            )


def fx_leaf_call(module: torch.nn.Module, input: object, hx: object) -> object | None:
    """Under ``torch.fx.symbolic_trace``: the module's call recorded as one ``call_module`` node,
    as torch.fx records torch.nn's recurrent layers and cells (leaf modules there; ours, traced
    into, would meet their checks and backends with Proxy objects); None for anything else."""
    fx = sys.modules.get("torch.fx")
    if fx is None or not isinstance(input, fx.Proxy):
        return None
    tracer = input.tracer
    path = tracer.path_of_module(module)
    if not path:  # the module traced is this one: there is no outer call to record
        raise TypeError(
            f"torch.fx.symbolic_trace cannot trace into {type(module).__name__} itself (its "
            "backends are not Python operations on Proxy objects); trace a model that holds "
            "it, where it is recorded as one call, or use torch.export"
        )
    args = (input,) if hx is None else (input, hx)
    return tracer.create_proxy("call_module", path, args, {})
