"""Parameter initialisation for the recurrent layers and cells.

``"torch"`` is torch.nn's default: every parameter U(−1/√H, 1/√H), drawn in registration order,
so a layer seeded like its torch.nn twin starts from the same weights. ``"orthogonal"`` then
replaces each H×H_out gate block of the recurrent weights with a random orthogonal matrix
(Saxe et al. 2014; Le et al. 2015 use it for RNNs); input weights and biases keep the default.
A ``forget_bias`` is added to the forget-gate block of ``bias_ih`` afterwards (Gers et al. 2000;
Jozefowicz et al. 2015 recommend 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from gatedrnn.nn.spec import CellSpec

__all__ = ["INIT_SCHEMES", "check_init_options", "init_recurrent_"]

INIT_SCHEMES = ("torch", "orthogonal")


def check_init_options(spec: CellSpec, init: str, forget_bias: float, bias: bool) -> None:
    """Reject an unknown scheme, or a forget bias that has no forget-gate bias to act on."""
    if init not in INIT_SCHEMES:
        raise ValueError(f"unknown init {init!r}; expected one of: {', '.join(INIT_SCHEMES)}")
    if isinstance(forget_bias, bool) or not isinstance(forget_bias, (int, float)):
        raise TypeError(f"forget_bias must be a number, got {type(forget_bias).__name__}")
    if forget_bias != 0 and (not bias or spec.coupled):
        why = "bias=False" if not bias else "coupled=True has no forget gate"
        raise ValueError(f"forget_bias={forget_bias} cannot be applied: {why}")


@torch.no_grad()
def init_recurrent_(
    module: nn.Module,
    spec: CellSpec,
    hidden_size: int,
    scheme: str = "torch",
    forget_bias: float = 0.0,
) -> None:
    """Initialise every parameter of ``module`` (a layer or a cell) in place."""
    bound = 1.0 / math.sqrt(hidden_size)
    for param in module.parameters():
        nn.init.uniform_(param, -bound, bound)
    for name, param in module.named_parameters():
        if scheme == "orthogonal" and name.startswith("weight_hh"):
            for block in param.split(hidden_size):  # (H, H_out) views, one per gate block
                nn.init.orthogonal_(block)
        if forget_bias and name.startswith("bias_ih"):
            param[hidden_size : 2 * hidden_size] += forget_bias  # block f of i|f|g|o
