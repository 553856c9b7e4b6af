"""What a recurrent cell is: its kind, its variant options, and everything derived from them.

A :class:`CellSpec` is the single description that the layers, the backends and the counting
functions share. It fixes the parameter layout of one layer direction (names and shapes, in
torch.nn's order) and the per-step costs used by the "simpler" and "fewer parameters" claims.

Cell kinds and their gate blocks (rows of ``weight_ih`` in units of H, top to bottom):

=========  =======================  ==========================================================
kind       gate blocks              source
=========  =======================  ==========================================================
rnn        h                        Elman 1990; torch.nn.RNN
lstm       i | f | g | o            Hochreiter & Schmidhuber 1997; torch.nn.LSTM
lstm (coupled)  i | g | o           CIFG, Greff et al. 2017: f = 1 − i
gru        r | z | n                Cho et al. 2014; torch.nn.GRU
mgu        f | n                    Zhou et al. 2016, minimal gated unit
mingru     z | h                    Feng et al. 2024, "Were RNNs all we needed?"
minlstm    i | f | h                Feng et al. 2024
=========  =======================  ==========================================================
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = [
    "CELL_KINDS",
    "CellSpec",
    "StepCost",
    "literal",
    "make_spec",
    "parse_cell",
    "spec_from_options",
    "variant_options",
]

CELL_KINDS = ("rnn", "lstm", "gru", "mgu", "mingru", "minlstm")

# The options each kind accepts, with their defaults; any other option is an error.
_OPTIONS: dict[str, dict[str, object]] = {
    "rnn": {"nonlinearity": "tanh"},
    "lstm": {"peepholes": False, "coupled": False},
    "gru": {"reset": "after"},
    "mgu": {},
    "mingru": {"scan": "parallel"},
    "minlstm": {"scan": "parallel"},
}
_CHOICES: dict[str, tuple[object, ...]] = {
    "nonlinearity": ("tanh", "relu"),
    "reset": ("after", "before"),
    "scan": ("parallel", "sequential"),
    "peepholes": (False, True),
    "coupled": (False, True),
}


@dataclass(frozen=True)
class StepCost:
    """The cost of one time step of one layer direction for one sequence (batch size 1).

    ``matmul_flops`` counts 2·m·n per matrix-vector product; ``pointwise_flops`` counts one per
    elementwise add, subtract, multiply or divide (bias additions included); ``nonlinearities``
    counts elementwise sigmoid / tanh / relu / g evaluations, which are not in the FLOPs.
    """

    gates: int  # sigmoid gates (LSTM i, f, o; GRU r, z; ...)
    weight_matrices: int  # gate-block matrices: one per (gate block, input or recurrent side)
    state_tensors: int  # tensors carried from step to step
    matmul_flops: int
    pointwise_flops: int
    nonlinearities: int

    @property
    def flops(self) -> int:
        return self.matmul_flops + self.pointwise_flops


@dataclass(frozen=True)
class CellSpec:
    """A recurrent cell kind and its variant options.

    Build one with :func:`make_spec`, which rejects unknown kinds and options. Options that do not
    apply to ``kind`` keep their defaults.
    """

    kind: str
    nonlinearity: str = "tanh"  # rnn: "tanh" | "relu"
    reset: str = "after"  # gru: reset gate applied after ("after") or before the recurrent product
    peepholes: bool = False  # lstm: diagonal peephole connections (Graves 2013)
    coupled: bool = False  # lstm: coupled input-forget gate, f = 1 - i (Greff et al. 2017)
    scan: str = "parallel"  # mingru/minlstm: "parallel" log-space scan or "sequential" loop

    @property
    def name(self) -> str:
        """A short readable name such as ``gru``, ``gru(reset=before)`` or ``lstm(peepholes)``."""
        changed = [
            key
            if isinstance(default, bool)
            else str(getattr(self, key))
            if key == "nonlinearity"
            else f"{key}={getattr(self, key)}"
            for key, default in _OPTIONS[self.kind].items()
            if getattr(self, key) != default and key != "scan"
        ]
        return f"{self.kind}({', '.join(changed)})" if changed else self.kind

    @property
    def torch_lacks(self) -> str | None:
        """Why torch (torch.nn's layers and their fused kernels) cannot compute this cell, or
        None where it can: what the ``cudnn`` backend and the conversion to torch.nn both ask."""
        if self.kind not in ("rnn", "gru", "lstm"):
            return f"torch has no fused kernel for {self.kind}: torch.nn has no {self.kind} cell"
        if self.kind == "gru" and self.reset != "after":
            return (
                "torch.nn.GRU and its kernels apply the reset gate after the recurrent product "
                "(reset='after' only)"
            )
        if self.kind == "lstm" and (self.peepholes or self.coupled):
            return "torch.nn.LSTM and its kernels have no peepholes or coupled gate"
        return None

    @property
    def gate_blocks(self) -> int:
        """Rows of ``weight_ih`` (and ``weight_hh``) in units of the hidden size."""
        if self.kind == "lstm":
            return 3 if self.coupled else 4
        return {"rnn": 1, "gru": 3, "mgu": 2, "mingru": 2, "minlstm": 3}[self.kind]

    @property
    def recurrent(self) -> bool:
        """Whether the gates read the previous hidden state (``weight_hh`` exists).

        minGRU and minLSTM drop that dependency, which is what makes the parallel scan possible.
        """
        return self.kind not in ("mingru", "minlstm")

    @property
    def num_states(self) -> int:
        """Tensors carried between steps: (h, c) for the LSTM, h for every other cell."""
        return 2 if self.kind == "lstm" else 1

    @property
    def num_peepholes(self) -> int:
        """Peephole vectors of length H: i|f|o, or i|o when the forget gate is coupled."""
        if not self.peepholes:
            return 0
        return 2 if self.coupled else 3

    def param_shapes(
        self, input_size: int, hidden_size: int, *, bias: bool = True, proj_size: int = 0
    ) -> list[tuple[str, tuple[int, ...]]]:
        """Names and shapes of one layer direction's parameters, in torch.nn's order.

        ``weight_ih`` (G·H, H_in), ``weight_hh`` (G·H, H_out), ``bias_ih`` (G·H), ``bias_hh``
        (G·H), ``weight_hr`` (P, H) when ``proj_size`` = P > 0, then ``weight_peep`` (k·H) for
        peepholes. H_out is P when projecting, else H.
        """
        rows = self.gate_blocks * hidden_size
        out_size = proj_size if proj_size > 0 else hidden_size
        shapes: list[tuple[str, tuple[int, ...]]] = [("weight_ih", (rows, input_size))]
        if self.recurrent:
            shapes.append(("weight_hh", (rows, out_size)))
        if bias:
            shapes.append(("bias_ih", (rows,)))
            if self.recurrent:
                shapes.append(("bias_hh", (rows,)))
        if proj_size > 0:
            shapes.append(("weight_hr", (proj_size, hidden_size)))
        if self.peepholes:
            shapes.append(("weight_peep", (self.num_peepholes * hidden_size,)))
        return shapes

    def step_cost(
        self, input_size: int, hidden_size: int, *, bias: bool = True, proj_size: int = 0
    ) -> StepCost:
        """Per-step costs of one layer direction for one sequence; see :class:`StepCost`."""
        H, b = hidden_size, int(bias)
        out_size = proj_size if proj_size > 0 else hidden_size
        G = self.gate_blocks
        matmul = 2 * G * H * input_size + (2 * G * H * out_size if self.recurrent else 0)
        if proj_size > 0:
            matmul += 2 * proj_size * H
        if self.kind == "rnn":
            # act(W x + b_ih + U h + b_hh)
            gates, pointwise, nonlin = 0, H + 2 * b * H, H
        elif self.kind == "lstm":
            # gate pre-activations: biases and the sum of both products; c' = f⊙c + i⊙g;
            # h = o⊙tanh(c'); coupled adds f = 1 − i; each peephole is one multiply and one add.
            gates = 2 if self.coupled else 3
            pointwise = G * H * (1 + 2 * b) + 3 * H + H + (H if self.coupled else 0)
            pointwise += 2 * self.num_peepholes * H
            nonlin = gates * H + 2 * H
        elif self.kind == "gru":
            # biases (6bH), r and z sums (2H), r⊙(.) and its add (2H), (1−z)⊙n + z⊙h (4H);
            # both reset forms cost the same.
            gates, pointwise, nonlin = 2, 6 * b * H + 8 * H, 3 * H
        elif self.kind == "mgu":
            # biases (4bH), f sum (H), f⊙h (H), n sum (H), (1−f)⊙h + f⊙n (4H)
            gates, pointwise, nonlin = 1, 4 * b * H + 7 * H, 2 * H
        elif self.kind == "mingru":
            # biases (2bH), (1−z)⊙h + z⊙g(h̃) (4H); nonlinearities: σ and g
            gates, pointwise, nonlin = 1, 2 * b * H + 4 * H, 2 * H
        else:  # minlstm
            # biases (3bH), f + i (H), two normalising divides (2H), f'⊙h + i'⊙g(h̃) (3H)
            gates, pointwise, nonlin = 2, 3 * b * H + 6 * H, 3 * H
        matrices = G * (2 if self.recurrent else 1) + (1 if proj_size > 0 else 0)
        return StepCost(
            gates=gates,
            weight_matrices=matrices,
            state_tensors=self.num_states,
            matmul_flops=matmul,
            pointwise_flops=pointwise,
            nonlinearities=nonlin,
        )


def variant_options(kind: str) -> dict[str, object]:
    """The variant options ``kind`` accepts, with their defaults.

    >>> variant_options("gru")
    {'reset': 'after'}
    """
    if kind not in _OPTIONS:
        raise ValueError(f"unknown cell {kind!r}; expected one of: {', '.join(CELL_KINDS)}")
    return dict(_OPTIONS[kind])


def literal(text: str) -> bool | int | float | str:
    """A value written on a command line: true/false, an int, a float, or else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_cell(text: str) -> tuple[str, dict[str, object]]:
    """A cell as a command line writes it, ``gru`` or ``CELL:KEY=VALUE[:KEY=VALUE…]``: its kind
    and its layer options (values through :func:`literal`), not yet checked against the kind.

    >>> parse_cell("lstm:peepholes=true:forget_bias=1")
    ('lstm', {'peepholes': True, 'forget_bias': 1})
    """
    kind, *pairs = text.split(":")
    options: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or key in options or key in ("cell", "label"):
            raise ValueError(
                f"expected CELL or CELL:KEY=VALUE[:KEY=VALUE…] such as gru:reset=before, "
                f"got {text!r}"
            )
        options[key] = literal(value)
    return kind, options


def spec_from_options(kind: str, options: dict[str, object]) -> CellSpec:
    """The :class:`CellSpec` of a layer built with ``options``: its variant options, checked;
    the layer's other keywords (``bias``, ``init``, ``forget_bias`` …) are not the cell's.

    >>> spec_from_options("gru", {"reset": "before", "bias": False}).name
    'gru(reset=before)'
    """
    variants = variant_options(kind)
    return make_spec(kind, **{k: v for k, v in options.items() if k in variants})


def make_spec(kind: str, **options: object) -> CellSpec:
    """Build a :class:`CellSpec`, checking the kind, the option names and their values.

    >>> make_spec("gru", reset="before").name
    'gru(reset=before)'
    """
    if not isinstance(kind, str) or kind.lower() not in _OPTIONS:
        raise ValueError(f"unknown cell {kind!r}; expected one of: {', '.join(CELL_KINDS)}")
    kind = kind.lower()
    allowed = _OPTIONS[kind]
    for key, value in options.items():
        if key not in allowed:
            expected = ", ".join(sorted(allowed)) or "none"
            raise ValueError(
                f"unknown option {key!r} for cell {kind!r}; its options are: {expected}"
            )
        choices = _CHOICES[key]
        if value not in choices or type(value) is not type(choices[0]):
            raise ValueError(
                f"option {key!r} of cell {kind!r} must be one of {list(choices)}, got {value!r}"
            )
    return dataclasses.replace(CellSpec(kind), **options)
