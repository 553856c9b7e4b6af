"""Copied-weight equivalence with torch.nn over the whole flag grid, forward and backward.

bias × batch_first × bidirectional × num_layers {1, 2} × proj_size (LSTM) × input form (padded,
packed sorted, packed unsorted, unbatched) × float32/float64 × every backend that supports the
configuration: outputs, final states, input and state grads and every weight grad.
"""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from torch import nn

import gatedrnn
from gatedrnn.backends import BackendUnsupportedError, available_backends
from tests.conftest import assert_close
from tests.nn.torch_pairs import FORMS, OUR_LAYERS, TORCH_LAYERS, make_inputs, make_states, run

T, B, I, H, P = 5, 3, 4, 6, 3

GRID = [
    (cell, proj, bias, batch_first, bidirectional, layers, form, dtype)
    for cell in ("rnn", "lstm", "gru")
    for proj in ((0, P) if cell == "lstm" else (0,))
    for bias, batch_first, bidirectional, layers in itertools.product(
        (True, False), (False, True), (False, True), (1, 2)
    )
    for form in FORMS
    for dtype in (torch.float32, torch.float64)
]


def _ids(case):
    cell, proj, bias, bf, bi, layers, form, dtype = case
    flags = [cell + (f"-proj{proj}" if proj else ""), "bias" if bias else "nobias"]
    flags += ["bf" if bf else "tf", "bi" if bi else "uni", f"L{layers}", form]
    return "-".join([*flags, str(dtype).removeprefix("torch.")])


def build_pair(cell, dtype, backend="reference", **kwargs):
    torch.manual_seed(0)
    theirs = TORCH_LAYERS[cell](dtype=dtype, **kwargs)
    ours = OUR_LAYERS[cell](dtype=dtype, backend=backend, **kwargs)
    with torch.no_grad():  # move off the shared init so the copy is what makes them equal
        for p in theirs.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours.load_state_dict(theirs.state_dict())
    return theirs, ours


def compare(ours, theirs, what):
    assert_close(ours.output, theirs.output, f"{what} output")
    assert len(ours.states) == len(theirs.states)
    for k, (a, b) in enumerate(zip(ours.states, theirs.states, strict=True)):
        assert_close(a, b, f"{what} final state {k}")
    assert ours.grads.keys() == theirs.grads.keys()
    for name in theirs.grads:
        assert_close(ours.grads[name], theirs.grads[name], f"{what} grad of {name}")


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("case", GRID, ids=_ids)
def test_matches_torch(case, backend):
    cell, proj, bias, batch_first, bidirectional, layers, form, dtype = case
    kwargs = dict(
        input_size=I, hidden_size=H, num_layers=layers, bias=bias, batch_first=batch_first,
        bidirectional=bidirectional,
    )  # fmt: skip
    if proj:
        kwargs["proj_size"] = proj
    theirs, ours = build_pair(cell, dtype, backend, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x, lengths = make_inputs(form, T, B, I, batch_first, dtype, gen)
    states = make_states(theirs, form, B, dtype, gen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's "LSTM with projections is not supported..."
        expected = run(theirs, x, lengths, states, batch_first)
    try:
        actual = run(ours, x, lengths, states, batch_first)
    except BackendUnsupportedError as error:
        pytest.skip(str(error))
    compare(actual, expected, _ids(case))


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("form", FORMS)
def test_zero_initial_state_matches_torch(cell, form):
    theirs, ours = build_pair(cell, torch.float64, input_size=I, hidden_size=H, num_layers=2)
    gen = torch.Generator().manual_seed(2)
    x, lengths = make_inputs(form, T, B, I, False, torch.float64, gen)
    compare(run(ours, x, lengths, None, False), run(theirs, x, lengths, None, False), cell)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_torch_loads_our_state_dict(cell, bidirectional):
    kwargs = dict(input_size=I, hidden_size=H, num_layers=2, bidirectional=bidirectional)
    if cell == "lstm":
        kwargs["proj_size"] = P
    ours = OUR_LAYERS[cell](**kwargs)
    theirs = TORCH_LAYERS[cell](**kwargs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert ours._flat_weights_names == theirs._flat_weights_names  # read by torch.nn-era code
    theirs.load_state_dict(ours.state_dict())
    for got, want in zip(ours._flat_weights, theirs._flat_weights, strict=True):
        assert torch.equal(got, want)
    for got, want in zip(ours.all_weights, theirs.all_weights, strict=True):
        assert [tuple(w.shape) for w in got] == [tuple(w.shape) for w in want]
    x = torch.randn(T, B, I)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert_close(ours(x)[0], theirs(x)[0], "output")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_same_seed_gives_torch_init(cell):
    kwargs = dict(input_size=I, hidden_size=H, num_layers=2, bidirectional=True)
    torch.manual_seed(3)
    theirs = TORCH_LAYERS[cell](**kwargs)
    torch.manual_seed(3)
    ours = OUR_LAYERS[cell](**kwargs)
    for (name_a, a), (name_b, b) in zip(
        ours.named_parameters(), theirs.named_parameters(), strict=True
    ):
        assert name_a == name_b and torch.equal(a, b), name_a


@pytest.mark.parametrize(
    "ours_cls, theirs_cls, kwargs",
    [
        (gatedrnn.RNNCell, nn.RNNCell, {}),
        (gatedrnn.RNNCell, nn.RNNCell, {"nonlinearity": "relu"}),
        (gatedrnn.RNNCell, nn.RNNCell, {"bias": False}),
        (gatedrnn.LSTMCell, nn.LSTMCell, {}),
        (gatedrnn.LSTMCell, nn.LSTMCell, {"bias": False}),
        (gatedrnn.GRUCell, nn.GRUCell, {}),
        (gatedrnn.GRUCell, nn.GRUCell, {"bias": False}),
    ],
)
@pytest.mark.parametrize("batched", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cells_match_torch(ours_cls, theirs_cls, kwargs, batched, dtype):
    torch.manual_seed(4)
    theirs = theirs_cls(I, H, dtype=dtype, **kwargs)
    torch.manual_seed(4)
    ours = ours_cls(I, H, dtype=dtype, **kwargs)
    for a, b in zip(ours.parameters(), theirs.parameters(), strict=True):
        assert torch.equal(a, b)  # same seed, same init
    lead = (B,) if batched else ()
    x = torch.randn(*lead, I, dtype=dtype, requires_grad=True)
    n_states = 2 if ours_cls is gatedrnn.LSTMCell else 1
    states = [torch.randn(*lead, H, dtype=dtype, requires_grad=True) for _ in range(n_states)]
    for hx in (None, tuple(states) if n_states == 2 else states[0]):
        out_a, out_b = ours(x, hx), theirs(x, hx)
        out_a = out_a if isinstance(out_a, tuple) else (out_a,)
        out_b = out_b if isinstance(out_b, tuple) else (out_b,)
        wrt = [x, *states, *theirs.parameters()]
        grads_b = torch.autograd.grad(sum(o.sum() for o in out_b), wrt, allow_unused=True)
        wrt = [x, *states, *ours.parameters()]
        grads_a = torch.autograd.grad(sum(o.sum() for o in out_a), wrt, allow_unused=True)
        for a, b in zip(out_a, out_b, strict=True):
            assert_close(a, b, "cell output")
        for a, b in zip(grads_a, grads_b, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert_close(a, b, "cell grad")


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_autocast_computes_every_cell_in_its_dtype(cell):
    """Under CPU autocast every layer computes in bfloat16, like torch.nn's LSTM and RNN (its GRU
    is left in float32 there): the same output as torch's layer cast to bfloat16, and float32
    gradients for the float32 parameters."""
    torch.manual_seed(0)
    ours = OUR_LAYERS[cell](I, H, num_layers=2)
    theirs = TORCH_LAYERS[cell](I, H, num_layers=2)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = ours(x)
    assert out.dtype == torch.bfloat16
    want = theirs.bfloat16()(x.bfloat16())[0]
    torch.testing.assert_close(out.float(), want.float(), atol=3e-2, rtol=3e-2)
    out.float().sum().backward()
    assert ours.weight_hh_l1.grad.dtype == torch.float32
