"""Every layer variant the package offers, with the cell module that computes one of its steps."""

from __future__ import annotations

import gatedrnn

# (layer class, cell class, options): every kind and every variant option.
VARIANTS = [
    (gatedrnn.RNN, gatedrnn.RNNCell, {}),
    (gatedrnn.RNN, gatedrnn.RNNCell, {"nonlinearity": "relu"}),
    (gatedrnn.LSTM, gatedrnn.LSTMCell, {}),
    (gatedrnn.LSTM, gatedrnn.LSTMCell, {"peepholes": True}),
    (gatedrnn.LSTM, gatedrnn.LSTMCell, {"coupled": True}),
    (gatedrnn.LSTM, gatedrnn.LSTMCell, {"coupled": True, "peepholes": True}),
    (gatedrnn.LSTM, gatedrnn.LSTMCell, {"forget_bias": 1.0}),
    (gatedrnn.GRU, gatedrnn.GRUCell, {}),
    (gatedrnn.GRU, gatedrnn.GRUCell, {"reset": "before"}),
    (gatedrnn.MGU, gatedrnn.MGUCell, {}),
    (gatedrnn.MinGRU, gatedrnn.MinGRUCell, {"scan": "parallel"}),
    (gatedrnn.MinGRU, gatedrnn.MinGRUCell, {"scan": "sequential"}),
    (gatedrnn.MinLSTM, gatedrnn.MinLSTMCell, {"scan": "parallel"}),
    (gatedrnn.MinLSTM, gatedrnn.MinLSTMCell, {"scan": "sequential"}),
]


def variant_id(variant) -> str:
    layer, _, options = variant
    return layer.__name__ + "".join(f"-{k}={v}" for k, v in options.items())


def cell_options(options: dict) -> dict:
    """The layer options that the cell module takes too (``scan`` is a layer-only choice)."""
    return {k: v for k, v in options.items() if k != "scan"}
