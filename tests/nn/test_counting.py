"""Parameter counts equal the modules they describe; budgets solve to the nearest size; matmul
FLOPs agree with torch's own FLOP counter."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import gatedrnn
from gatedrnn import count_parameters, hidden_for_budget, make_spec, step_cost
from gatedrnn.nn.functional import cell_step
from tests.nn.variants import VARIANTS, variant_id


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
@pytest.mark.parametrize(
    "layers, bidirectional, bias", list(itertools.product((1, 3), (False, True), (False, True)))
)
def test_count_equals_module(variant, layers, bidirectional, bias):
    layer_cls, _, options = variant
    if not bias and "forget_bias" in options:
        pytest.skip("forget_bias needs a bias")
    module = layer_cls(7, 9, num_layers=layers, bidirectional=bidirectional, bias=bias, **options)
    spec_options = {k: v for k, v in options.items() if k != "forget_bias"}
    expected = sum(p.numel() for p in module.parameters())
    assert count_parameters(module) == expected
    assert (
        count_parameters(
            module.spec.kind, 7, 9, layers, bias=bias, bidirectional=bidirectional, **spec_options
        )
        == expected
    )


@pytest.mark.parametrize("proj_size", [1, 4])
def test_count_with_projection(proj_size):
    module = gatedrnn.LSTM(7, 9, num_layers=2, bidirectional=True, proj_size=proj_size)
    assert count_parameters("lstm", 7, 9, 2, bidirectional=True, proj_size=proj_size) == sum(
        p.numel() for p in module.parameters()
    )


def test_known_counts():
    # 4·H·(I + H) + 8·H for torch's LSTM (two bias vectors); 3/4 of it for the GRU
    assert count_parameters("lstm", 88, 100) == 4 * 100 * 188 + 8 * 100 == 76000
    assert count_parameters("gru", 88, 100) == 57000
    assert count_parameters("rnn", 88, 100) == 19000


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru", "mgu", "mingru", "minlstm"])
@pytest.mark.parametrize("budget", [1_000, 20_000, 1_000_000])
@pytest.mark.parametrize("layers", [1, 2])
def test_hidden_for_budget_is_nearest(cell, budget, layers):
    h = hidden_for_budget(cell, budget, 88 if budget > 1_000 else 3, layers)
    input_size = 88 if budget > 1_000 else 3

    def distance(size):
        return abs(count_parameters(cell, input_size, size, layers) - budget)

    assert distance(h) <= distance(h + 1)
    assert h == 1 or distance(h) <= distance(h - 1)


def test_equal_budget_gives_gru_more_units_than_lstm():
    gru = hidden_for_budget("gru", 20_000, 88)
    lstm = hidden_for_budget("lstm", 20_000, 88)
    assert gru > lstm
    assert abs(count_parameters("gru", 88, gru) - 20_000) < count_parameters(
        "gru", 88, gru + 1
    ) - count_parameters("gru", 88, gru)


def test_budget_too_small():
    with pytest.raises(ValueError, match="needs 1084 parameters even at hidden size 1"):
        hidden_for_budget("lstm", 1000, 268)


@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_matmul_flops_match_torch_counter(variant):
    layer_cls, _, options = variant
    module = layer_cls(7, 9, **options)
    weights = {base: getattr(module, full) for base, full in module._weight_names[0]}
    x = torch.randn(1, 7)
    state = tuple(torch.randn(1, 9) for _ in range(module.spec.num_states))
    with FlopCounterMode(display=False) as counter:
        cell_step(module.spec, x, state, weights)
    assert step_cost(module.spec, 7, 9).matmul_flops == counter.get_total_flops()


def test_projection_flops_match_torch_counter():
    module = gatedrnn.LSTM(7, 9, proj_size=4)
    weights = {base: getattr(module, full) for base, full in module._weight_names[0]}
    with FlopCounterMode(display=False) as counter:
        cell_step(module.spec, torch.randn(1, 7), (torch.randn(1, 4), torch.randn(1, 9)), weights)
    assert step_cost("lstm", 7, 9, proj_size=4).matmul_flops == counter.get_total_flops()


def test_the_gru_is_simpler_than_the_lstm():
    gru, lstm = step_cost("gru", 88, 100), step_cost("lstm", 88, 100)
    assert (gru.gates, gru.weight_matrices, gru.state_tensors) == (2, 6, 1)
    assert (lstm.gates, lstm.weight_matrices, lstm.state_tensors) == (3, 8, 2)
    assert gru.matmul_flops * 4 == lstm.matmul_flops * 3
    assert gru.nonlinearities == 300 and lstm.nonlinearities == 500
    assert make_spec("gru", reset="before").step_cost(88, 100) == gru  # same cost, other order
