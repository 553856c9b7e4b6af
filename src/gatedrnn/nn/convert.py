"""Conversion between our layers and cells and torch.nn's, the parameters shared, not copied.

``convert(model)`` gives a model written with torch.nn our backends in one call; ``to="torch"``
and :func:`to_torch` go back where torch.nn has the variant. TorchScript, which cannot compile our
backends, scripts each of our layers as its torch.nn twin (``__prepare_scriptable__``).
"""

from __future__ import annotations

import warnings

from torch import nn
from torch.nn.utils import parametrize

from gatedrnn.nn.base import RecurrentBase
from gatedrnn.nn.cellbase import CellBase
from gatedrnn.nn.gru import GRU, GRUCell
from gatedrnn.nn.lstm import LSTM, LSTMCell
from gatedrnn.nn.rnn import RNN, RNNCell

__all__ = ["convert", "from_torch", "scriptable_twin", "to_torch"]

_TWINS: dict[type[nn.Module], type[RecurrentBase] | type[CellBase]] = {
    nn.RNN: RNN,
    nn.GRU: GRU,
    nn.LSTM: LSTM,
    nn.RNNCell: RNNCell,
    nn.GRUCell: GRUCell,
    nn.LSTMCell: LSTMCell,
}
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def to_torch(module: RecurrentBase | CellBase) -> nn.Module:
    """The torch.nn layer or cell that computes what ``module`` does, holding the same
    :class:`~torch.nn.Parameter` objects (``copy.deepcopy`` the result for independent weights).

    Raises ``ValueError`` where torch.nn has no such variant (GRU ``reset="before"``, peepholes,
    the coupled gate, MGU, minGRU, minLSTM) and for parametrized weights."""
    if not isinstance(module, (RecurrentBase, CellBase)):
        raise TypeError(f"to_torch: expected a gatedrnn layer or cell, got {type(module).__name__}")
    owner = type(module).__name__
    missing = module.spec.torch_lacks
    if missing:
        raise ValueError(
            f"gatedrnn.{owner} (cell {module.spec.name}) has no torch.nn twin: {missing}"
        )
    twin_type = next(t for t, ours in _TWINS.items() if isinstance(module, ours))
    names = _parameter_names(module, owner)
    twin = twin_type(module.input_size, module.hidden_size, **_options(module, names))
    _adopt(twin, module, names)
    if isinstance(twin, nn.RNNBase):
        twin.flatten_parameters()  # a no-op but on cuDNN, which wants its weights in one buffer
    return twin


def from_torch(module: nn.Module, *, backend: str = "auto") -> RecurrentBase | CellBase:
    """Our layer or cell computing what the torch.nn one does, on ``backend``, holding the same
    :class:`~torch.nn.Parameter` objects. ``module`` must be exactly a torch.nn ``RNN``, ``GRU``,
    ``LSTM`` or one of their cells (a subclass may compute something else)."""
    ours_type = _TWINS.get(type(module))
    if parametrize.is_parametrized(module):
        raise ValueError(
            f"from_torch: {type(module).__name__} has parametrized weights, which cannot be "
            "shared; remove the parametrization first"
        )
    if ours_type is None:
        expected = ", ".join(f"torch.nn.{t.__name__}" for t in _TWINS)
        subclass = isinstance(module, (nn.RNNBase, nn.RNNCellBase))
        raise TypeError(
            f"from_torch: expected one of {expected}, got {type(module).__name__}"
            + (" (a subclass may compute something else: convert it by hand)" if subclass else "")
        )
    names = _parameter_names(module, f"torch.nn.{type(module).__name__}")
    options = _options(module, names)
    if isinstance(module, nn.RNNBase):
        options["backend"] = backend
    ours = ours_type(module.input_size, module.hidden_size, **options)
    _adopt(ours, module, names)
    return ours


def convert(model: nn.Module, *, to: str = "gatedrnn", backend: str = "auto") -> nn.Module:
    """Replace, in place, every torch.nn ``RNN``/``GRU``/``LSTM`` and cell inside ``model`` with
    ours on ``backend`` (``to="gatedrnn"``), or every one of ours with its torch.nn twin
    (``to="torch"``); parameters are shared, so an optimizer built before keeps working. Returns
    ``model``, or the converted module where ``model`` is itself a layer or cell. A module used
    twice is converted once."""
    if to not in ("gatedrnn", "torch"):
        raise ValueError(f"convert: expected to='gatedrnn' or 'torch', got {to!r}")
    done: dict[int, nn.Module] = {}

    def converted(module: nn.Module) -> nn.Module:
        if id(module) not in done:
            if to == "torch" and isinstance(module, (RecurrentBase, CellBase)):
                done[id(module)] = to_torch(module)
            elif to == "gatedrnn" and isinstance(module, (nn.RNNBase, nn.RNNCellBase)):
                done[id(module)] = from_torch(module, backend=backend)  # or why it cannot
            else:
                done[id(module)] = module
                for name, child in list(module.named_children()):
                    new = converted(child)
                    if new is not child:
                        setattr(module, name, new)
        return done[id(module)]

    return converted(model)


def scriptable_twin(module: RecurrentBase | CellBase) -> nn.Module:
    """What ``torch.jit.script`` compiles in place of one of our layers or cells: its torch.nn
    twin, holding the same parameters (TorchScript cannot compile our backends). torch puts the
    twin in the model being scripted, as it does with every ``__prepare_scriptable__``."""
    owner = type(module).__name__
    missing = module.spec.torch_lacks
    if missing:
        raise RuntimeError(
            f"torch.jit.script cannot compile gatedrnn.{owner} (cell {module.spec.name}): "
            "TorchScript (deprecated by torch) compiles only torch.nn's recurrent layers, and "
            f"{missing}; use torch.export with backend='reference', or torch.jit.trace (which "
            "records the reference loop for the traced length only)"
        )
    warnings.warn(
        f"torch.jit.script: gatedrnn.{owner} is scripted as its torch.nn twin (the same "
        "parameters, torch's kernels), which torch also puts in the model being scripted",
        stacklevel=3,
    )
    return to_torch(module)


def _parameter_names(module: nn.Module, owner: str) -> list[str]:
    """The module's parameter names, each checked to be a plain Parameter (a parametrized or
    removed weight, as weight-drop code leaves, cannot be shared), and no hooks to lose."""
    for hooks in _HOOKS:
        if getattr(module, hooks, None):
            raise ValueError(
                f"{owner}: has {hooks.strip('_').replace('_', ' ')}, which the converted module "
                "would not have; remove them, convert, and register them on the result"
            )
    if isinstance(module, nn.RNNBase):
        names = list(module._flat_weights_names)
    elif isinstance(module, RecurrentBase):
        names = module._flat_weights_names
    else:
        names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    for name in names:
        if not isinstance(module._parameters.get(name), nn.Parameter):
            raise ValueError(
                f"{owner}: {name} is not a plain Parameter of the module (parametrized or "
                "replaced), so it cannot be shared; remove the parametrization first"
            )
    return names


def _options(module: nn.Module, names: list[str]) -> dict:
    """The constructor arguments, beyond the sizes, that give the other side's twin of
    ``module`` (ours and torch.nn's name them alike), built on the meta device for _adopt."""
    options: dict = {
        "bias": module.bias,
        "device": "meta",
        "dtype": getattr(module, names[0]).dtype,
    }
    if isinstance(module, (nn.RNN, nn.RNNCell, RNN, RNNCell)):
        options["nonlinearity"] = module.nonlinearity
    if isinstance(module, (nn.RNNBase, RecurrentBase)):
        options |= {
            "num_layers": module.num_layers,
            "batch_first": module.batch_first,
            "dropout": module.dropout,
            "bidirectional": module.bidirectional,
        }
        if module.proj_size:
            options["proj_size"] = module.proj_size
    return options


def _adopt(target: nn.Module, source: nn.Module, names: list[str]) -> None:
    """Give ``target`` (built on the meta device) ``source``'s parameters and training mode."""
    own = [name for name, _ in target.named_parameters()]
    if sorted(own) != sorted(names):  # the twins name their weights alike; a guard, not a branch
        raise AssertionError(f"parameter names differ: {sorted(own)} vs {sorted(names)}")
    for name in names:
        setattr(target, name, source._parameters[name])
    target.train(source.training)
