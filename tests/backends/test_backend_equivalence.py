"""Every backend against the ``reference`` oracle, for every variant it accepts: outputs, final
states and all gradients, float32 and float64, padded and packed, with dropout off."""

from __future__ import annotations

import pytest
import torch

from gatedrnn.backends import available_backends, get_backend
from tests.conftest import assert_close
from tests.nn.torch_pairs import run
from tests.nn.variants import VARIANTS, variant_id

T, B, I, H = 7, 4, 3, 5
OTHERS = [name for name in available_backends() if name != "reference"]


@pytest.mark.parametrize("backend", OTHERS)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
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
def test_frozen_input_weights_and_plain_inputs_are_not_saved(backend, cell):
    import gatedrnn
    from gatedrnn.bench import saved_bytes

    torch.manual_seed(0)
    ours = getattr(gatedrnn, cell)(4, 6, backend=backend)
    reference = getattr(gatedrnn, cell)(4, 6, backend="reference")
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(5, 3, 4, dtype=torch.float32)
    full = saved_bytes(lambda: ours(x.clone().requires_grad_())[0].sum())
    for layer in (ours, reference):
        layer.weight_ih_l0.requires_grad_(False)
        layer(x)[0].sum().backward()  # x needs no gradient, W_ih is frozen
    for name, p in ours.named_parameters():
        if p.requires_grad:
            assert_close(p.grad, dict(reference.named_parameters())[name].grad, f"grad of {name}")
    assert saved_bytes(lambda: ours(x)[0].sum()) < full  # neither x nor W_ih kept alive
