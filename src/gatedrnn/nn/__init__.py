"""Recurrent layers and cells, drop-in for torch.nn, and the variants the literature compares."""

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.convert import convert, from_torch, to_torch
from gatedrnn.nn.counting import count_parameters, hidden_for_budget, step_cost
from gatedrnn.nn.gru import GRU, GRUCell
from gatedrnn.nn.lstm import LSTM, LSTMCell
from gatedrnn.nn.mgu import MGU, MGUCell
from gatedrnn.nn.minimal import MinGRU, MinGRUCell, MinLSTM, MinLSTMCell
from gatedrnn.nn.packing import (
    PackedSequence,
    pack_padded_sequence,
    pack_sequence,
    pad_packed_sequence,
    pad_sequence,
)
from gatedrnn.nn.rnn import RNN, RNNCell
from gatedrnn.nn.spec import CELL_KINDS, CellSpec, StepCost, make_spec

__all__ = [
    "CELL_KINDS",
    "GRU",
    "LSTM",
    "MGU",
    "RNN",
    "CellBase",
    "CellSpec",
    "GRUCell",
    "LSTMCell",
    "MGUCell",
    "MinGRU",
    "MinGRUCell",
    "MinLSTM",
    "MinLSTMCell",
    "PackedSequence",
    "RNNCell",
    "RecurrentBase",
    "StepCost",
    "convert",
    "count_parameters",
    "from_torch",
    "hidden_for_budget",
    "make_spec",
    "pack_padded_sequence",
    "pack_sequence",
    "pad_packed_sequence",
    "pad_sequence",
    "step_cost",
    "to_torch",
]
