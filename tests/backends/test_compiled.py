"""The compiled GRU loops: they build where a compiler, ninja and AVX2 exist, and otherwise the
cpu backend warns once and runs its PyTorch loops, with the same results."""

from __future__ import annotations

import pytest
import torch

import gatedrnn
from gatedrnn.backends import compiled


def test_compiled_loops_build_where_they_can():
    reason = compiled.unavailable_reason()
    if reason is not None:
        pytest.skip(f"compiled loops unavailable here: {reason}")
    assert compiled.compiled_loops() is not None


@pytest.fixture
def no_extension(monkeypatch):
    monkeypatch.setenv("GATEDRNN_CPU_EXTENSION", "0")
    monkeypatch.setattr(compiled, "_state", {})
    yield
    monkeypatch.setattr(compiled, "_state", {})


def test_fallback_warns_once_and_computes_the_same(no_extension):
    torch.manual_seed(0)
    python = gatedrnn.GRU(4, 6, backend="cpu-python")
    fallback = gatedrnn.GRU(4, 6, backend="cpu")
    fallback.load_state_dict(python.state_dict())
    x = torch.randn(5, 3, 4)
    with pytest.warns(RuntimeWarning, match="GATEDRNN_CPU_EXTENSION=0.*PyTorch loops"):
        out, _ = fallback(x)
    assert torch.equal(out, python(x)[0])
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said once, not on every call
        fallback(x)


# Past one micro-tile (6 rows) and one weight panel (16–64 columns): full and partial tiles in
# both directions, several panels per thread, packed batches whose live rows shrink mid-sequence;
# on one thread and split across two (the tests' workers run on one thread each: conftest.py).
@pytest.mark.parametrize(
    "cell, options",
    [
        ("RNN", {}),
        ("RNN", {"nonlinearity": "relu"}),
        ("GRU", {}),
        ("GRU", {"reset": "before"}),
        ("LSTM", {}),
        ("LSTM", {"peepholes": True}),
        ("LSTM", {"coupled": True}),
        ("LSTM", {"coupled": True, "peepholes": True}),
        ("LSTM", {"proj_size": 29}),
        ("LSTM", {"proj_size": 17, "peepholes": True}),
        ("MGU", {}),
        ("MinGRU", {}),
        ("MinLSTM", {}),
    ],
    ids=["rnn", "rnn-relu", "gru", "gru-before", "lstm", "lstm-peep", "lstm-cifg", "lstm-cifg-peep",
         "lstm-proj", "lstm-proj-peep", "mgu", "mingru", "minlstm"],
)  # fmt: skip
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
# 74: five gate panels of 16 units, which two threads share as two whole panels each and the
# fifth by rows (over_steps' share_tail)
@pytest.mark.parametrize("hidden", [64, 74, 83])
@pytest.mark.parametrize("gemm", ["ours", "blas"])
@pytest.mark.parametrize("threads", [1, 2])
def test_compiled_products_past_one_tile(cell, options, dtype, hidden, gemm, threads, monkeypatch):
    """Both homes of the many-row products (our packed GEMM, torch's BLAS: which one a machine
    uses is fixed by its CPU) under the compiled loops."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from gatedrnn.backends import cpu

    monkeypatch.setattr(cpu, "blas_products", lambda: gemm == "blas")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _past_one_tile(cell, options, dtype, hidden)
    finally:
        torch.set_num_threads(previous)


def _past_one_tile(cell, options, dtype, hidden):
    from tests.conftest import assert_close
    from tests.nn.torch_pairs import run

    torch.manual_seed(1)
    kwargs = dict(num_layers=1, dtype=dtype, **options)
    reference = getattr(gatedrnn, cell)(7, hidden, backend="reference", **kwargs)
    ours = getattr(gatedrnn, cell)(7, hidden, backend="cpu", **kwargs)
    ours.load_state_dict(reference.state_dict())
    gen = torch.Generator().manual_seed(2)
    B, T = 13, 9
    x = torch.randn(T, B, 7, dtype=dtype, generator=gen)
    lengths = torch.tensor([9, 9, 8, 7, 7, 6, 5, 5, 4, 3, 2, 2, 1])
    sizes = (ours.output_size, hidden)[: ours.spec.num_states]  # h: the projection's size
    states = tuple(torch.randn(1, B, s, dtype=dtype, generator=gen) for s in sizes)
    for form in (None, lengths):
        expected = run(reference, x, form, states, batch_first=False)
        actual = run(ours, x, form, states, batch_first=False)
        assert ours.last_backend == "cpu"
        assert_close(actual.output, expected.output, "output")
        for a, b in zip(actual.states, expected.states, strict=True):
            assert_close(a, b, "final state")
        for name, grad in expected.grads.items():
            assert_close(actual.grads[name], grad, f"grad of {name}")


def test_the_avx2_build_too():
    """On an AVX-512 machine the AVX2 build (plain panels, separate pointwise pass) is what a
    machine without AVX-512 runs: build it here as well (ATEN_CPU_CAPABILITY=avx2) and run the
    tile-crossing checks above through it, in a subprocess."""
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        pytest.skip("this machine runs the AVX2 build already")
    _checks_in_another_build({"ATEN_CPU_CAPABILITY": "avx2"}, "past_one_tile or build_where")


def _checks_in_another_build(environment: dict[str, str], selection: str) -> None:
    """This file's tests that ``selection`` picks, run in a subprocess whose ``environment``
    selects another build of the compiled loops: all must run (none skipped) and pass."""
    import os
    import subprocess
    import sys

    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0", __file__,
         "-k", selection],
        env=dict(os.environ, **environment), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "skipped" not in result.stdout.splitlines()[-1]


def test_the_fused_forward_steps_on_any_machine():
    """The forward steps that fuse the pointwise work into the product's epilogue (the LSTM's,
    all its variants, and the GRU's with the reset after) run only in the AVX-512 build; on a
    machine without AVX-512 build them into the AVX2 one (GATEDRNN_CPU_GATE_PANELS=1) and run
    the tile-crossing checks above through them, in a subprocess."""
    if torch.backends.cpu.get_cpu_capability() == "AVX512":
        pytest.skip("this machine runs the fused steps in its own build")
    _checks_in_another_build(
        {"GATEDRNN_CPU_GATE_PANELS": "1"}, "past_one_tile and (lstm or gru) and not before"
    )


def test_a_lock_left_by_a_killed_process_does_not_hang_the_next():
    """torch's build lock is a file its holder deletes when done: a process killed while it
    loaded the module (a study's worker ended at Ctrl-C) left it, and every later load waited
    on it forever (a CI run hung so). Here the file is left as such a process leaves it."""
    import subprocess
    import sys

    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    folder = compiled._build_directory()
    assert folder is not None
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "lock").touch()
    code = "from gatedrnn.backends.compiled import compiled_loops; assert compiled_loops()"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert not (folder / "lock").exists()


def test_a_compiler_without_openmp_still_builds_the_loops(monkeypatch):
    """Apple clang has no -fopenmp: the build is retried without it, with a warning that the loops
    run on one thread (faked here: the real build is tested above)."""
    import torch.utils.cpp_extension as cpp

    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    sentinel = object()

    def fake_load(name, sources, extra_cflags=(), extra_ldflags=(), **kwargs):
        if "-fopenmp" in extra_cflags:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")
        return sentinel

    monkeypatch.setattr(cpp, "load", fake_load)
    monkeypatch.setattr(compiled, "_state", {})
    with pytest.warns(RuntimeWarning, match="without OpenMP.*unsupported option.*one thread"):
        assert compiled.compiled_loops() is sentinel
    monkeypatch.setattr(compiled, "_state", {})


def test_packed_weight_pools_are_per_thread():
    """The packed weights live in per-thread buffers reused across calls: layers of different
    sizes, alternating, on two threads at once, each still match the reference (the
    bidirectional ones running their loops side by side, each such call a parallel region of
    its own)."""
    import threading

    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from tests.conftest import assert_close

    torch.manual_seed(3)
    pairs = []
    for cell, hidden, both in (("LSTM", 70, False), ("GRU", 33, True), ("LSTM", 20, True),
                               ("GRU", 90, False)):  # fmt: skip
        reference = getattr(gatedrnn, cell)(5, hidden, bidirectional=both, backend="reference")
        ours = getattr(gatedrnn, cell)(5, hidden, bidirectional=both, backend="cpu")
        ours.load_state_dict(reference.state_dict())
        pairs.append((ours, reference))
    x = torch.randn(6, 7, 5)
    expected = [reference(x)[0].detach() for _, reference in pairs]
    errors: list[BaseException] = []

    def work(order):
        try:
            for _ in range(3):
                for i in order:
                    out = pairs[i][0](x)[0]
                    assert_close(out.detach(), expected[i], f"layer {i}")
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(o,)) for o in ([0, 1, 2, 3], [3, 2, 1, 0])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_the_many_row_products_follow_the_cpu_or_the_environment(monkeypatch):
    from gatedrnn.backends import cpu

    try:
        for choice, expected in (("blas", True), ("ours", False)):
            monkeypatch.setenv("GATEDRNN_CPU_GEMM", choice)
            cpu.blas_products.cache_clear()
            assert cpu.blas_products() is expected
        monkeypatch.delenv("GATEDRNN_CPU_GEMM")
        cpu.blas_products.cache_clear()
        intel = cpu.cpu_info("vendor_id") == "GenuineIntel"
        assert cpu.blas_products() is (intel and torch.backends.mkl.is_available())
    finally:
        cpu.blas_products.cache_clear()


# (layer, options, batch, autograd) → auto's choice with the compiled loops, and without them
_AUTO_CHOICES = [
    (gatedrnn.LSTM, {}, 32, False, "cudnn", "cudnn"),  # oneDNN's fused LSTM ties or wins there
    (gatedrnn.LSTM, {}, 4, False, "cpu", "cudnn"),
    (gatedrnn.LSTM, {}, 32, True, "cpu", "cudnn"),
    (gatedrnn.GRU, {}, 32, False, "cpu", "cudnn"),
    (gatedrnn.GRU, {}, 32, True, "cpu", "cpu"),
    # the variants torch has no kernel for: ours, or the reference loop
    (gatedrnn.LSTM, {"peepholes": True}, 32, False, "cpu", "cpu"),
    (gatedrnn.LSTM, {"peepholes": True}, 32, True, "cpu", "cpu"),
    (gatedrnn.LSTM, {"coupled": True}, 32, False, "cpu", "cpu"),
    (gatedrnn.LSTM, {"coupled": True}, 1, True, "cpu", "cpu"),
    (gatedrnn.GRU, {"reset": "before"}, 32, False, "cpu", "cpu"),
    (gatedrnn.MGU, {}, 32, False, "cpu", "cpu"),
    (gatedrnn.MGU, {}, 1, True, "cpu", "cpu"),
    # the minimal cells: ours, or the reference's parallel scan (which beats the PyTorch loop
    # below batch × hidden 256; the layers here have H = 5)
    (gatedrnn.MinGRU, {}, 8, True, "cpu", "reference"),
    (gatedrnn.MinGRU, {}, 64, True, "cpu", "cpu"),
    (gatedrnn.MinLSTM, {"scan": "sequential"}, 64, False, "cpu", "cpu"),
    # the projection: torch has no fused kernel (oneDNN none), but a generic loop
    (gatedrnn.LSTM, {"proj_size": 2}, 32, False, "cpu", "cudnn"),
    (gatedrnn.LSTM, {"proj_size": 2}, 32, True, "cpu", "cpu"),
]


@pytest.mark.parametrize("compiled_loops", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize(
    "layer, options, batch, autograd, with_compiled, without", _AUTO_CHOICES,
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)  # fmt: skip
def test_auto_picks_the_measured_fastest(
    layer, options, batch, autograd, with_compiled, without, compiled_loops, monkeypatch
):
    """What ``auto`` runs on the CPU, per cell, batch and mode (the measurements are in
    CpuBackend.auto_declines), with the compiled loops and with only the PyTorch twins."""
    from gatedrnn.backends import cpu, resolve_backend

    if compiled_loops and compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    monkeypatch.setattr(cpu, "_have_compiled_loops", lambda: compiled_loops)
    module = layer(3, 5, **options)
    x = torch.randn(4, batch, 3)
    with torch.set_grad_enabled(autograd):
        chosen = resolve_backend("auto", module.config, x).name
    assert chosen == (with_compiled if compiled_loops else without)


@pytest.mark.parametrize(
    "hidden, batch, autograd, chosen",
    [(64, 8, False, "cpu"), (128, 8, False, "cpu"), (256, 4, False, "cpu"),
     (256, 8, False, "cudnn"), (512, 8, False, "cudnn"), (64, 16, False, "cudnn"),
     (256, 8, True, "cpu"), (512, 32, True, "cpu")],
)  # fmt: skip
def test_auto_for_the_lstm_by_batch_and_width(hidden, batch, autograd, chosen, monkeypatch):
    """With the compiled loops, the standard LSTM forward-only goes to torch's fused kernel
    (oneDNN) from batch 16, and from batch 8 at hidden size 256 and up; with the backward it
    stays ours (the rule only: the loops need not be built here)."""
    from gatedrnn.backends import cpu, resolve_backend

    monkeypatch.setattr(cpu, "_have_compiled_loops", lambda: True)
    module = gatedrnn.LSTM(3, hidden)
    with torch.set_grad_enabled(autograd):
        assert resolve_backend("auto", module.config, torch.randn(4, batch, 3)).name == chosen


@pytest.mark.parametrize("compiled_loops", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("layer", [gatedrnn.GRU, gatedrnn.RNN], ids=lambda c: c.__name__)
def test_auto_leaves_the_shortest_sequences_to_torch(layer, compiled_loops, monkeypatch):
    """A GRU or RNN call of one step (a decoder fed step by step), or of two forward-only at a
    batch up to 8, goes to torch's kernels, whose call costs less than our loops' setup; the
    RNN's also of two steps with the backward up to batch 8, and up to four forward-only at
    batch 1; longer ones, the other cells and the variants stay where they were."""
    from gatedrnn.backends import cpu, resolve_backend

    if compiled_loops and compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    monkeypatch.setattr(cpu, "_have_compiled_loops", lambda: compiled_loops)

    def chosen(module, steps, batch, autograd):
        with torch.set_grad_enabled(autograd):
            return resolve_backend("auto", module.config, torch.randn(steps, batch, 3)).name

    module = layer(3, 5)
    for batch in (1, 32):
        assert chosen(module, 1, batch, True) == "cudnn"
        assert chosen(module, 1, batch, False) == "cudnn"
    assert chosen(module, 2, 8, False) == "cudnn"
    assert chosen(module, 2, 16, False) == ("cpu" if compiled_loops else "cudnn")
    rnn = layer is gatedrnn.RNN  # whose step is one small product: torch's a little longer
    assert chosen(module, 2, 8, True) == ("cudnn" if rnn else "cpu")
    assert chosen(module, 2, 16, True) == "cpu"
    assert chosen(module, 4, 1, False) == ("cudnn" if rnn or not compiled_loops else "cpu")
    assert chosen(module, 4, 2, False) == ("cpu" if compiled_loops else "cudnn")
    assert chosen(module, 3, 1, True) == "cpu"
    if compiled_loops:
        assert chosen(gatedrnn.LSTM(3, 5), 1, 1, True) == "cpu"
        assert chosen(gatedrnn.GRU(3, 5, reset="before"), 1, 1, True) == "cpu"
        assert chosen(gatedrnn.MGU(3, 5), 1, 1, False) == "cpu"


@pytest.mark.parametrize("compiled_loops", [True, False], ids=["compiled", "python"])
@pytest.mark.parametrize("onednn", [True, False], ids=["bf16-cpu", "no-bf16-cpu"])
def test_auto_in_low_precision(compiled_loops, onednn, monkeypatch):
    """What ``auto`` runs on bfloat16 and float16 layers (CPU autocast gives every layer its
    dtype): our loops, which compute in float32, but for the LSTM in bfloat16 where oneDNN has
    bfloat16 arithmetic (torch's fused LSTM is faster there, but training at batch 1), and
    where the PyTorch twins lose to torch's kernels in float32 too."""
    from gatedrnn.backends import cpu, resolve_backend

    if compiled_loops and compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    monkeypatch.setattr(cpu, "_have_compiled_loops", lambda: compiled_loops)
    monkeypatch.setattr(cpu, "_onednn_bfloat16", lambda: onednn)

    def chosen(layer, dtype, batch, **options):
        module = layer(3, 5, **options)
        return resolve_backend("auto", module.config, torch.randn(4, batch, 3, dtype=dtype)).name

    for dtype in (torch.bfloat16, torch.float16):
        assert chosen(gatedrnn.GRU, dtype, 8) == "cpu"
        assert chosen(gatedrnn.MGU, dtype, 8) == "cpu"
        assert chosen(gatedrnn.LSTM, dtype, 8, peepholes=True) == "cpu"
        assert chosen(gatedrnn.LSTM, dtype, 8, proj_size=2) == "cpu"
    fused = "cudnn" if onednn or not compiled_loops else "cpu"
    assert chosen(gatedrnn.LSTM, torch.bfloat16, 8) == fused
    assert chosen(gatedrnn.LSTM, torch.bfloat16, 1) == ("cpu" if compiled_loops else "cudnn")
    assert chosen(gatedrnn.LSTM, torch.float16, 8) == ("cpu" if compiled_loops else "cudnn")


def test_autocast_runs_the_cpu_loops_in_float32():
    """Under CPU autocast a GRU takes the ``cpu`` loops, which compute in float32 with autocast
    off inside (their products would otherwise run in bfloat16 and not fit their buffers): a
    bfloat16 output, float32 gradients for the float32 parameters, and the values of the same
    computation in float32 on the bfloat16-rounded weights and input."""
    torch.manual_seed(0)
    layer = gatedrnn.GRU(3, 5, num_layers=2)
    x = torch.randn(6, 4, 3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = layer(x)
    assert layer.last_backend == "cpu" and out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.weight_hh_l1.grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a backward inside the region as well
        again = layer.weight_hh_l1.grad.clone()
        layer(x)[0].float().sum().backward()
    torch.testing.assert_close(layer.weight_hh_l1.grad, 2 * again)
    rounded = gatedrnn.GRU(3, 5, num_layers=2)
    rounded.load_state_dict({k: v.bfloat16().float() for k, v in layer.state_dict().items()})
    want = rounded(x.bfloat16().float())[0].bfloat16()
    torch.testing.assert_close(out, want, atol=0, rtol=2**-7)


_TWO_WAYS = [
    ("RNN", {}),
    ("GRU", {}),
    ("GRU", {"reset": "before"}),
    ("LSTM", {}),
    ("LSTM", {"peepholes": True, "coupled": True}),
    ("LSTM", {"proj_size": 5}),
    ("MGU", {}),
    ("MinLSTM", {}),
]


@pytest.fixture
def side_by_side_calls(monkeypatch):
    """The compiled module's side_by_side, counting: the number of jobs of each call, in order
    (skips where the loops cannot be built)."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    module = compiled.compiled_loops()
    calls: list[int] = []
    side_by_side = module.side_by_side

    def counted(jobs):
        calls.append(len(jobs))
        side_by_side(jobs)

    monkeypatch.setattr(module, "side_by_side", counted)
    return calls


@pytest.mark.parametrize(
    "cell, options", _TWO_WAYS,
    ids=["rnn", "gru", "gru-before", "lstm", "lstm-cifg-peep", "lstm-proj", "mgu", "minlstm"],
)  # fmt: skip
def test_bidirectional_loops_side_by_side(cell, options, side_by_side_calls, monkeypatch):
    """A bidirectional layer's two loops run side by side, one thread each, or one after the
    other on both threads: bit for bit the same outputs, final states and gradients, padded and
    packed, each the reference loop's; side by side, every layer's forward and backward passes
    its two jobs to the module's side_by_side."""
    from gatedrnn.backends import cpu
    from tests.conftest import assert_close
    from tests.nn.torch_pairs import run

    torch.manual_seed(4)
    kwargs = dict(num_layers=2, bidirectional=True, dtype=torch.float64, **options)
    reference = getattr(gatedrnn, cell)(3, 40, backend="reference", **kwargs)
    ours = getattr(gatedrnn, cell)(3, 40, backend="cpu", **kwargs)
    ours.load_state_dict(reference.state_dict())
    x = torch.randn(7, 5, 3, dtype=torch.float64)
    sizes = (ours.output_size, 40)[: ours.spec.num_states]
    states = tuple(torch.randn(4, 5, s, dtype=torch.float64) for s in sizes)
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        for form in (None, torch.tensor([7, 6, 6, 3, 1])):
            expected = run(reference, x, form, states, batch_first=False)
            results = {}
            for together in (True, False):
                monkeypatch.setattr(cpu, "_side_by_side", lambda *_, t=together: t)
                results[together] = run(ours, x, form, states, batch_first=False)
            together, apart = results[True], results[False]
            assert torch.equal(together.output, apart.output)
            assert_close(together.output, expected.output, "output")
            for a, b, c in zip(together.states, apart.states, expected.states, strict=True):
                assert torch.equal(a, b)
                assert_close(a, c, "final state")
            for name, grad in expected.grads.items():
                assert torch.equal(together.grads[name], apart.grads[name]), name
                assert_close(together.grads[name], grad, f"grad of {name}")
    finally:
        torch.set_num_threads(previous)
    assert side_by_side_calls == [2] * 8  # 2 forms × 2 layers × forward and backward


@pytest.mark.parametrize(
    "cell, options, form",
    [("GRU", {}, "padded"), ("LSTM", {"proj_size": 5}, "padded"), ("LSTM", {}, "packed")],
)
def test_bidirectional_loops_side_by_side_under_torch_compile(
    cell, options, form, side_by_side_calls, monkeypatch
):
    """Under torch.compile (fullgraph) a bidirectional layer's directions are one operator,
    gatedrnn::cpu_bidirectional, so its loops run side by side where the rule says so, as in
    eager mode: the eager layer's numbers bit for bit, forward and backward, each layer's
    forward and backward passing its two jobs to side_by_side."""
    from torch._dynamo.testing import EagerAndRecordGraphs
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    from gatedrnn.backends import cpu

    monkeypatch.setattr(cpu, "_side_by_side", lambda *_: True)
    torch.manual_seed(5)
    layer = getattr(gatedrnn, cell)(3, 8, num_layers=2, bidirectional=True, backend="cpu",
                                    **options)  # fmt: skip
    lengths = torch.tensor([6, 4, 1])

    def loss(module, x):
        inputs = pack_padded_sequence(x, lengths, enforce_sorted=False) if form == "packed" else x
        out, final = module(inputs)
        out = pad_packed_sequence(out)[0] if form == "packed" else out
        finals = final if isinstance(final, tuple) else (final,)
        return (out * torch.arange(out.numel()).view(out.shape).sin()).sum() + sum(
            f.square().sum() for f in finals
        )

    x = torch.randn(6, 3, 3, requires_grad=True)
    graphs = EagerAndRecordGraphs()
    torch._dynamo.reset()
    compiled_layer = torch.compile(
        layer, backend=graphs if form == "padded" else "aot_eager", fullgraph=form == "padded"
    )
    previous = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        wrt = [x, *layer.parameters()]
        eager = torch.autograd.grad(loss(layer, x), wrt)
        side_by_side_calls.clear()
        got = torch.autograd.grad(loss(compiled_layer, x), wrt)
    finally:
        torch.set_num_threads(previous)
    for a, b in zip(got, eager, strict=True):
        assert torch.equal(a, b)
    assert side_by_side_calls == [2] * 4  # 2 layers × forward and backward
    if form == "padded":
        targets = [str(n.target) for g in graphs.graphs for n in g.graph.nodes]
        assert targets.count("gatedrnn.cpu_bidirectional.default") == 2


def test_jobs_side_by_side_all_run_and_the_failure_is_raised():
    """``side_by_side`` runs every job, each on its own thread, and then raises the error of one
    that failed (here ATen's dispatch refusing int64), leaving the others' results in place."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from gatedrnn.backends import cpu

    module = compiled.compiled_loops()
    torch.manual_seed(5)
    pre, h0, w_hh = torch.randn(6, 2, 4), torch.randn(2, 4), torch.randn(4, 4)
    out = pre.clone()
    good = module.rnn_forward_job(out, h0, w_hh, [], False)
    bad = module.rnn_forward_job(out.long(), h0.long(), w_hh.long(), [], False)
    with pytest.raises(RuntimeError, match="Long"):
        module.side_by_side([bad, good])
    expected = pre.clone()
    cpu._rnn_forward_loop(expected, h0, w_hh, [], False)
    torch.testing.assert_close(out, expected)
    again = pre.clone()
    module.rnn_forward_job(again, h0, w_hh, [], False)()  # a job alone: called
    torch.testing.assert_close(again, expected)


def test_which_bidirectional_layers_run_their_loops_side_by_side():
    """Those whose loops alone would each run on one thread (a step's product under 128K
    multiply-adds), where there are two threads or more; not the minimal cells (no product:
    their loops take every thread), nor the PyTorch loops."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from gatedrnn.backends.cpu import _side_by_side

    w_hh = torch.zeros(3 * 128, 128)  # a GRU's, H = 128: 48K multiply-adds a row
    one, two, three = (torch.zeros(9, batch, 128) for batch in (1, 2, 3))
    previous = torch.get_num_threads()
    try:
        for threads in (2, 4):
            torch.set_num_threads(threads)
            assert _side_by_side(one, w_hh, True) and _side_by_side(two, w_hh, True)
            assert not _side_by_side(three, w_hh, True)
            assert not _side_by_side(one, None, True)
            assert not _side_by_side(one, w_hh, False)
        torch.set_num_threads(1)
        assert not _side_by_side(one, w_hh, True)
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "extra, cells", [([], ["gru", "lstm"]), (["--compile", "--cells", "gru"], ["gru"])],
    ids=["eager", "compiled"],
)  # fmt: skip
def test_the_bidirectional_benchmark_runs(tmp_path, extra, cells):
    """``benchmarks/bidirectional_speed.py`` (run by hand, never timed here) on a tiny case,
    eager and under torch.compile: every way timed, the JSON written with its environment."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "bidirectional_speed.py"
    out = tmp_path / "bidirectional.json"
    argv = [sys.executable, str(script), "--hidden", "8", "--batch", "1", "--steps", "3",
            "--repeats", "1", "--warmup", "0", "--out", str(out), *extra]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["environment"]["bidirectional"] is True
    assert data["environment"]["compile"] is bool(extra)
    assert [(r["cell"], r["mode"]) for r in data["results"]] == [
        (cell, mode) for cell in cells for mode in ("forward", "forward+backward")
    ]
    for row in data["results"]:
        assert set(row["median_ms"]) == {"torch.nn", "side by side", "one after the other"}
        assert all(ms > 0 for ms in row["median_ms"].values())


def test_the_loops_run_without_the_gil():
    """A compiled loop lets other Python threads run meanwhile (it holds no Python object): the
    main thread, ticking while another thread runs a long loop, never stops for as long as half
    the loop (with the GIL held it stopped for all of it)."""
    import threading
    import time

    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    module = compiled.compiled_loops()
    torch.manual_seed(6)
    h0, w_hh = torch.randn(1, 256), torch.randn(256, 256) / 16
    job = module.rnn_forward_job(torch.randn(100_000, 1, 256), h0, w_hh, [], False)  # ~0.3 s
    span: list[float] = []

    def run():
        start = time.perf_counter()
        job()
        span.extend([start, time.perf_counter()])

    thread = threading.Thread(target=run)
    ticks = [time.perf_counter()]
    thread.start()
    while thread.is_alive():
        ticks.append(time.perf_counter())
    thread.join()
    ticks.append(time.perf_counter())
    start, end = span
    during = [t for t in ticks if start <= t <= end]
    gaps = [b - a for a, b in zip([start, *during], [*during, end], strict=True)]
    assert max(gaps) < (end - start) / 2, (max(gaps), end - start)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_packed_gemm_at_every_row_count(dtype):
    """``matmul`` (the input projection, dx) against torch's GEMM for row counts on both sides of
    its split between a step's product (threads take panels) and many rows (threads take
    blocks of rows, as many each), bias or none, a transposed right side or not; and bit for bit
    the same on 1, 2 or 3 threads (runs repeat exactly whatever the thread count: a study's
    trial resumed in another process must match the run that was not killed)."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    module = compiled.compiled_loops()
    gen = torch.Generator().manual_seed(7)
    w = torch.randn(77, 45, dtype=dtype, generator=gen)  # (N, K): r = wᵀ, as W_ih
    bias = torch.randn(77, dtype=dtype, generator=gen)
    previous = torch.get_num_threads()
    try:
        for rows in (1, 5, 95, 383, 384, 385, 400, 577, 1001):
            a = torch.randn(rows, 45, dtype=dtype, generator=gen)
            for r, b in ((w.t(), bias), (w.t().contiguous(), None)):
                expected = a @ r if b is None else torch.addmm(b, a, r)
                found = []
                for threads in (1, 2, 3):
                    torch.set_num_threads(threads)
                    found.append(module.matmul(a, r, b))
                torch.testing.assert_close(found[0], expected, msg=f"{rows} rows")
                for threads, result in zip((2, 3), found[1:], strict=True):
                    assert torch.equal(result, found[0]), f"{rows} rows, {threads} threads"
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize(
    "cell, options", _TWO_WAYS,
    ids=["rnn", "gru", "gru-before", "lstm", "lstm-cifg-peep", "lstm-proj", "mgu", "minlstm"],
)  # fmt: skip
def test_the_same_numbers_on_any_thread_count(cell, options, monkeypatch):
    """A layer's output, final states and input gradient are bit for bit the same on 1, 2 or 3
    threads, one direction or two (side by side or not), padded or packed, with our GEMM for
    the many-row products (torch's BLAS, where a machine uses it, promises no such thing; nor do
    its products for the weight gradients, not compared here): a study's trial resumed in a
    process with another thread count continues exactly."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from gatedrnn.backends import cpu
    from tests.nn.torch_pairs import run

    monkeypatch.setattr(cpu, "blas_products", lambda: False)
    torch.manual_seed(8)
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(40, 10, 6, generator=gen)  # 400 rows: row blocks, 67 rows a block unrounded
    lengths = torch.tensor([40, 39, 33, 30, 30, 20, 9, 5, 2, 1])
    previous = torch.get_num_threads()
    try:
        for both in (False, True):
            layer = getattr(gatedrnn, cell)(6, 40, bidirectional=both, backend="cpu", **options)
            for form in (None, lengths):
                results = []
                for threads in (1, 2, 3):
                    torch.set_num_threads(threads)
                    results.append(run(layer, x, form, None, batch_first=False))
                first = results[0]
                for threads, other in zip((2, 3), results[1:], strict=True):
                    where = f"{threads} threads, bidirectional={both}, lengths={form is not None}"
                    assert torch.equal(other.output, first.output), where
                    for a, b in zip(other.states, first.states, strict=True):
                        assert torch.equal(a, b), where
                    assert torch.equal(other.grads["input"], first.grads["input"]), where
    finally:
        torch.set_num_threads(previous)


# Plain panels of 1, 3 or 4 vectors (16–64 columns in float32, the width chosen per product:
# loops.cpp's with_panel_vectors), one or more than the threads can take whole, so the threads
# share the rest by rows; in the backward, rows that start at t − 1 (packed input, going
# backwards) are done after the product by the thread that owns their units (the last thread,
# those of the shared panels).
@pytest.mark.parametrize(
    "cell, options, hidden, batch",
    [
        ("RNN", {}, 64, 40),  # one panel of 4 vectors, forward and backward
        ("RNN", {"nonlinearity": "relu"}, 64, 40),
        ("GRU", {}, 48, 40),  # one panel of 3 vectors in the backward
        ("LSTM", {}, 32, 40),  # two of 1: the third thread shares by rows
        ("LSTM", {}, 74, 40),  # two of 3: the third thread shares by rows
        ("GRU", {}, 160, 40),  # three of 4: two threads take one whole, the third by rows
        ("GRU", {}, 74, 2),  # five of 1 (two rows: a column costs the same in any panel)
        # a small weight: the threads split the rows, not the panels (on 2 threads; 3 do not
        # divide the tiles and split the panels)
        ("GRU", {}, 74, 48),  # 6 tiles of 8 rows
        ("RNN", {}, 74, 48),  # the same, both directions of the loop
        ("LSTM", {}, 100, 48),  # 8 tiles of 6
    ],
    ids=["rnn-64", "rnn-relu-64", "gru-48", "lstm-32", "lstm-74", "gru-160", "gru-74-two-rows",
         "gru-74-by-rows", "rnn-74-by-rows", "lstm-100-by-rows"],
)  # fmt: skip
def test_panels_shared_by_rows_across_threads(cell, options, hidden, batch):
    """The products whose panels do not divide among the threads (the RNN's forward, the
    backward of the RNN, GRU and LSTM): the reference's numbers, and bit for bit the same on
    1, 2 or 3 threads, padded and packed (live rows shrinking by tiles)."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from tests.conftest import assert_close
    from tests.nn.torch_pairs import run

    torch.manual_seed(3)
    ours = getattr(gatedrnn, cell)(5, hidden, backend="cpu", **options)
    reference = getattr(gatedrnn, cell)(5, hidden, backend="reference", **options)
    reference.load_state_dict(ours.state_dict())
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(12, batch, 5, generator=gen)  # 40 rows: 7 tiles of 6, 5 of 8, 4 of 12
    if batch == 40:
        lengths = torch.tensor([12] * 9 + [11] * 8 + [7] * 10 + [3] * 12 + [1])
    elif batch == 2:
        lengths = torch.tensor([12, 5])
    else:  # 12 down to 1, rows leaving mid-tile
        lengths = torch.tensor([12 - 11 * i // (batch - 1) for i in range(batch)])
    previous = torch.get_num_threads()
    try:
        for form in (None, lengths):
            results = []
            for threads in (1, 2, 3):
                torch.set_num_threads(threads)
                results.append(run(ours, x, form, None, batch_first=False))
            expected = run(reference, x, form, None, batch_first=False)
            assert_close(results[0].output, expected.output, "output")
            assert_close(results[0].grads["input"], expected.grads["input"], "grad of input")
            for name, grad in expected.grads.items():  # sums over ~500 rows: float32 rounding
                torch.testing.assert_close(results[0].grads[name], grad, rtol=1e-3, atol=1e-4)
            for threads, other in zip((2, 3), results[1:], strict=True):
                assert torch.equal(other.output, results[0].output), f"{threads} threads"
                assert torch.equal(other.grads["input"], results[0].grads["input"])
    finally:
        torch.set_num_threads(previous)


@pytest.fixture
def gemm_calls(monkeypatch) -> list[tuple[int, ...]]:
    """The shapes of the A operands our packed GEMM (``matmul``) is called with, in order, with
    the many-row products sent to ours as on a machine where :func:`cpu.blas_products` says so;
    skipped where the compiled loops cannot be built."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from gatedrnn.backends import cpu

    module, calls = compiled.compiled_loops(), []

    class Counting:  # the compiled module, recording its GEMM's calls
        def __getattr__(self, name):
            return getattr(module, name)

        def matmul(self, a, *args):
            calls.append(tuple(a.shape))
            return module.matmul(a, *args)

    monkeypatch.setattr(cpu, "blas_products", lambda: False)
    monkeypatch.setattr(cpu, "compiled_loops", lambda: Counting())
    return calls


@pytest.mark.parametrize("steps, batch, ours", [(1, 1, False), (1, 7, False), (2, 4, True)])
def test_products_of_few_rows_go_to_torch(steps, batch, ours, gemm_calls):
    """The input projection (T·B rows), dx and the weight gradients (sums over T·B rows, at
    least 256 wide) go to our packed GEMM from 8 rows, below that to torch's (packing the weight
    costs more than a few rows save); the results agree either way."""
    from tests.conftest import assert_close
    from tests.nn.torch_pairs import run

    torch.manual_seed(3)
    layer = gatedrnn.GRU(5, 96, backend="cpu")  # the weight gradients 3 · 96 = 288 wide
    reference = gatedrnn.GRU(5, 96, backend="reference")
    reference.load_state_dict(layer.state_dict())
    x = torch.randn(steps, batch, 5)
    actual, expected = run(layer, x, None, None, False), run(reference, x, None, None, False)
    # the forward's projection; the backward's W_hh gradient (A: the 96 states' columns, the
    # narrower side), dx, the W_ih gradient (A: the 5 inputs' columns)
    rows = [shape[0] for shape in gemm_calls]
    assert rows == ([steps * batch, 96, steps * batch, 5] if ours else [])
    assert_close(actual.output, expected.output, "output")
    for name, grad in expected.grads.items():
        assert_close(actual.grads[name], grad, f"{name} gradient")


@pytest.mark.parametrize(
    "R, M, N", [(1300, 300, 40), (700, 20, 260), (9, 256, 256), (700, 100, 3), (1100, 2, 64)]
)
def test_weight_gradient_sums_go_to_our_gemm_in_chunks(R, M, N, gemm_calls):
    """aᵀ b summed over R rows (a weight gradient) through our packed GEMM: in chunks of 512
    rows, the last one partial, the narrower operand transposed (b, or a), a strided a (a slice
    of the gate blocks); within float32 rounding of float64's. So is the recurrent weight's
    gradient (h0 then the shifted outputs, written transposed at once: operand A). At least 256
    wide or at most 16 thin; between, torch's (the next test)."""
    from gatedrnn.backends import cpu

    calls = gemm_calls
    torch.manual_seed(R)
    a = torch.randn(R, M + 7)[:, 3 : 3 + M]  # a slice: rows M + 7 apart
    b = torch.randn(R, N)
    expected = a.double().t() @ b.double()
    actual = cpu._sum_products(a, b, True)
    assert actual.shape == (M, N) and actual.is_contiguous()
    assert ((actual.double() - expected).norm() / expected.norm()).item() < 1e-6
    assert len(calls) == -(-R // 512) and calls[0][0] == min(M, N)
    T, B, H = 3, R // 3, N
    dgates, out, h0 = torch.randn(T, B, M), torch.randn(T, B, H), torch.randn(B, H)
    calls.clear()
    ours = cpu._grad_recurrent(dgates, h0, out, True)
    assert calls and calls[0][0] == H  # A: h_{t−1}ᵀ
    previous = torch.cat([h0.unsqueeze(0), out[:-1]]).double()
    expected = torch.einsum("tbg,tbh->gh", dgates.double(), previous)
    assert ((ours.double() - expected).norm() / expected.norm()).item() < 1e-6


def test_narrow_weight_gradients_stay_with_torch(monkeypatch):
    """Between 16 and 256 wide (both sides) a weight gradient's sum is torch's: ours would copy
    an operand transposed for what a narrow product saves."""
    from gatedrnn.backends import cpu

    monkeypatch.setattr(cpu, "blas_products", lambda: False)
    monkeypatch.setattr(cpu, "compiled_loops", lambda: pytest.fail("our GEMM was called"))
    a, b = torch.randn(900, 192), torch.randn(900, 64)
    torch.testing.assert_close(cpu._sum_products(a, b, True), a.t() @ b)
    dgates, out, h0 = torch.randn(30, 30, 192), torch.randn(30, 30, 64), torch.randn(30, 64)
    cpu._grad_recurrent(dgates, h0, out, True)


def test_linear_through_our_gemm_matches_torchs(gemm_calls):
    """``cpu.linear`` (the tasks' vocabulary-wide output layers): from 128 rows the product and
    the backward's dx through our GEMM (the weight gradient too where ≥ 256 wide), results and
    every gradient as ``F.linear``'s against float64, with and without a bias or an input that
    needs a gradient; a double backward through torch's differentiable products; torch's own
    below 128 rows, under autocast and for float16."""
    import torch.nn.functional as F

    from gatedrnn.backends import cpu

    calls = gemm_calls
    torch.manual_seed(0)
    weight = torch.randn(300, 20, requires_grad=True)
    bias = torch.randn(300, requires_grad=True)
    dy = torch.randn(5, 30, 300)
    for with_bias, x_grad in ((True, True), (False, True), (True, False)):
        x = torch.randn(5, 30, 20, requires_grad=x_grad)
        b = bias if with_bias else None
        calls.clear()
        inputs = [t for t in (x, weight, b) if t is not None]
        ours = cpu.linear(*inputs)
        actual = [ours, *torch.autograd.grad(ours, [t for t in inputs if t.requires_grad], dy)]
        # forward (150 rows); dx (150 rows of dy) where x needs it; dW (300 wide) A = xᵀ
        assert calls == [(150, 20)] + [(150, 300)] * x_grad + [(20, 150)]
        leaves = [t.detach().double().requires_grad_(t.requires_grad) for t in inputs]
        expected = F.linear(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        expected = [expected, *torch.autograd.grad(expected, wanted, dy.double())]
        for a, e in zip(actual, expected, strict=True):
            assert a.shape == e.shape and a.dtype == torch.float32
            assert ((a.double() - e).norm() / e.norm()).item() < 1e-6
    # a double backward: the first backward's products are differentiable
    x = torch.randn(5, 30, 20, requires_grad=True)
    (gx,) = torch.autograd.grad(cpu.linear(x, weight, bias).pow(2).sum(), x, create_graph=True)
    (g2,) = torch.autograd.grad(gx.pow(2).sum(), weight)
    (gx_ref,) = torch.autograd.grad(F.linear(x, weight, bias).pow(2).sum(), x, create_graph=True)
    (g2_ref,) = torch.autograd.grad(gx_ref.pow(2).sum(), weight)
    torch.testing.assert_close(g2, g2_ref, rtol=1e-4, atol=1e-4)
    calls.clear()
    cpu.linear(torch.randn(127, 20), weight, bias)  # too few rows to pack the weight for
    cpu.linear(torch.randn(200, 20).half(), weight.half(), bias.half())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert cpu.linear(torch.randn(200, 20), weight, bias).dtype == torch.bfloat16
    assert calls == []


def test_linear_gradcheck_through_our_gemm(monkeypatch):
    """``cpu.linear``'s hand-written backward (our GEMM's float64 path) against finite
    differences, and its double backward."""
    if compiled.unavailable_reason() is not None:
        pytest.skip(f"compiled loops unavailable here: {compiled.unavailable_reason()}")
    from gatedrnn.backends import cpu

    monkeypatch.setattr(cpu, "blas_products", lambda: False)
    torch.manual_seed(1)
    inputs = (
        torch.randn(2, 65, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(4, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(4, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(cpu.linear, inputs, fast_mode=True)
    assert torch.autograd.gradgradcheck(cpu.linear, inputs, fast_mode=True)


def test_the_call_overhead_benchmark_runs(tmp_path):
    """``benchmarks/call_overhead.py`` (run by hand, never timed here) on a tiny case: layers
    and cells, both modes, both sides timed, the backend ours ran on, the JSON written."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "benchmarks" / "call_overhead.py"
    out = tmp_path / "calls.json"
    argv = [sys.executable, str(script), "--cells", "gru", "--steps", "1", "--hidden", "8",
            "--calls", "2", "--rounds", "1", "--threads", "1", "--out", str(out)]  # fmt: skip
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["environment"]["backend"] == "auto"
    assert [(r["module"], r["steps"], r["mode"]) for r in data["rows"]] == [
        ("layer", 1, "forward"), ("layer", 1, "forward+backward"),
        ("cell", None, "forward"), ("cell", None, "forward+backward"),
    ]  # fmt: skip
    assert data["rows"][0]["ours_backend"] == "cudnn"  # auto: torch's GRU for one step
    for row in data["rows"]:
        assert set(row["us_per_call"]) == {"torch.nn", "ours"}
        assert all(us > 0 for us in row["us_per_call"].values())
