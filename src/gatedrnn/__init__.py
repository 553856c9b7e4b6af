"""gatedrnn: gated recurrent layers as drop-in torch.nn modules, and a harness that measures the
claims made for the GRU against the LSTM and the plain RNN.

Everything in :mod:`gatedrnn.nn` is importable from here: the layers (``RNN``, ``LSTM``, ``GRU``,
``MGU``, ``MinGRU``, ``MinLSTM``), their cells, the counting functions, the packing helpers and
the conversion to and from torch.nn (``convert``, ``from_torch``, ``to_torch``).
"""

from gatedrnn import nn as _nn
from gatedrnn.nn import *  # noqa: F403

__version__ = "0.1.0"

__all__ = [*_nn.__all__, "__version__"]
