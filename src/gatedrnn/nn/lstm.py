"""Long short-term memory: ``LSTM`` and ``LSTMCell``, drop-in for torch.nn's, with the forget
bias, peephole and coupled-gate variants."""

from __future__ import annotations

import torch

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.spec import make_spec

__all__ = ["LSTM", "LSTMCell"]


class LSTM(RecurrentBase):
    r"""Multi-layer LSTM (Hochreiter & Schmidhuber 1997), drop-in for :class:`torch.nn.LSTM`.

    .. math::
        i_t = σ(W_{ii} x_t + b_{ii} + W_{hi} h_{t-1} + b_{hi} + p_i ⊙ c_{t-1})
        f_t = σ(W_{if} x_t + b_{if} + W_{hf} h_{t-1} + b_{hf} + p_f ⊙ c_{t-1})
        g_t = \tanh(W_{ig} x_t + b_{ig} + W_{hg} h_{t-1} + b_{hg})
        c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t
        o_t = σ(W_{io} x_t + b_{io} + W_{ho} h_{t-1} + b_{ho} + p_o ⊙ c_t)
        h_t = W_{hr} (o_t ⊙ \tanh(c_t))

    The peephole terms p ⊙ c exist only with ``peepholes=True`` (Graves 2013, eqs. 7–11) and
    ``W_hr`` only with ``proj_size`` = P > 0 (Sak et al. 2014). ``coupled=True`` is the CIFG
    variant (Greff et al. 2017): f_t = 1 − i_t, no forget-gate weights. ``forget_bias`` is added to
    ``bias_ih``'s forget block at initialisation (Jozefowicz et al. 2015 recommend 1).

    Weights of layer k, gate blocks i|f|g|o (i|g|o when coupled): ``weight_ih_l{k}`` (4H, H_in)
    for k = 0, else (4H, D·H_out); ``weight_hh_l{k}`` (4H, H_out); ``bias_ih_l{k}``,
    ``bias_hh_l{k}`` (4H); ``weight_hr_l{k}`` (P, H); ``weight_peep_l{k}`` (3H, p_i|p_f|p_o, or
    2H, p_i|p_o, when coupled). H_out = P if projecting, else H.
    Returns ``output`` (L, N, D·H_out) and ``(h_n, c_n)``: (D·num_layers, N, H_out) and
    (D·num_layers, N, H).
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
        proj_size: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        peepholes: bool = False,
        coupled: bool = False,
        forget_bias: float = 0.0,
        backend: str = "auto",
        init: str = "torch",
    ) -> None:
        spec = make_spec("lstm", peepholes=peepholes, coupled=coupled)
        super().__init__(
            spec, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            proj_size, backend=backend, init=init, forget_bias=forget_bias, device=device,
            dtype=dtype,
        )  # fmt: skip
        self.peepholes = peepholes
        self.coupled = coupled
        self.mode = "LSTM"


class LSTMCell(CellBase):
    r"""One LSTM step, drop-in for :class:`torch.nn.LSTMCell`; returns ``(h', c')``. The
    ``peepholes``, ``coupled`` and ``forget_bias`` options are those of :class:`LSTM`."""

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        peepholes: bool = False,
        coupled: bool = False,
        forget_bias: float = 0.0,
        init: str = "torch",
    ) -> None:
        spec = make_spec("lstm", peepholes=peepholes, coupled=coupled)
        super().__init__(
            spec, input_size, hidden_size, bias, init=init, forget_bias=forget_bias,
            device=device, dtype=dtype,
        )  # fmt: skip
        self.peepholes = peepholes
        self.coupled = coupled
