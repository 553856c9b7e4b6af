"""The layers under ``torch.compile``: the same outputs and gradients as eager. Backends written
in PyTorch (``reference``, ``cudnn``) are traced into one graph, from the first call
(``fullgraph``), and so is the ``cpu`` backend, whose loops enter the graph as one custom
operator per direction (checked with ``torch.library.opcheck``), without Dynamo warnings. (The
``triton`` backend's own check is in ``tests/backends/test_triton.py``.) AOTAutograd's eager
backend stands in for Inductor (one test uses Inductor itself): it traces the forward and the
backward the same way and compiles nothing. ``torch.export`` takes the layers with the backends
written in PyTorch operations (``auto`` picks one of those while exporting), and the ``cpu``
loops, when named, as their operator. ``torch.jit.trace`` records torch.nn's fused operator
(``auto``) or the loops' (``cpu``), so the trace saves and runs any length; the reference loop
is recorded step by step, which the trace says and then holds to."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.backends import BackendUnsupportedError


def _pair(cls, backend, **options):
    torch.manual_seed(0)
    ours = cls(4, 6, backend=backend, **options)
    eager = cls(4, 6, backend=backend, **options)
    eager.load_state_dict(ours.state_dict())
    return ours, eager


def _run(layer, x):
    x = x.clone().requires_grad_()
    out, final = layer(x)
    finals = final if isinstance(final, tuple) else (final,)
    (out.sum() + sum(f.pow(2).sum() for f in finals)).backward()
    return [out, *finals, x.grad, *(p.grad for p in layer.parameters())]


@pytest.mark.parametrize("backend", ["reference", "cudnn"])
@pytest.mark.parametrize("cls", [gatedrnn.GRU, gatedrnn.LSTM], ids=lambda c: c.__name__)
def test_pytorch_backends_compile_into_one_graph(cls, backend):
    torch._dynamo.reset()
    ours, eager = _pair(cls, backend, num_layers=2, bidirectional=True)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)  # a break would raise
    x = torch.randn(5, 3, 4)
    for got, want in zip(_run(compiled, x), _run(eager, x), strict=True):
        torch.testing.assert_close(got, want)
    assert ours.last_backend == backend


@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("backend", ["auto", "cpu", "cpu-python"])
@pytest.mark.parametrize(
    "cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN], ids=lambda c: c.__name__
)
def test_cpu_loops_compile_into_one_graph(cls, backend, packed):
    """Each direction of the ``cpu`` backend is one custom operator under torch.compile, forward
    and backward: no graph break (``fullgraph``; packed input breaks it where the layer calls
    torch's ``pad_packed_sequence``, which Dynamo does not trace), no Dynamo warning, the eager
    results."""
    torch._dynamo.reset()
    ours, eager = _pair(cls, backend, num_layers=2, bidirectional=True)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=not packed)  # a break raises
    x = torch.randn(5, 3, 4)
    if packed:
        lengths = torch.tensor([3, 5, 2])
        compiled, eager = _Packed(compiled, lengths), _Packed(eager, lengths)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = _run(compiled, x)
    dynamo = [str(w.message) for w in caught if "torch/_dynamo" in w.filename]
    assert not dynamo, dynamo
    for got, want in zip(results, _run(eager, x), strict=True):
        torch.testing.assert_close(got, want)
    assert ours.last_backend == (backend if backend != "auto" else "cpu")


@pytest.mark.parametrize("backend", ["cpu", "cpu-python"])
@pytest.mark.parametrize("cls", [gatedrnn.MinGRU, gatedrnn.MinLSTM], ids=lambda c: c.__name__)
def test_minimal_cells_cpu_loops_compile_into_one_graph(cls, backend):
    """The minimal cells' loops too (an operator call without W_hh or b_hh)."""
    torch._dynamo.reset()
    ours, eager = _pair(cls, backend, num_layers=2, bidirectional=True)
    compiled = torch.compile(ours, backend="aot_eager", fullgraph=True)
    x = torch.randn(5, 3, 4)
    for got, want in zip(_run(compiled, x), _run(eager, x), strict=True):
        torch.testing.assert_close(got, want)
    assert ours.last_backend == backend


class _Packed(torch.nn.Module):
    """``layer`` on x packed with ``lengths``, its output padded again."""

    def __init__(self, layer, lengths):
        super().__init__()
        self.layer, self.lengths = layer, lengths

    def forward(self, x):
        out, final = self.layer(pack_padded_sequence(x, self.lengths, enforce_sorted=False))
        return pad_packed_sequence(out)[0], final


# (kind, flag, peepholes, projection): the direction operator's cells (flag: the RNN's relu,
# the GRU's reset after, the LSTM's coupled gate, the minimal cells' minLSTM)
_OPERATOR_CELLS = {
    "rnn": ("rnn", False, False, False),
    "gru": ("gru", True, False, False),
    "lstm": ("lstm", False, False, False),
    "lstm-peep": ("lstm", False, True, False),
    "lstm-cifg-peep": ("lstm", True, True, False),
    "lstm-proj": ("lstm", False, False, True),
    "lstm-cifg-peep-proj": ("lstm", True, True, True),
    "mgu": ("mgu", False, False, False),
    "mingru": ("mingru", False, False, False),
    "minlstm": ("minlstm", True, False, False),
}


def _direction_inputs(cell: str, bias: bool, lengths: bool) -> tuple:
    """Float64 arguments of the ``cpu`` backend's direction operator (T 5, B 3, I 4, H 3, and
    P 2 with the projection)."""
    kind, flag, peepholes, projection = _OPERATOR_CELLS[cell]
    gates = {"rnn": 1, "gru": 3, "lstm": 3 if flag else 4, "mgu": 2, "mingru": 2, "minlstm": 3}[
        kind
    ]
    P = 2 if projection else 3
    torch.manual_seed(0)

    def leaf(*shape):
        return torch.randn(*shape, dtype=torch.float64, requires_grad=True)

    c0 = leaf(3, 3) if kind == "lstm" else None
    recurrent = kind not in ("mingru", "minlstm")  # the minimal cells: no W_hh, no b_hh
    biases = (leaf(gates * 3), leaf(gates * 3) if recurrent else None) if bias else (None, None)
    peep = leaf((gates - 1) * 3) if peepholes else None
    w_hr = leaf(P, 3) if projection else None
    sizes = torch.tensor([5, 4, 2]) if lengths else None  # sorted, as the backend passes them
    w_hh = leaf(gates * 3, P) if recurrent else None
    return (leaf(5, 3, 4), leaf(3, P), c0, leaf(gates * 3, 4), w_hh, *biases, peep, w_hr, sizes,
            kind, flag, True)  # fmt: skip


# every (bias, lengths) pair for the plain cells; for the variants, which share their plumbing,
# the pair with both and the pair with neither
_OPERATOR_CASES = [
    pytest.param(cell, bias, lengths, id=f"{cell}-{'bias' if bias else 'nobias'}-"
                 f"{'lengths' if lengths else 'full'}")
    for cell in _OPERATOR_CELLS
    for bias, lengths in (
        [(True, False), (True, True), (False, False), (False, True)]
        if cell in ("rnn", "gru", "lstm") else [(True, True), (False, False)]
    )
]  # fmt: skip


@pytest.mark.parametrize("cell, bias, lengths", _OPERATOR_CASES)
def test_the_direction_operator_passes_torchs_checks(cell, bias, lengths):
    """torch.library.opcheck (schema, fake tensors, autograd registration, AOT dispatch), then
    first and second derivatives in float64: the hand-written backward, and under
    create_graph the reference loop rerun."""
    from gatedrnn.backends.cpu import _direction_op

    args = _direction_inputs(cell, bias, lengths)
    kind = args[-3]
    torch.library.opcheck(_direction_op, args)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]

    def outputs(*leaves):
        call = list(args)
        for i, leaf in zip(tensors, leaves, strict=True):
            call[i] = leaf
        out = _direction_op(*call)
        return tuple(out[: 3 if kind == "lstm" else 2])  # the output and the final states

    leaves = tuple(args[i] for i in tensors)
    assert torch.autograd.gradcheck(outputs, leaves)
    assert torch.autograd.gradgradcheck(outputs, leaves)


@pytest.mark.parametrize(
    "cell, bias, lengths",
    [("rnn", True, False), ("gru", True, True), ("lstm", False, True),
     ("lstm-cifg-peep-proj", True, True), ("mgu", False, False), ("minlstm", True, True)],
)  # fmt: skip
def test_the_bidirectional_operator_passes_torchs_checks(cell, bias, lengths):
    """The same for the operator torch.compile runs a bidirectional layer's two directions as,
    side by side (gatedrnn::cpu_bidirectional; the direction functions are the single
    operator's, checked over every case above): the second direction's arguments other values
    of the same shapes."""
    from gatedrnn.backends.cpu import _bidirectional_op

    first = _direction_inputs(cell, bias, lengths)
    second = tuple(
        (a.detach() * 0.9 + 0.1).requires_grad_() if isinstance(a, torch.Tensor) else a
        for a in first[:9]
    )
    args = (*first[:9], *second, *first[9:])
    kind = args[-3]
    torch.library.opcheck(_bidirectional_op, args)
    tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor) and a.requires_grad]
    states = 2 if kind == "lstm" else 1

    def outputs(*leaves):
        call = list(args)
        for i, leaf in zip(tensors, leaves, strict=True):
            call[i] = leaf
        out = _bidirectional_op(*call)
        half = len(out) // 2
        return (*out[: 1 + states], *out[half : half + 1 + states])  # outputs, final states

    leaves = tuple(args[i] for i in tensors)
    assert torch.autograd.gradcheck(outputs, leaves)
    assert torch.autograd.gradgradcheck(outputs, leaves)


@pytest.mark.parametrize("backend", ["auto", "cpu", "cpu-python", "reference", "cudnn"])
@pytest.mark.parametrize(
    "cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN], ids=lambda c: c.__name__
)
def test_fake_tensors_get_torch_nns_shapes(cls, backend):
    """Under FakeTensorMode (shape inference, memory estimates: nothing is computed) every CPU
    backend gives the shapes torch.nn gives, forward and backward (the ``cpu`` loops through
    their operator's fake implementation; an extension cannot take fake tensors), and so on
    the meta device."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    def shapes(make):
        with FakeTensorMode():
            layer = make(4, 6, num_layers=2, bidirectional=True, batch_first=True)
            x = torch.randn(3, 5, 4, requires_grad=True)
            out, final = layer(x)
            finals = final if isinstance(final, tuple) else (final,)
            (out.sum() + sum(f.sum() for f in finals)).backward()
            assert isinstance(out, FakeTensor)
            tensors = [out, *finals, x.grad, *(p.grad for p in layer.parameters())]
            return [tuple(t.shape) for t in tensors]

    want = shapes(getattr(torch.nn, cls.__name__))
    assert shapes(functools.partial(cls, backend=backend)) == want
    with torch.device("meta"):  # meta tensors likewise, forward
        layer = cls(4, 6, num_layers=2, bidirectional=True, backend=backend)
        out, _ = layer(torch.randn(5, 3, 4))
    assert out.is_meta and out.shape == (5, 3, 12)


def test_the_cpu_loops_compile_with_inductor():
    """Inductor, not only AOTAutograd's eager backend: a training step of a model holding a
    two-layer LSTM compiles into one graph and matches eager."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Model("cpu")
    eager = _Model("cpu")
    eager.load_state_dict(model.state_dict())
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(3, 5, 4)
    compiled(x).pow(2).sum().backward()
    eager(x).pow(2).sum().backward()
    torch.testing.assert_close(compiled(x), eager(x))
    for got, want in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(got.grad, want.grad)
    assert model.rnn.last_backend == "cpu"


class _Model(torch.nn.Module):
    def __init__(self, backend: str):
        super().__init__()
        self.rnn = gatedrnn.LSTM(4, 6, num_layers=2, batch_first=True, backend=backend)
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x):
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


@pytest.mark.parametrize("backend", ["auto", "cudnn", "reference"])
def test_export_traces_a_pytorch_backend(backend):
    """torch.export traces PyTorch operations: a layer exports with the backends written in
    them, and ``auto`` (the default) takes torch's fused LSTM while exporting instead of the
    compiled loops; the exported program computes what the model does, with gradients."""
    torch.manual_seed(0)
    model = _Model(backend)
    x = torch.randn(3, 5, 4)
    program = torch.export.export(model, (x,))
    fused = any("lstm" in str(node.target) for node in program.graph.nodes)
    assert fused == (backend != "reference")
    y = torch.randn(3, 5, 4)
    exported = program.module()
    got, want = exported(y), model(y)
    torch.testing.assert_close(got, want)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(exported.head.weight.grad, model.head.weight.grad)


@pytest.mark.parametrize("backend", ["cpu", "cpu-python"])
def test_export_takes_the_named_cpu_loops_as_their_operator(backend, tmp_path):
    """Named, the ``cpu`` backend exports its loops as one gatedrnn operator per direction (a
    program that needs gatedrnn imported to run; ``auto`` exports standard operators instead):
    the program saves, loads, and computes the model's outputs and gradients."""
    torch.manual_seed(0)
    model = _Model(backend)
    program = torch.export.export(model, (torch.randn(3, 5, 4),))
    targets = [str(node.target) for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count("gatedrnn.cpu_direction.default") == 2  # two layers, one direction
    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    exported = torch.export.load(path).module()
    y = torch.randn(3, 5, 4)
    got, want = exported(y), model(y)
    torch.testing.assert_close(got, want)
    got.pow(2).sum().backward()
    want.pow(2).sum().backward()
    grads = {name: p.grad for name, p in exported.named_parameters()}
    assert set(grads) == {name for name, _ in model.named_parameters()}
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def _trace(layer, x):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # torch.nn's own shape checks
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 points to export
        return torch.jit.trace(layer, (x,))


_FUSED = {"GRU": "aten::gru", "LSTM": "aten::lstm", "RNN": "aten::rnn_tanh"}


@pytest.mark.parametrize("backend", ["auto", "cpu", "cpu-python", "cudnn"])
@pytest.mark.parametrize(
    "cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN], ids=lambda c: c.__name__
)
def test_jit_trace_saves_and_runs_any_length(cls, backend, tmp_path):
    """A trace records torch.nn's fused operator (``auto``, ``cudnn``) or the loops' own
    (``cpu``): no Python call, which ``torch.jit.save`` refused and the TorchScript ONNX exporter
    replaced with the ATen calls around it (a wrong model, before). Two layers, both directions
    (the compiled loops once failed with ``unordered_map::at`` on the second layer): saved,
    loaded, and run on another batch size and length, it gives the layer's outputs and
    gradients."""
    ours, eager = _pair(cls, backend, num_layers=2, bidirectional=True)
    traced = _trace(ours, torch.randn(5, 3, 4))
    named = backend in ("cpu", "cpu-python")
    recorded = "gatedrnn::cpu_direction" if named else _FUSED[cls.__name__]
    kinds = [node.kind() for node in traced.inlined_graph.nodes()]
    assert kinds.count(recorded) == (4 if named else 1), kinds  # per layer direction, or one
    torch.jit.save(traced, tmp_path / "traced.pt")
    loaded = torch.jit.load(tmp_path / "traced.pt")
    y = torch.randn(8, 2, 4)
    for got, want in zip(_run(loaded, y), _run(eager, y), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize(
    "cls, options",
    [
        (gatedrnn.GRU, {"reset": "before"}),
        (gatedrnn.LSTM, {"peepholes": True}),
        (gatedrnn.MGU, {}),
        (gatedrnn.GRU, {"backend": "reference"}),
    ],
    ids=["gru-before", "lstm-peepholes", "mgu", "gru-reference"],
)
def test_jit_trace_of_the_reference_loop_warns_and_refuses_other_lengths(cls, options):
    """The reference loop is traced step by step: the trace says so when made, runs any batch
    size at the traced length, and raises on another length (it used to run the traced number of
    steps and return a shorter output, silently)."""
    torch.manual_seed(0)
    layer = cls(4, 6, num_layers=2, **options)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Converting a tensor", torch.jit.TracerWarning)
        with pytest.warns(torch.jit.TracerWarning, match="sequences of 5 steps only"):
            traced = torch.jit.trace(layer, (torch.randn(5, 3, 4),))
    y = torch.randn(5, 2, 4)
    torch.testing.assert_close(traced(y), layer(y))
    for steps in (4, 7):
        with pytest.raises(RuntimeError, match="Expected 5 elements in a list"):
            traced(torch.randn(steps, 2, 4))


@pytest.mark.parametrize("cls", [gatedrnn.MinGRU, gatedrnn.MinLSTM], ids=lambda c: c.__name__)
def test_jit_trace_of_the_parallel_scan_saves_and_runs_any_length(cls, tmp_path):
    """The minimal cells' scan has no time loop: traced (torch's logcumsumexp in place of the
    Python Function, which a saved trace cannot hold), it saves and runs any length."""
    ours, eager = _pair(cls, "auto", num_layers=2)
    traced = _trace(ours, torch.randn(5, 3, 4))
    torch.jit.save(traced, tmp_path / "traced.pt")
    loaded = torch.jit.load(tmp_path / "traced.pt")
    y = torch.randn(9, 2, 4)
    for got, want in zip(_run(loaded, y), _run(eager, y), strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("cls", ["GRU", "LSTM", "MinGRU", "MinLSTM"])
def test_func_transforms_run_through_auto(cls):
    """Inside ``torch.func`` transforms ``auto`` takes the reference loops (the compiled loops are
    opaque to them, torch's fused cells have no vmap rule; the minimal cells' scan has its own
    rules): an ensemble's forward under ``vmap`` and a ``grad`` of a functional call equal the
    plain modules'."""
    from torch.func import functional_call, grad, stack_module_state, vmap

    torch.manual_seed(0)
    models = [getattr(gatedrnn, cls)(4, 6, num_layers=2) for _ in range(3)]
    params, buffers = stack_module_state(models)
    base = models[0]
    x = torch.randn(5, 2, 4)

    def output(p, b, x):
        return functional_call(base, (p, b), (x,))[0]

    ensemble = vmap(output, in_dims=(0, 0, None))(params, buffers, x)
    torch.testing.assert_close(ensemble, torch.stack([m(x)[0] for m in models]))
    first = {name: p[0] for name, p in params.items()}
    grads = grad(lambda p: output(p, {}, x).pow(2).sum())(first)
    models[0](x)[0].pow(2).sum().backward()
    for name, p in models[0].named_parameters():
        torch.testing.assert_close(grads[name], p.grad)


def test_func_transforms_refuse_the_cpu_loops_with_the_way_out():
    from torch.func import functional_call, grad

    layer = gatedrnn.LSTM(4, 6, backend="cpu")
    params = dict(layer.named_parameters())
    with pytest.raises(BackendUnsupportedError, match=r"torch\.func transforms cannot trace; use"):
        grad(lambda p: functional_call(layer, p, (torch.randn(5, 2, 4),))[0].sum())(params)


@pytest.mark.parametrize(
    "cls, options",
    [
        ("RNN", {}),
        ("GRU", {}),
        ("GRU", {"reset": "before"}),
        ("LSTM", {}),
        ("LSTM", {"proj_size": 3}),
        ("MGU", {}),
        ("MinGRU", {}),
        ("MinLSTM", {}),
    ],
    ids=["rnn", "gru", "gru-before", "lstm", "lstm-proj", "mgu", "mingru", "minlstm"],
)
def test_forward_mode_ad_runs_through_auto(cls, options):
    """Dual tensors (``torch.autograd.forward_ad``) in the input, the state and a weight: ``auto``
    takes the reference loops (the fused backends' hand-written backwards give no forward
    derivative, nor does oneDNN's LSTM), whose tangents equal ``torch.func.jvp``'s and J·v
    computed by reverse mode twice (``torch.autograd.functional.jvp``: a backward
    differentiated in its upstream gradient, at zero)."""
    import torch.autograd.forward_ad as fwAD

    torch.manual_seed(0)
    layer = getattr(gatedrnn, cls)(4, 6, num_layers=2, bidirectional=True, dtype=torch.float64,
                                   **options)  # fmt: skip
    x, dx = torch.randn(5, 3, 4, dtype=torch.float64), torch.randn(5, 3, 4, dtype=torch.float64)
    states = tuple(torch.randn(s, dtype=torch.float64) for s in layer._state_shapes(3))
    dstates = tuple(torch.randn_like(s) for s in states)
    w = layer.weight_ih_l1_reverse.detach()
    dw = torch.randn_like(w)

    def run(x, w, *states):
        hx = states if len(states) == 2 else states[0]
        output, final = torch.func.functional_call(layer, {"weight_ih_l1_reverse": w}, (x, hx))
        return (output, *(final if isinstance(final, tuple) else (final,)))

    with fwAD.dual_level():
        primals, directions = (x, w, *states), (dx, dw, *dstates)
        duals = [fwAD.make_dual(t, d) for t, d in zip(primals, directions, strict=True)]
        tangents = [fwAD.unpack_dual(t).tangent for t in run(*duals)]
        assert layer.last_backend == "reference"
    _, transformed = torch.func.jvp(run, primals, directions)
    _, twice = torch.autograd.functional.jvp(run, primals, directions)
    for got, want, other in zip(tangents, twice, transformed, strict=True):
        torch.testing.assert_close(got, want)
        torch.testing.assert_close(other, want)


def test_forward_mode_ad_refuses_the_cpu_loops_with_the_way_out():
    import torch.autograd.forward_ad as fwAD

    layer = gatedrnn.GRU(4, 6, backend="cpu")
    with (
        fwAD.dual_level(),
        pytest.raises(
            BackendUnsupportedError, match=r"forward-mode AD cannot differentiate; use backend='ref"
        ),
    ):
        layer(fwAD.make_dual(torch.randn(5, 2, 4), torch.randn(5, 2, 4)))


def test_eager_layers_do_not_import_dynamo():
    """Keeping Dynamo out of eager use: importing it takes about a second, which the first layer
    of every process paid while the backends were decorated with torch.compiler.disable."""
    import subprocess
    import sys

    code = (
        "import sys, torch, gatedrnn\n"
        "for backend in ('auto', 'cpu', 'cudnn', 'reference'):\n"
        "    gatedrnn.LSTM(3, 4, backend=backend)(torch.randn(2, 1, 3))[0].sum().backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300
    )
    assert result.stdout.strip() == "False", result.stderr


def test_the_constant_mark_is_torchs():
    """``constant_when_compiled`` sets what ``torch.compiler.assume_constant_result`` sets,
    without importing Dynamo; a torch that marks otherwise shows here."""
    from gatedrnn.backends import constant_when_compiled

    marked = torch.compiler.assume_constant_result(lambda: 0)
    ours = constant_when_compiled(lambda: 0)
    assert vars(ours) == vars(marked) and vars(marked)


class _LayerThenCell(torch.nn.Module):
    def __init__(self, layer, cell):
        super().__init__()
        self.layer, self.cell = layer, cell
        self.head = torch.nn.Linear(6, 2)

    def forward(self, x, state):
        out, _ = self.layer(x)
        h = self.cell(out[-1], state)
        return self.head(out + (h[0] if isinstance(self.cell, gatedrnn.LSTMCell) else h))


@pytest.mark.parametrize(
    "layer, cell, options",
    [
        (gatedrnn.LSTM, gatedrnn.LSTMCell, {"peepholes": True}),
        (gatedrnn.GRU, gatedrnn.GRUCell, {"reset": "before"}),
        (gatedrnn.RNN, gatedrnn.RNNCell, {}),
    ],
    ids=["lstm", "gru", "rnn"],
)
def test_fx_symbolic_trace_records_layers_and_cells_as_one_call(layer, cell, options):
    """torch.fx records torch.nn's recurrent layers and cells as leaf modules, one call each;
    ours are recorded the same way (traced into, they refused the Proxy input), and the traced
    module computes what the model does."""
    torch.manual_seed(0)
    model = _LayerThenCell(layer(4, 6, **options), cell(6, 6, **options))
    traced = torch.fx.symbolic_trace(model)
    calls = [node.target for node in traced.graph.nodes if node.op == "call_module"]
    assert calls == ["layer", "cell", "head"]
    x = torch.randn(5, 3, 4)
    state = (torch.randn(3, 6),) * 2 if cell is gatedrnn.LSTMCell else torch.randn(3, 6)
    torch.testing.assert_close(traced(x, state), model(x, state))


def test_fx_symbolic_trace_of_a_layer_itself_says_what_to_do():
    with pytest.raises(TypeError, match="trace a model that holds it"):
        torch.fx.symbolic_trace(gatedrnn.GRU(4, 6))
