"""Conversion both ways between our layers and cells and torch.nn's: the same Parameter objects,
the same results and gradients, whole models converted in place, TorchScript through the twin,
and a clear error wherever torch.nn has no such variant or something would be lost."""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from torch import nn

import gatedrnn
from tests.nn.torch_pairs import make_inputs, make_states, run

LAYER_CASES = [
    (kind, options, bias, bidirectional, layers)
    for kind, options in [
        ("rnn", {}),
        ("rnn", {"nonlinearity": "relu"}),
        ("gru", {}),
        ("lstm", {}),
        ("lstm", {"proj_size": 2}),
    ]
    for bias, bidirectional, layers in itertools.product((True, False), (False, True), (1, 2))
]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
TORCH_LAYERS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
TORCH_CELLS = {"rnn": nn.RNNCell, "gru": nn.GRUCell, "lstm": nn.LSTMCell}


def _same_parameters(a: nn.Module, b: nn.Module) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert sorted(pa) == sorted(pb)
    assert all(pa[name] is pb[name] for name in pa)


def _assert_same_results(a, b):
    torch.testing.assert_close(b.output, a.output, rtol=1e-12, atol=1e-12)
    for x, y in zip(a.states, b.states, strict=True):
        torch.testing.assert_close(y, x, rtol=1e-12, atol=1e-12)
    assert a.grads.keys() == b.grads.keys()
    for name, grad in a.grads.items():
        torch.testing.assert_close(b.grads[name], grad, rtol=1e-12, atol=1e-12, msg=name)


@pytest.mark.parametrize(("kind", "options", "bias", "bidirectional", "layers"), LAYER_CASES)
def test_layers_convert_both_ways_sharing_parameters(kind, options, bias, bidirectional, layers):
    gen = torch.Generator().manual_seed(3)
    theirs = TORCH_LAYERS[kind](
        3, 4, layers, bias=bias, batch_first=True, bidirectional=bidirectional,
        dtype=torch.float64, **options,
    )  # fmt: skip
    theirs.eval()
    ours = gatedrnn.from_torch(theirs, backend="reference")
    assert type(ours) is getattr(gatedrnn, kind.upper())
    assert ours.backend == "reference" and not ours.training and ours.batch_first
    _same_parameters(ours, theirs)
    back = ours.to_torch()
    assert type(back) is type(theirs) and not back.training
    assert repr(back) == repr(theirs)
    _same_parameters(back, theirs)

    x, lengths = make_inputs("packed_unsorted", 5, 3, 3, True, torch.float64, gen)
    states = make_states(theirs, "packed_unsorted", 3, torch.float64, gen)
    expected = run(theirs, x, lengths, states, batch_first=True)
    _assert_same_results(expected, run(ours, x, lengths, states, batch_first=True))
    _assert_same_results(expected, run(back, x, lengths, states, batch_first=True))


@pytest.mark.parametrize("kind", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("bias", [True, False])
def test_cells_convert_both_ways_sharing_parameters(kind, bias):
    theirs = TORCH_CELLS[kind](3, 4, bias=bias, dtype=torch.float64)
    ours = gatedrnn.from_torch(theirs)
    assert type(ours) is getattr(gatedrnn, f"{kind.upper()}Cell")
    _same_parameters(ours, theirs)
    back = ours.to_torch()
    assert type(back) is type(theirs)
    _same_parameters(back, theirs)
    x = torch.randn(2, 3, dtype=torch.float64)
    hx = torch.randn(2, 4, dtype=torch.float64)
    hx = (hx, torch.randn(2, 4, dtype=torch.float64)) if kind == "lstm" else hx
    for module in (ours, back):
        for got, want in zip(_tuple(module(x, hx)), _tuple(theirs(x, hx)), strict=True):
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def _tuple(state):
    return state if isinstance(state, tuple) else (state,)


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(3, 4)
        self.rnn = nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True)
        self.cell = nn.GRUCell(12, 5)
        self.blocks = nn.ModuleList([nn.Sequential(nn.GRU(5, 5), nn.Tanh())])
        self.again = self.blocks[0][0]  # the same layer under two names
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        out, _ = self.rnn(self.embed(x))  # (B, T, 12)
        h = self.cell(out[:, -1])  # (B, 5)
        h, _ = self.blocks[0][0](h.unsqueeze(0))
        h, _ = self.again(self.blocks[0][1](h))
        return self.head(h[0])


def test_convert_replaces_every_layer_in_place_and_the_optimizer_keeps_working():
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(2, 7, 3)
    expected = model(x)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    assert gatedrnn.convert(model, backend="reference") is model
    assert type(model.rnn) is gatedrnn.LSTM and model.rnn.backend == "reference"
    assert type(model.cell) is gatedrnn.GRUCell
    assert type(model.blocks[0][0]) is gatedrnn.GRU
    assert model.again is model.blocks[0][0]  # converted once
    assert type(model.embed) is nn.Linear
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)

    before = model.rnn.weight_hh_l0.detach().clone()
    model(x).square().sum().backward()
    optimizer.step()  # built on torch.nn's parameters: the same objects now
    assert not torch.equal(model.rnn.weight_hh_l0, before)

    stepped = model(x)
    assert gatedrnn.convert(model, to="torch") is model
    assert type(model.rnn) is nn.LSTM and type(model.cell) is nn.GRUCell
    assert model.again is model.blocks[0][0] and type(model.again) is nn.GRU
    torch.testing.assert_close(model(x), stepped, rtol=1e-5, atol=1e-6)


def test_convert_returns_the_converted_layer_when_given_one():
    theirs = nn.GRU(3, 4)
    ours = gatedrnn.convert(theirs)
    assert type(ours) is gatedrnn.GRU
    _same_parameters(ours, theirs)
    assert gatedrnn.convert(ours, to="torch").weight_ih_l0 is theirs.weight_ih_l0
    assert gatedrnn.convert(nn.Linear(2, 2)).__class__ is nn.Linear


def test_to_torch_keeps_dtype_and_device():
    ours = gatedrnn.LSTM(3, 4, dtype=torch.float64)
    back = ours.to_torch()
    assert back.weight_ih_l0.dtype == torch.float64 and back.weight_ih_l0.device.type == "cpu"
    assert back.weight_ih_l0 is ours.weight_ih_l0


@pytest.mark.parametrize(
    ("module", "reason"),
    [
        (gatedrnn.GRU(3, 4, reset="before"), "reset gate after"),
        (gatedrnn.GRUCell(3, 4, reset="before"), "reset gate after"),
        (gatedrnn.LSTM(3, 4, peepholes=True), "peepholes or coupled"),
        (gatedrnn.LSTM(3, 4, coupled=True), "peepholes or coupled"),
        (gatedrnn.MGU(3, 4), "no mgu cell"),
        (gatedrnn.MinGRU(3, 4), "no mingru cell"),
        (gatedrnn.MinLSTMCell(3, 4), "no minlstm cell"),
    ],
)
def test_variants_torch_lacks_have_no_twin(module, reason):
    with pytest.raises(ValueError, match=f"has no torch.nn twin: .*{reason}"):
        gatedrnn.to_torch(module)
    with pytest.raises(RuntimeError, match=f"cannot compile .*{reason}.*torch.export"):
        torch.jit.script(module)
    model = nn.Sequential(nn.Linear(3, 3), module)
    with pytest.raises(ValueError, match=r"no torch\.nn twin"):
        gatedrnn.convert(model, to="torch")


def test_what_conversion_would_lose_is_refused():
    class MyGRU(nn.GRU):
        pass

    with pytest.raises(TypeError, match=r"expected one of torch\.nn\.RNN, .* got MyGRU"):
        gatedrnn.from_torch(MyGRU(3, 4))
    with pytest.raises(TypeError, match=r"got MyGRU \(a subclass .* convert it by hand\)"):
        gatedrnn.convert(nn.Sequential(MyGRU(3, 4)))
    with pytest.raises(TypeError, match="expected a gatedrnn layer or cell, got GRU"):
        gatedrnn.to_torch(nn.GRU(3, 4))
    with pytest.raises(ValueError, match="expected to='gatedrnn' or 'torch', got 'tf'"):
        gatedrnn.convert(nn.GRU(3, 4), to="tf")
    with pytest.raises(ValueError, match="unknown backend 'fast'"):
        gatedrnn.from_torch(nn.GRU(3, 4), backend="fast")

    hooked = nn.LSTM(3, 4)
    hooked.register_forward_hook(lambda module, args, out: None)
    with pytest.raises(ValueError, match=r"has forward hooks.* register them on the result"):
        gatedrnn.from_torch(hooked)
    ours = gatedrnn.GRU(3, 4)
    ours.register_forward_pre_hook(lambda module, args: None)
    with pytest.raises(ValueError, match="has forward pre hooks"):
        ours.to_torch()

    parametrized = nn.GRU(3, 4)
    nn.utils.parametrizations.weight_norm(parametrized, "weight_hh_l0")
    with pytest.raises(ValueError, match="parametrized weights"):
        gatedrnn.from_torch(parametrized)
    with pytest.raises(ValueError, match="parametrized weights"):
        gatedrnn.convert(nn.Sequential(parametrized))
    ours = gatedrnn.GRU(3, 4)
    nn.utils.parametrizations.weight_norm(ours, "weight_hh_l0")
    with pytest.raises(ValueError, match="weight_hh_l0 is not a plain Parameter"):
        ours.to_torch()


class _Scripted(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = gatedrnn.GRU(3, 4, num_layers=2, batch_first=True, bidirectional=True)
        self.cell = gatedrnn.LSTMCell(8, 5)
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        out, _ = self.rnn(x)  # (B, T, 8)
        h, _ = self.cell(out[:, -1])
        return self.head(h)


def test_torch_jit_script_compiles_the_twins_with_the_same_parameters():
    torch.manual_seed(0)
    model = _Scripted()
    x = torch.randn(2, 6, 3)
    expected = model(x)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scripted = torch.jit.script(model)
    said = [str(w.message) for w in caught if "twin" in str(w.message)]
    assert len(said) == 2 and "gatedrnn.GRU is scripted as its torch.nn twin" in said[0]
    torch.testing.assert_close(scripted(x), expected, rtol=1e-6, atol=1e-6)
    assert type(model.rnn) is nn.GRU  # torch puts the twin in the scripted model
    with torch.no_grad():
        model.rnn.weight_hh_l1.add_(0.5)  # shared with the script module
    torch.testing.assert_close(scripted(x), model(x), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(scripted(x), expected)


def test_a_deep_copy_of_the_twin_is_independent():
    ours = gatedrnn.GRU(3, 4)
    twin = copy.deepcopy(ours.to_torch())
    assert twin.weight_ih_l0 is not ours.weight_ih_l0
    assert torch.equal(twin.weight_ih_l0, ours.weight_ih_l0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend", ["cudnn", "reference"])
def test_conversion_on_the_gpu_keeps_sharing_through_cudnns_flat_buffer(backend):
    """On CUDA, to_torch flattens the weights into cuDNN's buffer: the Parameters stay the same
    objects (their storage moves), and both modules keep computing the same thing."""
    torch.manual_seed(0)
    ours = gatedrnn.LSTM(8, 16, 2, bidirectional=True, backend=backend, device="cuda")
    twin = ours.to_torch()
    _same_parameters(ours, twin)
    x = torch.randn(5, 3, 8, device="cuda")
    torch.testing.assert_close(ours(x)[0], twin(x)[0], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        twin.weight_hh_l1_reverse.mul_(2.0)  # through the flat buffer, seen by ours
    torch.testing.assert_close(ours(x)[0], twin(x)[0], rtol=1e-4, atol=1e-5)
    back = gatedrnn.from_torch(twin, backend=backend)
    torch.testing.assert_close(back(x)[0], twin(x)[0], rtol=1e-4, atol=1e-5)
