"""The Elman RNN: ``RNN`` and ``RNNCell``, drop-in for torch.nn's."""

from __future__ import annotations

import torch

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.spec import make_spec

__all__ = ["RNN", "RNNCell"]


class RNN(RecurrentBase):
    r"""Multi-layer Elman RNN, drop-in for :class:`torch.nn.RNN`.

    .. math:: h_t = \tanh(W_{ih} x_t + b_{ih} + W_{hh} h_{t-1} + b_{hh})

    (``nonlinearity="relu"`` uses ReLU). Weights of layer k: ``weight_ih_l{k}`` (H, H_in) for
    k = 0, else (H, D·H); ``weight_hh_l{k}`` (H, H); ``bias_ih_l{k}``, ``bias_hh_l{k}`` (H).
    Returns ``output`` (L, N, D·H) and ``h_n`` (D·num_layers, N, H). See
    :class:`~gatedrnn.nn.base.RecurrentBase` for shapes and input forms.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        nonlinearity: str = "tanh",
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
        spec = make_spec("rnn", nonlinearity=nonlinearity)
        super().__init__(
            spec, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            backend=backend, init=init, device=device, dtype=dtype,
        )  # fmt: skip
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"


class RNNCell(CellBase):
    r"""One Elman RNN step, drop-in for :class:`torch.nn.RNNCell`:
    :math:`h' = \tanh(W_{ih} x + b_{ih} + W_{hh} h + b_{hh})` (or ReLU)."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        nonlinearity: str = "tanh",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        init: str = "torch",
    ) -> None:
        spec = make_spec("rnn", nonlinearity=nonlinearity)
        super().__init__(spec, input_size, hidden_size, bias, init=init, device=device, dtype=dtype)
        self.nonlinearity = nonlinearity
