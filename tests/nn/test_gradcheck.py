"""``gradcheck`` and ``gradgradcheck`` in float64 for every cell and variant, as a layer (two
layers, bidirectional, packed variable lengths, given initial state) and as a single-step cell."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck
from torch.func import functional_call
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from gatedrnn.backends import available_backends, get_backend
from gatedrnn.nn.functional import logcumsumexp
from tests.nn.variants import VARIANTS, cell_options, variant_id

T, B, I, H = 4, 3, 2, 3


def layer_function(module, lengths):
    names = [name for name, _ in module.named_parameters()]
    n_states = module.spec.num_states

    def f(x, *tensors):
        states, params = tensors[:n_states], tensors[n_states:]
        hx = states if n_states == 2 else states[0]
        inp = pack_padded_sequence(x, lengths, enforce_sorted=False) if lengths is not None else x
        out, final = functional_call(module, dict(zip(names, params, strict=True)), (inp, hx))
        if lengths is not None:
            out = pad_packed_sequence(out)[0]
        return (out, *(final if n_states == 2 else (final,)))

    return f


def layer_inputs(module):
    L = module.num_layers * module.num_directions
    x = torch.randn(T, B, I, dtype=torch.float64, requires_grad=True)
    sizes = (module.output_size, module.hidden_size)[: module.spec.num_states]
    states = [torch.randn(L, B, s, dtype=torch.float64, requires_grad=True) for s in sizes]
    params = [p.detach().clone().requires_grad_(True) for p in module.parameters()]
    return (x, *states, *params)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_layer_gradcheck(variant, packed, backend):
    layer_cls, _, options = variant
    module = layer_cls(
        I, H, num_layers=2, bidirectional=True, dtype=torch.float64, backend=backend, **options
    )
    lengths = torch.tensor([4, 2, 3]) if packed else None
    f = layer_function(module, lengths)
    inputs = layer_inputs(module)
    reason = get_backend(backend).unsupported(module.config, inputs[0])
    if reason:
        pytest.skip(reason)
    # Every backend in gradcheck's fast mode (a random projection of the Jacobian: one
    # directional derivative each way, in every input, the weights included), which checks its
    # own backward numerically; test_backend_equivalence compares every one of their gradients
    # with the reference's in float64 besides. The reference (the oracle) also against the
    # whole numerical Jacobian in the input and the initial states, through both layers and
    # directions; each cell's whole Jacobian in its weights is test_cell_gradcheck's (the
    # layer's, 430-odd weights at a few hundred calls each, took 2 of this file's 3.5 minutes).
    if backend == "reference":
        states = 1 + module.spec.num_states  # x and the states; the weights as they are

        def g(*tensors):
            return f(*tensors, *inputs[states:])

        assert gradcheck(g, inputs[:states], eps=1e-6, atol=1e-6)
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-6, fast_mode=True)
    if not packed:  # second derivatives once per variant, on the harder input form
        return
    if get_backend(backend).twice_differentiable:
        assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)
    else:
        with pytest.raises(RuntimeError, match="twice"):
            gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


def test_lstm_projection_gradcheck():
    import gatedrnn

    module = gatedrnn.LSTM(I, H, num_layers=2, proj_size=2, peepholes=True, dtype=torch.float64)
    f = layer_function(module, torch.tensor([4, 1, 3]))
    inputs = layer_inputs(module)
    assert gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    assert gradgradcheck(f, inputs, eps=1e-6, atol=1e-5, fast_mode=True)


@pytest.mark.parametrize("backend", available_backends())
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("cell", ["RNN", "GRU", "LSTM"])
def test_batched_gradients(cell, packed, backend):
    """Gradients batched by ``vmap`` (``is_grads_batched=True``: gradcheck's batched check,
    ``jacobian(vectorize=True)``) reach every backend's backward; the compiled loops cannot
    read them and rerun the reference loop there, as under ``create_graph=True``."""
    import gatedrnn

    module = getattr(gatedrnn, cell)(
        I, H, num_layers=2, bidirectional=True, dtype=torch.float64, backend=backend
    )
    lengths = torch.tensor([4, 2, 3]) if packed else None
    inputs = layer_inputs(module)
    reason = get_backend(backend).unsupported(module.config, inputs[0])
    if reason:
        pytest.skip(reason)
    f = layer_function(module, lengths)
    states = 1 + module.spec.num_states  # x and the states; the weights as they are

    def g(*tensors):
        return f(*tensors, *inputs[states:])

    assert gradcheck(g, inputs[:states], eps=1e-6, atol=1e-6, check_batched_grad=True)
    x = inputs[0]

    def output(x):
        return f(x, *inputs[1:])[0]

    vectorized = torch.autograd.functional.jacobian(output, x, vectorize=True)
    torch.testing.assert_close(vectorized, torch.autograd.functional.jacobian(output, x))


def test_logcumsumexp_is_torchs_and_differentiable_in_both_modes():
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    x.data[2, 0, 0] = 40.0  # a wide range, where a naive log(cumsum(exp)) would lose digits
    assert torch.allclose(logcumsumexp(x), torch.logcumsumexp(x, 0), atol=1e-14, rtol=0)
    grad = torch.randn(6, 2, 3, dtype=torch.float64)
    grad[3:] = 0  # zero upstream gradients, as padded steps give, must not make NaN
    ours = torch.autograd.grad(logcumsumexp(x), x, grad)[0]
    theirs = torch.autograd.grad(torch.logcumsumexp(x, 0), x, grad)[0]
    assert torch.allclose(ours, theirs, atol=1e-12, rtol=0)
    assert gradcheck(logcumsumexp, (x,), check_forward_ad=True)
    # the second derivative in the upstream gradient too, where it is zero (the log-space sums
    # once took that derivative as zero, which torch.autograd.functional.jvp relies on)
    grad = grad.requires_grad_()
    assert gradgradcheck(logcumsumexp, (x,), (grad,), check_fwd_over_rev=True)


@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
def test_the_exponential_cumulative_sum_in_log_space(reverse):
    """r = exp(outer) ⊙ Σ v ⊙ exp(inner) cumulated over dim 0: equal to the sum done plainly at
    moderate magnitudes, finite where the exponentials alone overflow, and differentiable in
    every argument, v's zeros included, in both modes and twice."""
    from gatedrnn.nn.functional import _ExpCumSum

    gen = torch.Generator().manual_seed(3)
    v, inner, outer = (torch.randn(5, 2, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    v[1, 0] = 0.0
    plain = (v * inner.exp()).flip(0).cumsum(0).flip(0) if reverse else (v * inner.exp()).cumsum(0)
    torch.testing.assert_close(_ExpCumSum.apply(v, inner, outer, reverse), outer.exp() * plain)
    assert _ExpCumSum.apply(v, inner + 800, outer - 800, reverse).isfinite().all()
    args = tuple(t.clone().requires_grad_() for t in (v, inner, outer))

    def f(*a):
        return _ExpCumSum.apply(*a, reverse)

    assert gradcheck(f, args, check_forward_ad=True)
    assert gradgradcheck(f, args, check_fwd_over_rev=True)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_cell_gradcheck(variant):
    _, cell_cls, options = variant
    cell = cell_cls(I, H, dtype=torch.float64, **cell_options(options))
    names = [name for name, _ in cell.named_parameters()]
    n_states = cell.spec.num_states

    def f(x, *tensors):
        states, params = tensors[:n_states], tensors[n_states:]
        hx = states if n_states == 2 else states[0]
        out = functional_call(cell, dict(zip(names, params, strict=True)), (x, hx))
        return out

    x = torch.randn(B, I, dtype=torch.float64, requires_grad=True)
    states = [torch.randn(B, H, dtype=torch.float64, requires_grad=True) for _ in range(n_states)]
    params = [p.detach().clone().requires_grad_(True) for p in cell.parameters()]
    assert gradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-6)
    assert gradgradcheck(f, (x, *states, *params), eps=1e-6, atol=1e-5)
