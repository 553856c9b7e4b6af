"""Initialisation: torch's default, orthogonal recurrent blocks, forget-gate bias."""

from __future__ import annotations

import pytest
import torch

import gatedrnn


@pytest.mark.parametrize("layer_cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN, gatedrnn.MGU])
def test_orthogonal_recurrent_blocks(layer_cls):
    layer = layer_cls(5, 8, num_layers=2, bidirectional=True, init="orthogonal")
    checked = 0
    for name, param in layer.named_parameters():
        if name.startswith("weight_hh"):
            for block in param.split(8):
                torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)
                checked += 1
        else:  # everything else keeps torch's U(−1/√H, 1/√H)
            assert param.abs().max() <= 8**-0.5
    assert checked == 4 * layer.spec.gate_blocks


def test_orthogonal_cell():
    cell = gatedrnn.GRUCell(5, 8, init="orthogonal")
    for block in cell.weight_hh.split(8):
        torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=0)


@pytest.mark.parametrize("module", ["layer", "cell"])
def test_forget_bias_is_added_to_the_forget_block(module):
    def build(forget_bias):
        torch.manual_seed(11)
        if module == "layer":
            return gatedrnn.LSTM(5, 8, num_layers=2, forget_bias=forget_bias)
        return gatedrnn.LSTMCell(5, 8, forget_bias=forget_bias)

    plain, biased = build(0.0), build(1.0)
    for (name, a), b in zip(plain.named_parameters(), biased.parameters(), strict=True):
        expected = a.detach().clone()
        if name.startswith("bias_ih"):
            expected[8:16] += 1.0
        assert torch.equal(b, expected), name


def test_reset_parameters_redraws():
    layer = gatedrnn.GRU(5, 8)
    before = layer.weight_hh_l0.detach().clone()
    layer.reset_parameters()
    assert not torch.equal(before, layer.weight_hh_l0)
