"""torch.export with the sequence length left free: every cell exports, and the saved program
runs any batch size and length with the layer's outputs and gradients.

torch.nn's layers cannot do this (torch.export fixes the length of torch's fused recurrences:
"You marked t as dynamic but your code specialized it"). While exporting, the reference loop runs
as torch's ``scan`` operator, one step in the program, and ``auto`` takes it wherever the length
is free (torch's fused kernels where it is fixed; ``tests/nn/test_compile.py``).
"""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim

import gatedrnn
from gatedrnn.backends import BackendUnsupportedError, get_backend

CASES = {
    "gru": (gatedrnn.GRU, {}),
    "gru-before": (gatedrnn.GRU, {"reset": "before"}),
    "lstm-projection": (gatedrnn.LSTM, {"proj_size": 3}),
    "lstm-peepholes-coupled": (gatedrnn.LSTM, {"peepholes": True, "coupled": True}),
    "rnn-relu": (gatedrnn.RNN, {"nonlinearity": "relu"}),
    "mgu": (gatedrnn.MGU, {}),
    "mingru-sequential": (gatedrnn.MinGRU, {"scan": "sequential"}),
    "minlstm": (gatedrnn.MinLSTM, {}),
}


def _layer(name, num_layers=1):
    """Both directions: two scans in one program (the second once fixed the batch size)."""
    cls, options = CASES[name]
    torch.manual_seed(0)
    return cls(4, 6, num_layers, bidirectional=True, batch_first=True, **options)


def _outputs_and_gradients(module, x):
    x = x.clone().requires_grad_()
    out, final = module(x)
    finals = final if isinstance(final, tuple) else (final,)
    (out.pow(2).sum() + sum(f.sum() for f in finals)).backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    return [out, *finals, x.grad], grads


@pytest.mark.parametrize("name", list(CASES))
def test_a_free_length_exports_and_runs_any_length(name, tmp_path):
    layer = _layer(name, num_layers=2 if name == "gru" else 1)  # (each scan traced: seconds)
    free = ({0: Dim("batch"), 1: Dim("time")},)
    program = torch.export.export(layer, (torch.randn(3, 5, 4),), dynamic_shapes=free)
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    recurrent = name != "minlstm"  # (the parallel scan has no time loop)
    assert any("scan" in target for target in targets) == recurrent, targets
    torch.export.save(program, tmp_path / "layer.pt2")
    exported = torch.export.load(tmp_path / "layer.pt2").module()
    for shape in ((2, 9, 4), (4, 3, 4)):
        x = torch.randn(shape)
        got, got_grads = _outputs_and_gradients(exported, x)
        want, want_grads = _outputs_and_gradients(layer, x)
        layer.zero_grad()
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b)
        assert set(got_grads) == set(want_grads)
        for key, grad in want_grads.items():
            torch.testing.assert_close(got_grads[key], grad)
        exported.zero_grad()


def test_auto_takes_torchs_fused_kernel_where_the_length_is_fixed(monkeypatch):
    """A fixed length keeps torch's fused GRU in the program (ONNX writes it as its GRU
    operator); a free one passes it over with the reason, and refuses it when named (torch's
    own error, "Constraints violated", said less)."""
    torch.manual_seed(0)
    layer = gatedrnn.GRU(4, 6, batch_first=True)
    x = torch.randn(3, 5, 4)
    fixed = torch.export.export(layer, (x,), dynamic_shapes=({0: Dim("batch")},))
    assert any("gru" in str(node.target) for node in fixed.graph.nodes)
    assert not any("scan" in str(node.target) for node in fixed.graph.nodes)
    reasons = []

    def spy(config, input):
        reasons.append(declines(config, input))
        return reasons[-1]

    cudnn = get_backend("cudnn")
    declines = cudnn.unsupported
    monkeypatch.setattr(cudnn, "unsupported", spy)
    torch.export.export(layer, (x,), dynamic_shapes=({1: Dim("time")},))
    assert reasons and all("fixes the length" in r for r in reasons), reasons
    monkeypatch.undo()
    layer = gatedrnn.GRU(4, 6, batch_first=True, backend="cudnn")
    with pytest.raises(BackendUnsupportedError, match=r"backend='reference' \(auto's choice\)"):
        torch.export.export(layer, (x,), dynamic_shapes=({1: Dim("time")},))


@pytest.mark.parametrize("cls", [gatedrnn.GRU, gatedrnn.LSTM], ids=lambda c: c.__name__)
def test_strict_export_takes_any_length(cls):
    """Under strict export (Dynamo tracing the layer) every size looks fixed to Python, so
    ``auto`` takes the scan there whatever the shapes say (torch's fused kernel fixed the
    length)."""
    torch.manual_seed(0)
    layer = cls(4, 6, bidirectional=True)
    free = ({0: Dim("time"), 1: Dim("batch")},)
    program = torch.export.export(layer, (torch.randn(5, 3, 4),), dynamic_shapes=free, strict=True)
    x = torch.randn(9, 2, 4)
    got, want = program.module()(x), layer(x)
    torch.testing.assert_close(got[0], want[0])


class _WithState(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, h, c):
        return self.layer(x, (h, c))


def test_a_free_length_exports_with_initial_states_and_unbatched_input():
    """Time-major input with the initial states as inputs (their batch free too), and a 2-D
    unbatched sequence."""
    torch.manual_seed(0)
    lstm = gatedrnn.LSTM(4, 6, num_layers=2, peepholes=True)
    time, batch = Dim("time"), Dim("batch")
    shapes = ({0: time, 1: batch}, {1: batch}, {1: batch})
    example = (torch.randn(5, 3, 4), torch.randn(2, 3, 6), torch.randn(2, 3, 6))
    program = torch.export.export(_WithState(lstm), example, dynamic_shapes=shapes)
    x, h, c = torch.randn(8, 2, 4), torch.randn(2, 2, 6), torch.randn(2, 2, 6)
    got, (got_h, got_c) = program.module()(x, h, c)
    want, (want_h, want_c) = lstm(x, (h, c))
    for a, b in ((got, want), (got_h, want_h), (got_c, want_c)):
        torch.testing.assert_close(a, b)
    gru = gatedrnn.GRU(4, 6, reset="before")
    program = torch.export.export(gru, (torch.randn(5, 4),), dynamic_shapes=({0: time},))
    y = torch.randn(11, 4)
    for a, b in zip(program.module()(y), gru(y), strict=True):
        torch.testing.assert_close(a, b)


def test_a_second_export_is_not_held_to_the_firsts_sizes():
    """torch's scan compiles its step with Dynamo, which keeps its traces by code object: an
    export with the batch fixed, then one with it free, fixed it to the first's batch size
    ("Constraints violated") until that cache was dropped before each scan."""
    torch.manual_seed(0)
    layer = gatedrnn.GRU(4, 6, reset="before")
    x = torch.randn(5, 3, 4)
    torch.export.export(layer, (x,), dynamic_shapes=({0: Dim("time")},))
    program = torch.export.export(layer, (x,), dynamic_shapes=({0: Dim("time"), 1: Dim("batch")},))
    y = torch.randn(7, 2, 4)
    torch.testing.assert_close(program.module()(y)[0], layer(y)[0])
