"""Invariants every layer must keep: a loop of cells equals the layer; packed equals each
sequence run alone; parallel scan equals the sequential loop; dropout exact at p = 0 and 1 and
off in eval; the same seed gives the same result; unbatched equals a batch of one."""

from __future__ import annotations

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.backends import BackendUnsupportedError
from tests.conftest import assert_close
from tests.nn.variants import VARIANTS, cell_options, variant_id

T, B, I, H = 6, 4, 3, 5
DTYPE = torch.float64


def _states(module, batch, dtype=DTYPE):
    L = module.num_layers * module.num_directions
    sizes = (module.output_size, module.hidden_size)[: module.spec.num_states]
    states = tuple(torch.randn(L, batch, s, dtype=dtype) for s in sizes)
    return states if len(states) == 2 else states[0]


def _as_tuple(state):
    return state if isinstance(state, tuple) else (state,)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_cell_loop_equals_layer(variant):
    layer_cls, cell_cls, options = variant
    layer = layer_cls(I, H, dtype=DTYPE, **options)
    cell = cell_cls(I, H, dtype=DTYPE, **cell_options(options))
    cell.load_state_dict({k.removesuffix("_l0"): v for k, v in layer.state_dict().items()})
    x = torch.randn(T, B, I, dtype=DTYPE)
    hx = _states(layer, B)
    out, final = layer(x, hx)
    state = tuple(s[0] for s in _as_tuple(hx))
    steps = []
    for t in range(T):
        state = _as_tuple(cell(x[t], state if len(state) == 2 else state[0]))
        steps.append(state[0])
    assert_close(out, torch.stack(steps), "outputs")
    for a, b in zip(_as_tuple(final), state, strict=True):
        assert_close(a[0], b, "final state")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_packed_equals_each_sequence_alone(variant):
    layer_cls, _, options = variant
    layer = layer_cls(I, H, num_layers=2, bidirectional=True, dtype=DTYPE, **options)
    x = torch.randn(T, B, I, dtype=DTYPE)
    lengths = torch.tensor([3, T, 1, 4])
    hx = _states(layer, B)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, final = layer(packed, hx)
    out, out_lengths = pad_packed_sequence(out)
    assert torch.equal(out_lengths, lengths)
    for b, n in enumerate(lengths.tolist()):
        h_b = tuple(s[:, b : b + 1] for s in _as_tuple(hx))
        alone, final_b = layer(x[:n, b : b + 1], h_b if len(h_b) == 2 else h_b[0])
        assert_close(out[:n, b : b + 1], alone, f"sequence {b} output")
        assert torch.all(out[n:, b] == 0), "padded steps must be zero"
        for a, s in zip(_as_tuple(final_b), _as_tuple(final), strict=True):
            assert_close(s[:, b : b + 1], a, f"sequence {b} final state")


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_packed_equals_padded_then_masked(variant):
    layer_cls, _, options = variant
    layer = layer_cls(I, H, num_layers=2, dtype=DTYPE, **options)  # forward direction only
    x = torch.randn(T, B, I, dtype=DTYPE)
    lengths = torch.tensor([T, 5, 2, 2])
    padded_out, _ = layer(x)
    packed_out, _ = layer(pack_padded_sequence(x, lengths))
    packed_out = pad_packed_sequence(packed_out, total_length=T)[0]
    mask = (torch.arange(T).unsqueeze(1) < lengths).unsqueeze(-1)  # (T, B, 1)
    assert_close(packed_out, padded_out * mask, "masked outputs")


@pytest.mark.parametrize("layer_cls", [gatedrnn.MinGRU, gatedrnn.MinLSTM])
@pytest.mark.parametrize("packed", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_parallel_scan_equals_sequential(layer_cls, packed, dtype):
    torch.manual_seed(5)
    parallel = layer_cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, scan="parallel")
    sequential = layer_cls(I, H, num_layers=2, bidirectional=True, dtype=dtype, scan="sequential")
    sequential.load_state_dict(parallel.state_dict())
    T_long = 50  # long enough for the log-space sums to span many orders of magnitude
    x = torch.randn(T_long, B, I, dtype=dtype) * 2
    h0 = torch.randn(4, B, H, dtype=dtype)  # negative values too: the h0 term is kept apart
    lengths = torch.tensor([T_long, 7, 1, 33])
    results = []
    for module in (parallel, sequential):
        xs = x.clone().requires_grad_(True)
        h = h0.clone().requires_grad_(True)
        inp = pack_padded_sequence(xs, lengths, enforce_sorted=False) if packed else xs
        out, final = module(inp, h)
        out = pad_packed_sequence(out)[0] if packed else out
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=dtype).view_as(out)).sum()
        loss = loss + final.square().sum()
        grads = torch.autograd.grad(loss, [xs, h, *module.parameters()])
        results.append((out, final, grads))
    (out_p, final_p, grads_p), (out_s, final_s, grads_s) = results
    # The scan sums in log space and in another order: exact in float64. In float32 the log-space
    # terms (a*_t reaches −100 here) cost digits, so gradients are compared as whole tensors.
    tol = 1e-4 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(out_p, out_s, atol=tol, rtol=tol)
    torch.testing.assert_close(final_p, final_s, atol=tol, rtol=tol)
    for a, b in zip(grads_p, grads_s, strict=True):
        assert torch.linalg.norm(a - b) <= 10 * tol * torch.linalg.norm(b)


def test_dropout_zero_is_no_dropout():
    torch.manual_seed(6)
    plain = gatedrnn.LSTM(I, H, num_layers=3).train()
    dropped = gatedrnn.LSTM(I, H, num_layers=3, dropout=0.0).train()
    dropped.load_state_dict(plain.state_dict())
    x = torch.randn(T, B, I)
    assert torch.equal(plain(x)[0], dropped(x)[0])


@pytest.mark.parametrize("layer_cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN, gatedrnn.MinGRU])
def test_dropout_one_zeroes_the_next_layer_input(layer_cls):
    layer = layer_cls(I, H, num_layers=2, dropout=1.0, dtype=DTYPE).train()
    top = layer_cls(H, H, dtype=DTYPE)  # the second layer alone, fed zeros
    top.load_state_dict({k.replace("_l1", "_l0"): v for k, v in layer.state_dict().items()
                         if "_l1" in k})  # fmt: skip
    x = torch.randn(T, B, I, dtype=DTYPE)
    expected, _ = top(torch.zeros(T, B, H, dtype=DTYPE))
    assert_close(layer(x)[0], expected, "output")
    layer.eval()  # and in eval dropout is off, so the input matters again
    assert not torch.allclose(layer(x)[0], expected)


def test_dropout_off_in_eval_and_seeded_in_train():
    layer = gatedrnn.GRU(I, H, num_layers=3, dropout=0.5)
    reference = gatedrnn.GRU(I, H, num_layers=3)
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(T, B, I)
    layer.eval()
    assert torch.equal(layer(x)[0], reference(x)[0])
    layer.train()
    torch.manual_seed(7)
    first = layer(x)[0]
    torch.manual_seed(7)
    again = layer(x)[0]
    torch.manual_seed(8)
    other = layer(x)[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert not torch.equal(first, reference(x)[0])


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_same_seed_same_result(variant):
    layer_cls, _, options = variant
    outputs = []
    for _ in range(2):
        torch.manual_seed(9)
        layer = layer_cls(I, H, num_layers=2, dropout=0.3, **options).train()
        outputs.append(layer(torch.randn(T, B, I))[0])
    assert torch.equal(*outputs)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_unbatched_equals_batch_of_one(variant):
    layer_cls, _, options = variant
    layer = layer_cls(I, H, num_layers=2, bidirectional=True, batch_first=True, **options)
    x = torch.randn(T, I)
    hx = _states(layer, 1, torch.float32)
    out, final = layer(x, tuple(s[:, 0] for s in hx) if isinstance(hx, tuple) else hx[:, 0])
    out_b, final_b = layer(x.unsqueeze(0), hx)
    assert torch.equal(out, out_b[0])
    for a, b in zip(_as_tuple(final), _as_tuple(final_b), strict=True):
        assert torch.equal(a, b[:, 0])


@pytest.mark.parametrize("backend", ["auto", "cpu", "cpu-python", "cudnn", "reference"])
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_empty_batch_gives_empty_results(variant, backend):
    """A batch of zero sequences, as torch.nn allows: empty outputs and states of the right
    shapes, and a backward (zero gradients), whatever backend was asked for (the cpu loops
    failed on it)."""
    layer_cls, cell_cls, options = variant
    layer = layer_cls(I, H, num_layers=2, bidirectional=True, backend=backend, **options)
    x = torch.randn(T, 0, I, requires_grad=True)
    try:
        out, final = layer(x)
    except BackendUnsupportedError:
        assert backend in ("cpu", "cpu-python", "cudnn")  # the variant is not theirs
        return
    assert out.shape == (T, 0, 2 * layer.output_size)
    sizes = (layer.output_size, layer.hidden_size)[: layer.spec.num_states]
    assert [tuple(s.shape) for s in _as_tuple(final)] == [(4, 0, size) for size in sizes]
    (out.sum() + sum(s.sum() for s in _as_tuple(final))).backward()
    assert x.grad.shape == x.shape
    cell = cell_cls(I, H, **cell_options(options))
    assert [tuple(s.shape) for s in _as_tuple(cell(torch.randn(0, I)))] == [(0, H)] * len(sizes)
