"""The base class of the single-step cell modules (``GRUCell``, ``LSTMCell`` …).

A cell computes one time step with the pure function the ``reference`` layers loop over
(:func:`~gatedrnn.nn.functional.cell_step`), but for torch.nn's own cells called eagerly: those
call torch's fused step, as torch.nn's cells do (the same numbers bit for bit; ~25 µs a call
where the Python function's dozen calls took 36–45; a loop of them agrees with a layer to
rounding). Traced, exported, compiled or under torch.func transforms and forward-mode AD every
cell runs the pure function. Under torch.autocast a cell computes in autocast's dtype (input,
states and weights cast to it), as the layers do. Parameters are ``weight_ih``,
``weight_hh``, ``bias_ih``, ``bias_hh`` (and ``weight_peep``), as in torch.nn's cells.

Shapes: input (N, H_in) or (H_in,) unbatched; state (N, H) or (H,); zeros if omitted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import _VF, Tensor, nn

from gatedrnn.backends import tracing
from gatedrnn.nn.checks import (
    autocast_dtype,
    check_input,
    check_positive_int,
    check_states,
    current_weight,
    fx_leaf_call,
)
from gatedrnn.nn.functional import cell_step
from gatedrnn.nn.init import check_init_options, init_recurrent_
from gatedrnn.nn.spec import CellSpec

__all__ = ["CellBase"]

_FUSED = {
    "gru": _VF.gru_cell, "lstm": _VF.lstm_cell, "tanh": _VF.rnn_tanh_cell,
    "relu": _VF.rnn_relu_cell,
}  # fmt: skip


class CellBase(nn.Module):
    """One step of a recurrent cell; subclasses only declare which cell."""

    def __init__(
        self,
        spec: CellSpec,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        *,
        init: str = "torch",
        forget_bias: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_positive_int(owner, "input_size", input_size)
        self.hidden_size = check_positive_int(owner, "hidden_size", hidden_size)
        check_init_options(spec, init, forget_bias, bias)
        self.spec = spec
        self.bias = bool(bias)
        self.init = init
        self.forget_bias = float(forget_bias)
        factory = {"device": device, "dtype": dtype}
        self._names = []
        for name, shape in spec.param_shapes(input_size, hidden_size, bias=self.bias):
            self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
            self._names.append(name)
        self.reset_parameters()

    def __setstate__(self, state: dict) -> None:
        # a cell pickled whole (torch.save(module)) by a version before _names was kept
        super().__setstate__(state)
        if "_names" not in self.__dict__:
            self._names = [name for name, _ in self.spec.param_shapes(1, 1, bias=self.bias)]

    @property
    def _fused(self) -> Callable | None:
        """torch's fused step for this cell where torch.nn has the cell (what torch.nn's cells
        call: the same results, bit for bit), else None (the variants: :func:`cell_step`)."""
        if self.spec.torch_lacks is not None:
            return None
        if self.spec.kind == "rnn":
            return _FUSED[self.spec.nonlinearity]
        return _FUSED[self.spec.kind]

    def reset_parameters(self) -> None:
        init_recurrent_(self, self.spec, self.hidden_size, self.init, self.forget_bias)

    def to_torch(self) -> nn.Module:
        """The torch.nn cell computing what this one does, holding the same parameters (see
        :func:`gatedrnn.nn.convert.to_torch`)."""
        from gatedrnn.nn.convert import to_torch

        return to_torch(self)

    def __prepare_scriptable__(self) -> nn.Module:
        from gatedrnn.nn.convert import scriptable_twin

        return scriptable_twin(self)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.spec.name != self.spec.kind:
            s += f", cell={self.spec.name}"
        return s

    def forward(
        self, input: Tensor, hx: Tensor | tuple[Tensor, Tensor] | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        owner = type(self).__name__
        if not isinstance(input, Tensor):
            if (recorded := fx_leaf_call(self, input, hx)) is not None:
                return recorded
            raise TypeError(f"{owner}: expected input to be a Tensor, got {type(input).__name__}")
        if input.dim() not in (1, 2):
            raise ValueError(
                f"{owner}: expected a 2-D batched input (N, H_in) or a 1-D unbatched input "
                f"(H_in), got {input.dim()}-D input of shape {tuple(input.shape)}"
            )
        weights = {name: current_weight(self, name) for name in self._names}
        first = weights["weight_ih"]
        amp = autocast_dtype(input, first.dtype)
        if amp is not None:  # under torch.autocast: every cell computes in its dtype, as the
            # layers do (torch.nn's GRU and LSTM cells stay in float32 for float32 inputs)
            input = input.to(amp)
            if isinstance(hx, Tensor):
                hx = hx.to(amp)
            elif isinstance(hx, (tuple, list)):
                hx = tuple(s.to(amp) if isinstance(s, Tensor) else s for s in hx)
            weights = {name: w.to(amp) for name, w in weights.items()}
        check_input(owner, input, self.input_size, amp or first.dtype, first.device)
        batched = input.dim() == 2
        x = input if batched else input.unsqueeze(0)
        n = self.spec.num_states
        shape = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
        if hx is None:  # one zero tensor for h and c, as torch.nn's cells (nothing writes it)
            states = (x.new_zeros(x.shape[0], self.hidden_size),) * n
        else:
            if n == 2 and (not isinstance(hx, (tuple, list)) or len(hx) != 2):
                raise TypeError(
                    f"{owner}: expected hx to be a tuple (h, c), got {type(hx).__name__}"
                )
            states = tuple(hx) if n == 2 else (hx,)
            check_states(owner, ("h", "c")[:n], states, (shape,) * n, input)
            states = states if batched else tuple(s.unsqueeze(0) for s in states)
        fused = self._fused
        if fused is not None and not torch.compiler.is_compiling() and tracing() is None:
            w = weights  # torch.nn's cell, in one call (its Python costs half our cell's time)
            args = (w["weight_ih"], w["weight_hh"], w.get("bias_ih"), w.get("bias_hh"))
            new = fused(x, states if n == 2 else states[0], *args)
            new = new if n == 2 else (new,)
        else:
            new = cell_step(self.spec, x, states, weights)
        new = new if batched else tuple(s.squeeze(0) for s in new)
        return new if n == 2 else new[0]
