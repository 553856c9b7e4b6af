"""Every bad input gets an error that says what was expected and what came."""

from __future__ import annotations

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence

import gatedrnn
from gatedrnn.backends import (
    _LOADED,
    _REGISTRY,
    AUTO_ORDER,
    BackendUnsupportedError,
    LayerConfig,
    register_backend,
    resolve_backend,
)
from gatedrnn.backends.compiled import compiled_loops
from gatedrnn.nn.spec import make_spec


def raises(exc, *fragments):
    """pytest.raises whose message must contain every fragment, in order."""
    return pytest.raises(exc, match=".*".join(re.escape(f) for f in fragments))


# -- inputs -------------------------------------------------------------------------------------


def test_wrong_rank():
    with raises(
        ValueError, "3-D batched input (L, N, H_in)", "got 4-D input of shape (2, 3, 4, 5)"
    ):
        gatedrnn.GRU(5, 6)(torch.randn(2, 3, 4, 5))
    with raises(ValueError, "(N, L, H_in)", "got 1-D"):
        gatedrnn.GRU(5, 6, batch_first=True)(torch.randn(5))


def test_wrong_feature_size():
    with raises(ValueError, "expected input with 5 features", "got shape (7, 2, 4)"):
        gatedrnn.LSTM(5, 6)(torch.randn(7, 2, 4))


def test_non_float_input():
    with raises(TypeError, "expected a floating-point input, got dtype torch.int64"):
        gatedrnn.RNN(5, 6)(torch.ones(3, 2, 5, dtype=torch.long))


def test_input_dtype_differs_from_parameters():
    with raises(TypeError, "dtype torch.float32 (the parameters' dtype), got torch.float64"):
        gatedrnn.GRU(5, 6)(torch.randn(3, 2, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.long])
def test_a_wrong_input_dtype_is_caught_as_torch_nn_raises_it(dtype):
    """torch.nn.GRU raises ValueError for it; code written against torch catches ours too."""
    x = torch.ones(3, 2, 5, dtype=dtype)
    with pytest.raises(ValueError):
        torch.nn.GRU(5, 6)(x)
    with pytest.raises(ValueError):
        gatedrnn.GRU(5, 6)(x)


def _gru_call(x, hx=None):
    return lambda module: module.GRU(4, 6)(x, hx)


def _cell_call(x, hx=None):
    return lambda module: module.GRUCell(4, 6)(x, hx)


def _lstm_call(x, hx):
    return lambda module: module.LSTM(4, 6)(x, hx)


MISMATCHES = {
    "features": _gru_call(torch.randn(5, 3, 7)),
    "empty sequence": _gru_call(torch.randn(0, 3, 4)),
    "h_0 shape": _gru_call(torch.randn(5, 3, 4), torch.randn(1, 2, 6)),
    "c_0 shape": _lstm_call(torch.randn(5, 3, 4), (torch.randn(1, 3, 6), torch.randn(1, 2, 6))),
    "h_0 dtype": _gru_call(torch.randn(5, 3, 4), torch.randn(1, 3, 6, dtype=torch.float64)),
    "h_0 device": _gru_call(torch.randn(5, 3, 4), torch.randn(1, 3, 6, device="meta")),
    "input device": _gru_call(torch.randn(5, 3, 4, device="meta")),
    "cell features": _cell_call(torch.randn(3, 5)),
    "cell h shape": _cell_call(torch.randn(3, 4), torch.randn(2, 6)),
    "cell h dtype": _cell_call(torch.randn(3, 4), torch.randn(3, 6, dtype=torch.float64)),
}


@pytest.mark.parametrize("call", MISMATCHES.values(), ids=MISMATCHES.keys())
def test_mismatches_are_caught_as_torch_nn_raises_them(call):
    """torch.nn raises RuntimeError for these; ours say what was expected and what came, and are
    RuntimeErrors too (and ValueError or TypeError, as before), so code written against torch
    catches them."""
    with pytest.raises(RuntimeError) as theirs:
        call(torch.nn)
    with pytest.raises(type(theirs.value)) as ours:
        call(gatedrnn)
    assert "expected" in str(ours.value) and isinstance(ours.value, (ValueError, TypeError))


@pytest.mark.parametrize("backend", ["auto", "cpu", "cudnn", "reference"])
def test_input_device_differs_from_parameters(backend):
    # the parameters on the meta device stand in for a GPU here: before the check the cpu
    # backend's compiled loops were handed their (unallocated) memory
    layer = gatedrnn.GRU(5, 6, backend=backend).to("meta")
    with raises(ValueError, "input on meta (the parameters' device), got input on cpu"):
        layer(torch.randn(3, 2, 5))
    cell = gatedrnn.LSTMCell(5, 6, device="meta")
    with raises(ValueError, "input on meta (the parameters' device), got input on cpu"):
        cell(torch.randn(2, 5))


def test_non_tensor_input():
    with raises(TypeError, "expected input to be a Tensor or PackedSequence, got list"):
        gatedrnn.GRU(5, 6)([[1.0] * 5])


def test_zero_length_sequence():
    with raises(ValueError, "at least one time step", "shape (0, 2, 5)"):
        gatedrnn.GRU(5, 6)(torch.randn(0, 2, 5))


# -- hidden state -------------------------------------------------------------------------------


def test_hidden_of_wrong_shape():
    with raises(ValueError, "expected h_0 of shape (4, 3, 6), got (4, 2, 6)"):
        gatedrnn.GRU(5, 6, num_layers=2, bidirectional=True)(
            torch.randn(7, 3, 5), torch.randn(4, 2, 6)
        )


def test_lstm_cell_state_of_wrong_shape_with_projection():
    lstm = gatedrnn.LSTM(5, 6, proj_size=2)
    x = torch.randn(7, 3, 5)
    with raises(ValueError, "expected c_0 of shape (1, 3, 6), got (1, 3, 2)"):
        lstm(x, (torch.randn(1, 3, 2), torch.randn(1, 3, 2)))
    with raises(ValueError, "expected h_0 of shape (1, 3, 2), got (1, 3, 6)"):
        lstm(x, (torch.randn(1, 3, 6), torch.randn(1, 3, 6)))


def test_hidden_of_wrong_dtype():
    with raises(TypeError, "expected h_0 of dtype torch.float32 (the input's), got torch.float64"):
        gatedrnn.GRU(5, 6)(torch.randn(7, 3, 5), torch.randn(1, 3, 6, dtype=torch.float64))


def test_hidden_on_wrong_device():
    with raises(ValueError, "expected h_0 on cpu (the input's device), got meta"):
        gatedrnn.GRU(5, 6)(torch.randn(7, 3, 5), torch.empty(1, 3, 6, device="meta"))


def test_lstm_hidden_not_a_pair():
    with raises(TypeError, "expected hx to be a tuple (h_0, c_0), got a Tensor of shape (1, 3, 6)"):
        gatedrnn.LSTM(5, 6)(torch.randn(7, 3, 5), torch.randn(1, 3, 6))


def test_gru_hidden_not_a_tensor():
    with raises(TypeError, "expected hx to be a Tensor, got tuple"):
        gatedrnn.GRU(5, 6)(torch.randn(7, 3, 5), (torch.randn(1, 3, 6),))


def test_unbatched_input_with_batched_hidden():
    with raises(ValueError, "for unbatched 2-D input, expected 2-D hx", "got 3-D"):
        gatedrnn.GRU(5, 6)(torch.randn(7, 5), torch.randn(1, 1, 6))


# -- packing: gatedrnn.pack_padded_sequence checks what torch's leaves out --------------------


def test_packed_lengths_out_of_range():
    x = torch.randn(4, 2, 5)
    with raises(ValueError, "every length in [1, 4] (the padded length), got 0 for sequence 1"):
        gatedrnn.pack_padded_sequence(x, torch.tensor([4, 0]))
    with raises(ValueError, "every length in [1, 4]", "got 5 for sequence 0"):
        gatedrnn.pack_padded_sequence(x, [5, 2])
    with raises(ValueError, "one length per sequence, shape (2,), got shape (3,)"):
        gatedrnn.pack_padded_sequence(x, [4, 2, 1])
    with raises(TypeError, "integer lengths, got dtype torch.float32"):
        gatedrnn.pack_padded_sequence(x, torch.tensor([4.0, 2.0]))


def test_packed_unsorted_with_enforce_sorted():
    x = torch.randn(3, 4, 5)  # batch first: B = 3, T = 4
    with raises(ValueError, "decreasing order with enforce_sorted=True, got [2, 4, 1]"):
        gatedrnn.pack_padded_sequence(x, [2, 4, 1], batch_first=True)
    packed = gatedrnn.pack_padded_sequence(x, [2, 4, 1], batch_first=True, enforce_sorted=False)
    reference = pack_padded_sequence(x, torch.tensor([2, 4, 1]), True, enforce_sorted=False)
    assert torch.equal(packed.data, reference.data)
    assert torch.equal(packed.sorted_indices, reference.sorted_indices)


# -- constructor --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, fragments",
    [
        ({"hidden_size": 0}, ValueError, ("hidden_size must be greater than zero, got 0",)),
        ({"num_layers": 0}, ValueError, ("num_layers must be greater than zero, got 0",)),
        ({"input_size": 2.5}, TypeError, ("input_size must be an integer, got float",)),
        ({"dropout": 1.5}, ValueError, ("dropout must be a number in [0, 1], got 1.5",)),
        ({"dropout": True}, TypeError, ("dropout must be a number",)),
        ({"proj_size": 6}, ValueError, ("proj_size must be smaller than hidden_size (6), got 6",)),
        ({"proj_size": -1}, ValueError, ("proj_size must be non-negative, got -1",)),
        ({"init": "xavier"}, ValueError, ("unknown init 'xavier'", "torch, orthogonal")),
        ({"coupled": True, "forget_bias": 1.0}, ValueError, ("coupled=True has no forget gate",)),
        ({"bias": False, "forget_bias": 1.0}, ValueError, ("bias=False",)),
        ({"backend": "tpu"}, ValueError, ("unknown backend 'tpu'", "reference")),
        ({"peepholes": "yes"}, ValueError, ("option 'peepholes'", "[False, True], got 'yes'")),
    ],
)
def test_bad_constructor_arguments(kwargs, exc, fragments):
    args = {"input_size": 5, "hidden_size": 6} | kwargs
    with raises(exc, *fragments):
        gatedrnn.LSTM(**args)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="no effect with num_layers=1"):
        gatedrnn.GRU(5, 6, dropout=0.2)


def test_unknown_variant_names():
    with raises(ValueError, "option 'reset' of cell 'gru' must be one of ['after', 'before']",
                "got 'middle'"):  # fmt: skip
        gatedrnn.GRU(5, 6, reset="middle")
    with raises(ValueError, "option 'scan' of cell 'mingru'", "got 'fast'"):
        gatedrnn.MinGRU(5, 6, scan="fast")
    with raises(ValueError, "nonlinearity", "got 'sigmoid'"):
        gatedrnn.RNN(5, 6, nonlinearity="sigmoid")
    with raises(ValueError, "unknown option 'peepholes' for cell 'gru'", "reset"):
        make_spec("gru", peepholes=True)
    with raises(ValueError, "unknown cell 'transformer'", "rnn, lstm, gru"):
        make_spec("transformer")


# -- backends -----------------------------------------------------------------------------------


class Refuser:
    name = "refuser"

    def unsupported(self, config, input):
        return "it refuses everything (a test backend)"


@pytest.fixture
def refuser_backend():
    register_backend("refuser", f"{__name__}:Refuser", auto_priority=0)
    yield
    _REGISTRY.pop("refuser")
    _LOADED.pop("refuser", None)
    AUTO_ORDER.remove("refuser")


def test_named_backend_that_cannot_run_raises(refuser_backend):
    gru = gatedrnn.GRU(5, 6, backend="refuser")
    with raises(BackendUnsupportedError, "backend 'refuser' cannot run gru", "refuses everything"):
        gru(torch.randn(3, 2, 5))


def test_auto_skips_backends_that_cannot_run(refuser_backend):
    x = torch.randn(3, 2, 5)
    gru = LayerConfig(make_spec("gru"), 5, 6)
    rnn = LayerConfig(make_spec("rnn"), 5, 6)
    assert resolve_backend("auto", gru, x).name == "cpu"  # training: ours measured faster
    assert resolve_backend("auto", rnn, x).name == "cpu"
    with torch.no_grad():  # inference: torch's kernels beat our PyTorch loops, not the compiled
        expected = "cpu" if compiled_loops() is not None else "cudnn"
        assert resolve_backend("auto", rnn, x).name == expected
    # the LSTM: compiled, ours beat oneDNN's fused kernel training, and forward-only below
    # batch 16; from batch 16 forward-only oneDNN's is as fast or faster
    lstm = "cpu" if compiled_loops() is not None else "cudnn"
    lstm_config = LayerConfig(make_spec("lstm"), 5, 6)
    for batch in (2, 16):
        assert resolve_backend("auto", lstm_config, torch.randn(3, batch, 5)).name == lstm
    with torch.no_grad():
        assert resolve_backend("auto", lstm_config, torch.randn(3, 15, 5)).name == lstm
        assert resolve_backend("auto", lstm_config, torch.randn(3, 16, 5)).name == "cudnn"
    assert (
        resolve_backend("auto", LayerConfig(make_spec("gru", reset="before"), 5, 6), x).name
        == "cpu"
    )
    projected = LayerConfig(make_spec("lstm"), 5, 6, proj_size=2)  # torch: no fused kernel
    assert resolve_backend("auto", projected, x).name == "cpu"
    peepholes = LayerConfig(make_spec("lstm", peepholes=True), 5, 6)
    assert resolve_backend("auto", peepholes, x).name == "cpu"  # a variant torch lacks: ours
    for kind in ("mingru", "minlstm"):  # ours, compiled; the PyTorch loop loses to the scan
        minimal = LayerConfig(make_spec(kind), 5, 6)
        expected = "cpu" if compiled_loops() is not None else "reference"
        assert resolve_backend("auto", minimal, x).name == expected


@pytest.mark.parametrize(
    "layer, reason",
    [
        (gatedrnn.GRU(5, 6, reset="before", backend="cudnn"), "reset='after' only"),
        (gatedrnn.LSTM(5, 6, peepholes=True, backend="cudnn"), "no peepholes or coupled gate"),
        (gatedrnn.MinGRU(5, 6, backend="cudnn"), "no fused kernel for mingru"),
        (gatedrnn.MinLSTM(5, 6, backend="triton"), "the LSTM and the MGU only, not minlstm"),
    ],
)
def test_backends_refuse_variants_with_the_reason(layer, reason):
    with raises(BackendUnsupportedError, f"backend '{layer.backend}' cannot run", reason):
        layer(torch.randn(3, 2, 5))


# -- cells --------------------------------------------------------------------------------------


def test_cell_bad_inputs():
    cell = gatedrnn.GRUCell(5, 6)
    with raises(ValueError, "2-D batched input (N, H_in)", "got 3-D"):
        cell(torch.randn(2, 3, 5))
    with raises(ValueError, "expected input with 5 features"):
        cell(torch.randn(3, 4))
    with raises(ValueError, "expected h of shape (3, 6), got (3, 5)"):
        cell(torch.randn(3, 5), torch.randn(3, 5))
    with raises(TypeError, "expected hx to be a tuple (h, c)"):
        gatedrnn.LSTMCell(5, 6)(torch.randn(3, 5), torch.randn(3, 6))
