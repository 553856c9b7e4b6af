"""Layer speed and memory against torch.nn: the measurements behind ``gatedrnn bench``.

For each cell × hidden size × batch size, a torch.nn layer and ours with the same weights (a
stack of layers, bidirectional or not, where asked) run forward-only (under ``no_grad``) and
forward+backward; a cell torch.nn lacks (a variant written ``CELL:KEY=VALUE``, such as
``lstm:peepholes=true``, or the MGU) runs against torch.nn's standard cell of its family
(:data:`FAMILY`: the GRU for the MGU and minGRU), with weights of its own; options torch.nn takes
too (``lstm:proj_size=64``, ``gru:bias=false``) go to both. The implementations are interleaved
within each repeat so both see the same machine state, in reverse order every other repeat so
that each follows the other as often (whatever runs right after torch.nn's GRU at small sizes
pays ~0.5 ms, on a 2-core machine), and the median of the repeats after warm-up is reported (on
a GPU, synchronized around each call: torch.nn runs cuDNN there). Bytes saved for backward are
counted with saved-tensor hooks (unique storages), which is device-independent. The minor page
faults of each call are recorded too (median per call, where the platform counts them): a
multi-megabyte buffer that the allocator hands back as fresh pages costs ~1 µs per 4 KiB page,
which at B=1 can be as much as the arithmetic, and which side pays depends on the heap's state,
so the faults explain timings that move between runs. Nothing here is asserted: the numbers are
written as JSON and printed.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

import gatedrnn
from gatedrnn.backends.cpu import blas_products, cpu_info

__all__ = ["BenchResult", "run_benchmark", "saved_bytes"]

TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
OUR_LAYERS = {
    "rnn": gatedrnn.RNN, "lstm": gatedrnn.LSTM, "gru": gatedrnn.GRU, "mgu": gatedrnn.MGU,
    "mingru": gatedrnn.MinGRU, "minlstm": gatedrnn.MinLSTM,
}  # fmt: skip
FAMILY = {"rnn": "rnn", "lstm": "lstm", "gru": "gru", "mgu": "gru", "mingru": "gru",
          "minlstm": "lstm"}  # fmt: skip
"""The torch.nn layer each of our cells is timed against."""


@dataclass
class BenchResult:
    cell: str  # as written: ``gru``, ``lstm:peepholes=true``
    hidden: int
    batch: int
    steps: int
    mode: str  # "forward" or "forward+backward"
    impl: str  # "torch.nn" or "gatedrnn:<backend>"
    median_ms: float | None  # None where the backend cannot run the case (``skipped`` says why)
    times_ms: list[float] = field(default_factory=list)
    saved_bytes: int | None = None  # for forward+backward only
    minor_faults: float | None = None  # median per call; None where not counted
    skipped: str | None = None
    against: str = ""  # the torch.nn layer it ran against (its own cell's, or its family's)


def saved_bytes(fn: Callable[[], torch.Tensor], parameters: Iterable[torch.Tensor] = ()) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn`` runs, less those
    of ``parameters`` (and of views of them): those live as long as the module either way and
    are counted as parameters, and whether a backend's graph also refers to them (torch's
    composite LSTM saves its weights, our loops save them to differentiate twice) costs no
    memory."""
    owned = {p.untyped_storage().data_ptr() for p in parameters}
    storages: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in owned:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(storages.values())


def _minor_faults() -> int | None:
    """The process's minor page faults so far, or None where the platform does not count them."""
    if sys.platform == "win32":
        return None
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _step(module: nn.Module, x: torch.Tensor, backward: bool) -> Callable[[], object]:
    if not backward:

        def forward() -> object:
            with torch.no_grad():
                return module(x)

        return forward

    def forward_backward() -> object:
        out, state = module(x)
        loss = out.sum() + (state[0] if isinstance(state, tuple) else state).sum()
        loss.backward()
        return loss

    return forward_backward


def run_benchmark(
    cells: Iterable[str] = ("rnn", "lstm", "gru"),
    hidden_sizes: Iterable[int] = (128, 256, 512),
    batch_sizes: Iterable[int] = (1, 32),
    steps: int = 100,
    repeats: int = 7,
    warmup: int = 2,
    backends: Iterable[str] = ("cpu",),
    progress: Callable[[str], None] | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    layers: int = 1,
    bidirectional: bool = False,
) -> list[BenchResult]:
    """Time every configuration on ``device``, both sides' layers and inputs in ``dtype``, each
    a stack of ``layers`` layers, ``bidirectional`` or not; returns one :class:`BenchResult`
    per implementation × case. ``cells`` as a command line writes them (``gru``,
    ``lstm:peepholes=true``). A backend that cannot run a case (the triton kernels have no plain
    RNN, say) gets a result with no time and the reason in ``skipped``."""
    from gatedrnn.backends import BackendUnsupportedError, resolve_backend

    device = torch.device(device)
    cuda = device.type == "cuda"
    hidden_sizes = list(hidden_sizes)
    stack = {"num_layers": layers, "bidirectional": bidirectional}
    cells = {text: _cell(text, hidden_sizes) for text in cells}  # checked before any timing
    results: list[BenchResult] = []
    for cell, (kind, options) in cells.items():
        theirs, same = _torch_counterpart(kind, options)
        against = f"torch.nn.{TORCH_LAYERS[FAMILY[kind]].__name__}"
        if theirs:
            against += f"({', '.join(f'{k}={v}' for k, v in theirs.items())})"
        for hidden in hidden_sizes:
            for batch in batch_sizes:
                torch.manual_seed(0)
                reference = TORCH_LAYERS[FAMILY[kind]](hidden, hidden, **stack, **theirs)
                reference = reference.to(device, dtype)
                x = torch.randn(steps, batch, hidden, device=device, dtype=dtype)
                impls: dict[str, nn.Module] = {"torch.nn": reference}
                skipped: dict[str, str] = {}
                for backend in backends:
                    ours = OUR_LAYERS[kind](hidden, hidden, backend=backend, **stack, **options)
                    ours = ours.to(device, dtype)
                    if same:  # torch.nn's own weights
                        ours.load_state_dict(reference.state_dict())
                    try:  # the layer's own choice, without running it
                        resolve_backend(backend, ours.config, x)
                    except BackendUnsupportedError as error:
                        skipped[f"gatedrnn:{backend}"] = str(error)
                        continue
                    impls[f"gatedrnn:{backend}"] = ours
                for mode in ("forward", "forward+backward"):
                    backward = mode == "forward+backward"
                    fns = {name: _step(m, x, backward) for name, m in impls.items()}
                    times: dict[str, list[float]] = {name: [] for name in fns}
                    faults: dict[str, list[int]] = {name: [] for name in fns}
                    names = list(fns)
                    for r in range(warmup + repeats):
                        # interleaved: the same machine state; in reverse every other repeat,
                        # so each side follows the other as often (a call right after torch.nn's
                        # GRU at small sizes took ~0.5 ms longer, whichever it was)
                        for name in names if r % 2 == 0 else names[::-1]:
                            fn = fns[name]
                            before = _minor_faults()
                            if cuda:
                                torch.cuda.synchronize(device)
                            start = time.perf_counter()
                            fn()
                            if cuda:
                                torch.cuda.synchronize(device)
                            elapsed = (time.perf_counter() - start) * 1e3
                            after = _minor_faults()
                            if r >= warmup:
                                times[name].append(elapsed)
                                if before is not None and after is not None:
                                    faults[name].append(after - before)
                    for name, module in impls.items():
                        module.zero_grad(set_to_none=True)
                        nbytes = (
                            saved_bytes(lambda m=module, x=x: m(x)[0], module.parameters())
                            if backward
                            else None
                        )
                        median = statistics.median(times[name])
                        fault = statistics.median(faults[name]) if faults[name] else None
                        result = BenchResult(
                            cell, hidden, batch, steps, mode, name, median, times[name], nbytes
                        )
                        result.minor_faults, result.against = fault, against
                        results.append(result)
                    for name, reason in skipped.items():
                        results.append(
                            BenchResult(
                                cell,
                                hidden,
                                batch,
                                steps,
                                mode,
                                name,
                                None,
                                skipped=reason,
                                against=against,
                            )
                        )
                    if progress:
                        progress(f"{cell} H={hidden} B={batch} {mode}")
    return results


def _cell(text: str, hidden_sizes: list[int]) -> tuple[str, dict[str, object]]:
    """``--cells``' entry ``text``: (kind, layer options), checked by building the layer at
    each hidden size (a projection must be smaller)."""
    from gatedrnn.nn.spec import parse_cell

    try:
        kind, options = parse_cell(text)
    except ValueError as error:
        raise ValueError(f"--cells: {error}") from None
    if kind not in OUR_LAYERS:
        raise ValueError(f"--cells: unknown cell {kind!r}; expected one of {', '.join(OUR_LAYERS)}")
    for hidden in hidden_sizes:
        try:
            OUR_LAYERS[kind](hidden, hidden, **options)
        except (TypeError, ValueError) as error:  # a keyword the layer does not take, a value
            raise ValueError(f"--cells: {text!r} at hidden size {hidden}: {error}") from None
    return kind, options


# the layer options torch.nn's layers take too (the rest are ours: variants, init, forget_bias)
_TORCH_OPTIONS = ("bias", "nonlinearity", "proj_size")


def _torch_counterpart(kind: str, options: dict[str, object]) -> tuple[dict[str, object], bool]:
    """The options of the torch.nn layer ``kind`` with ``options`` is timed against (its own
    cell's, with the options torch.nn takes; or its family's standard one), and whether the two
    compute the same function (then they share weights)."""
    from gatedrnn.nn.spec import spec_from_options

    if spec_from_options(kind, options).torch_lacks is not None:
        return {}, False
    theirs = {k: v for k, v in options.items() if k in _TORCH_OPTIONS}
    return theirs, len(theirs) == len(options)


def environment(
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    layers: int = 1,
    bidirectional: bool = False,
) -> dict[str, object]:
    """Machine, versions, threads, device, dtype and the layers' stack, stored with every
    benchmark."""
    device = torch.device(device)
    gpu = {}
    if device.type == "cuda":
        gpu = {"gpu": torch.cuda.get_device_name(device), "cuda": torch.version.cuda,
               "cudnn": torch.backends.cudnn.version()}  # fmt: skip
    return gpu | {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "layers": layers,
        "bidirectional": bidirectional,
        "machine": platform.machine(),
        # the CPU decides which of torch's kernels and ours is faster; on Linux
        # platform.processor() is empty
        "processor": cpu_info("model name") or platform.processor(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gatedrnn": gatedrnn.__version__,
        "threads": torch.get_num_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        # where the cpu backend's many-row products ran: torch's BLAS or our packed GEMM
        "cpu_gemm": "blas" if blas_products() else "ours",
    }


def to_json(
    results: list[BenchResult],
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    layers: int = 1,
    bidirectional: bool = False,
) -> dict[str, object]:
    return {
        "environment": environment(device, dtype, layers, bidirectional),
        "results": [asdict(r) for r in results],
    }
