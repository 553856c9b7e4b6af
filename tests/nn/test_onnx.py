"""ONNX export of the layers, each exported model run in ONNX Runtime against the layer.

torch's TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) traces: ``auto`` records
torch.nn's fused operators there, which it writes as ONNX's RNN, GRU and LSTM operators, for any
batch size and length, as it does torch.nn's layers (before, ``auto`` took the compiled loops,
which the trace held as a Python call that the exporter replaced with the ATen calls around it:
a model that ran and computed something else). Variants torch.nn lacks go through the reference
loop, unrolled to the traced length. The default exporter (``dynamo=True``, through
torch.export) writes ``auto`` layers of torch.nn's cells at a fixed length as ONNX's GRU and
LSTM operators, as it does torch.nn's, and every cell with the length left free as ONNX's Scan
over one step (torch.nn's layers cannot be exported so); the minimal cells' parallel scan needs
no loop.
"""

from __future__ import annotations

import warnings

import pytest
import torch

import gatedrnn

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


class _Tagger(torch.nn.Module):
    """A recurrent layer (both directions, batch first) under a linear head."""

    def __init__(self, cls, num_layers=2, **options):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = cls(4, 6, num_layers, bidirectional=True, batch_first=True, **options)
        self.head = torch.nn.Linear(12, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0])


def _export(model, x, path, dynamo, dynamic):
    """Export ``model`` at ``x``; ``dynamic``: which of batch and time may change."""
    names = {0: "batch", 1: "time"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's own: deprecations, tracer, shape checks
        if dynamo:
            pytest.importorskip("onnxscript")  # the default exporter writes through it
            shapes = ({axis: names[axis] for axis in dynamic},)
            torch.onnx.export(model, (x,), path, dynamo=True, dynamic_shapes=shapes)
        else:
            axes = {"x": {axis: names[axis] for axis in dynamic}}
            torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"], dynamic_axes=axes)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(session, x):
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])


def _operators(path):
    return {node.op_type for node in onnx.load(str(path)).graph.node}


@pytest.mark.parametrize(
    "cls", [gatedrnn.GRU, gatedrnn.LSTM, gatedrnn.RNN], ids=lambda c: c.__name__
)
def test_torchscript_exporter_writes_onnx_rnn_operators_for_any_shape(cls, tmp_path):
    model = _Tagger(cls).eval()
    path = tmp_path / "model.onnx"
    session = _export(model, torch.randn(2, 5, 4), path, dynamo=False, dynamic=(0, 1))
    assert cls.__name__ in _operators(path)  # ONNX's GRU, LSTM, RNN: one per layer
    for shape in ((3, 9, 4), (1, 2, 4)):
        x = torch.randn(shape)
        torch.testing.assert_close(_run(session, x), model(x), rtol=1e-5, atol=1e-5)


def test_torchscript_exporter_names_the_cpu_loops_it_cannot_write(tmp_path):
    """Named, the compiled loops are recorded as their operator, which ONNX lacks: an error that
    names it, not a model that computes something else."""
    model = _Tagger(gatedrnn.GRU, backend="cpu").eval()
    with pytest.raises(Exception, match=r"gatedrnn::cpu_direction"):
        _export(model, torch.randn(2, 5, 4), tmp_path / "m.onnx", dynamo=False, dynamic=(0,))


@pytest.mark.parametrize(
    "cls, options",
    [(gatedrnn.GRU, {"reset": "before"}), (gatedrnn.LSTM, {"peepholes": True})],
    ids=["gru-before", "lstm-peepholes"],
)
def test_torchscript_exporter_unrolls_variants_to_the_traced_length(cls, options, tmp_path):
    """Time declared dynamic all the same: another length stops at the unrolled loop's split of
    the input, not with a wrong answer."""
    model = _Tagger(cls, **options).eval()
    path = tmp_path / "m.onnx"
    session = _export(model, torch.randn(2, 5, 4), path, dynamo=False, dynamic=(0, 1))
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(_run(session, x), model(x), rtol=1e-5, atol=1e-5)
    for steps in (4, 7):
        with pytest.raises(Exception, match="Split"):
            _run(session, torch.randn(3, steps, 4))


@pytest.mark.parametrize("cls", [gatedrnn.GRU, gatedrnn.LSTM], ids=lambda c: c.__name__)
def test_default_exporter_writes_the_fused_operator_at_a_fixed_length(cls, tmp_path):
    model = _Tagger(cls).eval()
    path = tmp_path / "m.onnx"
    session = _export(model, torch.randn(2, 5, 4), path, dynamo=True, dynamic=(0,))
    assert cls.__name__ in _operators(path)
    x = torch.randn(3, 5, 4)
    torch.testing.assert_close(_run(session, x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "cls, options",
    [(gatedrnn.LSTM, {}), (gatedrnn.GRU, {"reset": "before"}), (gatedrnn.MGU, {})],
    ids=["lstm", "gru-before", "mgu"],
)
def test_default_exporter_writes_a_scan_for_a_free_length(cls, options, tmp_path):
    """A free length, which torch.nn's layers cannot export: the loop as ONNX's Scan."""
    model = _Tagger(cls, num_layers=1, **options).eval()  # (each scan traced: seconds)
    path = tmp_path / "m.onnx"
    session = _export(model, torch.randn(2, 5, 4), path, dynamo=True, dynamic=(0, 1))
    assert "Scan" in _operators(path)
    for shape in ((3, 9, 4), (1, 2, 4)):
        x = torch.randn(shape)
        torch.testing.assert_close(_run(session, x), model(x), rtol=1e-5, atol=1e-5)


def test_default_exporter_takes_the_minimal_scan_at_any_length(tmp_path):
    model = _Tagger(gatedrnn.MinGRU).eval()
    path = tmp_path / "m.onnx"
    session = _export(model, torch.randn(2, 5, 4), path, dynamo=True, dynamic=(0, 1))
    assert "CumSum" in _operators(path)  # the log-space scan, no loop
    x = torch.randn(3, 11, 4)
    torch.testing.assert_close(_run(session, x), model(x), rtol=1e-5, atol=1e-5)
