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


@pytest.mark.parametrize(
    "layer_cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN, gatedrnn.MGU, gatedrnn.MinGRU]
)
def test_deferred_initialisation_on_the_meta_device(layer_cls):
    """As with torch.nn: a layer built on ``meta`` gives its output shapes without memory (the
    autocast check used to fail there), then ``to_empty`` and ``reset_parameters`` make it real,
    initialised as a layer built on the CPU would be."""
    options = dict(num_layers=2, bidirectional=True, batch_first=True)
    meta = layer_cls(5, 7, device="meta", **options)
    out, _ = meta(torch.empty(3, 4, 5, device="meta"))
    assert out.shape == (3, 4, 14) and out.device.type == "meta"
    meta.to_empty(device="cpu")
    torch.manual_seed(0)
    meta.reset_parameters()
    torch.manual_seed(0)
    built = layer_cls(5, 7, **options)
    pairs = zip(meta.named_parameters(), built.named_parameters(), strict=True)
    for (name, got), (_, want) in pairs:
        torch.testing.assert_close(got, want, msg=name)
    x = torch.randn(3, 4, 5)
    torch.testing.assert_close(meta(x)[0], built(x)[0])
