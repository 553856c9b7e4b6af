"""The gated recurrent unit: ``GRU`` and ``GRUCell``, drop-in for torch.nn's, with both placements
of the reset gate."""

from __future__ import annotations

import torch

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.spec import make_spec

__all__ = ["GRU", "GRUCell"]


class GRU(RecurrentBase):
    r"""Multi-layer GRU (Cho et al. 2014), drop-in for :class:`torch.nn.GRU`.

    .. math::
        r_t = σ(W_{ir} x_t + b_{ir} + W_{hr} h_{t-1} + b_{hr})
        z_t = σ(W_{iz} x_t + b_{iz} + W_{hz} h_{t-1} + b_{hz})
        n_t = \tanh(W_{in} x_t + b_{in} + r_t ⊙ (W_{hn} h_{t-1} + b_{hn}))     (reset="after")
        n_t = \tanh(W_{in} x_t + b_{in} + W_{hn} (r_t ⊙ h_{t-1}) + b_{hn})     (reset="before")
        h_t = (1 − z_t) ⊙ n_t + z_t ⊙ h_{t-1}

    ``reset="after"`` (default) is torch.nn.GRU, cuDNN and Keras ``reset_after=True``;
    ``reset="before"`` is Cho et al. 2014 eq. 8, the form Chung et al. 2014 compared with the LSTM.
    Both have the same parameters. Weights of layer k, gate blocks r|z|n: ``weight_ih_l{k}``
    (3H, H_in) for k = 0, else (3H, D·H); ``weight_hh_l{k}`` (3H, H); ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (3H). Returns ``output`` (L, N, D·H) and ``h_n`` (D·num_layers, N, H).
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
        reset: str = "after",
        backend: str = "auto",
        init: str = "torch",
    ) -> None:
        super().__init__(
            make_spec("gru", reset=reset), input_size, hidden_size, num_layers, bias,
            batch_first, dropout, bidirectional,
            backend=backend, init=init, device=device, dtype=dtype,
        )  # fmt: skip
        self.reset = reset
        self.mode = "GRU"


class GRUCell(CellBase):
    r"""One GRU step, drop-in for :class:`torch.nn.GRUCell`; ``reset`` as in :class:`GRU`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        reset: str = "after",
        init: str = "torch",
    ) -> None:
        spec = make_spec("gru", reset=reset)
        super().__init__(spec, input_size, hidden_size, bias, init=init, device=device, dtype=dtype)
        self.reset = reset
