"""Every backend against the ``reference`` oracle, for every variant it accepts: outputs, final
states and all gradients, float32 and float64, padded and packed, with dropout off."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.backends import available_backends, get_backend
from tests.conftest import assert_close
from tests.nn.torch_pairs import run
from tests.nn.variants import VARIANTS, variant_id

T, B, I, H = 7, 4, 3, 5
OTHERS = [name for name in available_backends() if name != "reference"]


# the layers' own options besides the cells' variants: the LSTM's projection
LAYER_VARIANTS = [
    (gatedrnn.LSTM, None, {"proj_size": 3}),
    (gatedrnn.LSTM, None, {"proj_size": 2, "peepholes": True, "coupled": True}),
]


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("variant", VARIANTS + LAYER_VARIANTS, ids=variant_id)
@pytest.mark.parametrize("form", ["padded", "packed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backend_matches_reference(backend, variant, form, dtype):
    layer_cls, _, options = variant
    kwargs = dict(num_layers=2, bidirectional=True, batch_first=True, dtype=dtype, **options)
    torch.manual_seed(10)
    reference = layer_cls(I, H, backend="reference", **kwargs)
    other = layer_cls(I, H, backend=backend, **kwargs)
    other.load_state_dict(reference.state_dict())
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(B, T, I, dtype=dtype, generator=gen)
    reason = get_backend(backend).unsupported(other.config, x)
    if reason:
        pytest.skip(reason)
    lengths = torch.tensor([3, T, 1, 5]) if form == "packed" else None
    sizes = (other.output_size, other.hidden_size)[: other.spec.num_states]
    states = tuple(torch.randn(4, B, s, dtype=dtype, generator=gen) for s in sizes)
    expected = run(reference, x, lengths, states, batch_first=True)
    actual = run(other, x, lengths, states, batch_first=True)
    assert_close(actual.output, expected.output, "output")
    for a, b in zip(actual.states, expected.states, strict=True):
        assert_close(a, b, "final state")
    for name, grad in expected.grads.items():
        assert_close(actual.grads[name], grad, f"grad of {name}")


@pytest.mark.parametrize("backend", ["cpu", "cpu-python"])
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_frozen_input_weights_and_a_plain_input_keep_no_input(backend, cell):
    import gatedrnn
    from gatedrnn.bench import saved_bytes

    torch.manual_seed(0)
    ours = getattr(gatedrnn, cell)(4, 6, backend=backend)
    reference = getattr(gatedrnn, cell)(4, 6, backend="reference")
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float32)
    full = saved_bytes(lambda: ours(x.clone().requires_grad_())[0].sum(), ours.parameters())
    for layer in (ours, reference):
        layer.weight_ih_l0.requires_grad_(False)
        layer(x)[0].sum().backward()  # x needs no gradient, W_ih is frozen
    for name, p in ours.named_parameters():
        if p.requires_grad:
            assert_close(p.grad, dict(reference.named_parameters())[name].grad, f"grad of {name}")
    frozen = saved_bytes(lambda: ours(x)[0].sum(), ours.parameters())
    assert full - frozen == x.numel() * x.element_size()  # the input is not kept alive


@pytest.mark.parametrize("wrt_input", [True, False], ids=["penalty", "maml"])
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_double_backward_matches_torch_nn(cell, wrt_input):
    """torch.nn differentiates twice on the CPU, and so does ``auto`` (the compiled loops): the
    squared norm of a first gradient, w.r.t. the input (a gradient penalty) or w.r.t. the weights
    (MAML's inner step), then backward; two layers, both directions, packed."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    import gatedrnn

    torch.manual_seed(0)
    options = dict(num_layers=2, bidirectional=True, dtype=torch.float64)
    ours = getattr(gatedrnn, cell)(I, H, **options)
    theirs = getattr(torch.nn, cell)(I, H, **options)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(T, B, I, dtype=torch.float64)
    results = []
    for layer in (ours, theirs):
        leaf = x.clone().requires_grad_(wrt_input)
        packed = pack_padded_sequence(leaf, torch.tensor([7, 3, 5, 1]), enforce_sorted=False)
        out, final = layer(packed)
        finals = final if isinstance(final, tuple) else (final,)
        loss = pad_packed_sequence(out)[0].pow(2).sum() + sum(f.sin().sum() for f in finals)
        params = list(layer.parameters())
        first = torch.autograd.grad(loss, [leaf] if wrt_input else params, create_graph=True)
        sum(g.pow(2).sum() for g in first).backward()
        results.append([*first, *(p.grad for p in params), *([leaf.grad] if wrt_input else [])])
    assert ours.last_backend == "cpu"
    for a, b in zip(*results, strict=True):
        assert_close(a, b, "second-order gradient")


def test_double_backward_without_the_input_says_why():
    """A frozen W_ih and a plain input: the loops kept no input to rerun, so a gradient with
    ``create_graph=True`` is refused with the way out; without it the same gradient is exact."""
    import gatedrnn

    layer = gatedrnn.GRU(I, H, backend="cpu")
    layer.weight_ih_l0.requires_grad_(False)
    x = torch.randn(T, B, I)
    with pytest.raises(RuntimeError, match="does not keep when neither the input nor weight_ih"):
        torch.autograd.grad(layer(x)[0].pow(2).sum(), [layer.weight_hh_l0], create_graph=True)
    reference = gatedrnn.GRU(I, H, backend="reference")
    reference.load_state_dict(layer.state_dict())
    (got,) = torch.autograd.grad(layer(x)[0].pow(2).sum(), [layer.weight_hh_l0])
    (want,) = torch.autograd.grad(reference(x)[0].pow(2).sum(), [reference.weight_hh_l0])
    assert_close(got, want, "grad of weight_hh_l0")


def _rounded_run(layer, x, lengths, states, dtype, exact):
    """Forward and backward of ``layer`` on ``x`` and ``states`` cast to ``dtype``, the upstream
    gradients values that ``exact`` holds exactly: (output, finals, every gradient), in float32."""
    x = x.to(dtype, copy=True).requires_grad_()  # (the caller's tensors stay as they were)
    states = tuple(s.to(dtype, copy=True).requires_grad_() for s in states)
    hx = states if len(states) == 2 else states[0]
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, final = layer(inp, hx)
    if lengths is not None:
        out = pad_packed_sequence(out)[0]
    finals = final if isinstance(final, tuple) else (final,)
    gen = torch.Generator().manual_seed(5)
    loss = sum(
        (t.float() * torch.randn(t.shape, generator=gen).to(exact).float()).sum()
        for t in (out, *finals)
    )
    wrt = [x, *states, *layer.parameters()]
    grads = torch.autograd.grad(loss, wrt)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    return [t.float() for t in (out, *finals, *grads)]


@pytest.mark.parametrize("backend", ["cpu", "cpu-python"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
@pytest.mark.parametrize(
    "cls, options",
    [
        (gatedrnn.RNN, {"nonlinearity": "relu"}),
        (gatedrnn.GRU, {}),
        (gatedrnn.LSTM, {}),
        (gatedrnn.LSTM, {"peepholes": True, "proj_size": 2}),
        (gatedrnn.MGU, {}),
        (gatedrnn.MinLSTM, {}),
    ],
    ids=["rnn-relu", "gru", "lstm", "lstm-peep-proj", "mgu", "minlstm"],
)
@pytest.mark.parametrize("form", ["padded", "packed"])
def test_low_precision_layers_compute_in_float32(backend, dtype, cls, options, form):
    """A bfloat16 or float16 layer on the CPU loops (CPU autocast gives them one) is computed
    in float32 on its inputs and weights, and its outputs and gradients rounded back: the
    reference's float32 results on the same values, rounded to the dtype (within one rounding
    step: the two float32 computations may round a value to either side). The layer keeps its
    dtype, its gradients included."""
    torch.manual_seed(0)
    kwargs = dict(num_layers=2, bidirectional=True, **options)
    ours = cls(I, H, backend=backend, dtype=dtype, **kwargs)
    reference = cls(I, H, backend="reference", **kwargs)
    reference.load_state_dict({k: v.float() for k, v in ours.state_dict().items()})
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(T, B, I, generator=gen).to(dtype).float()  # values both hold exactly
    sizes = (ours.output_size, H)[: ours.spec.num_states]
    states = tuple(torch.randn(4, B, s, generator=gen).to(dtype).float() for s in sizes)
    lengths = torch.tensor([3, T, 1, 5]) if form == "packed" else None
    actual = _rounded_run(ours, x, lengths, states, dtype, dtype)
    assert ours.last_backend == backend
    expected = _rounded_run(reference, x, lengths, states, torch.float32, dtype)
    step = 2.0 ** (-7 if dtype == torch.bfloat16 else -10)  # twice the unit roundoff
    for k, (got, want) in enumerate(zip(actual, expected, strict=True)):
        want = want.to(dtype).float()
        bad = (got - want).abs() > step * want.abs() + 1e-6
        assert not bad.any(), (k, got[bad][:5], want[bad][:5])


@pytest.mark.parametrize("backend", ["cpu", "cpu-python"])
@pytest.mark.parametrize(
    "variant", [v for v in VARIANTS if v[0] in (gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.MinGRU)],
    ids=variant_id,
)  # fmt: skip
@pytest.mark.parametrize("form", ["padded", "packed"])
def test_calls_without_autograd_skip_it_and_compute_the_same(backend, variant, form, monkeypatch):
    """Under no_grad, and where nothing needs a gradient, the cpu backends run their loops
    without the autograd Function (its bookkeeping costs ~20 µs a call): the same numbers bit
    for bit as a call that records the graph, and outputs that need no gradient."""
    from gatedrnn.backends import cpu

    layer_cls, _, options = variant
    torch.manual_seed(2)
    layer = layer_cls(I, H, num_layers=2, bidirectional=True, backend=backend, **options)
    x = torch.randn(T, B, I)
    if form == "packed":
        x = pack_padded_sequence(x, torch.tensor([3, T, 1, 5]), enforce_sorted=False)

    def call():
        out, final = layer(x)
        out = pad_packed_sequence(out)[0] if form == "packed" else out
        return out, final if isinstance(final, tuple) else (final,)

    recorded = call()  # x needs no gradient, the weights do
    assert recorded[0].requires_grad
    calls = []
    original = cpu._Directions.apply
    monkeypatch.setattr(cpu._Directions, "apply", lambda *a: calls.append(1) or original(*a))
    with torch.no_grad():
        plain = call()
    layer.requires_grad_(False)
    frozen = call()
    assert not calls, "the autograd Function ran where nothing needs a gradient"
    for out, finals in (plain, frozen):
        assert not out.requires_grad
        assert torch.equal(out, recorded[0])
        for a, b in zip(finals, recorded[1], strict=True):
            assert torch.equal(a, b)


@pytest.mark.parametrize("backend", ["reference", "cpu", "cpu-python", "cudnn"])
@pytest.mark.parametrize(
    "cls, options",
    [
        (gatedrnn.GRU, {}),
        (gatedrnn.LSTM, {}),
        (gatedrnn.LSTM, {"proj_size": 2}),
        (gatedrnn.MinGRU, {}),
        (gatedrnn.MinLSTM, {"scan": "sequential"}),
    ],
)
@pytest.mark.parametrize("layers", [1, 2])
def test_final_states_share_no_memory_with_the_output(backend, cls, options, layers):
    """h_n (and c_n) are tensors of their own, as torch.nn's are: writing into the output leaves
    them as they were (a one-layer call returns its loop's final states without a copy; they
    must not be views of the outputs)."""
    layer = cls(I, H, num_layers=layers, backend=backend, **options)
    x = torch.randn(T, B, I)
    if (reason := get_backend(backend).unsupported(layer.config, x)) is not None:
        pytest.skip(reason)
    with torch.no_grad():
        out, final = layer(x)
        finals = final if isinstance(final, tuple) else (final,)
        kept = [s.clone() for s in finals]
        out.fill_(7.0)
    for state, before in zip(finals, kept, strict=True):
        assert torch.equal(state, before)
