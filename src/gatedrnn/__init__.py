"""gatedrnn: gated recurrent layers as drop-in torch.nn modules, and a harness that measures the
claims made for the GRU against the LSTM and the plain RNN."""

from gatedrnn.nn import (
    CELL_KINDS,
    GRU,
    LSTM,
    MGU,
    RNN,
    CellSpec,
    GRUCell,
    LSTMCell,
    MGUCell,
    MinGRU,
    MinGRUCell,
    MinLSTM,
    MinLSTMCell,
    RNNCell,
    StepCost,
    count_parameters,
    hidden_for_budget,
    make_spec,
    step_cost,
)

__version__ = "0.1.0"

__all__ = [
    "CELL_KINDS",
    "GRU",
    "LSTM",
    "MGU",
    "RNN",
    "CellSpec",
    "GRUCell",
    "LSTMCell",
    "MGUCell",
    "MinGRU",
    "MinGRUCell",
    "MinLSTM",
    "MinLSTMCell",
    "RNNCell",
    "StepCost",
    "__version__",
    "count_parameters",
    "hidden_for_budget",
    "make_spec",
    "step_cost",
]
