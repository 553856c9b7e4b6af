"""minGRU and minLSTM (Feng et al. 2024, "Were RNNs all we needed?"): gates that do not read the
previous state, so a whole sequence is one parallel scan. ``MinGRU``, ``MinLSTM`` and their cells.
"""

from __future__ import annotations

import torch

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.spec import make_spec

__all__ = ["MinGRU", "MinGRUCell", "MinLSTM", "MinLSTMCell"]


class _MinimalLayer(RecurrentBase):
    kind = ""

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
        scan: str = "parallel",
        backend: str = "auto",
        init: str = "torch",
    ) -> None:
        super().__init__(
            make_spec(self.kind, scan=scan), input_size, hidden_size, num_layers, bias,
            batch_first, dropout, bidirectional,
            backend=backend, init=init, device=device, dtype=dtype,
        )  # fmt: skip
        self.scan = scan


class MinGRU(_MinimalLayer):
    r"""Multi-layer minGRU (Feng et al. 2024, §3.1).

    .. math::
        z_t = σ(W_z x_t + b_z)     \tilde h_t = g(W_h x_t + b_h)
        h_t = (1 − z_t) ⊙ h_{t-1} + z_t ⊙ \tilde h_t

    with g(x) = x + ½ for x ≥ 0, σ(x) otherwise (§3.1, keeps h̃ positive for the log-space scan).
    ``scan="parallel"`` computes all steps with the log-space scan (Appendix B), ``"sequential"``
    loops over time; both give the same result. That is the ``reference`` backend's choice: the
    ``cpu`` backend (``auto``'s on the CPU) runs its own fused loop over time either way, each
    unit's recurrence apart (no gate reads the state). Weights of layer k, blocks z|h:
    ``weight_ih_l{k}`` (2H, H_in) for k = 0, else (2H, D·H); ``bias_ih_l{k}`` (2H). There is no
    ``weight_hh``. Arguments and return values are otherwise those of :class:`gatedrnn.GRU`.
    """

    kind = "mingru"


class MinLSTM(_MinimalLayer):
    r"""Multi-layer minLSTM (Feng et al. 2024, §3.2, with length-independent scaling).

    .. math::
        i_t = σ(W_i x_t + b_i)     f_t = σ(W_f x_t + b_f)     \tilde h_t = g(W_h x_t + b_h)
        h_t = \frac{f_t}{f_t + i_t} ⊙ h_{t-1} + \frac{i_t}{f_t + i_t} ⊙ \tilde h_t

    Weights of layer k, blocks i|f|h: ``weight_ih_l{k}`` (3H, H_in) for k = 0, else (3H, D·H);
    ``bias_ih_l{k}`` (3H). ``scan`` as in :class:`MinGRU`.
    """

    kind = "minlstm"


class _MinimalCell(CellBase):
    kind = ""

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
        spec = make_spec(self.kind)
        super().__init__(spec, input_size, hidden_size, bias, init=init, device=device, dtype=dtype)


class MinGRUCell(_MinimalCell):
    """One minGRU step (see :class:`MinGRU`)."""

    kind = "mingru"


class MinLSTMCell(_MinimalCell):
    """One minLSTM step (see :class:`MinLSTM`)."""

    kind = "minlstm"
