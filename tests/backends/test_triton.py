"""The ``triton`` backend against the float64 reference: outputs, final states and every gradient,
with every work and output buffer poisoned (NaN) before the kernels run, fresh random inputs each
time. Without a GPU the kernels run in Triton's interpreter (one program, tiny sizes; bfloat16 is
left out there because the interpreter's bfloat16 ``dot`` is wrong, float16 stands in), and
``test_many_programs_*`` run the launchers' GPU grids there with every program at once
(:mod:`tests.backends.concurrent`); on a GPU the same checks run at real sizes with TF32 and
bfloat16 tolerances (``-m gpu``)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import gatedrnn
from gatedrnn.backends import BackendUnsupportedError, get_backend, resolve_backend
from tests.backends import concurrent

pytest.importorskip("triton")
from gatedrnn.backends import gpu

CUDA = torch.cuda.is_available()
DEVICE = "cuda" if CUDA else "cpu"
if not CUDA and not gpu.interpreting():
    pytest.skip("no GPU and TRITON_INTERPRET is not set", allow_module_level=True)

CELLS = {
    "gru": (gatedrnn.GRU, {}),
    "gru-before": (gatedrnn.GRU, {"reset": "before"}),
    "lstm": (gatedrnn.LSTM, {}),
    "rnn": (gatedrnn.RNN, {}),
    "rnn-relu": (gatedrnn.RNN, {"nonlinearity": "relu"}),
}
CELL_STATES = {
    "gru": ("h",), "gru-before": ("h",), "lstm": ("h", "c"), "rnn": ("h",), "rnn-relu": ("h",)
}  # fmt: skip
# the variants cuDNN lacks that the kernels run: peepholes in the LSTM kernels (the resident
# forward, the streamed ones), the coupled LSTM and the MGU as the LSTM and the reset-before GRU
# with tied weights
VARIANTS = {
    "lstm-peepholes": (gatedrnn.LSTM, {"peepholes": True}),
    "lstm-coupled": (gatedrnn.LSTM, {"coupled": True}),
    "lstm-coupled-peepholes": (gatedrnn.LSTM, {"coupled": True, "peepholes": True}),
    "mgu": (gatedrnn.MGU, {}),
}
ALL_CELLS = {**CELLS, **VARIANTS}


def _weigh_peepholes(layer, generator=None):
    """Peepholes start at zero, which would leave their terms unchecked: draw them."""
    with torch.no_grad():
        for name, p in layer.named_parameters():
            if name.startswith("weight_peep"):
                p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * 0.5)


def _hx(states: list):
    """A layer's hx from its state tensors: the one tensor, or the LSTM's pair."""
    return states[0] if len(states) == 1 else tuple(states)


def _states_of(final) -> tuple:
    return final if isinstance(final, tuple) else (final,)


# relative error ‖a − b‖ / ‖b‖ allowed per dtype (TF32 on the GPU; plain float32 interpreted)
TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
# TF32 rounds both operands of every recurrent product to 10 mantissa bits (to nearest: the
# kernels round before the tensor cores, which would truncate). Measured at T = 64 on an H100 and
# an H200: outputs, final states, input and weight gradients 5e-5–1.2e-4 (one layer and 2-layer
# bidirectional stacks); the initial state's gradient, a product of T such Jacobians, 1.1–1.2e-4
# (GRU) and 2.9–3.2e-4 (LSTM): it gets its own bound. (Truncating, they were 1.5–3.5e-4 and up to
# 8.4e-4.) GATEDRNN_TRITON_FP32=tf32x3 (three TF32 products) meets 1e-5 everywhere.
TF32_TOLERANCE = 3e-4
TF32_INITIAL_STATE_TOLERANCE = 5e-4


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(gpu, "POISON", True)


KERNEL_VARIANTS = {
    "resident": {},
    "folded": {"fold": 2, "chunks": 2, "forward_chunks": 2, "separate": 1},
    "chunked": {"chunks": 4, "forward_chunks": 4},
    "tma": {"tma": 1, "fold": 2, "chunks": 2, "forward_chunks": 2},
    "tma-chunked": {"tma": 1, "chunks": 8, "forward_chunks": 4, "separate": 1},
    "split": {"split": 2, "tma": 1, "chunks": 8, "forward_chunks": 2},
    "split-folded": {"split": 2, "fold": 2, "chunks": 2, "forward_chunks": 2, "separate": 1},
    "f16": {"f16": 1},
    "f16-stored": {"f16": 2},
    "streamed": {"resident": 0},
}


@pytest.fixture(params=list(KERNEL_VARIANTS))
def kernel_variant(request, monkeypatch):
    """Both kernel pairs of the GRU (reset after) and the LSTM: the ones that keep the weights
    on chip (the default where they fit), in the variants the launchers take where they do not
    or may be asked for ("folded": half the weights per program, the forward's state and the
    backward's gradients in two chunks per step, their products separate, not chained;
    "chunked": both in four chunks; "tma": folded, two chunks each, the per-step operand read
    by TMA from the ring the programs write; "tma-chunked": TMA, the backward in eight chunks,
    the forward in four, products separate; "split": two programs per unit slice, each over half
    of K, with TMA, the backward in eight chunks and the forward in two; "split-folded": split
    and folded, two chunks each, products separate; "f16": a float32 layer's products in
    float16, scaled, held to TF32's bounds; here forced at every size; "f16-stored": the same,
    the backward's gradients stored in float16 after a first barrier), and the ones that
    stream the weights every step. A split needs its programs to run at once: without a
    GPU only the tests that run them so (``concurrently``) take it."""
    tuning = KERNEL_VARIANTS[request.param]
    if tuning.get("split", 1) > 1 and not CUDA and "concurrently" not in request.fixturenames:
        pytest.skip("a K split's two programs must run at once (test_many_programs_*)")
    for key, value in tuning.items():
        monkeypatch.setitem(gpu.TUNING, key, value)
    return request.param


@pytest.fixture(autouse=True)
def _ieee_at_small_sizes(request, monkeypatch):
    """TF32's rounding (2⁻¹¹) over a handful of terms is not averaged out: tiny shapes are checked
    in IEEE float32, real sizes (marked gpu) with TF32 on, as cuDNN runs them."""
    if CUDA and request.node.get_closest_marker("gpu") is None:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    assert torch.isfinite(a).all(), "non-finite values (an unwritten, poisoned element?)"
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _run(layer, x, states, lengths, weights):
    """Forward + backward through ``layer``; returns output, final states and all gradients."""
    x = x.clone().requires_grad_()
    states = tuple(s.clone().requires_grad_() for s in states)
    inp = x if lengths is None else pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, final = layer(inp, states if len(states) == 2 else states[0])
    if lengths is not None:
        out = pad_packed_sequence(out, total_length=x.shape[0])[0]
    finals = final if isinstance(final, tuple) else (final,)
    loss = (out.double() * weights[0]).sum() + sum(
        (f.double() * w).sum() for f, w in zip(finals, weights[1:], strict=False)
    )
    loss.backward()
    grads = {"input": x.grad, **{f"state{i}": s.grad for i, s in enumerate(states)}}
    grads.update({name: p.grad for name, p in layer.named_parameters()})
    return out, finals, grads


def check(cell, dtype, T, B, I, H, *, layers=1, bidirectional=False, lengths=None, seed=0):
    layer_cls, options = ALL_CELLS[cell]
    gen = torch.Generator().manual_seed(seed)
    kwargs = dict(num_layers=layers, bidirectional=bidirectional, **options)
    reference = layer_cls(I, H, backend="reference", dtype=torch.float64, **kwargs).to(DEVICE)
    ours = layer_cls(I, H, backend="triton", dtype=dtype, **kwargs).to(DEVICE)
    _weigh_peepholes(reference, gen)
    ours.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
    D = 2 if bidirectional else 1
    x = torch.randn(T, B, I, generator=gen, dtype=torch.float64).to(DEVICE)
    states = tuple(
        torch.randn(layers * D, B, H, generator=gen, dtype=torch.float64).to(DEVICE) * 0.5
        for _ in range(2 if layer_cls is gatedrnn.LSTM else 1)
    )
    # the reference sees exactly the low-precision inputs and weights, in float64
    x_low, states_low = x.to(dtype), tuple(s.to(dtype) for s in states)
    weights = [torch.randn(T, B, D * H, generator=gen, dtype=torch.float64).to(DEVICE)] + [
        torch.randn(layers * D, B, H, generator=gen, dtype=torch.float64).to(DEVICE) for _ in states
    ]
    expected = _run(
        reference, x_low.double(), tuple(s.double() for s in states_low), lengths, weights
    )
    actual = _run(ours, x_low, states_low, lengths, weights)
    errors = {"output": _relative(actual[0], expected[0])}
    for i, (a, b) in enumerate(zip(actual[1], expected[1], strict=True)):
        errors[f"final state {i}"] = _relative(a, b)
    for name, g in expected[2].items():
        errors[f"grad {name}"] = _relative(actual[2][name], g)
    tf32 = dtype == torch.float32 and CUDA and gpu.fp32_precision() == "tf32"
    # a float16 product (TUNING["f16"], the resident forward's) rounds its operands as TF32 does
    tf32 = tf32 or (dtype == torch.float32 and bool(gpu.TUNING.get("f16")))
    for what, error in errors.items():
        tolerance = TOLERANCE[dtype]
        if tf32:
            initial = what.startswith("grad state")
            tolerance = TF32_INITIAL_STATE_TOLERANCE if initial else TF32_TOLERANCE
        assert error <= tolerance, f"{what}: {error:.3g} > {tolerance:g} ({errors})"
    return errors


SMALL_DTYPES = [torch.float32, torch.float16] if not CUDA else [torch.float32, torch.bfloat16]


def _skip_the_defaults_kernels(cell, dtype, kernel_variant):
    """Skip a kernel variant that runs exactly the kernels the default does here: any but the
    default for the reset-before GRU and the plain RNN (they stream whatever the variant; the
    default's run is the check), a float16 product for a layer not in float32."""
    if cell in ("gru-before", "rnn", "rnn-relu") and kernel_variant != "resident":
        pytest.skip(f"{cell} streams in every variant: the default's run checks it")
    if kernel_variant.startswith("f16") and dtype != torch.float32:
        pytest.skip("a float16 product changes float32 layers only")


@pytest.mark.parametrize("cell", sorted(CELLS))
@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=str)
@pytest.mark.parametrize("H", [5, 16, 20, 60])
def test_one_layer_matches_reference(cell, dtype, H, kernel_variant):
    """H = 60: every K range of the folded and chunked variants (16 wide each, K padded to 64)
    holds weights, the last one in part."""
    _skip_the_defaults_kernels(cell, dtype, kernel_variant)
    check(cell, dtype, T=6, B=3, I=4, H=H, seed=H)


@pytest.mark.parametrize("H", [20, 60])
def test_peepholes_in_every_kernel_variant(H, kernel_variant):
    """The peephole LSTM's resident kernels in each layout, forward and backward, and its
    streamed ones."""
    check("lstm-peepholes", torch.float32, T=6, B=3, I=4, H=H, seed=H)


@pytest.mark.parametrize("cell", sorted(VARIANTS))
@pytest.mark.parametrize("dtype", SMALL_DTYPES, ids=str)
@pytest.mark.parametrize("H", [5, 20])
def test_variants_match_reference(cell, dtype, H):
    """The peephole LSTM, the coupled LSTM (through its tied weights; both in the resident
    kernels) and the MGU (tied weights, streamed), against the reference;
    gradients of the module's own parameters (the peepholes', the tied blocks' summed)."""
    check(cell, dtype, T=6, B=3, I=4, H=H, seed=H)


@pytest.mark.parametrize("cell", sorted(VARIANTS))
def test_variants_stack_bidirectional_packed(cell):
    lengths = torch.tensor([2, 7, 1, 5])
    check(cell, torch.float32, T=7, B=4, I=3, H=6, layers=2, bidirectional=True, lengths=lengths)


def test_kernel_cell_ties_weights_to_the_same_function():
    """:func:`gpu.kernel_cell`'s cells, run by the reference backend with the tied weights,
    compute the variant's function; their gradients, through the tying, are the variant's own."""
    torch.manual_seed(3)
    for variant, kwargs in (
        (gatedrnn.MGU, {}),
        (gatedrnn.LSTM, {"coupled": True}),
        (gatedrnn.LSTM, {"coupled": True, "peepholes": True}),
    ):
        layer = variant(3, 5, backend="reference", dtype=torch.float64, **kwargs)
        with torch.no_grad():
            for p in layer.parameters():
                p.normal_(0, 0.7)
        weights = {name.removesuffix("_l0"): p for name, p in layer.named_parameters()}
        kernel, tied = gpu.kernel_cell(layer.config.spec, weights)
        if variant is gatedrnn.MGU:
            assert (kernel.kind, kernel.reset) == ("gru", "before")
        else:
            assert (kernel.kind, kernel.coupled, kernel.peepholes) == (
                "lstm",
                False,
                bool(kwargs.get("peepholes")),
            )
        plain = (gatedrnn.GRU if kernel.kind == "gru" else gatedrnn.LSTM)(
            3, 5, backend="reference", dtype=torch.float64,
            **({"reset": "before"} if kernel.kind == "gru" else {"peepholes": kernel.peepholes}),
        )  # fmt: skip
        x = torch.randn(4, 2, 3, dtype=torch.float64)
        expected, _ = layer(x)
        params = {name: tied[name.removesuffix("_l0")] for name, _ in plain.named_parameters()}
        actual, _ = torch.func.functional_call(plain, params, (x,))
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
        g_expected = torch.autograd.grad(expected.sum(), list(weights.values()))
        g_actual = torch.autograd.grad(actual.sum(), list(weights.values()))
        for a, b in zip(g_actual, g_expected, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("fold", [1, 2])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_eight_chunks(cell, fold, monkeypatch):
    """The resident kernels' opt-in eight chunks (``TUNING["chunks"] = 8`` for the backward,
    ``TUNING["forward_chunks"] = 8``), unfolded and folded, with every 16-wide chunk holding
    weights: H = 120 (K padded to 128), folded H = 250 (K padded to 256, two halves of eight
    chunks)."""
    if CUDA and torch.cuda.get_device_capability() < (9, 0):
        pytest.skip("the resident kernels need a warpgroup MMA (Hopper or newer)")
    if CUDA:
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # resident: TF32 only
    monkeypatch.setitem(gpu.TUNING, "chunks", 8)
    monkeypatch.setitem(gpu.TUNING, "forward_chunks", 8)
    monkeypatch.setitem(gpu.TUNING, "fold", fold)
    H = 120 if fold == 1 else 250
    for launcher in (gpu._resident_launch, gpu._resident_backward_launch):
        launch = launcher(H, 3, torch.device(DEVICE), torch.float32)
        assert launch["meta"]["CHUNKS"] == 8 and launch["meta"]["FOLD"] == fold
    check(cell, torch.float32, T=4, B=3, I=5, H=H, seed=fold)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_stack_bidirectional_packed(cell, kernel_variant):
    _skip_the_defaults_kernels(cell, torch.float32, kernel_variant)
    lengths = torch.tensor([2, 7, 1, 5])
    check(cell, torch.float32, T=7, B=4, I=3, H=6, layers=2, bidirectional=True, lengths=lengths)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_batch_wider_than_one_block(cell, kernel_variant):
    _skip_the_defaults_kernels(cell, torch.float32, kernel_variant)
    check(cell, torch.float32, T=3, B=17, I=2, H=3)


@pytest.fixture
def concurrently():
    """Interpreted launches run all their programs at once, with random stalls, on the grids the
    launchers plan for a 16-multiprocessor GPU (:mod:`tests.backends.concurrent`)."""
    if CUDA:
        pytest.skip("on a GPU the programs run at once anyway")
    reason = concurrent.unsupported()
    if reason:
        pytest.skip(reason)
    with concurrent.concurrent_programs(16, jitter=0.05, pause=0.15):
        yield


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_many_programs_at_once(cell, kernel_variant, concurrently):
    """What the one-program interpreter runs cannot show: the grid barrier between programs, the
    tiling into unit slices and batch groups (here 3 × 2 programs, each batch group with its own
    barrier), one program reading what the others wrote the step before (the TMA ring's two
    slots), the K split's pairs adding their parts. Programs run at once and stall at random, so
    a barrier that did not wait, a ring with one slot, or a pair that did not wait for the other's
    part fails here (each checked by mutation)."""
    if kernel_variant in ("chunked", "tma-chunked"):
        pytest.skip("chunks change nothing between programs (the one-program tests check them)")
    cpu = torch.device("cpu")
    launches = [
        gpu._resident_launch(40, 17, cpu, torch.float32),
        gpu._resident_backward_launch(40, 17, cpu, torch.float32),
        gpu._launch(40, 17, cpu, torch.float32),
    ]
    grids = {launch["grid"] for launch in launches if launch}
    assert all(x * y >= 6 for x, y in grids), grids
    check(cell, torch.float32, T=4, B=17, I=2, H=40)


@pytest.mark.parametrize("cell", ["lstm-peepholes", "mgu"])
def test_many_programs_variants(cell, kernel_variant, concurrently):
    """Each program loads its own units' peepholes (one program sees them all), in the resident
    kernels' every layout, forward and backward, and the streamed ones, and the MGU's tied
    weights in the reset-before GRU's streamed kernels, with programs at once and rows stopping
    early."""
    if kernel_variant in ("chunked", "tma-chunked"):
        pytest.skip("chunks change nothing between programs (the one-program tests check them)")
    _skip_the_defaults_kernels(
        "gru-before" if cell == "mgu" else cell, torch.float32, kernel_variant
    )
    lengths = torch.tensor([2, 4, 1, 4, 3, 4, 4, 2, 4, 1, 2, 4, 4, 3, 1, 4, 4])
    check(cell, torch.float32, T=4, B=17, I=2, H=40, lengths=lengths)


@pytest.mark.parametrize("cell", ["rnn", "rnn-relu"])
def test_many_programs_rnn(cell, concurrently):
    """The plain RNN's streamed kernels on the 16-multiprocessor grid with every program at once
    (3 × 2 programs at H = 40, B = 17): each reads the whole state the others wrote the step
    before, forward, and the whole of the step's gradients, backward; rows stopping early, both
    directions."""
    assert gpu._launch(40, 17, torch.device("cpu"), torch.float32)["grid"] == (3, 2)
    lengths = torch.tensor([2, 4, 1, 4, 3, 4, 4, 2, 4, 1, 2, 4, 4, 3, 1, 4, 4])
    check(cell, torch.float32, T=4, B=17, I=2, H=40, bidirectional=True, lengths=lengths)


@pytest.mark.parametrize("level", [1, 2])
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_many_programs_f16_backward_gathers_the_rows_maxima(cell, level, concurrently, monkeypatch):
    """The float16 backward's scale for a row is the largest of the whole step's gradients, which
    every program gathers before the barrier: here only the first program's units get an output
    gradient at the last step (10^6, past float16's range), so the others' own largest are zero
    and a scale of their own would overflow what they read of the first's (level 1), or what
    they store of their own would not match what the others unscale by (level 2, which stores
    the step's gradients in float16 between two barriers)."""
    monkeypatch.setitem(gpu.TUNING, "f16", level)
    layer_cls, options = CELLS[cell]
    torch.manual_seed(5)
    reference = layer_cls(2, 40, backend="reference", dtype=torch.float64, **options)
    ours = layer_cls(2, 40, backend="triton", **options)
    ours.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    assert gpu._resident_backward_launch(40, 17, torch.device("cpu"), torch.float32)["grid"][0] > 1
    dy = torch.zeros(4, 17, 40, dtype=torch.float64)
    dy[-1, :, :8] = torch.randn(17, 8, dtype=torch.float64) * 1e6
    x = torch.randn(4, 17, 2)
    grads = []
    for layer, dtype in ((reference, torch.float64), (ours, torch.float32)):
        x_in = x.to(dtype).requires_grad_()
        out, _ = layer(x_in)
        out.backward(dy.to(dtype))
        grads.append([x_in.grad, *(p.grad for p in layer.parameters())])
    for expected, actual in zip(*grads, strict=True):
        assert _relative(actual, expected) <= TF32_TOLERANCE


def test_many_programs_packed_stack(concurrently, monkeypatch):
    """Rows that stop early (packed input) in every batch group: the LSTM's resident kernels
    in a bidirectional two-layer stack, the reset-before GRU's streamed ones both ways, the
    GRU's K split (whose two programs of a pair each store half the rows)."""
    lengths = torch.tensor([2, 5, 1, 5, 4, 3, 5, 4, 5, 1, 2, 5, 5, 3, 1, 5, 4, 2])
    check("lstm", torch.float32, T=5, B=18, I=3, H=20, layers=2, bidirectional=True,
          lengths=lengths)  # fmt: skip
    check("gru-before", torch.float32, T=5, B=18, I=3, H=20, bidirectional=True, lengths=lengths)
    monkeypatch.setattr(gpu, "TUNING", {"split": 2, "tma": 1})
    check("gru", torch.float32, T=5, B=18, I=3, H=20, lengths=lengths)
    monkeypatch.setattr(gpu, "TUNING", {"split": 2, "tma": 1, "f16": 1})  # the ring in float16
    check("lstm", torch.float32, T=5, B=18, I=3, H=20, lengths=lengths)
    monkeypatch.setattr(gpu, "TUNING", {"split": 2, "tma": 1, "f16": 2})  # both rings
    check("gru", torch.float32, T=5, B=18, I=3, H=20, lengths=lengths)


@pytest.mark.parametrize(
    "cell, forward, backward",
    [
        ("gru", "resident", "resident"),
        ("lstm", "resident", "resident"),
        ("gru-before", "gru", "gru"),
        ("lstm-peepholes", "resident", "resident"),
        ("lstm-coupled", "resident", "resident"),
        ("mgu", "gru", "gru"),
        ("rnn", "rnn", "rnn"),
        ("rnn-relu", "rnn", "rnn"),
    ],
)
def test_kernel_choice(cell, forward, backward, monkeypatch, kernel_variant):
    """The resident kernels run the GRU (reset after) and the LSTM (peepholes or not), forward
    and backward, unless turned off; the reset-before GRU, the MGU and the plain RNN always
    stream; the coupled LSTM runs the LSTM's. Checked by which kernels are launched."""
    if CUDA:
        if torch.cuda.get_device_capability() < (9, 0):
            pytest.skip("the resident kernels need a warpgroup MMA (Hopper or newer)")
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)  # float32 through TF32
    launched = []
    kernels = gpu._kernels()

    class Spy:
        def __init__(self, name, original):
            self.name, self.original = name, original

        def __getitem__(self, grid):
            launched.append(self.name)
            return self.original[grid]

    for name in kernels.__all__:
        monkeypatch.setattr(kernels, name, Spy(name, getattr(kernels, name)))
    layer_cls, options = ALL_CELLS[cell]
    layer = layer_cls(3, 5, backend="triton", **options).to(DEVICE)
    out, _ = layer(torch.randn(4, 2, 3, device=DEVICE, requires_grad=True))
    out.sum().backward()

    def kernels_of(kind, direction):
        if kind != "resident" or kernel_variant == "streamed":
            family = cell.split("-")[0].replace("mgu", "gru")  # the MGU: the GRU's kernels
            return [f"{family}_{direction}_kernel"]
        # float32 layers' float16 products: their operands converted before each
        prepare = ["f16_operands_kernel"] if kernel_variant.startswith("f16") else []
        return [*prepare, f"resident_{direction}_kernel"]

    assert launched == kernels_of(forward, "forward") + kernels_of(backward, "backward")


def test_compile_only_compiles_without_running(monkeypatch):
    """``GATEDRNN_TRITON_COMPILE_ONLY``: each kernel a call needs goes to Triton's ``warmup``
    (compiled, not launched) with the launch's grid and sizes; nothing is computed."""
    monkeypatch.setenv("GATEDRNN_TRITON_COMPILE_ONLY", "1")
    warmed = []
    kernels = gpu._kernels()
    for name in kernels.__all__:
        kernel = getattr(kernels, name)

        def warmup(*args, grid, name=name, **options):
            warmed.append((name, grid, options["BB"], len(args)))

        monkeypatch.setattr(kernel, "warmup", warmup)
    layer = gatedrnn.LSTM(3, 5, backend="triton").to(DEVICE)
    x = torch.randn(4, 2, 3, device=DEVICE, requires_grad=True)
    out, _ = layer(x)
    out.sum().backward()
    launch = gpu._resident_launch(5, 2, torch.device(DEVICE), torch.float32)
    family = "resident" if launch else "lstm"  # on a GPU without TF32: the streamed kernels
    names = [name for name, *_ in warmed]
    assert names == [f"{family}_forward_kernel", f"{family}_backward_kernel"]
    launch = launch or gpu._launch(5, 2, torch.device(DEVICE), torch.float32)
    assert warmed[0][1:3] == (launch["grid"], launch["meta"]["BB"])
    assert torch.isnan(out).all()  # poisoned, never written


@pytest.fixture
def hopper(monkeypatch):
    """The launchers' view of a 132-multiprocessor sm_90 GPU with TF32 on, without one."""
    monkeypatch.setattr(gpu, "_sm_count", lambda index: 132)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (9, 0))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(gpu, "fp32_precision", lambda: "tf32")
    return torch.device("cuda", 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("fold", [None, 1, 2])
def test_resident_launches_fit_the_chip(hopper, monkeypatch, dtype, fold):
    """Every size the resident launchers accept covers H and B, keeps one program per
    multiprocessor (the barrier needs them all resident) and plans the weights and one chunk of
    the step's operand within shared memory, with K ranges the MMA takes and a product at most
    256 wide. fold None: the default, unfolded where that fits, else folded."""
    if fold is not None:
        monkeypatch.setitem(gpu.TUNING, "fold", fold)
    _every_launch_fits(hopper, dtype, fold)
    # where they apply, as the notes say
    small = gpu._resident_launch(1024, 16, hopper, torch.bfloat16)
    assert small["grid"] == ((128, 1) if fold == 2 else (64, 1))  # 8 or 16 units a program
    assert small["meta"]["FOLD"] == (fold or 1)
    fp32 = gpu._resident_launch(1024, 16, hopper, torch.float32)
    assert (fp32 is None) == (fold == 1)
    assert gpu._resident_launch(1024, 256, hopper, torch.bfloat16) is None
    back = gpu._resident_backward_launch(1024, 16, hopper, torch.bfloat16)
    assert back["meta"]["BB"] == (16 if fold == 2 else 8)
    back = gpu._resident_backward_launch(1024, 64, hopper, torch.bfloat16)
    assert (back is None) == (fold == 2)  # folded, 64 rows would be a 512-wide product
    if fold is None:
        assert fp32["meta"]["FOLD"] == 2 and fp32["grid"] == (128, 1)
        assert gpu._resident_launch(512, 16, hopper, torch.float32)["meta"]["FOLD"] == 1
        assert gpu._resident_launch(1024, 64, hopper, torch.float32) is None  # 512 programs
        assert back["meta"] == {
            "BH": 16, "BB": 32, "KP": 1024, "FOLD": 1, "SPLIT": 1, "CHUNKS": 4,
            "SEPARATE": False, "TMA": False, "FENCE": False, "F16": False, "num_warps": 8,
        }  # fmt: skip
        assert gpu._resident_backward_launch(1024, 16, hopper, torch.bfloat16)["meta"][
            "CHUNKS"
        ] == 1  # fmt: skip
        for B, BB, chunks in ((1, 8, 4), (16, 16, 4)):
            back = gpu._resident_backward_launch(1024, B, hopper, torch.float32)
            assert back["grid"] == (128, 1)
            assert back["meta"]["FOLD"] == 2 and back["meta"]["CHUNKS"] == chunks
            assert back["meta"]["BB"] == BB
        assert gpu._resident_backward_launch(1024, 64, hopper, torch.float32) is None
        back = gpu._resident_backward_launch(512, 64, hopper, torch.float32)
        assert back["meta"]["FOLD"] == 1 and back["meta"]["CHUNKS"] == 4


def _every_launch_fits(hopper, dtype, fold=None, chunks=None, split=1):
    """The launchers' sizes at many H and B pass the rules of
    :func:`test_resident_launches_fit_the_chip` (with a K split: per program, over its half of
    K); returns how many were accepted."""
    accepted = 0
    for H in (16, 100, 256, 320, 512, 1000, 1024, 2048):
        for B in (1, 8, 16, 17, 64, 256):
            forward = gpu._resident_launch(H, B, hopper, dtype)
            backward = gpu._resident_backward_launch(H, B, hopper, dtype)
            for launch, operand in ((forward, 1), (backward, 4)):
                if launch is None:
                    continue
                accepted += 1
                (p, q), meta = launch["grid"], launch["meta"]
                size = 2 if meta.get("F16") else dtype.itemsize
                F, C, S = meta["FOLD"], meta["CHUNKS"], meta["SPLIT"]
                assert fold in (None, F) and meta["BH"] == 16 // F and chunks in (None, C)
                assert meta["SPLIT"] == split and p % S == 0
                assert p * q <= 132 and p // S * meta["BH"] >= H and q * meta["BB"] >= B
                KS = meta["KP"] // S  # a program's part of K
                assert KS * S >= H and KS // F // C >= 16  # the MMA's smallest K (bf16)
                assert operand * F * meta["BB"] <= 256
                weights = 64 * KS // F
                assert (weights + operand * meta["BB"] * KS // C) * size <= gpu.SHARED_MEMORY
    return accepted


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("chunks", [2, 4, 8])
def test_forward_chunks_on_request(hopper, monkeypatch, dtype, chunks):
    """``TUNING["forward_chunks"]`` loads the resident forward's state in chunks (the backward's
    count stays its own), within the same rules; four put float32 at H = 1024, B = 64 on chip,
    folded (whole, the state alone would be 256 KB)."""
    monkeypatch.setitem(gpu.TUNING, "forward_chunks", chunks)
    monkeypatch.setitem(gpu.TUNING, "chunks", 1)
    accepted = _every_launch_fits(hopper, dtype, chunks=None)
    assert accepted > 0
    for H in (256, 1024):
        assert gpu._resident_launch(H, 16, hopper, dtype)["meta"]["CHUNKS"] == chunks
    assert gpu._resident_backward_launch(256, 1, hopper, dtype)["meta"]["CHUNKS"] == 1
    if dtype == torch.float32 and chunks >= 4:
        launch = gpu._resident_launch(1024, 64, hopper, dtype)
        assert launch["grid"] == (128, 1)
        assert launch["meta"] == {
            "BH": 8, "BB": 64, "KP": 1024, "FOLD": 2, "SPLIT": 1, "CHUNKS": chunks,
            "SEPARATE": False, "TMA": False, "FENCE": False, "F16": False, "num_warps": 8,
        }  # fmt: skip


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_split_on_request(hopper, monkeypatch, dtype):
    """``TUNING["split"] = 2``: twice the programs, each pair over the two halves of K, within
    the same rules per program; what it is for: float32 at H = 1024, B = 64, both directions
    unfolded, on 128 programs (the backward in eight chunks of 64 KB beside 128 KB of weights,
    the forward in two). Refused, saying why, where the programs cannot run at once."""
    monkeypatch.setitem(gpu.TUNING, "split", 2)
    assert _every_launch_fits(hopper, dtype, split=2) > 0
    if dtype == torch.float32:
        forward = gpu._resident_launch(1024, 64, hopper, dtype)
        backward = gpu._resident_backward_launch(1024, 64, hopper, dtype)
        assert forward["grid"] == backward["grid"] == (128, 1)
        expected = {"BH": 16, "BB": 64, "KP": 1024, "FOLD": 1, "SPLIT": 2, "num_warps": 8}
        assert {key: forward["meta"][key] for key in expected} == expected
        assert {key: backward["meta"][key] for key in expected} == expected
        assert forward["meta"]["CHUNKS"] == 2 and backward["meta"]["CHUNKS"] == 8
    if not CUDA:
        with pytest.raises(ValueError, match="run at once"):
            gpu._resident_launch(20, 3, torch.device("cpu"), dtype)
    monkeypatch.setitem(gpu.TUNING, "split", 3)
    with pytest.raises(ValueError, match="must be 1 or 2, got 3"):
        gpu._resident_launch(1024, 64, hopper, dtype)


@pytest.mark.parametrize("fold", [None, 2])
def test_f16_on_request(hopper, monkeypatch, fold):
    """``TUNING["f16"]`` gives a float32 layer's resident kernels a float16 product: half the
    shared memory, so float32 at H = 1024 takes bfloat16's launches, where TF32 fits nowhere
    without chunks or a split (the forward unfolded at B = 16 and, on 128 programs of 32 rows,
    at B = 64; folded, 128 programs of 64 rows; the backward at B = 64 unfolded in four chunks).
    The backward's needs the rows' maxima after the barrier, which TMA's ring, stored before it,
    cannot wait for: with TMA the backward stays TF32, unless level 2 stores the ring after a
    first barrier. bfloat16 layers are as they were, and it gives way to a more accurate float32
    precision asked for."""
    if fold:
        monkeypatch.setitem(gpu.TUNING, "fold", fold)
    tf32 = gpu._resident_launch(1024, 64, hopper, torch.float32)
    tf32_back = gpu._resident_backward_launch(1024, 64, hopper, torch.float32)
    monkeypatch.setitem(gpu.TUNING, "f16", 1)
    assert _every_launch_fits(hopper, torch.float32, fold) > 0
    for B in (16, 64):
        for launcher in (gpu._resident_launch, gpu._resident_backward_launch):
            f16 = launcher(1024, B, hopper, torch.float32)
            bf16 = launcher(1024, B, hopper, torch.bfloat16)
            if bf16 is None:  # folded, B = 64 would be a 512-wide backward product
                assert f16 is None and fold == 2 and launcher is gpu._resident_backward_launch
                continue
            assert f16["meta"].pop("F16") and not bf16["meta"].pop("F16")
            assert f16 == bf16
    assert tf32 is None and tf32_back is None
    forward = gpu._resident_launch(1024, 64, hopper, torch.float32)
    assert forward["grid"] == ((128, 1) if fold else (64, 2))
    assert forward["meta"]["BB"] == (64 if fold else 32) and forward["meta"]["FOLD"] == (fold or 1)
    if not fold:
        back = gpu._resident_backward_launch(1024, 64, hopper, torch.float32)["meta"]
        assert (back["BB"], back["CHUNKS"], back["F16"]) == (32, 4, True)
    monkeypatch.setitem(gpu.TUNING, "tma", 1)
    assert gpu._resident_launch(1024, 16, hopper, torch.float32)["meta"]["F16"]
    back = gpu._resident_backward_launch(1024, 16, hopper, torch.float32)["meta"]
    assert not back["F16"] and back["FOLD"] == 2  # TF32's launch there
    monkeypatch.setitem(gpu.TUNING, "f16", 2)  # the backward's gradients stored in float16
    forward = gpu._resident_launch(1024, 16, hopper, torch.float32)["meta"]
    back = gpu._resident_backward_launch(1024, 16, hopper, torch.float32)["meta"]
    assert forward["F16"] == 1 and back["F16"] == 2 and back["TMA"]  # even with TMA
    monkeypatch.setattr(gpu, "fp32_precision", lambda: "tf32x3")
    assert gpu._resident_launch(1024, 16, hopper, torch.float32) is None
    monkeypatch.setitem(gpu.TUNING, "f16", 3)
    with pytest.raises(ValueError, match=r"TUNING\['f16'\] must be 0, 1 or 2, got 3"):
        gpu._resident_launch(1024, 16, hopper, torch.bfloat16)


@pytest.mark.parametrize("w_scale", [1e-6, 1.0, 3e4])
@pytest.mark.parametrize("h_scale", [1e-3, 1.0, 1e6])
def test_f16_operands_stay_in_range(w_scale, h_scale):
    """The F16 product's operands (``_f16_operands``): weights and h0 scaled by powers of two,
    the largest weight in [2^14, 2^15), every state within 2^14 (the bound the cells keep:
    max(1, |h0|)), both rounded as TF32 rounds (10 mantissa bits), and SCALE undoing them, at
    magnitudes float16 alone would flush or overflow."""
    w = torch.randn(12, 4, dtype=torch.float64).float() * w_scale
    h0 = torch.randn(3, 4, dtype=torch.float64).float() * h_scale
    w16, hq, scale = gpu._f16_operands(w, h0)
    assert w16.dtype == hq.dtype == torch.float16 and scale.dtype == torch.float32
    assert 2**14 <= w16.abs().max() < 2**15
    bound = max(1.0, h0.abs().max().item())
    assert 2**13 <= bound * scale[0] < 2**14
    a_and_b = 1 / scale[1].double()
    assert torch.log2(scale[0].double()) % 1 == 0 and torch.log2(a_and_b) % 1 == 0
    weights = w16.double() * scale[0].double() / a_and_b
    torch.testing.assert_close(weights, w.double(), rtol=2**-11, atol=0)
    # normal down to 2^-28 of the largest: the smaller ones are as exact as TF32 would keep them
    torch.testing.assert_close(hq[0].double() / scale[0].double(), h0.double(), rtol=2**-11,
                               atol=bound * 2**-38)  # fmt: skip


@pytest.fixture(params=[1, 2], ids=["f16", "f16-stored"])
def f16(request, monkeypatch):
    """``TUNING["f16"]`` on, at both levels (2: the backward's gradients stored in float16
    between two barriers); on a GPU with what the resident kernels need (Hopper, TF32 allowed:
    the small tests otherwise run float32 in IEEE, on the streamed kernels). Returns a check
    that a size's launches take the float16 products (level 1's backward: unless TMA)."""
    if CUDA:
        if torch.cuda.get_device_capability() < (9, 0):
            pytest.skip("the resident kernels need a warpgroup MMA (Hopper or newer)")
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    level = request.param
    monkeypatch.setitem(gpu.TUNING, "f16", level)

    def launched(H: int, B: int) -> None:
        device = torch.device(DEVICE)
        assert gpu._resident_launch(H, B, device, torch.float32)["meta"]["F16"] == 1
        back = gpu._resident_backward_launch(H, B, device, torch.float32)["meta"]
        assert back["F16"] == (level if level == 2 or not back["TMA"] else 0)

    return launched


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # saturated gates, interpreted
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_f16_product_outside_float16s_range(cell, f16):
    """End to end, with the scales needed: an initial state of magnitude 10^5 (past float16's
    65504: unscaled it would be inf) and weights of 10^-6 (float16 subnormals), both cells
    held to TF32's bounds."""
    f16(20, 3)
    layer_cls, options = CELLS[cell]
    torch.manual_seed(3)
    for h_scale, w_scale in ((1e5, 1.0), (1.0, 1e-6)):
        reference = layer_cls(4, 20, backend="reference", dtype=torch.float64, **options)
        with torch.no_grad():
            reference.weight_hh_l0.mul_(w_scale)
        ours = layer_cls(4, 20, backend="triton", **options).to(DEVICE)
        ours.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
        x = torch.randn(6, 3, 4).to(DEVICE)
        states = [torch.randn(1, 3, 20).to(DEVICE) * h_scale for _ in CELL_STATES[cell]]
        with torch.no_grad():
            expected = reference(x.double(), _hx([s.double() for s in states]))
            actual = ours(x, _hx(states))
        assert _relative(actual[0], expected[0]) <= TF32_TOLERANCE
        for a, b in zip(_states_of(actual[1]), _states_of(expected[1]), strict=True):
            assert _relative(a, b) <= TF32_TOLERANCE


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_f16_backward_scales_each_rows_gradients(cell, f16):
    """The float16 backward scales the step's gradients per batch row, by the row's largest:
    rows whose gradients are 10^6 (float16 overflows at 65504), 1 and 10^-9 (float16 flushes
    below 6e-8; one scale for all would flush them against the first row's) each keep TF32's
    accuracy, in the input's and the initial state's gradients, row by row (a row's 20 values
    are not averaged as a whole tensor's are: 10-bit operands leave up to ~5e-4 there, measured;
    a flushed row is off by ~1, an overflowed one not finite)."""
    f16(20, 3)
    layer_cls, options = CELLS[cell]
    torch.manual_seed(4)
    reference = layer_cls(4, 20, backend="reference", dtype=torch.float64, **options)
    ours = layer_cls(4, 20, backend="triton", **options).to(DEVICE)
    ours.load_state_dict({k: v.float() for k, v in reference.state_dict().items()})
    rows = torch.tensor([1e6, 1.0, 1e-9], dtype=torch.float64)
    dy = torch.randn(6, 3, 20, dtype=torch.float64) * rows[:, None]
    x = torch.randn(6, 3, 4).to(DEVICE)
    states = [torch.randn(1, 3, 20).to(DEVICE) for _ in CELL_STATES[cell]]
    grads = []
    for layer, dtype in ((reference, torch.float64), (ours, torch.float32)):
        inputs = [t.to(dtype).requires_grad_() for t in (x, *states)]
        out, _ = layer(inputs[0], _hx(inputs[1:]))
        out.backward(dy.to(dtype).to(DEVICE))
        grads.append([t.grad for t in inputs])
    for expected, actual in zip(*grads, strict=True):
        batch = 1 if expected.shape[0] != 3 else 0  # x is (T, B, F), the states (1, B, H)
        for b in range(3):
            row_e, row_a = expected.select(batch, b), actual.select(batch, b)
            assert _relative(row_a, row_e) <= 2 * TF32_INITIAL_STATE_TOLERANCE, (b, rows[b])


@pytest.mark.parametrize(
    "tuning",
    [
        {"tma": 1},
        {"fold": 2, "chunks": 2, "forward_chunks": 2, "separate": 1},
        {"chunks": 8},
        {"tma": 1, "fold": 2, "forward_chunks": 4},
    ],
    ids=["tma", "folded", "eight-chunks", "tma-folded"],
)
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_f16_with_the_other_variants(cell, tuning, f16, monkeypatch):
    """The float16 products with the resident kernels' other variants: the TMA ring (holding
    the scaled float16 state; the backward's: TF32 at level 1, the scaled float16 gradients at
    level 2), folded K, chunks in both directions; packed input, two layers both ways."""
    for key, value in tuning.items():
        monkeypatch.setitem(gpu.TUNING, key, value)
    f16(40, 3)
    lengths = torch.tensor([2, 5, 1])
    check(cell, torch.float32, T=5, B=3, I=3, H=40, layers=2, bidirectional=True,
          lengths=lengths)  # fmt: skip


def test_tma_on_request(hopper, monkeypatch):
    """``TUNING["tma"]`` turns the TMA operand on in both resident launchers, with the proxy
    fences on a GPU (not under the interpreter, which has no inline assembly), and changes none
    of the sizes."""
    plain = [
        launcher(1024, B, hopper, torch.float32)
        for launcher in (gpu._resident_launch, gpu._resident_backward_launch)
        for B in (1, 16)
    ]
    monkeypatch.setitem(gpu.TUNING, "tma", 1)
    for launch, launcher, B in zip(
        plain, [gpu._resident_launch] * 2 + [gpu._resident_backward_launch] * 2, (1, 16) * 2,
        strict=True,
    ):  # fmt: skip
        tma = launcher(1024, B, hopper, torch.float32)
        assert tma["meta"].pop("TMA") and tma["meta"].pop("FENCE")
        assert not launch["meta"].pop("TMA") and not launch["meta"].pop("FENCE")
        assert tma == launch
    interpreted = gpu._resident_launch(20, 3, torch.device("cpu"), torch.float32)["meta"]
    assert interpreted["TMA"] and not interpreted["FENCE"]


@pytest.mark.parametrize("B, tiles", [(10, 3), (3, 1)])
@pytest.mark.parametrize(
    "fold, split, blocks", [(1, 1, 1), (2, 1, 1), (2, 1, 4), (1, 2, 1), (2, 2, 4)]
)
def test_tma_ring_layout(fold, split, blocks, B, tiles):
    """The ring the TMA variant reads (``_ring``): slot 0 holds h0 where the kernels' ring
    stores put a state (block (t·R + f)·blocks of batch tile t and K range f, R = SPLIT·FOLD
    ranges, local row j, column k ← h0[t·BB + j, f·KP / R + k]), zeros past B and H, in the
    other blocks and in slot 1; min(B, BB) rows a block (the boxes' rows past B are read as
    zeros by TMA, out of bounds); its descriptor loads a batch tile's FOLD·blocks blocks of BB
    rows (a program's K ranges), one chunk wide."""
    BB, KP, chunks, H = 4, 32, 2, 30
    launch = {
        "grid": (5 * split, tiles),
        "meta": {
            "TMA": True, "FOLD": fold, "SPLIT": split, "BB": BB, "KP": KP, "CHUNKS": chunks
        },
    }  # fmt: skip
    h0 = torch.randn(B, H)
    like = torch.empty(0)
    desc, ring = gpu._ring(launch, blocks, B, like, h0)
    R = fold * split
    KF, BT = KP // R, min(B, BB)
    assert ring.shape == (2 * tiles * R * blocks, BT, KF) and desc.base is ring
    assert desc.block_shape == [fold * blocks, BB, KF // chunks]
    expected = torch.zeros(2 * tiles * R * blocks, BT, KF)
    for b in range(B):
        for u in range(H):
            t, j, f, k = b // BB, b % BB, u // KF, u % KF
            expected[(t * R + f) * blocks, j, k] = h0[b, u]
    torch.testing.assert_close(ring, expected, rtol=0, atol=0)
    rounded = gpu._ring(launch, blocks, B, like, h0, True)[1]
    assert torch.equal(rounded, gpu.round_tf32(expected)) and not torch.equal(rounded, ring)
    unused = gpu._ring({"meta": {"TMA": False}}, 1, B, like)
    assert unused[0] is like and unused[1] is like
    assert gpu._exchange({"meta": {"SPLIT": 1}}, like) is like


def test_resident_launches_need_hopper_and_tf32(hopper, monkeypatch):
    assert gpu._resident_launch(256, 16, hopper, torch.float32) is not None
    monkeypatch.setattr(gpu, "fp32_precision", lambda: "tf32x3")
    assert gpu._resident_launch(256, 16, hopper, torch.float32) is None
    assert gpu._resident_launch(256, 16, hopper, torch.bfloat16) is not None
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (8, 0))
    assert gpu._resident_launch(256, 16, hopper, torch.bfloat16) is None
    assert gpu._resident_backward_launch(256, 16, hopper, torch.bfloat16) is None
    monkeypatch.setitem(gpu.TUNING, "fold", 3)
    with pytest.raises(ValueError, match="must be 1 or 2, got 3"):
        gpu._resident_launch(256, 16, hopper, torch.bfloat16)
    monkeypatch.setitem(gpu.TUNING, "fold", 1)
    monkeypatch.setitem(gpu.TUNING, "chunks", 3)
    with pytest.raises(ValueError, match=r"TUNING\['chunks'\] must be 1, 2, 4 or 8, got 3"):
        gpu._resident_backward_launch(256, 16, hopper, torch.bfloat16)
    gpu._resident_launch(256, 16, hopper, torch.bfloat16)  # the backward's count only
    monkeypatch.setitem(gpu.TUNING, "forward_chunks", 16)
    with pytest.raises(ValueError, match=r"TUNING\['forward_chunks'\] must be .*, got 16"):
        gpu._resident_launch(256, 16, hopper, torch.bfloat16)


def test_round_tf32_rounds_to_nearest():
    one = 1.0 + 2.0**-10  # the TF32 neighbours of 1: 1 and 1 + 2⁻¹⁰
    x = torch.tensor([1.0, one, 1 + 2.0**-12, 1 + 3 * 2.0**-12, 1 + 2.0**-11, -(1 + 3 * 2.0**-12)])
    expected = torch.tensor([1.0, one, 1.0, one, one, -one])  # ties away from zero, as cvt.rna
    assert torch.equal(gpu.round_tf32(x), expected)
    y = torch.randn(10_000, generator=torch.Generator().manual_seed(0))
    rounded = gpu.round_tf32(y)
    assert (rounded.view(torch.int32) & 0x1FFF).eq(0).all()
    assert ((rounded - y).abs() <= y.abs() * 2.0**-11).all()


def test_fresh_inputs_each_draw():
    # the same function on different random inputs, not one lucky draw
    for seed in range(3):
        check("gru", torch.float32, T=4, B=2, I=3, H=7, seed=100 + seed)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_forward_without_grad_saves_nothing_and_matches(cell, monkeypatch):
    """Under no_grad the forward stores no gates for a backward, although the weights require
    gradients (an autograd Function's ``needs_input_grad`` ignores the grad mode)."""
    layer_cls, options = CELLS[cell]
    torch.manual_seed(0)
    ours = layer_cls(3, 8, backend="triton", **options).to(DEVICE)
    ref = layer_cls(3, 8, backend="reference", **options).to(DEVICE)
    ref.load_state_dict(ours.state_dict())
    saved = []
    run = gpu._run

    def spy(kernel, launch, *args, **constants):
        saved.append(constants["SAVE"])
        return run(kernel, launch, *args, **constants)

    monkeypatch.setattr(gpu, "_run", spy)
    x = torch.randn(5, 2, 3, device=DEVICE)
    with torch.no_grad():
        a, ha = ours(x)
        b, hb = ref(x)
    assert _relative(a, b) < TOLERANCE[torch.float32]
    for state, expected in zip(
        ha if isinstance(ha, tuple) else (ha,), hb if isinstance(hb, tuple) else (hb,), strict=True
    ):
        assert _relative(state, expected) < TOLERANCE[torch.float32]
    assert saved == [False]
    ours(x)
    assert saved == [False, True]


def test_pending_faults_are_waited_for_and_raised(monkeypatch):
    """``raise_pending_faults`` waits for every launch whose fault flag no call has looked at,
    forgets them, and raises if one reported a fault; with none pending it returns at once."""
    waited = []

    class Event:
        def synchronize(self):
            waited.append(self)

    flags = [torch.tensor([0], dtype=torch.int32), torch.tensor([1], dtype=torch.int32)]
    monkeypatch.setattr(gpu, "_pending", [(flag, Event()) for flag in flags])
    with pytest.raises(RuntimeError, match="grid barrier of the triton backend timed out"):
        gpu.raise_pending_faults()
    assert len(waited) == 2 and gpu._pending == []
    gpu.raise_pending_faults()  # nothing left
    monkeypatch.setattr(gpu, "_pending", [(flags[0], Event())])
    gpu.raise_pending_faults()  # a clean flag
    assert len(waited) == 3


@pytest.mark.parametrize("cell", [*sorted(CELLS), "lstm-coupled-peepholes", "mgu"])
def test_double_backward_reruns_the_reference(cell):
    """``create_graph=True`` (a gradient penalty, second derivatives; cuDNN refuses them): the
    backward reruns the reference loop on the saved inputs and differentiates it. The input
    gradient and the penalty's parameter and initial-state gradients match the reference
    backend's, two layers both ways, packed (the variants: through their tied weights and the
    peepholes)."""
    layer_cls, options = ALL_CELLS[cell]
    torch.manual_seed(6)
    kwargs = dict(num_layers=2, bidirectional=True, **options)
    reference = layer_cls(3, 5, backend="reference", **kwargs).to(DEVICE)
    ours = layer_cls(3, 5, backend="triton", **kwargs).to(DEVICE)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(6, 4, 3, device=DEVICE)
    _weigh_peepholes(reference)
    ours.load_state_dict(reference.state_dict())
    states = [torch.randn(4, 4, 5, device=DEVICE) for _ in range(reference.config.spec.num_states)]
    lengths = torch.tensor([6, 2, 5, 3])
    results = []
    for layer in (reference, ours):
        x_in = x.clone().requires_grad_()
        s_in = [s.clone().requires_grad_() for s in states]
        packed = pack_padded_sequence(x_in, lengths, enforce_sorted=False)
        out, _ = layer(packed, _hx(s_in))
        out = pad_packed_sequence(out, total_length=6)[0]
        (g,) = torch.autograd.grad((out**2).sum(), x_in, create_graph=True)
        (g**2).sum().backward()
        results.append([g.detach(), *(s.grad for s in s_in), *(p.grad for p in layer.parameters())])
    assert len(results[1]) == len(results[0]) and all(t is not None for t in results[1])
    for actual, expected in zip(results[1], results[0], strict=True):
        torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def _spy_runs(monkeypatch) -> list:
    """Record each kernel launch of the backend (kernel name, grid) and run it."""
    runs, run = [], gpu._run

    def spy(kernel, launch, *args, **constants):
        runs.append((kernel.fn.__name__, launch["grid"]))
        return run(kernel, launch, *args, **constants)

    monkeypatch.setattr(gpu, "_run", spy)
    return runs


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_torch_compile_runs_the_kernels_as_they_are(cell, monkeypatch):
    """Under ``torch.compile`` the layer runs our kernels, as launched eagerly (Dynamo does not
    trace into them: it would re-grid or fuse a persistent launch with a grid barrier), and
    the results and gradients are eager's; the backend's checks (GPU properties, the tables)
    run as they are too, so Dynamo has no warning."""
    layer_cls, options = CELLS[cell]
    torch.manual_seed(0)
    ours = layer_cls(3, 8, backend="triton", **options).to(DEVICE)
    eager = layer_cls(3, 8, backend="triton", **options).to(DEVICE)
    eager.load_state_dict(ours.state_dict())
    x = torch.randn(5, 2, 3, device=DEVICE)
    torch._dynamo.reset()
    compiled = torch.compile(ours, backend="aot_eager")
    results, runs = [], _spy_runs(monkeypatch)
    for layer in (compiled, eager):
        runs.clear()
        xi = x.clone().requires_grad_()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out, final = layer(xi)
        dynamo = [str(w.message) for w in caught if "torch/_dynamo" in w.filename]
        assert not dynamo, dynamo  # it traced into something it should have left alone
        h = final[0] if isinstance(final, tuple) else final
        (out.sum() + h.pow(2).sum()).backward()
        results.append((list(runs), [out, h, xi.grad, *(p.grad for p in layer.parameters())]))
    (runs, got), (eager_runs, want) = results
    assert runs == eager_runs and len(runs) == 2  # forward and backward kernels, same grids
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_auto_compiles_into_one_graph_without_the_kernels(monkeypatch):
    """Under ``torch.compile`` ``auto`` passes the kernels over without asking them (their checks
    run between graphs: a graph break), so a model of auto layers compiles with
    ``fullgraph=True`` on a GPU as torch.nn's do; eagerly the same layer may take them. Here the
    order puts them first, as on a GPU, where the cpu backend declines every call."""
    from gatedrnn import backends

    monkeypatch.setattr(backends, "AUTO_ORDER", ["triton", "cpu", "cudnn", "reference"])
    torch.manual_seed(0)
    layer = gatedrnn.GRU(3, 8, num_layers=2).to(DEVICE)
    x = torch.randn(5, 2, 3, device=DEVICE)
    torch._dynamo.reset()
    out, h = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert layer.last_backend != "triton"
    reference = gatedrnn.GRU(3, 8, num_layers=2, backend="reference").to(DEVICE)
    reference.load_state_dict(layer.state_dict())
    want, want_h = reference(x)
    tolerance = {"rtol": 2e-3, "atol": 2e-3} if CUDA else {}  # cuDNN may take TF32 there
    torch.testing.assert_close(out, want, **tolerance)
    torch.testing.assert_close(h, want_h, **tolerance)


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_batched_gradients_rerun_the_reference(cell):
    """Gradients batched by ``vmap`` (``is_grads_batched=True``, ``jacobian(vectorize=True)``)
    have no memory for the kernels to read: the backward reruns the reference loop there, and
    each row of the batch is the gradient of that row alone."""
    layer_cls, options = CELLS[cell]
    torch.manual_seed(0)
    layer = layer_cls(3, 8, backend="triton", **options).to(DEVICE)
    x = torch.randn(5, 2, 3, device=DEVICE, requires_grad=True)
    out = layer(x)[0]
    rows = torch.randn(4, *out.shape, device=DEVICE)
    (batched,) = torch.autograd.grad(out, x, rows, is_grads_batched=True, retain_graph=True)
    one_by_one = torch.stack([torch.autograd.grad(out, x, r, retain_graph=True)[0] for r in rows])
    tolerance = {"rtol": 2e-3, "atol": 2e-3} if CUDA else {}  # TF32 kernels against fp32 there
    torch.testing.assert_close(batched, one_by_one, **tolerance)


def test_export_refuses_the_kernels_with_the_way_out():
    layer = gatedrnn.GRU(3, 4, backend="triton").to(DEVICE)
    with pytest.raises(BackendUnsupportedError, match=r"launches, which torch\.export cannot"):
        torch.export.export(layer, (torch.randn(2, 1, 3, device=DEVICE),))


def test_jit_trace_refuses_the_kernels_and_auto_records_torchs(monkeypatch):
    """A trace would hold the launches as a Python call (no saving, no ONNX): named, the kernels
    refuse with the way out; ``auto`` (triton first, as on a GPU) records torch.nn's fused
    operator."""
    from gatedrnn import backends

    monkeypatch.setattr(backends, "AUTO_ORDER", ["triton", "cpu", "cudnn", "reference"])
    x = torch.randn(2, 1, 3, device=DEVICE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(BackendUnsupportedError, match=r"which torch\.jit\.trace cannot"):
            torch.jit.trace(gatedrnn.GRU(3, 4, backend="triton").to(DEVICE), (x,))
        traced = torch.jit.trace(gatedrnn.GRU(3, 4).to(DEVICE), (x,))
    assert "aten::gru" in [node.kind() for node in traced.inlined_graph.nodes()]


def test_kernels_launch_on_the_inputs_device(monkeypatch):
    """Triton launches on the current CUDA device, so the backend makes the input's device
    current around its launches (a layer on cuda:1 called while cuda:0 is current)."""
    entered = []
    on_device = gpu._on_device

    def spy(device):
        entered.append(device)
        return on_device(device)

    monkeypatch.setattr(gpu, "_on_device", spy)
    layer = gatedrnn.GRU(3, 4, backend="triton", num_layers=2).to(DEVICE)
    layer(torch.randn(2, 1, 3, device=DEVICE))
    assert entered == [torch.device(DEVICE, 0) if CUDA else torch.device("cpu")]
    context = on_device(torch.device("cuda", 1))
    assert isinstance(context, torch.cuda.device) and context.idx == 1


@pytest.mark.parametrize(
    "layer, reason",
    [
        (lambda: gatedrnn.MinLSTM(3, 4, backend="triton"), "the LSTM and the MGU only, not min"),
        (lambda: gatedrnn.MinGRU(3, 4, backend="triton"), "MGU only, not mingru"),
        (lambda: gatedrnn.LSTM(3, 4, proj_size=2, backend="triton"), "no projection"),
        (lambda: gatedrnn.GRU(3, 4, backend="triton", dtype=torch.float64), "float64"),
    ],
)
def test_unsupported_configurations_say_why(layer, reason):
    module = layer().to(DEVICE)
    x = torch.randn(2, 1, 3, device=DEVICE, dtype=next(module.parameters()).dtype)
    with pytest.raises(BackendUnsupportedError, match=reason):
        module(x)


def test_auto_never_picks_the_interpreter():
    if CUDA:
        pytest.skip("on a GPU auto follows the measured table")
    gru = gatedrnn.GRU(3, 4)
    assert resolve_backend("auto", gru.config, torch.randn(2, 1, 3)).name != "triton"


def test_fp32_precision_knob(monkeypatch):
    monkeypatch.setenv("GATEDRNN_TRITON_FP32", "tf32x3")
    assert gpu.fp32_precision() == "tf32x3"
    monkeypatch.setenv("GATEDRNN_TRITON_FP32", "fast")
    with pytest.raises(ValueError, match="tf32, tf32x3 or ieee, got 'fast'"):
        gpu.fp32_precision()
    monkeypatch.delenv("GATEDRNN_TRITON_FP32")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    assert gpu.fp32_precision() == "ieee"


def test_auto_table_picks_the_nearest_measured_size(monkeypatch):
    rows = [
        {"kind": "gru", "dtype": "bfloat16", "grad": True, "H": 256, "B": 1, "ratio": 0.2},
        {"kind": "gru", "dtype": "bfloat16", "grad": True, "H": 1024, "B": 256, "ratio": 1.1},
    ]
    monkeypatch.setattr(gpu, "_measured", lambda: {"devices": {"Test GPU": rows}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    ratio = gpu.measured_ratio
    assert ratio("gru", torch.bfloat16, True, 300, 2, None) == 0.2
    assert ratio("gru", torch.bfloat16, True, 900, 200, None) == 1.1
    assert ratio("lstm", torch.bfloat16, True, 256, 1, None) is None
    assert ratio("gru", torch.bfloat16, False, 256, 1, None) is None


@pytest.mark.parametrize("ratio, takes", [(0.5, True), (0.94, True), (0.97, False), (1.2, False)])
def test_auto_takes_triton_only_with_a_margin(monkeypatch, ratio, takes):
    from types import SimpleNamespace

    rows = [{"kind": "gru", "dtype": "bfloat16", "grad": False, "H": 256, "B": 16, "ratio": ratio}]
    monkeypatch.setattr(gpu, "_measured", lambda: {"devices": {"Test GPU": rows}})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Test GPU")
    gru = gatedrnn.GRU(256, 256)
    cuda_input = SimpleNamespace(
        device=torch.device("cuda", 0), shape=(8, 16, 256), dtype=torch.bfloat16
    )
    with torch.no_grad():
        reason = get_backend("triton").auto_declines(gru.config, cuda_input)
    assert (reason is None) == takes, reason
    if not takes:
        assert "at least 5% faster than cuDNN" in reason and f"{ratio:.2f}" in reason


@pytest.mark.parametrize(
    "layer",
    [
        gatedrnn.GRU(8, 8, reset="before"),
        gatedrnn.LSTM(8, 8, peepholes=True),
        gatedrnn.LSTM(8, 8, coupled=True),
        gatedrnn.MGU(8, 8),
    ],
    ids=lambda m: m.config.spec.name,
)
@pytest.mark.parametrize("rows", ["slower", "failed", "unmeasured"])
def test_auto_takes_triton_for_the_cells_cudnn_lacks(monkeypatch, layer, rows):
    """For a cell cuDNN cannot run, auto's other choice is the reference loop: the table (which
    compares the standard cells with cuDNN) does not turn ours down, measured slower than cuDNN,
    failed or not measured on this GPU."""
    from types import SimpleNamespace

    ratio = {"slower": 1.5, "failed": None, "unmeasured": None}[rows]
    kind = layer.config.spec.kind if layer.config.spec.kind != "mgu" else "gru"
    table = [] if rows == "unmeasured" else [_row(kind, "float32", False, 8, 16, ratio=ratio)]
    _table(monkeypatch, table)
    cuda_input = SimpleNamespace(
        device=torch.device("cuda", 0), shape=(8, 16, 8), dtype=torch.float32
    )
    with torch.no_grad():
        assert get_backend("triton").auto_declines(layer.config, cuda_input) is None
        # the standard cell at the same size is turned down
        standard = (gatedrnn.LSTM if kind == "lstm" else gatedrnn.GRU)(8, 8).config
        assert get_backend("triton").auto_declines(standard, cuda_input) is not None


def _table(monkeypatch, rows):
    """The auto table as ``rows`` for a GPU named "Test GPU", which this machine is."""
    monkeypatch.setattr(gpu, "_measured", lambda: {"devices": {"Test GPU": rows}})
    monkeypatch.setattr(gpu, "_device_name", lambda device: "Test GPU")
    monkeypatch.setattr(gpu, "_tunings", {})  # what launch_tuning remembered of other tables


def _row(kind, dtype, grad, H, B, ratio=0.5, **tuning):
    row = {"kind": kind, "dtype": dtype, "grad": grad, "H": H, "B": B, "ratio": ratio}
    return {**row, "tuning": tuning} if tuning else row


def test_launch_tuning_takes_the_tables_variant(hopper, monkeypatch):
    """Each call runs with the variant the auto table names at the nearest measured size (a
    sweep's fastest), per direction; explicit TUNING replaces it; a variant that would lose a
    kernel the launchers' own choice keeps on chip at this size is dropped."""
    split = {"split": 2, "tma": 1, "chunks": 8}
    _table(
        monkeypatch,
        [
            _row("gru", "float32", True, 1024, 64, **split),
            _row("gru", "float32", False, 1024, 64, fold=2, forward_chunks=4),
            _row("gru", "float32", True, 1024, 16),
            _row("lstm", "bfloat16", False, 512, 256, split=2),
        ],
    )
    tuning = gpu.launch_tuning
    assert tuning("gru", torch.float32, True, 1024, 64, hopper) == split
    assert tuning("gru", torch.float32, True, 1024, 48, hopper) == split  # nearest: B = 64
    assert tuning("gru", torch.float32, False, 1024, 64, hopper) == {"fold": 2, "forward_chunks": 4}
    assert tuning("gru", torch.float32, True, 1024, 16, hopper) == {}  # measured, no variant
    assert tuning("lstm", torch.float32, True, 1024, 64, hopper) == {}  # not measured
    # on chip both ways, where the launchers alone stream float32 H=1024 B=64
    assert gpu._resident_launch(1024, 64, hopper, torch.float32) is None
    launches = [
        launcher(1024, 64, hopper, torch.float32, split)
        for launcher in (gpu._resident_launch, gpu._resident_backward_launch)
    ]
    assert [launch["meta"]["SPLIT"] for launch in launches] == [2, 2]
    # bfloat16 H=512 B=256: on chip by the launchers (4 batch tiles × 32 programs), a split
    # would need 256 programs: the table's split is not taken here
    assert gpu._resident_launch(512, 256, hopper, torch.bfloat16) is not None
    assert gpu._resident_launch(512, 256, hopper, torch.bfloat16, {"split": 2}) is None
    assert tuning("lstm", torch.bfloat16, False, 512, 256, hopper) == {}
    assert tuning("lstm", torch.bfloat16, False, 512, 64, hopper) == {"split": 2}
    monkeypatch.setattr(gpu, "_tensor_descriptors", lambda: False)  # Triton < 3.3: no TMA
    gpu.table_changed()  # (what TMA needs is read once a process)
    assert tuning("gru", torch.float32, True, 1024, 64, hopper) == {}
    monkeypatch.setattr(gpu, "fp32_precision", lambda: "ieee")  # measured in TF32 only
    assert tuning("gru", torch.float32, False, 1024, 64, hopper) == {}
    monkeypatch.setattr(gpu, "TUNING", {"table": 0})
    assert tuning("lstm", torch.bfloat16, False, 512, 64, hopper) == {"table": 0}
    monkeypatch.setattr(gpu, "TUNING", {"chunks": 4})
    assert tuning("lstm", torch.bfloat16, False, 512, 64, hopper) == {"chunks": 4}


@pytest.mark.skipif(CUDA, reason="the interpreter's single-program launches")
def test_calls_run_with_the_tables_variant(monkeypatch):
    """The table's variant for the call's size and direction reaches both kernels of a call:
    the forward's, and the backward's, run later from what the forward recorded."""
    _table(
        monkeypatch,
        [
            _row("lstm", "float32", True, 20, 18, fold=2, chunks=2, forward_chunks=2),
            _row("lstm", "float32", False, 20, 18, forward_chunks=4),
        ],
    )
    launched = []
    run = gpu._run

    def spy(kernel, launch, *args, **constants):
        launched.append({key: launch["meta"][key] for key in ("FOLD", "CHUNKS")})
        return run(kernel, launch, *args, **constants)

    monkeypatch.setattr(gpu, "_run", spy)
    check("lstm", torch.float32, T=5, B=18, I=3, H=20)
    assert launched == [{"FOLD": 2, "CHUNKS": 2}] * 2  # forward, then backward
    launched.clear()
    layer = gatedrnn.LSTM(3, 20, backend="triton")
    with torch.no_grad():
        layer(torch.randn(5, 18, 3))
    assert launched == [{"FOLD": 1, "CHUNKS": 4}]


def test_shipped_table_variants_launch_where_measured(hopper):
    """Every variant in the shipped auto table names known launch overrides and runs its
    kernels on chip at the size it was measured at, on a 132-multiprocessor Hopper (H100, H200)."""
    known = {"BH", "BB", "BK", "num_stages", "num_warps", "resident", "fold", "chunks"}
    known |= {"forward_chunks", "separate", "tma", "split", "f16"}
    shipped = json.loads(gpu.TABLE_PATH.read_text())
    rows = [row for rows in shipped["devices"].values() for row in rows]
    assert rows and {"kind", "dtype", "grad", "H", "B", "ratio"} <= set(rows[0])
    for row in rows:
        tuning = row.get("tuning", {})
        assert set(tuning) <= known, row
        dtype = getattr(torch, row["dtype"])
        assert gpu._launches_here(tuning, row["H"], row["B"], hopper, dtype, row["grad"]), row


def test_without_gpu_or_interpreter_it_says_why(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    reason = get_backend("triton").unsupported(gatedrnn.GRU(3, 4).config, torch.randn(2, 1, 3))
    assert reason is not None and "CUDA" in reason


# ---- at real sizes, on the GPU only --------------------------------------------------------

REAL = [
    (cell, dtype, B, H)
    for cell in sorted(CELLS)
    for dtype in (torch.float32, torch.bfloat16)
    for B, H in [(1, 256), (1, 1024), (16, 1024), (64, 512), (64, 1024), (256, 256)]
]


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell, dtype, B, H", REAL, ids=str)
def test_real_sizes_on_gpu(cell, dtype, B, H, kernel_variant):
    _skip_the_defaults_kernels(cell, dtype, kernel_variant)
    launches = [
        (launch or {}).get("meta")
        for launch in (
            gpu._resident_launch(H, B, torch.device(DEVICE), dtype),
            gpu._resident_backward_launch(H, B, torch.device(DEVICE), dtype),
        )
    ]
    errors = check(cell, dtype, T=64, B=B, I=H, H=H, seed=B + H)
    print(cell, dtype, B, H, kernel_variant, launches, {k: f"{v:.1e}" for k, v in errors.items()})


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", ["lstm-peepholes", "lstm-coupled-peepholes", "mgu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("B, H", [(1, 1024), (64, 512), (256, 256)])
def test_variants_real_sizes_on_gpu(cell, dtype, B, H):
    """The peephole LSTM's streamed kernels and the MGU's (the reset-before GRU's) at real
    sizes, as the launchers tile them on this GPU."""
    errors = check(cell, dtype, T=64, B=B, I=H, H=H, seed=B + H)
    print(cell, dtype, B, H, {k: f"{v:.1e}" for k, v in errors.items()})


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_float32_accurate_products_on_gpu(cell, monkeypatch):
    monkeypatch.setenv("GATEDRNN_TRITON_FP32", "tf32x3")
    check(cell, torch.float32, T=64, B=16, I=512, H=512, seed=7)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_stack_packed_on_gpu(cell, kernel_variant):
    _skip_the_defaults_kernels(cell, torch.float32, kernel_variant)
    lengths = torch.tensor([30, 64, 1, 17, 64, 5, 40, 2])
    errors = check(
        cell, torch.float32, T=64, B=8, I=96, H=320, layers=2, bidirectional=True, lengths=lengths
    )
    print(cell, "stack", kernel_variant, {k: f"{v:.1e}" for k, v in errors.items()})


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_tune_measures_on_gpu(monkeypatch, tmp_path):
    """``GATEDRNN_TRITON_TUNE=1`` on a GPU: the first call of a size times our variants and
    cuDNN with CUDA events, checks our results against cuDNN's, writes the row, and ``auto``
    follows it (CANDIDATES cut to two for time)."""
    from gatedrnn.backends import gpu_tune

    monkeypatch.setenv("GATEDRNN_TRITON_TUNE", "1")
    monkeypatch.setenv("GATEDRNN_TRITON_TABLE", str(tmp_path / "table.json"))
    monkeypatch.setattr(gpu_tune, "CANDIDATES", ({}, {"tma": 1}))
    monkeypatch.setattr(gpu_tune, "_tried", set())
    monkeypatch.setattr(gpu, "TUNING", {})
    gpu.table_changed()
    H, B = 320, 24  # in no shipped table
    layer = gatedrnn.GRU(H, H, backend="auto", device="cuda", dtype=torch.bfloat16)
    x = torch.randn(32, B, H, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    out, _ = layer(x)
    out.float().sum().backward()
    rows = json.loads((tmp_path / "table.json").read_text())["devices"][
        torch.cuda.get_device_name()
    ]
    (row,) = rows
    print("tuned", row)
    assert (row["H"], row["B"], row["grad"]) == (H, B, True)
    assert isinstance(row["measured"]["cudnn"], float) and row["ratio"] is not None
    chosen = resolve_backend("auto", layer.config, x)
    assert chosen.name == ("triton" if row["ratio"] <= gpu.AUTO_MARGIN else "cudnn")
    gpu.table_changed()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_cuda_graph_capture_replays(cell):
    """A forward captured in a CUDA graph (inference with ``torch.cuda.graph``, or
    ``torch.compile(mode="reduce-overhead")``) replays what eager calls compute: the barrier
    counters are zeroed inside the graph, and no fault check queries an event of the capture."""
    layer_cls, options = CELLS[cell]
    torch.manual_seed(0)
    layer = layer_cls(256, 256, backend="triton", device="cuda", dtype=torch.bfloat16, **options)
    static = torch.randn(32, 8, 256, device="cuda", dtype=torch.bfloat16)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(2):  # warm-up off the capture: compiles, tables, pinned buffers
            layer(static)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        out, _ = layer(static)
    for seed in range(3):
        x = torch.randn(32, 8, 256, device="cuda", dtype=torch.bfloat16) * (seed + 1)
        static.copy_(x)
        graph.replay()
        with torch.no_grad():
            want, _ = layer(x)
        assert _relative(out, want) < 1e-3  # the same kernels (the projection's GEMM may not be)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
def test_cuda_graph_training_step():
    """Forward and backward captured together (``torch.cuda.make_graphed_callables``): the
    replayed gradients are an eager step's."""
    torch.manual_seed(0)
    layer = gatedrnn.LSTM(256, 256, backend="triton", device="cuda", dtype=torch.bfloat16)
    eager = gatedrnn.LSTM(256, 256, backend="triton", device="cuda", dtype=torch.bfloat16)
    eager.load_state_dict(layer.state_dict())
    sample = torch.randn(32, 8, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(layer, (sample,))
    for _ in range(2):
        x = torch.randn(32, 8, 256, device="cuda", dtype=torch.bfloat16)
        for module in (layer, eager):
            module.zero_grad()
        out, _ = graphed(x.clone().requires_grad_())
        want, _ = eager(x.clone().requires_grad_())
        out.float().square().sum().backward()
        want.float().square().sum().backward()
        assert _relative(out, want) < 1e-3
        for (name, p), q in zip(layer.named_parameters(), eager.parameters(), strict=True):
            assert _relative(p.grad, q.grad) < 1e-2, name


@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs")
def test_layer_on_a_second_gpu():
    layer = gatedrnn.GRU(64, 64, backend="triton", device="cuda:1")
    reference = gatedrnn.GRU(64, 64, backend="cudnn", device="cuda:1")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(16, 4, 64, device="cuda:1")
    with torch.cuda.device(0):
        out, h = layer(x)
        want, want_h = reference(x)
    torch.testing.assert_close(out, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(h, want_h, rtol=1e-3, atol=1e-3)


def _gpu_speed():
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_speed.py"
    spec = importlib.util.spec_from_file_location("gpu_speed", path)
    gpu_speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_speed)
    return gpu_speed


def test_benchmark_shapes_are_parsed_or_refused():
    gpu_speed = _gpu_speed()
    assert gpu_speed._shape("lstm:float32:16:1024") == ("lstm", "float32", 16, 1024)
    assert gpu_speed._shape("rnn:bfloat16:1:256") == ("rnn", "bfloat16", 1, 256)
    for bad in ("lstm:float32:16", "mgu:float32:1:8", "gru:float32:B:8"):
        with pytest.raises(SystemExit, match="expected CELL:DTYPE:B:H"):
            gpu_speed._shape(bad)


def test_benchmark_table_update_keeps_unmeasured_rows(tmp_path, monkeypatch):
    """``gpu_speed.py --write-table`` after a partial grid replaces only the measured shapes."""
    gpu_speed = _gpu_speed()
    table = tmp_path / "gpu_table.json"
    monkeypatch.setattr(gpu, "TABLE_PATH", table)
    old = [
        {"kind": "gru", "dtype": "float32", "grad": g, "H": H, "B": 1, "ratio": 0.5}
        for H in (256, 1024)
        for g in (False, True)
    ]
    table.write_text(json.dumps({"devices": {"GPU": old, "Other": old[:1]}}))
    measured = {"cell": "gru", "dtype": "float32", "B": 1, "H": 1024, "grad": True}
    rows = [{**measured, "speedup": 4.0}, {**measured, "grad": False}]  # the second failed
    gpu_speed.write_table(rows, "GPU")
    written = json.loads(table.read_text())["devices"]
    assert written["Other"] == old[:1]
    ratios = {(r["H"], r["grad"]): r["ratio"] for r in written["GPU"]}
    assert ratios == {(256, False): 0.5, (256, True): 0.5, (1024, False): 0.5, (1024, True): 0.25}


def test_benchmark_sweep_keeps_what_it_measured_when_cut_off(tmp_path, monkeypatch):
    """``gpu_speed.py --sweep`` writes its JSON after every variant: a device call that runs out
    of time keeps the variants it timed, each with the launch overrides it was timed under."""
    gpu_speed = _gpu_speed()
    monkeypatch.setattr(gpu, "TUNING", {})  # the sweep sets it; restored after the test
    seen = []

    def measure(cell, dtype_name, B, H, T):
        seen.append(dict(gpu.TUNING))
        if len(seen) == 3:
            raise KeyboardInterrupt  # as the device tool's time limit would stop it
        return [{"grad": g, "ours_us_per_step": 1.0, "cudnn_us_per_step": 2.0} for g in (0, 1)]

    monkeypatch.setattr(gpu_speed, "measure", measure)
    out = tmp_path / "sweep.json"
    variants = [{}, {"chunks": 8}, {"forward_chunks": 4}]
    with pytest.raises(KeyboardInterrupt):
        gpu_speed.sweep("gru:float32:16:1024,lstm:float32:16:1024", 8, out, variants)
    assert seen == [{"table": 0, **variant} for variant in variants]  # not the table's variants
    assert [row["variant"] for row in json.loads(out.read_text())] == [{}, {}, *variants[1:2] * 2]
    # a float16 product is timed only where it changes anything: at the float32 shapes
    seen.clear()
    monkeypatch.setattr(gpu_speed, "measure", lambda *shape: seen.append(dict(gpu.TUNING)) or [])
    variants = [{}, {"f16": 1}]
    gpu_speed.sweep("gru:bfloat16:16:1024,gru:float32:16:1024", 8, out, variants)
    assert seen == [{"table": 0}, {"table": 0}, {"table": 0, "f16": 1}]


def test_benchmark_sweep_times_each_launch_once(tmp_path, monkeypatch, hopper, capsys):
    """On a GPU the sweep times, at each shape, only the variants that launch differently (as
    the tuner picks them): at float32 H = 1024, B = 64, where TF32 does not fit on chip, a TMA
    or eight-chunk variant would time the streamed kernels ``{}`` runs again; at bfloat16 the
    float16 products change nothing. Each skipped one is named in the log."""
    gpu_speed = _gpu_speed()
    monkeypatch.setattr(gpu, "TUNING", {})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = []
    monkeypatch.setattr(gpu_speed, "measure", lambda *shape: seen.append(dict(gpu.TUNING)) or [])
    variants = [{}, {"tma": 1}, {"chunks": 8}, {"f16": 1}]
    gpu_speed.sweep("lstm:float32:64:1024,lstm:bfloat16:64:1024", 8, tmp_path / "s.json", variants)
    timed = [{"table": 0, **v} for v in ({}, {"f16": 1}, {}, {"tma": 1}, {"chunks": 8})]
    assert seen == timed
    skipped = [line for line in capsys.readouterr().out.splitlines() if "sweep skip" in line]
    assert skipped == [
        "sweep skip lstm:float32:64:1024 {'tma': 1}: launches as another",
        "sweep skip lstm:float32:64:1024 {'chunks': 8}: launches as another",
    ]


def test_benchmark_sweep_writes_each_shapes_fastest_variant(tmp_path, monkeypatch):
    """``gpu_speed.py --sweep ... --write-table``: per shape and direction the fastest variant
    goes into the auto table as the launch to use there, its ratio against the median of the
    cuDNN times measured beside the variants; the launchers' own choice leaves no ``tuning``."""
    gpu_speed = _gpu_speed()
    table = tmp_path / "gpu_table.json"
    monkeypatch.setattr(gpu, "TABLE_PATH", table)
    monkeypatch.setattr(gpu, "TUNING", {})
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "GPU")
    ours = {  # µs per step (forward, forward + backward) by variant
        "{}": (4.0, 20.0), '{"tma": 1}': (5.0, 10.0), '{"chunks": 8}': (None, 16.0),
        '{"separate": 1}': (2.0, 30.0),  # its forward's results disagree with cuDNN's
    }  # fmt: skip
    cudnn = iter([12.0, 40.0, 10.0, 50.0, 11.0, 30.0, 13.0, 60.0])

    def measure(cell, dtype_name, B, H, T):
        variant = {k: v for k, v in gpu.TUNING.items() if k != "table"}
        times = ours[json.dumps(variant)]
        return [
            {"cell": cell, "dtype": dtype_name, "B": B, "H": H, "T": T, "grad": grad,
             "ours_us_per_step": times[grad], "cudnn_us_per_step": next(cudnn),
             "agrees": grad or "separate" not in variant,
             **({"speedup": 1.0} if times[grad] else {})}
            for grad in (False, True)
        ]  # fmt: skip

    monkeypatch.setattr(gpu_speed, "measure", measure)
    variants = [{}, {"tma": 1}, {"chunks": 8}, {"separate": 1}]
    gpu_speed.sweep("lstm:float32:16:1024", 8, tmp_path / "sweep.json", variants, write=True)
    forward, both = json.loads(table.read_text())["devices"]["GPU"]
    assert forward == _row("lstm", "float32", False, 1024, 16, ratio=round(4.0 / 11.5, 3))
    assert both == _row("lstm", "float32", True, 1024, 16, ratio=round(10.0 / 45.0, 3), tma=1)


def test_benchmark_sweep_summary_compares_each_variant_with_the_first():
    gpu_speed = _gpu_speed()

    def row(variant, grad, ours, cudnn):
        return {
            "cell": "lstm", "dtype": "float32", "B": 16, "H": 1024, "grad": grad,
            "variant": variant, "ours_us_per_step": ours, "cudnn_us_per_step": cudnn,
            **({"speedup": cudnn / ours} if ours else {}),
        }  # fmt: skip

    rows = [
        row({}, False, 8.0, 22.0), row({}, True, 30.0, 54.0),
        row({"tma": 1}, False, 6.0, 21.0), row({"tma": 1}, True, 36.0, 54.0),
        row({"chunks": 8}, False, None, 22.0), row({"chunks": 8}, True, 27.0, 54.0),
    ]  # fmt: skip
    lines = gpu_speed.summarize_sweep(rows)
    assert all(line.startswith("summary") for line in lines)
    assert lines[1] == "summary lstm float32 B=16 H=1024"
    default, tma, eight = lines[2:]
    assert "8.00    1.00  2.75×" in default and "30.00    1.00  1.80×" in default
    assert "6.00*   0.75  3.50×" in tma and "36.00    1.20  1.50×" in tma
    assert "error" in eight and "27.00*   0.90  2.00×" in eight


def test_benchmark_table_prints_the_graph_replays_beside(capsys):
    gpu_speed = _gpu_speed()
    base = {"cell": "gru", "dtype": "bfloat16", "B": 1, "H": 256, "T": 256}
    rows = [
        {**base, "grad": False, "ours_us_per_step": 2.0, "cudnn_us_per_step": 12.0,
         "speedup": 6.0, "ours_graph_us_per_step": 1.9, "cudnn_graph_us_per_step": 7.6,
         "speedup_graphs": 4.0},
        {**base, "grad": True, "ours_us_per_step": 6.0, "cudnn_us_per_step": 30.0,
         "speedup": 5.0, "ours_graph_us_per_step": None, "cudnn_graph_us_per_step": 20.0},
    ]  # fmt: skip
    gpu_speed.print_table(rows, "Test GPU")
    line = capsys.readouterr().out.splitlines()[-1]
    assert line.split(" | graphs ")[1] == "     1.90    7.60  4.00 |     error   20.00     -"


def test_fake_and_meta_tensors_are_refused_with_the_way_out():
    """The kernels need real GPU memory: under FakeTensorMode (shape inference, memory estimates)
    and on the meta device the named backend refuses with the way out, and ``auto`` passes it
    over for one that takes such tensors."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    layer = gatedrnn.GRU(4, 6, backend="triton").to(DEVICE)
    automatic = gatedrnn.GRU(4, 6).to(DEVICE)
    with FakeTensorMode(allow_non_fake_inputs=True):
        x = torch.randn(5, 3, 4, device=DEVICE)
        with pytest.raises(BackendUnsupportedError, match="not fake or meta tensors"):
            layer(x)
        assert automatic(x)[0].shape == (5, 3, 6) and automatic.last_backend != "triton"
    with torch.device("meta"):
        meta = gatedrnn.GRU(4, 6, backend="triton")
        with pytest.raises(BackendUnsupportedError, match="not fake or meta tensors"):
            meta(torch.randn(5, 3, 4))


def test_forward_mode_ad_is_refused_with_the_way_out():
    """Dual tensors (``torch.autograd.forward_ad``): the hand-written backward gives no forward
    derivative, so the named backend refuses and ``auto`` passes it over for ``reference``,
    whose tangents equal ``torch.func.jvp``'s."""
    import torch.autograd.forward_ad as fwAD

    layer = gatedrnn.GRU(4, 6, backend="triton").to(DEVICE)
    automatic = gatedrnn.GRU(4, 6).to(DEVICE)
    automatic.load_state_dict(layer.state_dict())
    x, dx = torch.randn(5, 3, 4, device=DEVICE), torch.randn(5, 3, 4, device=DEVICE)
    with fwAD.dual_level():
        dual = fwAD.make_dual(x, dx)
        with pytest.raises(BackendUnsupportedError, match="forward-mode AD cannot differentiate"):
            layer(dual)
        tangent = fwAD.unpack_dual(automatic(dual)[0]).tangent
        assert automatic.last_backend == "reference"
    torch.testing.assert_close(tangent, torch.func.jvp(lambda a: automatic(a)[0], (x,), (dx,))[1])
