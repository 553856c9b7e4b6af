"""The ``cudnn`` backend: torch's own fused recurrent kernels, for the cells torch.nn has.

On CUDA these are cuDNN's; on the CPU they are torch's native kernels (oneDNN for the LSTM where
it applies). They compute exactly torch.nn.RNN / LSTM (with ``proj_size``) / GRU, so this backend
refuses every variant torch does not have: the reset-before GRU, peepholes, the coupled gate,
MGU and the minimal cells.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import _VF, Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gatedrnn.backends import LayerConfig, tracing

__all__ = ["CudnnBackend"]

_ORDER = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # torch's _flat_weights
# the recurrence for each cell kind (the RNN's by its nonlinearity), looked up once: each
# attribute of torch._VF is a module __getattr__ (~2 µs)
_KERNELS = {"lstm": _VF.lstm, "gru": _VF.gru, "tanh": _VF.rnn_tanh, "relu": _VF.rnn_relu}


class CudnnBackend:
    """Calls ``torch._VF.{rnn_tanh, rnn_relu, lstm, gru}``, the functions torch.nn calls."""

    name = "cudnn"
    # on the CPU (torch's native kernels, what the tests check); cuDNN itself computes first
    # derivatives only, as torch.nn's layers do on CUDA: the `triton` backend differentiates twice
    twice_differentiable = True

    def unsupported(self, config: LayerConfig, input: Tensor) -> str | None:
        if config.spec.torch_lacks:
            return config.spec.torch_lacks
        # while exporting, a length left free is a SymInt (a fixed one an int), which torch's
        # fused recurrence would fix, torch.nn's too, with a less helpful "Constraints violated"
        # (the size's type first: eager calls, where it is an int, skip asking tracing())
        if isinstance(input.shape[0], torch.SymInt) and tracing() == "torch.export":
            return (
                "torch.export fixes the length of torch's fused recurrences (torch.nn's too); "
                "backend='reference' (auto's choice) exports its loop as a scan, for any length"
            )
        return None

    def auto_declines(self, config: LayerConfig, input: Tensor) -> str | None:
        context = tracing()
        if context == "torch.func transforms":
            return "torch's fused cells have no vmap rule (reference runs every transform)"
        if context == "forward-mode AD":
            return (
                "torch's fused LSTM (oneDNN, cuDNN) has no forward-mode derivative (reference "
                "has, for every cell)"
            )
        # under strict export (Dynamo tracing this code) every size looks like an int, so a free
        # length cannot be told from a fixed one: the scan is taken always
        if context == "torch.export" and torch.compiler.is_dynamo_compiling():
            return (
                "under strict torch.export a free length looks fixed, and torch's fused "
                "recurrences fix it; reference exports its loop as a scan, for any length"
            )
        return None

    def forward(
        self,
        config: LayerConfig,
        input: Tensor,
        lengths: Tensor | None,
        hx: tuple[Tensor, ...],
        weights: Sequence[Mapping[str, Tensor]],
        training: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        spec = config.spec
        kernel = _KERNELS[spec.nonlinearity if spec.kind == "rnn" else spec.kind]
        flat = [w[name] for w in weights for name in _ORDER if name in w]
        state = hx if spec.num_states == 2 else hx[0]
        options = (config.bias, config.num_layers, config.dropout, training, config.bidirectional)
        if lengths is None:
            result = kernel(input, state, flat, *options, False)  # time-major
            return result[0], tuple(result[1:])
        packed = pack_padded_sequence(input, lengths, enforce_sorted=False)
        order, unorder = packed.sorted_indices, packed.unsorted_indices
        if spec.num_states == 2:
            state = tuple(s.index_select(1, order) for s in state)
        else:
            state = state.index_select(1, order)
        result = kernel(packed.data, packed.batch_sizes, state, flat, *options)
        output = packed._replace(data=result[0])
        output = pad_packed_sequence(output, total_length=input.shape[0])[0]
        return output, tuple(s.index_select(1, unorder) for s in result[1:])
