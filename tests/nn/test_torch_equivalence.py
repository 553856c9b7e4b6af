"""Copied-weight equivalence with torch.nn over the whole flag grid, forward and backward.

bias × batch_first × bidirectional × num_layers {1, 2} × proj_size (LSTM) × input form (padded,
packed sorted, packed unsorted, unbatched) × float32/float64 × every backend that supports the
configuration: outputs, final states, input and state grads and every weight grad.
"""

from __future__ import annotations

import copy
import itertools
import warnings

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils import prune

import gatedrnn
from gatedrnn.backends import BackendUnsupportedError, available_backends
from tests.conftest import assert_close
from tests.nn.torch_pairs import FORMS, OUR_LAYERS, TORCH_LAYERS, make_inputs, make_states, run
from tests.nn.variants import VARIANTS, cell_options, variant_id

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
        # torch.nn's cells, eagerly, call torch's fused step, and so do ours: bit for bit
        for a, b in zip(out_a, out_b, strict=True):
            assert torch.equal(a, b), "cell output"
        for a, b in zip(grads_a, grads_b, strict=True):
            assert (a is None) == (b is None)
            if a is not None:
                assert torch.equal(a, b), "cell grad"


def _norm(module, name, how):
    """``module``'s weight ``name`` put under ``how``: a parametrization (weight norm), the old
    hook-based weight norm, or pruning, which torch.nn's layers and cells take."""
    if how == "parametrization":
        nn.utils.parametrizations.weight_norm(module, name)
    elif how == "weight_norm":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # deprecated for the above
            nn.utils.weight_norm(module, name)
    else:
        prune.l1_unstructured(module, name, amount=0.5)


@pytest.mark.parametrize("how", ["parametrization", "weight_norm", "pruning"])
@pytest.mark.parametrize(
    "ours_cls, theirs_cls, name",
    [
        (gatedrnn.GRU, nn.GRU, "weight_hh_l0"),
        (gatedrnn.LSTM, nn.LSTM, "weight_ih_l1"),
        (gatedrnn.GRUCell, nn.GRUCell, "weight_hh"),
        (gatedrnn.LSTMCell, nn.LSTMCell, "weight_ih"),
    ],
)
def test_weights_under_parametrizations_weight_norm_and_pruning(ours_cls, theirs_cls, name, how):
    """A weight that is computed (parametrized, normed, pruned) is used as computed, as torch.nn
    uses it, and its gradient reaches the tensors it is computed from (the layers read plain
    parameters straight from the module's table, and the rest as attributes)."""
    layers = {} if "Cell" in ours_cls.__name__ else {"num_layers": 2}
    theirs = theirs_cls(I, H, **layers)
    ours = ours_cls(I, H, **layers)
    ours.load_state_dict(theirs.state_dict())
    for module in (ours, theirs):
        _norm(module, name, how)
    x = torch.randn(T, B, I) if layers else torch.randn(B, I)
    out_a, out_b = ours(x), theirs(x)
    out_a = out_a[0] if isinstance(out_a, tuple) else out_a
    out_b = out_b[0] if isinstance(out_b, tuple) else out_b
    assert_close(out_a, out_b, "output")
    out_a.sum().backward()
    out_b.sum().backward()
    named_b = dict(theirs.named_parameters())
    for key, p in ours.named_parameters():
        assert p.grad is not None, key
        assert_close(p.grad, named_b[key].grad, f"gradient of {key}")


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


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_autocast_computes_every_cell_module_in_its_dtype(variant):
    """Under CPU autocast every cell module computes in bfloat16, as the layers do: the same
    numbers as the cell cast to bfloat16 outside autocast, states of either dtype taken (torch.nn's
    cells take both there: a decoder's float32 input with the bfloat16 state an encoder gave),
    and float32 gradients for the float32 parameters."""
    _, cell_cls, options = variant
    torch.manual_seed(0)
    cell = cell_cls(I, H, **cell_options(options))
    x = torch.randn(B, I)
    states = [torch.randn(B, H) for _ in range(cell.spec.num_states)]

    def hx(given):
        return tuple(given) if len(given) == 2 else given[0]

    want = copy.deepcopy(cell).bfloat16()(x.bfloat16(), hx([s.bfloat16() for s in states]))
    for given in (states, [s.bfloat16() for s in states]):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cell(x, hx(given))
        out, expected = (out, want) if isinstance(out, tuple) else ((out,), (want,))
        for a, b in zip(out, expected, strict=True):
            assert a.dtype == torch.bfloat16
            assert torch.equal(a, b)
    sum(o.float().sum() for o in out).backward()
    assert cell.weight_ih.grad.dtype == torch.float32


def _outcome(call, module):
    """What ``call(module)`` did: its result (tensors as lists), or its error's type and
    message."""
    try:
        result = call(module)
    except Exception as error:  # compared between torch.nn's layer and ours
        return type(error), str(error)
    return torch.utils._pytree.tree_map(
        lambda t: t.tolist() if isinstance(t, Tensor) else t, result
    )


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize(
    "options",
    [{}, {"num_layers": 2, "bidirectional": True}, {"batch_first": True}, {"proj_size": 3}],
    ids=["plain", "stack", "batch-first", "proj"],
)
def test_torch_rnnbase_helpers_match(cell, options):
    """torch.nn.RNNBase's public checks and helpers, which code written for torch.nn's layers
    calls (check_input, get_expected_hidden_size/cell_size, check_hidden_size,
    check_forward_args, permute_hidden, _all_weights): the same results, and the same errors
    with the same messages, on good and bad arguments."""
    if "proj_size" in options and cell != "lstm":
        pytest.skip("only the LSTM projects")
    torch.manual_seed(0)
    theirs = TORCH_LAYERS[cell](4, 5, **options)
    ours = OUR_LAYERS[cell](4, 5, **options)
    assert ours._all_weights == theirs._all_weights
    D = theirs.num_layers * (2 if theirs.bidirectional else 1)
    x = torch.randn(3, 2, 4)
    packed = torch.randn(6, 4)
    h_out = 3 if "proj_size" in options else 5
    good = torch.zeros(D, 2, h_out), torch.zeros(D, 2, 5)
    bad = torch.zeros(D, 3, h_out), torch.zeros(D + 1, 2, 5)
    sizes = torch.tensor([3, 2, 1])
    hidden = [good, (good[0], bad[1]), (bad[0], good[1])] if cell == "lstm" else [good[0], bad[0]]
    calls = []
    for batch_sizes, data in ((None, x), (sizes, packed), (None, packed), (sizes, x)):
        calls.append(lambda m, d=data, b=batch_sizes: m.get_expected_hidden_size(d, b))
        calls.append(lambda m, d=data, b=batch_sizes: m.check_input(d, b))
        for h in hidden:
            calls.append(lambda m, d=data, b=batch_sizes, h=h: m.check_forward_args(d, h, b))
    calls.append(lambda m: m.check_input(x.double(), None))  # the wrong dtype
    calls.append(lambda m: m.check_input(torch.randn(3, 2, 7), None))  # the wrong width
    calls.append(lambda m: m.check_hidden_size(bad[0], (D, 2, h_out), "h {} vs {}"))
    permutation = torch.tensor([1, 0])
    calls.append(lambda m: m.permute_hidden(good if cell == "lstm" else good[0], permutation))
    calls.append(lambda m: m.permute_hidden(good[0], None))
    if cell == "lstm":
        calls.append(lambda m: m.get_expected_cell_size(x, None))
    for k, call in enumerate(calls):
        assert _outcome(call, ours) == _outcome(call, theirs), f"call {k}"


@pytest.mark.parametrize("layer", [gatedrnn.MGU, gatedrnn.MinGRU, gatedrnn.MinLSTM])
def test_rnnbase_helpers_on_the_cells_torch_lacks(layer):
    """The same checks on our other cells, whose one state is h."""
    ours = layer(4, 5, num_layers=2, batch_first=True)
    x = torch.randn(2, 3, 4)  # (N, L, H_in)
    assert ours.get_expected_hidden_size(x, None) == (2, 2, 5)
    ours.check_forward_args(x, torch.zeros(2, 2, 5), None)
    with pytest.raises(RuntimeError, match=r"Expected hidden size \(2, 2, 5\), got \[2, 3, 5\]"):
        ours.check_forward_args(x, torch.zeros(2, 3, 5), None)
    h = torch.arange(4.0).view(2, 2, 1)
    assert ours.permute_hidden(h, torch.tensor([1, 0]))[:, :, 0].tolist() == [[1, 0], [3, 2]]


@pytest.mark.parametrize(
    "theirs, ours",
    [(nn.RNN, gatedrnn.RNN), (nn.LSTM, gatedrnn.LSTM), (nn.GRU, gatedrnn.GRU),
     (nn.RNNCell, gatedrnn.RNNCell), (nn.LSTMCell, gatedrnn.LSTMCell),
     (nn.GRUCell, gatedrnn.GRUCell)],
    ids=lambda c: c.__name__,
)  # fmt: skip
def test_every_public_name_of_torchs_layer_is_ours_too(theirs, ours):
    """A drop-in has every public attribute and method torch.nn's layer or cell has (an
    instance's, parameters included)."""
    public = {name for name in dir(theirs(4, 5)) if not name.startswith("_")}
    assert public - set(dir(ours(4, 5))) == set()


@pytest.mark.parametrize("options", [{}, {"bias": False}, {"peepholes": True, "coupled": True}])
def test_a_cell_pickled_before_its_parameter_names_were_kept_still_computes(options):
    """A cell saved whole (torch.save(module), pickle) by a version that did not keep the list of
    its parameter names gets it back when loaded, and computes as before."""
    cell = gatedrnn.LSTMCell(I, H, **options)
    state = dict(cell.__dict__)
    del state["_names"]  # what the earlier version pickled
    loaded = gatedrnn.LSTMCell.__new__(gatedrnn.LSTMCell)
    loaded.__setstate__(state)
    x = torch.randn(B, I)
    for a, b in zip(loaded(x), cell(x), strict=True):
        assert torch.equal(a, b)
