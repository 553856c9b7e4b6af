"""Exact parameter counts, equal-budget hidden sizes and per-step costs of any cell configuration.

These are the facts behind the "fewer parameters" and "simpler" claims; they come from the same
:class:`~gatedrnn.nn.spec.CellSpec` that builds the layers, so a count always equals the
``numel`` of the module it describes (tested).
"""

from __future__ import annotations

import math

from torch import nn

from gatedrnn.nn.spec import CellSpec, StepCost, make_spec

__all__ = ["count_parameters", "hidden_for_budget", "step_cost"]


def _spec(cell: str | CellSpec, options: dict[str, object]) -> CellSpec:
    if isinstance(cell, CellSpec):
        if options:
            raise ValueError("pass variant options inside the CellSpec, not beside it")
        return cell
    return make_spec(cell, **options)


def count_parameters(
    cell: str | CellSpec | nn.Module,
    input_size: int | None = None,
    hidden_size: int | None = None,
    num_layers: int = 1,
    *,
    bias: bool = True,
    bidirectional: bool = False,
    proj_size: int = 0,
    **options: object,
) -> int:
    """Trainable parameters of a recurrent layer stack.

    ``cell`` is a cell name (``"gru"``, ``"lstm"`` …, with variant options as keywords, e.g.
    ``peepholes=True``), a :class:`CellSpec`, or a module, whose parameters are then counted.

    >>> count_parameters("gru", 88, 100)    # 3·100·(88 + 100) + 2·3·100
    57000
    """
    if isinstance(cell, nn.Module):
        return sum(p.numel() for p in cell.parameters() if p.requires_grad)
    if input_size is None or hidden_size is None:
        raise TypeError("count_parameters needs input_size and hidden_size for a cell name")
    spec = _spec(cell, options)
    out_size = proj_size if proj_size > 0 else hidden_size
    directions = 2 if bidirectional else 1
    total = 0
    for layer in range(num_layers):
        layer_input = input_size if layer == 0 else out_size * directions
        shapes = spec.param_shapes(layer_input, hidden_size, bias=bias, proj_size=proj_size)
        total += directions * sum(math.prod(shape) for _, shape in shapes)
    return total


def hidden_for_budget(
    cell: str | CellSpec,
    budget: int,
    input_size: int | None,
    num_layers: int = 1,
    *,
    bias: bool = True,
    bidirectional: bool = False,
    **options: object,
) -> int:
    """The hidden size whose parameter count is nearest ``budget`` (ties go to the smaller size).
    ``input_size=None`` means the input is as wide as the hidden state (an embedding of the
    hidden size, as the language and text tasks use).

    This is how cells are compared "at an equal parameter budget": e.g. Chung et al. 2014 matched
    ~20K parameters on the music tasks. Raises if even hidden size 1 exceeds the budget.
    """
    spec = _spec(cell, options)

    def count(h: int) -> int:
        width = input_size if input_size is not None else h
        return count_parameters(spec, width, h, num_layers, bias=bias, bidirectional=bidirectional)

    if count(1) > budget:
        raise ValueError(
            f"a {spec.name} layer with input_size={input_size} needs {count(1)} parameters even "
            f"at hidden size 1, more than the budget of {budget}"
        )
    lo, hi = 1, 2
    while count(hi) <= budget:  # the count grows with h, so bracket then bisect
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if count(mid) <= budget else (lo, mid)
    return lo if budget - count(lo) <= count(hi) - budget else hi


def step_cost(
    cell: str | CellSpec,
    input_size: int,
    hidden_size: int,
    *,
    bias: bool = True,
    proj_size: int = 0,
    **options: object,
) -> StepCost:
    """Gates, weight matrices, state tensors, FLOPs and nonlinearities of one time step of one
    layer direction for one sequence; see :class:`~gatedrnn.nn.spec.StepCost`."""
    spec = _spec(cell, options)
    return spec.step_cost(input_size, hidden_size, bias=bias, proj_size=proj_size)
