"""The minimal gated unit (Zhou et al. 2016): ``MGU`` and ``MGUCell``."""

from __future__ import annotations

import torch

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.spec import make_spec

__all__ = ["MGU", "MGUCell"]


class MGU(RecurrentBase):
    r"""Multi-layer minimal gated unit (Zhou et al. 2016, eq. 2): a GRU whose reset and update
    gates are one forget gate.

    .. math::
        f_t = σ(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf})
        n_t = \tanh(W_{in} x_t + b_{in} + W_{hn} (f_t ⊙ h_{t-1}) + b_{hn})
        h_t = (1 − f_t) ⊙ h_{t-1} + f_t ⊙ n_t

    Weights of layer k, gate blocks f|n: ``weight_ih_l{k}`` (2H, H_in) for k = 0, else
    (2H, D·H); ``weight_hh_l{k}`` (2H, H); ``bias_ih_l{k}``, ``bias_hh_l{k}`` (2H).
    Arguments and return values are those of :class:`gatedrnn.GRU`.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        backend: str = "auto",
        init: str = "torch",
    ) -> None:
        super().__init__(
            make_spec("mgu"), input_size, hidden_size, num_layers, bias, batch_first, dropout,
            bidirectional, backend=backend, init=init, device=device, dtype=dtype,
        )  # fmt: skip


class MGUCell(CellBase):
    """One MGU step; arguments as :class:`gatedrnn.GRUCell`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "torch",
    ) -> None:
        spec = make_spec("mgu")
        super().__init__(spec, input_size, hidden_size, bias, init=init, device=device, dtype=dtype)
