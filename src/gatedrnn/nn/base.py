"""The base class every recurrent layer shares: argument checks, parameter naming over
layers × directions, input forms (batched, unbatched, ``batch_first``, ``PackedSequence``),
initial states, backend dispatch and ``extra_repr``. Each layer only declares its cell.
"""

from __future__ import annotations

import numbers
import warnings

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from gatedrnn.backends import (
    LayerConfig,
    available_backends,
    get_backend,
    load_backends,
    resolve_backend,
    tracing,
)
from gatedrnn.nn.checks import (
    MismatchError,
    autocast_dtype,
    check_input,
    check_positive_int,
    check_states,
    current_weight,
    fx_leaf_call,
)
from gatedrnn.nn.init import check_init_options, init_recurrent_
from gatedrnn.nn.spec import CellSpec

__all__ = ["RecurrentBase"]

_State = Tensor | tuple[Tensor, Tensor]


class RecurrentBase(nn.Module):
    """A stack of recurrent layers, optionally bidirectional; the common part of every layer.

    Parameters of layer k (direction suffix ``_reverse`` for the backward direction) are named as
    in torch.nn: ``weight_ih_l{k}``, ``weight_hh_l{k}``, ``bias_ih_l{k}``, ``bias_hh_l{k}``,
    ``weight_hr_l{k}`` (LSTM projection), plus ``weight_peep_l{k}`` for LSTM peepholes.
    Layer 0 reads H_in features, deeper layers D·H_out.

    Shapes (N batch, L sequence length, D = 2 if bidirectional else 1):
        input: (L, N, H_in), (N, L, H_in) with ``batch_first``, (L, H_in) unbatched, or a
            ``PackedSequence``.
        h_0: (D·num_layers, N, H_out), or (D·num_layers, H_out) unbatched; zeros if omitted.
        output: (L, N, D·H_out) (batch first if asked) or a ``PackedSequence`` like the input.

    Differences from torch.nn: ``backend`` and ``init`` keyword arguments; dropout masks are drawn
    from torch's generator but not in the same order as torch.nn's kernels, so only the dropout
    distribution, not each mask, matches.
    """

    def __init__(
        self,
        spec: CellSpec,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        *,
        backend: str = "auto",
        init: str = "torch",
        forget_bias: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.input_size = check_positive_int(owner, "input_size", input_size)
        self.hidden_size = check_positive_int(owner, "hidden_size", hidden_size)
        self.num_layers = check_positive_int(owner, "num_layers", num_layers)
        self.proj_size = check_positive_int(owner, "proj_size", proj_size, allow_zero=True)
        if self.proj_size >= self.hidden_size:
            raise ValueError(
                f"{owner}: proj_size must be smaller than hidden_size ({hidden_size}), "
                f"got {proj_size}"
            )
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Number):
            raise TypeError(f"{owner}: dropout must be a number in [0, 1], got {dropout!r}")
        if not 0 <= dropout <= 1:
            raise ValueError(f"{owner}: dropout must be a number in [0, 1], got {dropout}")
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                f"{owner}: dropout={dropout} acts between layers, so it has no effect with "
                "num_layers=1",
                stacklevel=2,
            )
        if backend != "auto" and backend not in available_backends():
            raise ValueError(
                f"{owner}: unknown backend {backend!r}; expected 'auto' or one of: "
                f"{', '.join(available_backends())}"
            )
        load_backends(backend)
        check_init_options(spec, init, forget_bias, bias)
        self.spec = spec
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.backend = backend
        self.last_backend: str | None = None
        self.init = init
        self.forget_bias = float(forget_bias)

        factory = {"device": device, "dtype": dtype}
        self._weight_names: list[list[tuple[str, str]]] = []  # per layer direction: (base, full)
        for layer in range(self.num_layers):
            layer_input = self.input_size if layer == 0 else self.output_size * self.num_directions
            for direction in range(self.num_directions):
                suffix = "_reverse" if direction == 1 else ""
                names = []
                for base, shape in spec.param_shapes(
                    layer_input, self.hidden_size, bias=self.bias, proj_size=self.proj_size
                ):
                    full = f"{base}_l{layer}{suffix}"
                    self.register_parameter(full, nn.Parameter(torch.empty(shape, **factory)))
                    names.append((base, full))
                self._weight_names.append(names)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def output_size(self) -> int:
        """Features of h per direction: ``proj_size`` when projecting, else ``hidden_size``."""
        return self.proj_size if self.proj_size > 0 else self.hidden_size

    @property
    def config(self) -> LayerConfig:
        """What a backend needs to know about this stack."""
        return LayerConfig(
            spec=self.spec,
            input_size=self.input_size,
            hidden_size=self.hidden_size,
            num_layers=self.num_layers,
            bias=self.bias,
            dropout=self.dropout,
            bidirectional=self.bidirectional,
            proj_size=self.proj_size,
        )

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """The parameters of each layer direction, in torch.nn's order."""
        return [[getattr(self, full) for _, full in names] for names in self._weight_names]

    @property
    def _flat_weights_names(self) -> list[str]:
        """torch.nn.RNNBase's private list of parameter names, in its order, which code written
        for torch.nn (weight dropping, pruning helpers) reads."""
        return [full for names in self._weight_names for _, full in names]

    @property
    def _flat_weights(self) -> list[Tensor]:
        """The tensors ``_flat_weights_names`` names, as they are now (parametrized ones too)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    @property
    def _all_weights(self) -> list[list[str]]:
        """torch.nn.RNNBase's private names of each layer direction's parameters."""
        return [[full for _, full in names] for names in self._weight_names]

    # torch.nn.RNNBase's public checks, with its semantics and messages, for code written against
    # them (subclasses and wrappers of torch.nn's layers call them); our forward checks its own
    # arguments with messages of its own and does not call these.
    def check_input(self, input: Tensor, batch_sizes: Tensor | None) -> None:
        """As torch.nn.RNNBase's: ``input`` (time-major packed data when ``batch_sizes`` is
        given) has the parameters' dtype (unless autocast is on), 3 dimensions (2 when packed)
        and ``input_size`` features."""
        dtype = self._flat_weights[0].dtype
        if input.dtype != dtype and not torch._C._is_any_autocast_enabled():
            raise ValueError(
                f"RNN input dtype ({input.dtype}) does not match weight dtype ({dtype}). "
                f"Convert input: input.to({dtype}), or convert model: model.to({input.dtype})"
            )
        expected_input_dim = 2 if batch_sizes is not None else 3
        if input.dim() != expected_input_dim:
            raise RuntimeError(
                f"input must have {expected_input_dim} dimensions, got {input.dim()}"
            )
        if self.input_size != input.size(-1):
            raise RuntimeError(
                f"input.size(-1) must be equal to input_size. Expected {self.input_size}, got "
                f"{input.size(-1)}"
            )

    def get_expected_hidden_size(
        self, input: Tensor, batch_sizes: Tensor | None
    ) -> tuple[int, int, int]:
        """As torch.nn.RNNBase's: h_0's shape (L·D, N, H_out) for this input."""
        return (*self._expected_lead(input, batch_sizes), self.output_size)

    def get_expected_cell_size(
        self, input: Tensor, batch_sizes: Tensor | None
    ) -> tuple[int, int, int]:
        """As torch.nn.LSTM's: c_0's shape (L·D, N, H_cell) for this input (the cell's width,
        also for the cells without one)."""
        return (*self._expected_lead(input, batch_sizes), self.hidden_size)

    def _expected_lead(self, input: Tensor, batch_sizes: Tensor | None) -> tuple[int, int]:
        if batch_sizes is not None:
            mini_batch = int(batch_sizes[0])
        else:
            mini_batch = input.size(0) if self.batch_first else input.size(1)
        return self.num_layers * self.num_directions, mini_batch

    def check_hidden_size(
        self,
        hx: Tensor,
        expected_hidden_size: tuple[int, int, int],
        msg: str = "Expected hidden size {}, got {}",
    ) -> None:
        """As torch.nn.RNNBase's: a RuntimeError ``msg`` where ``hx`` is not of that shape."""
        if hx.size() != expected_hidden_size:
            raise RuntimeError(msg.format(expected_hidden_size, list(hx.size())))

    def check_forward_args(
        self, input: Tensor, hidden: Tensor | tuple[Tensor, Tensor], batch_sizes: Tensor | None
    ) -> None:
        """As torch.nn's layers': the input (:meth:`check_input`) and the state's shapes, one
        tensor or (for the LSTM) the pair (h_0, c_0)."""
        self.check_input(input, batch_sizes)
        expected = self.get_expected_hidden_size(input, batch_sizes)
        if self.spec.num_states == 1:
            self.check_hidden_size(hidden, expected)  # type: ignore[arg-type]
            return
        self.check_hidden_size(hidden[0], expected, "Expected hidden[0] size {}, got {}")
        cell = self.get_expected_cell_size(input, batch_sizes)
        self.check_hidden_size(hidden[1], cell, "Expected hidden[1] size {}, got {}")

    def permute_hidden(self, hx: _State, permutation: Tensor | None) -> _State:
        """As torch.nn's layers': the state's batch (dimension 1) in ``permutation``'s order."""
        if permutation is None:
            return hx
        if isinstance(hx, Tensor):
            return hx.index_select(1, permutation)
        return tuple(s.index_select(1, permutation) for s in hx)  # type: ignore[return-value]

    def reset_parameters(self) -> None:
        init_recurrent_(self, self.spec, self.hidden_size, self.init, self.forget_bias)

    def flatten_parameters(self) -> None:
        """Present for drop-in use with torch.nn code; our backends need no flat buffer."""

    def to_torch(self) -> nn.Module:
        """The torch.nn layer computing what this one does, holding the same parameters (see
        :func:`gatedrnn.nn.convert.to_torch`)."""
        from gatedrnn.nn.convert import to_torch

        return to_torch(self)

    def __prepare_scriptable__(self) -> nn.Module:
        from gatedrnn.nn.convert import scriptable_twin

        return scriptable_twin(self)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {
            "proj_size": 0, "num_layers": 1, "bias": True, "batch_first": False,
            "dropout": 0.0, "bidirectional": False, "backend": "auto", "init": "torch",
            "forget_bias": 0.0,
        }  # fmt: skip
        for key, default in defaults.items():
            if getattr(self, key) != default:
                s += f", {key}={getattr(self, key)!r}"
        if self.spec.name != self.spec.kind:
            s += f", cell={self.spec.name}"
        return s

    def _state_shapes(self, batch: int | None) -> tuple[tuple[int, ...], ...]:
        lead = (self.num_layers * self.num_directions,) + ((batch,) if batch is not None else ())
        shapes = ((*lead, self.output_size), (*lead, self.hidden_size))
        return shapes[: self.spec.num_states]

    def _prepare_states(self, hx: _State | None, x: Tensor, batched: bool) -> tuple[Tensor, ...]:
        """Validate ``hx`` (or make zeros) and return it as a tuple of (L·D, B, ·) tensors."""
        owner = type(self).__name__
        names = ("h_0", "c_0")[: self.spec.num_states]
        if hx is None:
            return tuple(x.new_zeros(s) for s in self._state_shapes(x.shape[1]))
        if self.spec.num_states == 2:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                raise TypeError(
                    f"{owner}: expected hx to be a tuple (h_0, c_0), got {_describe(hx)}"
                )
            states = tuple(hx)
        else:
            if not isinstance(hx, Tensor):
                raise TypeError(f"{owner}: expected hx to be a Tensor, got {_describe(hx)}")
            states = (hx,)
        check_states(owner, names, states, self._state_shapes(x.shape[1] if batched else None), x)
        return states if batched else tuple(s.unsqueeze(1) for s in states)

    def _layer_weights(self) -> list[dict[str, Tensor]]:
        """Each layer direction's weights by base name, as they are now (:func:`current_weight`)."""
        return [
            {base: current_weight(self, full) for base, full in names}
            for names in self._weight_names
        ]

    def forward(
        self, input: Tensor | PackedSequence, hx: _State | None = None
    ) -> tuple[Tensor | PackedSequence, _State]:
        owner = type(self).__name__
        packed = isinstance(input, PackedSequence)
        lengths = None
        if packed:
            x, lengths = pad_packed_sequence(input)  # (T, B, H_in), the caller's batch order
            batched = True
        elif not isinstance(input, Tensor):
            if (recorded := fx_leaf_call(self, input, hx)) is not None:
                return recorded
            raise TypeError(
                f"{owner}: expected input to be a Tensor or PackedSequence, got {_describe(input)}"
            )
        elif input.dim() not in (2, 3):
            layout = "(N, L, H_in)" if self.batch_first else "(L, N, H_in)"
            raise ValueError(
                f"{owner}: expected a 3-D batched input {layout} or a 2-D unbatched input "
                f"(L, H_in), got {input.dim()}-D input of shape {tuple(input.shape)}"
            )
        else:
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
        weights = self._layer_weights()
        first = weights[0]["weight_ih"]
        amp = autocast_dtype(x, first.dtype)
        if amp is not None:  # under torch.autocast: compute in its dtype, as torch.nn's RNNs do
            # (all but its GRU on the CPU, which autocast leaves in float32: every cell alike here)
            x = x.to(amp)
            if isinstance(hx, Tensor):
                hx = hx.to(amp)
            elif isinstance(hx, (tuple, list)):
                hx = tuple(s.to(amp) if isinstance(s, Tensor) else s for s in hx)
        check_input(owner, x, self.input_size, amp or first.dtype, first.device)
        if x.shape[0] == 0:
            raise MismatchError(
                f"{owner}: expected a sequence of at least one time step, got input of shape "
                f"{tuple(input.shape)}"
            )
        if hx is not None and not batched and isinstance(hx, Tensor) and hx.dim() != 2:
            raise ValueError(
                f"{owner}: for unbatched 2-D input, expected 2-D hx (L·D, H_out), got "
                f"{hx.dim()}-D hx of shape {tuple(hx.shape)}"
            )
        states = self._prepare_states(hx, x, batched)
        config = self.config
        backend = resolve_backend(self.backend, config, x)
        if x.shape[1] == 0:  # an empty batch, as torch.nn allows: nothing for a fast loop to do
            backend = get_backend("reference")
        if not (torch.compiler.is_dynamo_compiling() and tracing() == "torch.export"):
            # what "auto" chose for the latest call (strict export would warn of the attribute
            # set in forward as a side effect); a plain attribute, set without Module.__setattr__
            self.__dict__["last_backend"] = backend.name
        if amp is not None:
            weights = [{name: w.to(amp) for name, w in layer.items()} for layer in weights]
        output, final = backend.forward(config, x, lengths, states, weights, self.training)
        if packed:
            output = _pack_like(output, lengths, input)
        elif not batched:
            output, final = output.squeeze(1), tuple(s.squeeze(1) for s in final)
        elif self.batch_first:
            output = output.transpose(0, 1)
        return output, (final if self.spec.num_states == 2 else final[0])


def _pack_like(output: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """Pack a padded (T, B, ·) output in the caller's batch order the way ``like`` was packed."""
    if like.sorted_indices is not None:
        output = output.index_select(1, like.sorted_indices)
        lengths = lengths[like.sorted_indices.cpu()]
    data = pack_padded_sequence(output, lengths, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def _describe(value: object) -> str:
    if isinstance(value, Tensor):
        return f"a Tensor of shape {tuple(value.shape)}"
    return type(value).__name__
