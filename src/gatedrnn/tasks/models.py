"""Models shared by tasks: a gatedrnn layer between an optional input map and a linear head."""

from __future__ import annotations

from torch import Tensor, nn

import gatedrnn
from gatedrnn.nn.packing import pack_padded_sequence, pad_packed_sequence

__all__ = ["LAYERS", "SequenceModel", "make_layer"]

LAYERS: dict[str, type[nn.Module]] = {
    "rnn": gatedrnn.RNN,
    "lstm": gatedrnn.LSTM,
    "gru": gatedrnn.GRU,
    "mgu": gatedrnn.MGU,
    "mingru": gatedrnn.MinGRU,
    "minlstm": gatedrnn.MinLSTM,
}


def make_layer(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, **options):
    """A gatedrnn layer of ``cell`` ("gru", "lstm" …); ``options`` are its keyword arguments."""
    if cell not in LAYERS:
        raise ValueError(f"unknown cell {cell!r}; expected one of: {', '.join(LAYERS)}")
    return LAYERS[cell](input_size, hidden_size, num_layers, **options)


class SequenceModel(nn.Module):
    """inputs (T, B, F) → recurrent layer → linear head on every step: (T, B, output_size).

    Variable lengths are packed, so padding never reaches a state; outputs at padded steps are 0.
    """

    def __init__(self, cell: str, input_size: int, hidden_size: int, output_size: int,
                 num_layers: int = 1, **layer_options) -> None:  # fmt: skip
        super().__init__()
        self.rnn = make_layer(cell, input_size, hidden_size, num_layers, **layer_options)
        self.head = nn.Linear(hidden_size, output_size)

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        if lengths is not None and bool((lengths < inputs.shape[0]).any()):
            packed = pack_padded_sequence(inputs, lengths, enforce_sorted=False)
            states = pad_packed_sequence(self.rnn(packed)[0], total_length=inputs.shape[0])[0]
        else:
            states = self.rnn(inputs)[0]
        return self.head(states)
