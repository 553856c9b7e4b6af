"""Measuring the triton backend against cuDNN on this GPU, at the sizes a program runs.

The auto table shipped with the package (``gpu_table.json``) holds the GPU models we measured.
:func:`tune` times our kernels in each launch variant of :data:`CANDIDATES` that launches at a
size (cell, dtype, with or without gradients, H, B), and cuDNN (T = :data:`STEPS`, medians of
CUDA-event timings), checks every variant's results against cuDNN's (:data:`AGREEMENT`), and
makes the row ``gpu_speed.py --write-table`` would: the fastest variant that agreed, and its time
over cuDNN's. Rows go into a table of this machine's own (:func:`local_table_path`), which the
backend reads over the shipped one: ``auto`` then decides at that size by the row, and triton
calls run with its variant. Rows measured by another version of gatedrnn or Triton are not
used (their kernels differ).

Two ways to measure: ``gatedrnn gpu-tune`` (:func:`measure` for the sizes given; ``--force``
measures sizes the shipped table holds too), or ``GATEDRNN_TRITON_TUNE=1``: the first triton or
``auto`` call of a size that no table holds exactly on this GPU model measures it
(:func:`ensure`). A size takes seconds to a minute (each variant's kernels are compiled, once,
into Triton's cache); don't measure while capturing CUDA graphs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from gatedrnn.atomic import write_atomic

__all__ = [
    "AGREEMENT", "CANDIDATES", "DTYPES", "disagreement", "enabled", "ensure", "layer_pair",
    "local_table_path", "measure", "tune",
]  # fmt: skip

logger = logging.getLogger(__name__)

STEPS = 64
"""T of the timed runs: the per-step times of the persistent kernels and of cuDNN hardly change
with T beyond a few dozen steps."""

CANDIDATES: tuple[Mapping[str, int], ...] = (
    {},
    {"tma": 1},
    {"chunks": 8},
    {"tma": 1, "chunks": 8},
    {"tma": 1, "forward_chunks": 4},
    {"split": 2, "tma": 1, "chunks": 8},
    {"split": 2, "tma": 1, "chunks": 8, "forward_chunks": 8},
    {"f16": 1},
    {"f16": 1, "chunks": 8},
    {"f16": 1, "tma": 1},
    {"f16": 1, "split": 2, "chunks": 8},
    {"f16": 2},
    {"f16": 2, "chunks": 8},
    {"f16": 2, "tma": 1},
    {"resident": 0},
)
"""The launch variants tried (``gpu.TUNING``'s keys on top of the launchers' own choice, ``{}``);
at a given size those that do not launch, or launch exactly as an earlier one, are skipped."""

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""The dtypes the triton backend computes in, by the names the tables and commands use."""

AGREEMENT = {"float32": 1e-2, "bfloat16": 5e-2, "float16": 1e-2}
"""The largest relative difference from cuDNN's results a timed run may have and count: both
sides' own errors are ~1e-4 (TF32) and ~4e-3 (bfloat16) against float64 (``GPU_NOTES.md``); a
variant that computes garbage (a race, a missing fence) is off by ~1 or not finite."""

VARIANT_MARGIN = 0.97
"""A launch variant replaces the launchers' own choice only where it took at most this fraction
of its time: not for noise, and the own choice is the one most tested on GPUs."""


def fastest(times: Mapping[str, float]) -> str:
    """Of {variant as JSON: time}, the variant to use: the fastest, unless the launchers' own
    choice (``"{}"``) is within :data:`VARIANT_MARGIN` of it."""
    best = min(times, key=times.__getitem__)
    if "{}" in times and times[best] > VARIANT_MARGIN * times["{}"]:
        return "{}"
    return best


_tried: set[tuple] = set()  # sizes this process measured, failed to, or found in a table


def enabled() -> bool:
    """Whether ``$GATEDRNN_TRITON_TUNE`` is set (not 0)."""
    return os.environ.get("GATEDRNN_TRITON_TUNE", "0") not in ("", "0")


def local_table_path() -> Path:
    """``$GATEDRNN_TRITON_TABLE``, else ``gatedrnn/gpu_table.json`` in ``$XDG_CACHE_HOME``
    (``~/.cache``)."""
    if os.environ.get("GATEDRNN_TRITON_TABLE"):
        return Path(os.environ["GATEDRNN_TRITON_TABLE"])
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "gatedrnn" / "gpu_table.json"


def _versions() -> dict:
    import triton

    from gatedrnn import __version__

    return {"gatedrnn": __version__, "triton": triton.__version__}


def read_local() -> dict:
    """This machine's table ({"devices": {name: [row, ...]}}), empty where there is none or it
    was measured by other versions. A file that is not such a table is moved aside (to
    ``*.corrupt``, with a warning) and counts as none."""
    path = local_table_path()
    try:
        table = json.loads(path.read_text())
        _check_table(table)
    except FileNotFoundError:
        return {"devices": {}}
    except (OSError, ValueError) as error:
        aside = path.with_name(path.name + ".corrupt")
        warnings.warn(
            f"the triton backend's local table {path} could not be read ({error}); moved to "
            f"{aside}, sizes will be measured again",
            stacklevel=2,
        )
        with contextlib.suppress(OSError):  # another process moved it first
            path.replace(aside)
        return {"devices": {}}
    if {key: table.get(key) for key in ("gatedrnn", "triton")} != _versions():
        return {"devices": {}}
    return table


_ROW = {"kind": str, "dtype": str, "grad": bool, "H": int, "B": int}


def _check_table(table) -> None:
    """Raise ValueError unless ``table`` is {"devices": {name: [row, ...]}} with rows the backend
    can read (:data:`_ROW`'s keys and types, ``ratio`` a number or null, ``tuning`` a dict)."""
    if not isinstance(table, dict) or not isinstance(table.get("devices"), dict):
        raise ValueError("not a table: expected {'devices': {name: [rows]}}")
    for name, rows in table["devices"].items():
        if not isinstance(rows, list):
            raise ValueError(f"device {name!r}: expected a list of rows, got {type(rows).__name__}")
        for row in rows:
            bad = not isinstance(row, dict) or any(
                not isinstance(row.get(key), kind) for key, kind in _ROW.items()
            )
            bad = bad or not isinstance(row.get("ratio", 0), int | float | None)
            if bad or not isinstance(row.get("tuning", {}), dict):
                raise ValueError(f"device {name!r}: a row the backend cannot read: {row!r}"[:200])


@contextlib.contextmanager
def _locked(path: Path):
    """An exclusive lock on ``path``'s lock file while the block runs (POSIX; elsewhere none):
    processes measuring at once (one per GPU in a distributed job, each at its first call) then
    add their rows one after another instead of each writing back what it read before the
    others wrote."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _write_row(row: dict, device_name: str) -> None:
    """Put ``row`` into this machine's table (replacing its size's row), atomically, and under
    the table's lock (:func:`_locked`)."""
    path = local_table_path()
    from gatedrnn.backends.gpu import row_key

    with _locked(path):
        table = read_local()
        table.update(_versions())
        rows = {row_key(r): r for r in table["devices"].get(device_name, [])}
        rows[row_key(row)] = row
        table["devices"][device_name] = sorted(rows.values(), key=row_key)
        write_atomic(path, lambda tmp: tmp.write_text(json.dumps(table, indent=1) + "\n"))


def disagreement(ours, reference, x, dy, grad: bool) -> float:
    """Relative difference of ``ours``' results from ``reference``'s on ``x``: the output, and
    with ``grad`` the input's gradient (of ``dy`` at the output); inf where ours are not
    finite."""
    results = []
    for layer in (ours, reference):
        x.grad = None
        with torch.set_grad_enabled(grad):
            out, _ = layer(x)
            if grad:
                out.backward(dy)
        results.append([out.detach().double()] + ([x.grad.double()] if grad else []))
    x.grad = None
    worst = 0.0
    for a, b in zip(*results, strict=True):
        if not torch.isfinite(a).all():
            return math.inf
        worst = max(worst, ((a - b).norm() / b.norm().clamp_min(1e-30)).item())
    return worst


def _time(fn, params) -> float:
    """Median milliseconds of ``fn()``: CUDA events after warm-up on a GPU (Triton's
    ``do_bench``), wall time of a few runs elsewhere."""
    if torch.cuda.is_available():
        from triton.testing import do_bench

        return do_bench(fn, warmup=10, rep=40, grad_to_none=params, return_mode="median")
    times = []
    for _ in range(3):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def layer_pair(kind: str, H: int, dtype: torch.dtype, device):
    """One layer of ``kind`` (input size = H) on the triton backend and torch.nn's (cuDNN), with
    the same weights (the RNN's tanh: its rows stand for ReLU's too, the same kernels)."""
    from gatedrnn.nn import GRU, LSTM, RNN

    ours_cls, torch_cls = {
        "rnn": (RNN, torch.nn.RNN), "gru": (GRU, torch.nn.GRU), "lstm": (LSTM, torch.nn.LSTM)
    }[kind]  # fmt: skip
    reference = torch_cls(H, H, device=device, dtype=dtype)
    # built on the device its weights are separate tensors, which cuDNN would copy into one
    # buffer on every call ("not part of single contiguous chunk of memory"): flatten them once
    reference.flatten_parameters()
    ours = ours_cls(H, H, backend="triton", device=device, dtype=dtype)
    ours.load_state_dict(reference.state_dict())
    return ours, reference


def _runner(layer, x, dy, grad: bool):
    def run():
        with torch.set_grad_enabled(grad):
            out, _ = layer(x)
            if grad:
                out.backward(dy)

    return run


def _variants(
    kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device,
    candidates: Sequence[Mapping[str, int]] | None = None,
) -> list:  # fmt: skip
    """The :data:`CANDIDATES` (or ``candidates``) that launch at this size, each launching
    differently (the first of each launch kept)."""
    from gatedrnn.backends import gpu

    seen, kept = set(), []
    for variant in CANDIDATES if candidates is None else candidates:
        if variant and not gpu._launches_here(variant, H, B, device, dtype, grad):
            continue
        resident = kind != "rnn"  # the plain RNN's kernels are streamed ones only
        forward = gpu._resident_launch(H, B, device, dtype, variant) if resident else None
        backward = None
        if resident and grad:
            backward = gpu._resident_backward_launch(H, B, device, dtype, variant)
        if forward is None:  # the streamed kernels
            forward = gpu._launch(H, B, device, dtype, variant)
        key = json.dumps([forward, backward], sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            kept.append(variant)
    return kept


def tune(kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device: torch.device) -> dict:
    """Time our kernels in each launch variant and cuDNN at this size (input size = H, one
    layer, :data:`STEPS` steps); the auto table's row for it: ``ratio`` = the fastest agreeing
    variant's (:func:`fastest`) time over cuDNN's (None where none ran and agreed: then
    ``auto`` keeps cuDNN there), ``tuning`` = that variant (where not the launchers' own), and
    ``measured``: cuDNN's and every variant's ms, or why it does not count (the error it
    raised, its results off)."""
    from gatedrnn.backends import gpu

    # the caller's random streams untouched (a seeded run is the same with tuning on), its
    # autocast off for these runs
    cuda = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), torch.autocast(device.type, enabled=False):
        ours, reference = layer_pair(kind, H, dtype, device)
        x = torch.randn(STEPS, B, H, device=device, dtype=dtype, requires_grad=grad)
        dy = torch.randn(STEPS, B, H, device=device, dtype=dtype)
        params = [x, *ours.parameters(), *reference.parameters()]
        cudnn = _time(_runner(reference, x, dy, grad), params)
        measured = _time_variants(kind, dtype, grad, H, B, device, ours, reference, x, dy, params)
    times = {name: ms for name, ms in measured.items() if isinstance(ms, float)}
    best = fastest(times) if times else None
    row = {
        "kind": kind, "dtype": gpu.dtype_name(dtype), "grad": grad, "H": H, "B": B,
        "ratio": round(times[best] / cudnn, 3) if best else None,
    }  # fmt: skip
    if best and json.loads(best):
        row["tuning"] = json.loads(best)
    rounded = {name: round(ms, 4) if isinstance(ms, float) else ms for name, ms in measured.items()}
    row["measured"] = {"cudnn": round(cudnn, 4), **rounded}
    return row


def _time_variants(kind, dtype, grad, H, B, device, ours, reference, x, dy, params) -> dict:
    """{variant as JSON: ms, or why it does not count} for each of :func:`_variants`."""
    from gatedrnn.backends import gpu

    measured = {}
    saved = dict(gpu.TUNING)
    try:
        for variant in _variants(kind, dtype, grad, H, B, device):
            gpu.TUNING.clear()
            gpu.TUNING.update({"table": 0, **variant})
            name = json.dumps(variant, sort_keys=True)
            try:
                ms = _time(_runner(ours, x, dy, grad), params)
                off = disagreement(ours, reference, x, dy, grad)
            except Exception as error:  # a variant that fails is not chosen; others may run
                measured[name] = f"{type(error).__name__}: {error}"[:200]
                continue
            agrees = off <= AGREEMENT[gpu.dtype_name(dtype)]
            measured[name] = float(ms) if agrees else f"results off by {off:.2g}"
    finally:
        gpu.TUNING.clear()
        gpu.TUNING.update(saved)
    return measured


def ensure(kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device) -> None:
    """With ``$GATEDRNN_TRITON_TUNE`` set (:func:`enabled`): :func:`measure` this size unless a
    table holds it or this process tried it. The backend calls this before each call; not while
    a CUDA graph is being captured (nothing could be timed)."""
    from gatedrnn.backends import gpu

    if enabled() and not gpu.capturing():
        measure(kind, dtype, grad, H, B, device)


def measure(
    kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device, *, force: bool = False
) -> dict | None:
    """Measure this size on this GPU (:func:`tune`) and put its row into this machine's table,
    unless a table (shipped or this machine's) holds it exactly or this process tried it (with
    ``force``: whatever the tables hold). Nothing while explicit launch overrides
    (``gpu.TUNING``) are set, or for float32 in another precision than TF32. Returns the row
    measured, or None. Measuring sets ``gpu.TUNING`` for a while: not while other threads run
    the backend."""
    from gatedrnn.backends import gpu

    if gpu.TUNING:
        return None
    if dtype == torch.float32 and gpu.fp32_precision() != "tf32":
        return None  # the tables' float32 rows are TF32's: IEEE or tf32x3 is never chosen by them
    name = gpu._device_name(device)
    key = (name, kind, dtype, grad, H, B)
    if not force and key in _tried:  # the backend asks at every call: one set lookup
        return None
    _tried.add(key)
    if not force and gpu._exact_row(kind, dtype, grad, H, B, device):
        return None
    start = time.perf_counter()
    row = tune(kind, dtype, grad, H, B, device)
    logger.info(
        "triton backend: measured %s %s grad=%s H=%d B=%d on %s in %.0f s: %s",
        kind, dtype, grad, H, B, name, time.perf_counter() - start, row,
    )  # fmt: skip
    _write_row(row, name)
    gpu.table_changed()
    return row
