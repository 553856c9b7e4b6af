"""Models shared by tasks: a gatedrnn layer between an optional input map and a linear head."""

from __future__ import annotations

from torch import Tensor, nn

import gatedrnn
from gatedrnn.nn.init import check_init_options
from gatedrnn.nn.packing import pack_padded_sequence, pad_packed_sequence
from gatedrnn.nn.spec import spec_from_options, variant_options

__all__ = ["LAYERS", "OutputLayer", "SequenceModel", "check_layer_options", "make_layer"]

LAYERS: dict[str, type[nn.Module]] = {
    "rnn": gatedrnn.RNN,
    "lstm": gatedrnn.LSTM,
    "gru": gatedrnn.GRU,
    "mgu": gatedrnn.MGU,
    "mingru": gatedrnn.MinGRU,
    "minlstm": gatedrnn.MinLSTM,
}


class OutputLayer(nn.Linear):
    """``nn.Linear`` (same parameters, state_dict and results) whose product runs through the
    ``cpu`` backend's packed GEMM on the CPU where that one takes the many-row products
    (:func:`gatedrnn.backends.cpu.linear`): the output layers over a vocabulary, the largest part
    of a language model's training step. On an AMD EPYC (Zen 5) a PTB model's step (2 LSTM
    layers, B = 20, bptt 35) took 0.72–0.77 of nn.Linear's time at H = 200, 0.74–0.80 at
    H = 650. Elsewhere (a GPU, an Intel CPU with MKL) it is nn.Linear."""

    def forward(self, input: Tensor) -> Tensor:
        from gatedrnn.backends.cpu import linear

        return linear(input, self.weight, self.bias)


def check_layer_options(cell: str, options: dict[str, object]) -> None:
    """Refuse a cell or a layer option a task's model cannot take, naming the ones it can.

    A run's ``cell_options`` are the cell's variant options (``reset``, ``peepholes`` …) and the
    layer keywords that leave the model's shapes and input layout alone: ``bias``, ``init`` and
    the LSTM's ``forget_bias``. The task's model sets the others (``batch_first``,
    ``bidirectional`` and ``proj_size`` would change what its head reads; ``dropout``,
    ``backend``, ``device`` and ``dtype`` are settings of the run).

    >>> check_layer_options("gru", {"reset": "before", "init": "orthogonal"})
    >>> check_layer_options("gru", {"batch_first": True})
    Traceback (most recent call last):
    ...
    ValueError: unknown option 'batch_first' for cell 'gru'; expected one of: reset, bias, init
    """
    if cell not in LAYERS:
        raise ValueError(f"unknown cell {cell!r}; expected one of: {', '.join(LAYERS)}")
    accepted = [
        *variant_options(cell),
        "bias",
        "init",
        *(["forget_bias"] if cell == "lstm" else []),
    ]
    for key in options:
        if key not in accepted:
            raise ValueError(
                f"unknown option {key!r} for cell {cell!r}; expected one of: {', '.join(accepted)}"
            )
    spec = spec_from_options(cell, options)
    bias = options.get("bias", True)
    if not isinstance(bias, bool):
        raise ValueError(f"option 'bias' of cell {cell!r} must be true or false, got {bias!r}")
    try:
        init, forget_bias = options.get("init", "torch"), options.get("forget_bias", 0.0)
        check_init_options(spec, init, forget_bias, bias)
    except TypeError as error:  # a forget_bias that is not a number
        raise ValueError(str(error)) from None


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
