"""The ``triton`` backend: persistent GRU, LSTM and RNN kernels for CUDA GPUs, written in Triton.

For each layer direction: one GEMM (cuBLAS, through torch) computes the input projections of the
whole sequence; one launch of a persistent kernel (:mod:`gatedrnn.backends.triton_kernels`) then
runs all T steps, each program holding a slice of the hidden units and synchronising with the
others through a grid barrier once per step, instead of a GEMM launch and a pointwise launch per
step as cuDNN's non-persistent kernels do. Backward runs the same way in reverse time; the weight
gradients are one GEMM per matrix after the loop. Where a program's slice of the weights and one
step's operand fit in shared memory (on Hopper or newer, bfloat16/float16 or TF32; half the units
per program where the weights would not fit otherwise, the backward's operand in four loads where
it would not: with 132 multiprocessors bfloat16 to H = 1024 at B ≤ 64, TF32 to H = 512 at B ≤ 64
and at H = 1024 for B ≤ 16), the GRU (reset after) and the LSTM run the *resident* kernels, which
keep that slice on chip for the whole sequence (:func:`_resident_launch`,
:func:`_resident_backward_launch`); elsewhere, and for the plain RNN everywhere, the *streamed*
ones, which read it from L2 every step.

Precision: float32 (the recurrent product in TF32 when ``torch.backends.cudnn.allow_tf32`` is on,
as cuDNN does, operands rounded to nearest TF32; IEEE float32 otherwise; see
:func:`fp32_precision`), bfloat16 and float16
(operands of the product in that type, accumulation, states and gate math in float32). The
states h and c are carried in float32 whatever the dtype.

Covers the GRU (reset after and before), the LSTM (with peepholes, the coupled gate or both),
the MGU and the plain RNN (tanh or ReLU), any number of layers, both directions, padded or packed
input (finished sequences keep their state). The MGU and the coupled LSTM run as the
reset-before GRU and the LSTM with tied weights (:func:`kernel_cell`). Refuses the rest with the
reason (minimal cells, the LSTM's projection, float64, a batch too large for one resident wave
of programs at that width). First derivatives only, like cuDNN.

Triton is imported on first use. Without a GPU the backend reports itself unavailable, unless
``TRITON_INTERPRET=1`` is set: then its kernels run in Triton's interpreter on the CPU, as one
program (the barrier is trivial), which is how the test suite checks them without a GPU.

``backend="auto"`` takes it only where the measured table (``gpu_table.json`` beside this file,
written by ``benchmarks/gpu_speed.py --write-table``; read by :func:`measured_ratio`) says it
beat cuDNN by at least 5% (:data:`AUTO_MARGIN`) on this GPU model at the nearest measured size;
elsewhere ``auto`` uses cuDNN. For the variants cuDNN cannot run (the reset-before GRU, the
LSTM's peepholes and coupled gate, the MGU) ``auto`` takes it wherever it runs: the other choice
is the reference loop. Measured so far: NVIDIA H100 80GB HBM3 and NVIDIA H200. The table also
names, per size, the launch variant a sweep measured fastest there, which triton calls run with
(:func:`launch_tuning`). A machine's own measurements (``gatedrnn gpu-tune``, or with
``GATEDRNN_TRITON_TUNE=1`` each size a program uses, at first use) go into a table of its own
that overrides the shipped one (:mod:`gatedrnn.backends.gpu_tune`).
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from gatedrnn.backends import (
    LayerConfig,
    backward_by_rerun,
    run_eagerly,
    untraceable,
    without_data,
)
from gatedrnn.backends.reference import (
    differentiable_backward,
    fused_arguments,
    project_inputs,
    run_stack,
)
from gatedrnn.nn.spec import CellSpec, make_spec

__all__ = [
    "TritonBackend",
    "interpreting",
    "kernel_cell",
    "raise_pending_faults",
    "triton_unavailable",
]

POISON = False
"""Tests set this: work and output buffers then start as NaN instead of uninitialised memory, so
an element a kernel fails to write shows in the results."""

SPIN_LIMIT = 1 << 20  # ~1 s of spinning at one barrier before the kernel reports a fault

INTERPRETED_SMS: int | None = None
"""Tests set this, with a harness that runs a grid's programs concurrently
(``tests/backends/concurrent.py``): under the interpreter the launchers then plan grids as for a
GPU with this many multiprocessors (many programs, a GPU's tile sizes, barriers that really
wait), not one program covering everything."""

TUNING: dict[str, int] = {}
"""Overrides of the launch parameters for tuning runs: the streamed kernels' ``BH``, ``BB``,
``BK``, ``num_stages``; ``num_warps``; ``resident`` (0: the streamed kernels everywhere), ``fold``
(1 or 2), ``chunks`` (the backward's) and ``forward_chunks`` (1, 2, 4 or 8), ``separate``
(1: the chunks' products added, not chained; see ``_accumulate``), ``tma`` (1: the per-step
operand read by TMA from a ring, see ``_operand_chunk``), ``split`` (2: two programs per unit
slice, each over half of K, see ``_pair_sum``) and ``f16`` (1: a float32 layer's products in
float16 with power-of-two scales, the backward's only without TMA, see :func:`_f16_operands`; 2:
and the backward's per-step gradients stored in float16 after a first barrier, half the bytes
every program reads, a second barrier a step, with or without TMA) for the resident ones.
``benchmarks/gpu_speed.py --sweep`` and ``--tuning`` set them; empty in normal use, where each
call runs with the variant the auto table names for its size (:func:`launch_tuning`); any key
set here replaces the table's choice (``table``: 0, the launchers' own choices alone)."""
TABLE_PATH = Path(__file__).with_name("gpu_table.json")
AUTO_MARGIN = 0.95
"""``auto`` takes the triton backend only where its measured time was at most this fraction of
cuDNN's: cuDNN's own times moved by tens of percent between runs on one machine, and the table
is one run's, at the nearest measured size."""


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.cache
def triton_unavailable() -> str | None:
    """Why the Triton kernels cannot run here, or None."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install 'gatedrnn[gpu]')"
    return None


@functools.cache
def _kernels():
    from gatedrnn.backends import triton_kernels

    return triton_kernels


def _empty(*shape: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    if POISON:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _multiprocessors(device: torch.device) -> int:
    """The programs a grid may have for all of them to be resident at once: the GPU's
    multiprocessors, or :data:`INTERPRETED_SMS` under the interpreter."""
    if device.type != "cuda":
        assert INTERPRETED_SMS is not None
        return INTERPRETED_SMS
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


def _launch(
    H: int, B: int, device: torch.device, dtype: torch.dtype, tuning: Mapping | None = None
) -> dict | None:
    """Grid and block sizes, or None when the batch is too large for one resident wave
    (``tuning``: the launch overrides, :data:`TUNING` if None).

    Each program owns BH units (≥ 16, the smallest dot tile) of BB batch rows; the grid covers
    H × B exactly once and never has more programs than the GPU has multiprocessors, so all are
    resident at once (the barrier needs that). The smallest tiles that fit win: more programs,
    less work each. Under the interpreter: one program covering everything (unless
    :data:`INTERPRETED_SMS`)."""
    if device.type != "cuda" and INTERPRETED_SMS is None:
        BH, BB = max(16, _next_pow2(H)), max(16, _next_pow2(B))
        return {"grid": (1, 1), "meta": {"BH": BH, "BB": BB, "BK": min(64, BH)}}
    tuning = TUNING if tuning is None else tuning
    sms = _multiprocessors(device)
    for BH in [tuning["BH"]] if "BH" in tuning else [16, 32, 64]:
        for BB in [tuning["BB"]] if "BB" in tuning else [16, 32, 64]:
            grid = (math.ceil(H / BH), math.ceil(B / BB))
            if grid[0] * grid[1] <= sms:
                # Chosen from the compiler's resource report (scripts/triton_aot.py): these
                # keep every variant free of register spills at H = 1024.
                # Measured on an H200 (benchmarks/gpu_speed.py --sweep): two warps beat four and
                # eight up to 512-element tiles, despite a few spilled registers; larger tiles
                # need eight warps and a shorter K step to stay in registers.
                tile = BB * BH
                BK = 128 if tile <= 256 and dtype != torch.float32 else 64 if tile <= 512 else 32
                meta = {
                    "BH": BH, "BB": BB, "BK": tuning.get("BK", BK),
                    "num_warps": tuning.get("num_warps", 2 if tile <= 512 else 8),
                }  # fmt: skip
                if "num_stages" in tuning:
                    meta["num_stages"] = tuning["num_stages"]
                return {"grid": grid, "meta": meta}
    return None


SHARED_MEMORY = 220 * 1024
"""Shared memory the resident forward may plan for: Hopper gives a block up to 227 KB; the rest
is the compiler's scratch for the gate math's layout changes."""


def _resident_sizes(
    H: int, B: int, device: torch.device, dtype: torch.dtype, *, operand_columns: int,
    batch_tiles: tuple[int, ...], warps_from: int, chunks: tuple[int, ...], chunks_key: str,
    tuning: Mapping, forward: bool,
) -> dict | None:  # fmt: skip
    """What the two resident launchers share: grid and block sizes for a resident kernel whose
    programs own BH = 16 / FOLD hidden units (a 64-row weight operand, KP / FOLD columns) and
    whose per-step operand is KP × operand_columns·BB, loaded in CHUNKS pieces (``chunks``:
    the counts to try; ``tuning[chunks_key]`` forces one), or None where it cannot run:
    Hopper or newer (warpgroup MMA, operands read from shared memory), bfloat16/float16 or TF32,
    the weights and one chunk of the operand within :data:`SHARED_MEMORY`, at most one program
    per multiprocessor, the product at most 256 columns wide (the MMA's N). Takes the smallest
    of ``batch_tiles`` that fits, unfolded before folded (``tuning["fold"]`` = 1 or 2 forces
    one), then the fewest chunks; eight warps from KP·BB / CHUNKS ≥ ``warps_from``.
    ``tuning["split"] = 2``: two programs per unit slice, each over half of K (SPLIT: half of
    everything above per program, twice the programs; 1, 2, 4 or 8 chunks tried). ``F16``: a
    float32 layer's product in float16 where ``tuning["f16"]`` asks for it
    (:func:`_f16_operands`; its operands then take half the shared memory), in the ``forward``
    (meta ``F16`` = 1) and in the backward (``F16`` = the level, 1 or 2; level 1 not with TMA).
    Under the interpreter: one program covering everything, with the first fold and chunk count
    (unless :data:`INTERPRETED_SMS`: then as on a GPU, with any precision)."""
    level = tuning.get("f16", 0)
    if level not in (0, 1, 2):
        raise ValueError(f"TUNING['f16'] must be 0, 1 or 2, got {level!r}")
    tma = bool(tuning.get("tma", 0))
    f16 = dtype == torch.float32 and bool(level) and (forward or level == 2 or not tma)
    f16_meta = (1 if forward else level) if f16 else 0
    itemsize = 2 if f16 else dtype.itemsize
    fold = tuning.get("fold")
    if fold not in (None, 1, 2):
        raise ValueError(f"TUNING['fold'] must be 1 or 2, got {fold!r}")
    folds = (1, 2) if fold is None else (fold,)
    S = tuning.get("split", 1)
    if S not in (1, 2):
        raise ValueError(f"TUNING['split'] must be 1 or 2, got {S!r}")
    if S == 2:
        chunks = (1, 2, 4, 8)
    if chunks_key in tuning:
        if tuning[chunks_key] not in (1, 2, 4, 8):
            raise ValueError(
                f"TUNING[{chunks_key!r}] must be 1, 2, 4 or 8, got {tuning[chunks_key]!r}"
            )
        chunks = (tuning[chunks_key],)

    def meta(BH: int, BB: int, F: int, C: int) -> dict:
        # K of the MMA: a power of two, and at least 16 (bf16's smallest) in every K range and
        # chunk
        return {
            "BH": BH, "BB": BB, "KP": _next_pow2(max(H, 16 * S * F * C)), "FOLD": F, "SPLIT": S,
            "CHUNKS": C, "SEPARATE": bool(tuning.get("separate", 0)), "TMA": tma,
            "FENCE": tma and device.type == "cuda", "F16": f16_meta,
        }  # fmt: skip

    if device.type != "cuda" and INTERPRETED_SMS is None:
        if S != 1:
            raise ValueError(
                "TUNING['split'] = 2 needs the two programs of a pair to run at once: on a GPU, "
                "or under the interpreter with gpu.INTERPRETED_SMS set (tests/backends/"
                "concurrent.py runs the programs in threads)"
            )
        F, C = folds[0], chunks[0]
        BB = max(batch_tiles[0], _next_pow2(B))
        return {"grid": (1, 1), "meta": meta(max(16 // F, _next_pow2(H)), BB, F, C)}
    if device.type == "cuda":
        if dtype == torch.float32 and fp32_precision() != "tf32":
            return None
        index = device.index if device.index is not None else torch.cuda.current_device()
        if torch.cuda.get_device_capability(index) < (9, 0):
            return None
    for BB in batch_tiles:
        for F in folds:
            grid = (S * math.ceil(H / (16 // F)), math.ceil(B / BB))
            if grid[0] * grid[1] > _multiprocessors(device) or operand_columns * F * BB > 256:
                continue
            for C in chunks:
                launch = meta(16 // F, BB, F, C)
                KS = launch["KP"] // S  # a program's part of K
                operand = operand_columns * BB * KS // C  # one chunk
                if (64 * KS // F + operand) * itemsize <= SHARED_MEMORY:
                    launch["num_warps"] = tuning.get(
                        "num_warps", 8 if warps_from <= KS * BB // C else 4
                    )
                    return {"grid": grid, "meta": launch}
    return None


def _resident_launch(
    H: int, B: int, device: torch.device, dtype: torch.dtype, tuning: Mapping | None = None
) -> dict | None:
    """Grid and block sizes for :func:`~gatedrnn.backends.triton_kernels.resident_forward_kernel`,
    or None where it does not apply (:func:`_resident_sizes`): the program's weight rows (64 × H)
    and one step's state of its batch rows (H × BB) must fit. Where they do not, the folded
    variant (FOLD = 2: 8 units per program, half the weights; this is what puts float32 at
    H = 1024, B ≤ 16 on chip), and elsewhere :func:`gru_forward_kernel` /
    :func:`lstm_forward_kernel`. ``TUNING["resident"] = 0`` turns the resident kernels off,
    ``TUNING["fold"]`` = 1 or 2 asks for one variant only (benchmarks compare them). The state
    is loaded whole each step unless ``TUNING["forward_chunks"]`` (2, 4, 8) asks for chunks
    (written for float32 at H = 1024, B = 64, where it fits folded in 4 chunks; not yet timed on
    a GPU, so not yet chosen by default)."""
    tuning = TUNING if tuning is None else tuning
    if not tuning.get("resident", 1):
        return None
    return _resident_sizes(
        H, B, device, dtype, operand_columns=1, batch_tiles=(16, 32, 64), warps_from=8192,
        chunks=(1,), chunks_key="forward_chunks", tuning=tuning, forward=True,
    )  # fmt: skip


def _resident_backward_launch(
    H: int, B: int, device: torch.device, dtype: torch.dtype, tuning: Mapping | None = None
) -> dict | None:
    """Sizes for :func:`~gatedrnn.backends.triton_kernels.resident_backward_kernel`, or None
    where it does not apply (:func:`_resident_sizes`): the program's weight columns (64 × H) and
    a chunk of one step's gradients of its batch rows (H × 4·BB, whole or in 4 chunks) must fit,
    folded (8 units per program) where unfolded they do not. Not 2 chunks unless asked for
    (``TUNING["chunks"]``): on an H100 at float32 H = 1024, B = 1 two chunks of 64 KB spilled
    registers and took 11.6 µs a step forward + backward, four of 32 KB 8.8–9.1 µs."""
    tuning = TUNING if tuning is None else tuning
    if not tuning.get("resident", 1):
        return None
    return _resident_sizes(
        H, B, device, dtype, operand_columns=4, batch_tiles=(8, 16, 32, 64), warps_from=4096,
        chunks=(1, 4), chunks_key="chunks", tuning=tuning, forward=False,
    )  # fmt: skip


def _ring(
    launch: dict, blocks: int, B: int, like: Tensor, first: Tensor | None = None,
    rounded: bool = False,
) -> tuple:  # fmt: skip
    """A resident kernel's ``RING, RING_PTR`` arguments: for the TMA variant the operand ring's
    descriptor and the ring, two slots of ``grid[1]`` batch tiles × FOLD·blocks blocks of
    min(B, BB) batch rows × KP / FOLD columns, zeros, in ``like``'s dtype and device and the
    layout of :func:`~gatedrnn.backends.triton_kernels._ring_store` (``blocks``: 1 for the
    forward's states, 4 for the backward's gate gradients), loaded in (FOLD·blocks, BB, KC)
    boxes (rows past B out of bounds where B < BB: zeros, not read). ``first`` (B, H) fills
    slot 0's block 0 (the forward's h0), ``rounded`` to TF32 where the product rounds its
    operand. Where the launch does not ask for TMA, ``like`` in both places (unused)."""
    meta = launch["meta"]
    if not meta["TMA"]:
        return like, like
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError as error:  # Triton < 3.3
        import triton

        raise RuntimeError(
            "TUNING['tma'] needs host-side tensor descriptors (triton.tools.tensor_descriptor, "
            f"Triton 3.3 or newer); this is Triton {triton.__version__}"
        ) from error

    F, BB, KP = meta["FOLD"], meta["BB"], meta["KP"]
    R = meta["SPLIT"] * F  # the ring's K ranges; a program reads F of them
    tiles, BT, device = launch["grid"][1], min(B, BB), like.device
    ring = torch.zeros(2 * tiles * R * blocks, BT, KP // R, dtype=like.dtype, device=device)
    if first is not None:
        H = first.shape[1]
        padded = torch.zeros(tiles * BB, KP, dtype=torch.float32, device=device)
        padded[:B, :H] = round_tf32(first.float()) if rounded else first
        states = padded.view(tiles, BB, R, KP // R)[:, :BT].transpose(1, 2)
        ring.view(2, tiles, R, blocks, BT, KP // R)[0, :, :, 0] = states
    box = [F * blocks, BB, KP // R // meta["CHUNKS"]]
    return TensorDescriptor.from_tensor(ring, box), ring


def _exchange(launch: dict, like: Tensor) -> Tensor:
    """A resident kernel's ``XCH`` argument: with SPLIT = 2, float32 room for every program's
    part of the product (4·BH·BB values each; :func:`~gatedrnn.backends.triton_kernels.
    _pair_sum`); else ``like`` (unused)."""
    meta = launch["meta"]
    if meta["SPLIT"] == 1:
        return like
    programs = launch["grid"][0] * launch["grid"][1]
    size = programs * 4 * meta["BH"] * meta["BB"]
    return _empty(size, dtype=torch.float32, device=like.device)


def _max_batch(H: int, device: torch.device) -> int:
    return 64 * (_multiprocessors(device) // math.ceil(H / 64))


def fp32_precision() -> str:
    """How the float32 recurrent product is computed: ``$GATEDRNN_TRITON_FP32`` if set (``tf32``,
    ``tf32x3``: three TF32 products, float32 accuracy; ``ieee``: no tensor cores), else ``tf32``
    where ``torch.backends.cudnn.allow_tf32`` allows it (torch's default, what cuDNN does) and
    ``ieee`` where not."""
    chosen = os.environ.get("GATEDRNN_TRITON_FP32", "")
    if chosen:
        if chosen not in ("tf32", "tf32x3", "ieee"):
            raise ValueError(f"GATEDRNN_TRITON_FP32 must be tf32, tf32x3 or ieee, got {chosen!r}")
        return chosen
    return "tf32" if torch.backends.cudnn.allow_tf32 else "ieee"


def _dot_options(dtype: torch.dtype):
    import triton.language as tl

    if dtype == torch.float32:
        return tl.float32, "ieee" if interpreting() else fp32_precision()
    return {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}[dtype], "ieee"


def _round_tf32(dtype: torch.dtype, prec: str) -> bool:
    """Whether the kernels round their float32 operands to nearest TF32 before the product: the
    tensor cores read a float32 operand's upper 19 bits, truncating it, which measured twice the
    error (2-layer stacks, H=320: 3.5e-4 against 1.0e-4). ``$GATEDRNN_TRITON_TF32_ROUND=0`` turns
    it off, for comparison."""
    return (
        dtype == torch.float32
        and prec == "tf32"
        and os.environ.get("GATEDRNN_TRITON_TF32_ROUND", "1") != "0"
    )


def round_tf32(x: Tensor) -> Tensor:
    """float32 x rounded to nearest TF32 (ties away from zero, as ``cvt.rna.tf32.f32``)."""
    return ((x.view(torch.int32) + 0x1000) & -0x2000).view(torch.float32)


def _weights_for_dot(w: Tensor, prec: str) -> Tensor:
    """The recurrent weights as the kernels read them: contiguous, rounded to TF32 where the
    product is TF32 (:func:`_round_tf32`)."""
    w = w.contiguous()
    return round_tf32(w) if _round_tf32(w.dtype, prec) else w


def _f16_operands(w: Tensor, h0: Tensor | None = None) -> tuple:
    """What a float16 product (``F16``, ``TUNING["f16"]``) reads: the recurrent weights × 2^a in
    float16, a such that the largest magnitude lies in [2^14, 2^15); with ``h0``, HQ, the
    (2, B, H) float16 state the forward's product reads (a slot per step parity), slot 0 =
    h0 × 2^b, b such that max(1, |h0|) ≤ 2^(14 − b), a bound every later state keeps (the GRU's
    h is a convex mix of its last value and a tanh, the LSTM's o·tanh(c)), else None; and SCALE,
    float32: (2^b, 2^−(a+b)) with ``h0``, else (2^−a,). A power of two changes no rounding:
    float16's 10 mantissa bits, rounded to nearest, are TF32's, and the scales keep every value
    inside float16's range (below 65504, and normal down to 2^−28 of the largest). On the device,
    in three launches and without a synchronisation (a CUDA graph captures it): the largest
    magnitudes, then :func:`~gatedrnn.backends.triton_kernels.f16_operands_kernel`."""
    w = w.detach().contiguous().float()
    w16 = torch.empty(w.shape, dtype=torch.float16, device=w.device)
    w_max = torch.linalg.vector_norm(w, float("inf"))
    h = h_max = hq = w  # the kernel's H0, HMAX, HQ: unused without h0
    if h0 is not None:
        h = h0.detach().contiguous().float()
        h_max = torch.linalg.vector_norm(h, float("inf"))
        hq = _empty(2, *h.shape, dtype=torch.float16, device=w.device)
    n_h = 0 if h0 is None else h.numel()
    scale = torch.empty(1 if h0 is None else 2, dtype=torch.float32, device=w.device)
    block = 1024
    grid = (math.ceil(max(w.numel(), n_h) / block),)
    _kernels().f16_operands_kernel[grid](
        w, w16, w_max, h, hq, h_max, scale, w.numel(), n_h, BLOCK=block, HAS_H=h0 is not None
    )
    return w16, (None if h0 is None else hq), scale


def _f16_constants(constants: dict) -> dict:
    """A launch's constants with its product in float16 (already scaled: nothing to round)."""
    import triton.language as tl

    return {**constants, "DOT_DTYPE": tl.float16, "PREC": "ieee", "ROUND": False}


def _forward_operands(
    resident: dict, w_dot: Tensor, w_hh: Tensor, h0: Tensor, y: Tensor, round_dot: bool,
    constants: dict, like: Tensor,
) -> tuple:  # fmt: skip
    """What the resident forward launch reads besides the layer's buffers: the recurrent
    weights, the TMA ring (:func:`_ring`), HQ, SCALE, and its constants. With ``F16`` the
    float16 ones (:func:`_f16_operands`; the ring holds the scaled float16 state), else
    ``w_dot``, the ring over ``y`` and ``constants`` as they are (``like`` for HQ and SCALE)."""
    B = h0.shape[0]
    if resident["meta"]["F16"]:
        w16, hq, scale = _f16_operands(w_hh, h0)
        ring = _ring(resident, 1, B, hq, hq[0])
        return w16, ring, hq, scale, _f16_constants(constants)
    return w_dot, _ring(resident, 1, B, y, h0, round_dot), like, like, constants


def _backward_operands(resident: dict, w_dot: Tensor, dg: Tensor, constants: dict):
    """What the backward launch reads besides the layer's buffers: the recurrent weights, the
    ``RING, RING_PTR`` pair (:func:`_ring`), DMAX, SCALE, and its constants. For a float16
    product (``F16``) the weights × 2^a (:func:`_f16_operands`, from the TF32-rounded ones the
    forward kept: float16 rounds them to the same values), zeros for the rows' maxima, 2^−a,
    and with ``F16 = 2`` the float16 ring or, without TMA, a (B, NG·H) float16 buffer for the
    scaled gradients; else ``w_dot``, the ring in ``dg``'s dtype and ``constants`` as they are
    (DMAX and SCALE unused). ``dg``: the (T, B, NG·H) gradients the kernel writes."""
    T, B, width = dg.shape
    f16 = resident["meta"]["F16"]
    if not f16:
        return w_dot, _ring(resident, 4, B, dg), w_dot, w_dot, constants
    w16, _, w_unscale = _f16_operands(w_dot)
    dmax = torch.zeros(T, B, dtype=torch.float32, device=dg.device)
    like = dg
    if f16 == 2:  # with TMA, the ring's dtype; without, the buffer
        rows = 0 if resident["meta"]["TMA"] else B
        like = _empty(rows, width, dtype=torch.float16, device=dg.device)
    return w16, _ring(resident, 4, B, like), dmax, w_unscale, _f16_constants(constants)


def _lens(lengths: Tensor | None, device: torch.device) -> Tensor:
    if lengths is None:
        return torch.zeros(1, dtype=torch.int32, device=device)
    return lengths.to(device=device, dtype=torch.int32)


def _run(kernel, launch: dict, arrays: tuple, lens: Tensor, T: int, B: int, **constants) -> None:
    """One persistent kernel over the T steps: ``kernel(*arrays, lens, cnt, err, T, B)`` on its
    launch's grid, with the launch's block sizes and these constants; cnt holds a barrier counter
    per batch group (then one per program, for the pairs of a K split), err the fault flag,
    checked after (:func:`_check`)."""
    grid = launch["grid"]
    cnt = torch.zeros(grid[1] * (1 + grid[0]), dtype=torch.int32, device=lens.device)
    err = torch.zeros(1, dtype=torch.int32, device=lens.device)
    args = (*arrays, lens, cnt, err, T, B)
    options = dict(SPIN_LIMIT=SPIN_LIMIT, **constants, **launch["meta"])
    if compile_only():
        kernel.warmup(*args, grid=grid, **options)
        return
    kernel[grid](*args, **options)
    _check(err)


def compile_only() -> bool:
    """Whether ``$GATEDRNN_TRITON_COMPILE_ONLY`` is set (not 0): then the kernels a call would
    launch are compiled into Triton's cache but not run, and what the call returns is garbage.
    For filling the cache ahead of a timed or tested run from many processes at once
    (``scripts/gpu_check.sh``, ``benchmarks/gpu_speed.py``): compiling a resident kernel takes
    seconds, and persistent kernels launched side by side on one GPU could not all be
    resident."""
    return os.environ.get("GATEDRNN_TRITON_COMPILE_ONLY", "0") not in ("", "0")


_BARRIER_FAULT = (
    "a grid barrier of the triton backend timed out: its programs were not all resident on the "
    "GPU at once (another process holding multiprocessors?), so results computed since are wrong; "
    "use backend='cudnn'"
)
_pending: list[tuple[Tensor, torch.cuda.Event]] = []
_pending_lock = threading.Lock()


def _check(err: Tensor) -> None:
    """Raise if a kernel reported a barrier fault. On the GPU this never waits for the kernel:
    the flag is copied to pinned memory behind it and looked at by a later call, once its event
    has completed (a fault surfaces one call late, or at the next check after a synchronize).
    Not while a CUDA graph is being captured (an event of a capture cannot be queried): a graph's
    replays run unchecked."""
    if err.device.type != "cuda":
        if int(err.item()):
            raise RuntimeError(_BARRIER_FAULT)
        return
    if capturing():
        return
    host = torch.empty(1, dtype=torch.int32, pin_memory=True)
    host.copy_(err, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    with _pending_lock:  # layers on several GPUs may run in threads (nn.DataParallel)
        _pending.append((host, event))
        done = [item for item in _pending if item[1].query()]
        for item in done:
            _pending.remove(item)
    if any(int(h.item()) for h, _ in done):
        raise RuntimeError(_BARRIER_FAULT)


def raise_pending_faults() -> None:
    """Wait for every kernel launched so far whose fault flag no call has looked at yet
    (:func:`_check` looks one call late), and raise if one reported a barrier fault: for a
    caller about to keep results (the training loop, before it writes an epoch's checkpoint),
    so that a fault in an epoch's last calls fails the run before its results are kept, not
    after. Nothing to wait for off the GPU, where each launch is checked as it returns."""
    with _pending_lock:
        items = list(_pending)
        _pending.clear()
    for _, event in items:
        event.synchronize()
    if any(int(h.item()) for h, _ in items):
        raise RuntimeError(_BARRIER_FAULT)


def _states(x: Tensor, h0: Tensor, T: int, B: int, H: int, aliased: bool):
    """HS (T+1, B, H) float32 with HS[0] = h0, and Y, the dot's source and the output: HS
    itself when the dtype is float32 and no row ever stops, else a (T+1, B, H) buffer."""
    hs = _empty(T + 1, B, H, dtype=torch.float32, device=x.device)
    hs[0] = h0
    if aliased:
        return hs, hs
    y = _empty(T + 1, B, H, dtype=x.dtype, device=x.device)
    y[0] = h0
    return hs, y


def _weight_grads(
    dg: Tensor, x: Tensor, w_ih: Tensor, y: Tensor, needs: tuple[bool, bool, bool, bool]
) -> tuple[Tensor | None, ...]:
    """dx, dW_ih, dW_hh and the bias gradient (None where not in ``needs``: x, W_ih, W_hh, the
    biases) from the kernels' pre-activation gradients ``dg`` (T, B, G) of a cell whose
    recurrent product reads h_{t−1} whole (the LSTM, the RNN), one GEMM each; ``y`` (T+1, B, H)
    holds h0 and the outputs, zero where a row ended (its gradients are zero there too)."""
    T, B, G = dg.shape
    flat = dg.reshape(T * B, G)
    h_prev = y[:T].reshape(T * B, -1)
    if h_prev.dtype != x.dtype:
        h_prev = h_prev.to(x.dtype)
    dx = torch.mm(flat, w_ih).view_as(x) if needs[0] else None
    dw_ih = torch.mm(flat.t(), x.reshape(T * B, -1)) if needs[1] else None
    dw_hh = torch.mm(flat.t(), h_prev) if needs[2] else None
    db = flat.sum(0) if needs[3] else None
    return dx, dw_ih, dw_hh, db


class _GRU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, grad_enabled):
        T, B, _ = x.shape
        reset_after = spec.reset == "after"
        H = h0.shape[1]
        k = _kernels()
        save = grad_enabled and any(ctx.needs_input_grad)
        tuning = launch_tuning("gru", x.dtype, save, H, B, x.device)
        cfg = _launch(H, B, x.device, x.dtype, tuning)
        dot_dtype, prec = _dot_options(x.dtype)
        xg = project_inputs(x, w_ih, b_ih)
        bhh = (
            b_hh.float()
            if b_hh is not None
            else torch.zeros(3 * H, dtype=torch.float32, device=x.device)
        )
        hs, y = _states(x, h0, T, B, H, x.dtype == torch.float32 and lengths is None)
        gates = _empty(
            T if (save or not reset_after) else 0, B, 4 * H, dtype=torch.float32, device=x.device
        )
        lens = _lens(lengths, x.device)
        w_dot, round_dot = _weights_for_dot(w_hh, prec), _round_tf32(x.dtype, prec)
        resident = _resident_launch(H, B, x.device, x.dtype, tuning) if reset_after else None
        constants = dict(
            H=H, SAVE=save, HAS_LENS=lengths is not None, Y_IS_HS=y is hs, DOT_DTYPE=dot_dtype,
            PREC=prec, ROUND=round_dot,
        )  # fmt: skip
        if resident:
            w, ring, hq, scale, fwd = _forward_operands(
                resident, w_dot, w_hh, h0, y, round_dot, constants, hs
            )
            arrays = (
                xg, w, bhh, hs, hs, y, gates, *ring, _exchange(resident, hs), hq, scale,
            )  # fmt: skip
            _run(
                k.resident_forward_kernel, resident, arrays, lens, T, B, LSTM=False, PEEP=False,
                **fwd,
            )  # fmt: skip
        else:
            arrays = (xg, w_dot, bhh, hs, y, gates)
            _run(
                k.gru_forward_kernel, cfg, arrays, lens, T, B, RESET_AFTER=reset_after, **constants
            )
        out = y[1:]
        # then the inputs, for a double backward (the weights are the module's: no memory)
        ctx.save_for_backward(x, w_ih, w_dot, hs, y, gates, lens, h0, w_hh, b_ih, b_hh)
        ctx.has_bias = b_ih is not None
        ctx.spec, ctx.lengths = spec, lengths
        ctx.launch = (cfg, tuning, dot_dtype, prec, round_dot)
        ctx.has_lens = lengths is not None
        return out, hs[T].to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        x, w_ih, w_dot, hs, y, gates, lens, h0, w_hh, b_ih, b_hh = ctx.saved_tensors
        if backward_by_rerun(grad_out, grad_last):  # create_graph=True, batched: the reference
            inputs = (x, h0, w_ih, w_hh, b_ih, b_hh)
            grads = (grad_out, grad_last)
            return differentiable_backward(
                ctx.spec, inputs, ctx.needs_input_grad, ctx.lengths, grads
            )
        T, B, _ = x.shape
        H = hs.shape[2]
        reset_after = ctx.spec.reset == "after"
        k = _kernels()
        cfg, tuning, dot_dtype, prec, round_dot = ctx.launch  # w_dot: as the forward read it
        dxg = _empty(T, B, 3 * H, dtype=x.dtype, device=x.device)
        dgh = _empty(T, B, 3 * H, dtype=x.dtype, device=x.device) if reset_after else dxg
        dh = grad_last.float().contiguous().clone() if grad_last is not None else hs.new_zeros(B, H)
        dy = grad_out.contiguous() if grad_out is not None else x.new_zeros(T, B, H)
        resident = (
            _resident_backward_launch(H, B, x.device, x.dtype, tuning) if reset_after else None
        )
        constants = dict(
            H=H, HAS_LENS=ctx.has_lens, DOT_DTYPE=dot_dtype, PREC=prec, ROUND=round_dot
        )  # fmt: skip
        if resident:
            w, ring, dmax, scale, back = _backward_operands(resident, w_dot, dxg, constants)
            arrays = (
                dy, hs, hs, gates, w, hs, dxg, dgh, dh, dh, *ring, _exchange(resident, dh), dmax,
                scale,
            )  # fmt: skip
            _run(
                k.resident_backward_kernel, resident, arrays, lens, T, B, LSTM=False, PEEP=False,
                **back,
            )  # fmt: skip
        else:
            arrays = (dy, hs, gates, w_dot, dxg, dgh, dh)
            _run(
                k.gru_backward_kernel, cfg, arrays, lens, T, B, RESET_AFTER=reset_after, **constants
            )
        needs = ctx.needs_input_grad
        h_prev = y[:T].reshape(T * B, H)  # h_{t−1} in the dtype (zero rows where ended: dg = 0)
        if h_prev.dtype != x.dtype:
            h_prev = h_prev.to(x.dtype)
        flat_x = dxg.reshape(T * B, 3 * H)
        flat_h = dgh.reshape(T * B, 3 * H)
        dx = torch.mm(flat_x, w_ih).view_as(x) if needs[0] else None
        dw_ih = torch.mm(flat_x.t(), x.reshape(T * B, -1)) if needs[2] else None
        dw_hh = None
        if needs[3]:
            if reset_after:
                dw_hh = torch.mm(flat_h.t(), h_prev)
            else:
                rh = gates[..., 3 * H :].reshape(T * B, H).to(x.dtype)
                dw_hh = torch.cat(
                    [torch.mm(flat_h[:, : 2 * H].t(), h_prev), torch.mm(flat_h[:, 2 * H :].t(), rh)]
                )
        db_ih = flat_x.sum(0) if ctx.has_bias and needs[4] else None
        db_hh = flat_h.sum(0) if ctx.has_bias and needs[5] else None
        dh0 = dh.to(x.dtype) if needs[1] else None
        return dx, dh0, dw_ih, dw_hh, db_ih, db_hh, None, None, None


class _RNN(torch.autograd.Function):
    """The plain RNN, tanh or ReLU: the streamed kernels at every size (no resident pair)."""

    @staticmethod
    def forward(ctx, x, h0, w_ih, w_hh, b_ih, b_hh, lengths, spec, grad_enabled):
        T, B, _ = x.shape
        H = h0.shape[1]
        save = grad_enabled and any(ctx.needs_input_grad)
        tuning = launch_tuning("rnn", x.dtype, save, H, B, x.device)
        cfg = _launch(H, B, x.device, x.dtype, tuning)
        dot_dtype, prec = _dot_options(x.dtype)
        xg = project_inputs(x, w_ih, None if b_ih is None else b_ih + b_hh)
        hs, y = _states(x, h0, T, B, H, x.dtype == torch.float32 and lengths is None)
        lens = _lens(lengths, x.device)
        w_dot, round_dot = _weights_for_dot(w_hh, prec), _round_tf32(x.dtype, prec)
        relu = spec.nonlinearity == "relu"
        _run(
            _kernels().rnn_forward_kernel, cfg, (xg, w_dot, hs, y), lens, T, B, H=H, RELU=relu,
            SAVE=save, HAS_LENS=lengths is not None, Y_IS_HS=y is hs, DOT_DTYPE=dot_dtype,
            PREC=prec, ROUND=round_dot,
        )  # fmt: skip
        # then the inputs, for a double backward (the weights are the module's: no memory)
        ctx.save_for_backward(x, w_ih, w_dot, hs, y, lens, h0, w_hh, b_ih, b_hh)
        ctx.launch = (cfg, dot_dtype, prec, round_dot)
        ctx.has_lens, ctx.has_bias = lengths is not None, b_ih is not None
        ctx.spec, ctx.lengths = spec, lengths
        return y[1:], hs[T].to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out, grad_last):
        x, w_ih, w_dot, hs, y, lens, h0, w_hh, b_ih, b_hh = ctx.saved_tensors
        if backward_by_rerun(grad_out, grad_last):  # create_graph=True, batched: the reference
            inputs = (x, h0, w_ih, w_hh, b_ih, b_hh)
            grads = (grad_out, grad_last)
            return differentiable_backward(
                ctx.spec, inputs, ctx.needs_input_grad, ctx.lengths, grads
            )
        T, B, _ = x.shape
        H = hs.shape[2]
        cfg, dot_dtype, prec, round_dot = ctx.launch  # w_dot: as the forward read it
        da = _empty(T, B, H, dtype=x.dtype, device=x.device)
        dh = grad_last.float().contiguous().clone() if grad_last is not None else hs.new_zeros(B, H)
        dy = grad_out.contiguous() if grad_out is not None else x.new_zeros(T, B, H)
        _run(
            _kernels().rnn_backward_kernel, cfg, (dy, hs, w_dot, da, dh), lens, T, B, H=H,
            RELU=ctx.spec.nonlinearity == "relu", HAS_LENS=ctx.has_lens, DOT_DTYPE=dot_dtype,
            PREC=prec, ROUND=round_dot,
        )  # fmt: skip
        needs = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = _weight_grads(
            da, x, w_ih, y, (needs[0], needs[2], needs[3], ctx.has_bias and (needs[4] or needs[5]))
        )
        dh0 = dh.to(x.dtype) if needs[1] else None
        return dx, dh0, dw_ih, dw_hh, db, db, None, None, None


class _LSTM(torch.autograd.Function):
    """The LSTM, with peepholes where ``w_peep`` (p_i|p_f|p_o, 3H) is given; the resident
    kernels where they fit, with or without."""

    @staticmethod
    def forward(ctx, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep, lengths, spec, grad_enabled):
        T, B, _ = x.shape
        H = h0.shape[1]
        k = _kernels()
        save = grad_enabled and any(ctx.needs_input_grad)
        tuning = launch_tuning("lstm", x.dtype, save, H, B, x.device)
        cfg = _launch(H, B, x.device, x.dtype, tuning)
        dot_dtype, prec = _dot_options(x.dtype)
        xg = project_inputs(x, w_ih, None if b_ih is None else b_ih + b_hh)
        hs, y = _states(x, h0, T, B, H, x.dtype == torch.float32 and lengths is None)
        cs = _empty(T + 1, B, H, dtype=torch.float32, device=x.device)
        cs[0] = c0
        gates = _empty(T if save else 0, B, 4 * H, dtype=torch.float32, device=x.device)
        lens = _lens(lengths, x.device)
        w_dot, round_dot = _weights_for_dot(w_hh, prec), _round_tf32(x.dtype, prec)
        peep = w_peep is not None
        pp = w_peep.float().contiguous() if peep else cs  # cs: a pointer never read
        resident = _resident_launch(H, B, x.device, x.dtype, tuning)
        constants = dict(
            H=H, SAVE=save, HAS_LENS=lengths is not None, DOT_DTYPE=dot_dtype, PREC=prec,
            ROUND=round_dot,
        )  # fmt: skip
        if resident:
            w, ring, hq, scale, fwd = _forward_operands(
                resident, w_dot, w_hh, h0, y, round_dot, constants, hs
            )
            arrays = (  # BHH: the peepholes
                xg, w, pp, hs, cs, y, gates, *ring, _exchange(resident, hs), hq, scale,
            )  # fmt: skip
            _run(
                k.resident_forward_kernel, resident, arrays, lens, T, B, LSTM=True, PEEP=peep,
                Y_IS_HS=y is hs, **fwd,
            )  # fmt: skip
        else:
            arrays = (xg, w_dot, pp, hs, cs, y, gates)
            _run(k.lstm_forward_kernel, cfg, arrays, lens, T, B, PEEP=peep, **constants)
        # then the inputs, for a double backward (the weights are the module's: no memory)
        ctx.save_for_backward(x, w_ih, w_dot, y, cs, gates, lens, h0, c0, w_hh, b_ih, b_hh, w_peep)
        ctx.launch = (cfg, tuning, dot_dtype, prec, round_dot)
        ctx.has_lens, ctx.has_bias = lengths is not None, b_ih is not None
        ctx.spec, ctx.lengths = spec, lengths
        return y[1:], hs[T].to(x.dtype), cs[T].to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out, grad_h, grad_c):
        x, w_ih, w_dot, y, cs, gates, lens, h0, c0, w_hh, b_ih, b_hh, w_peep = ctx.saved_tensors
        if backward_by_rerun(grad_out, grad_h, grad_c):  # create_graph=True, batched: reference
            inputs = (x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_peep)
            grads = (grad_out, grad_h, grad_c)
            return differentiable_backward(
                ctx.spec, inputs, ctx.needs_input_grad, ctx.lengths, grads
            )
        T, B, _ = x.shape
        H = cs.shape[2]
        k = _kernels()
        cfg, tuning, dot_dtype, prec, round_dot = ctx.launch  # w_dot: as the forward read it
        dg = _empty(T, B, 4 * H, dtype=x.dtype, device=x.device)
        dh = grad_h.float().contiguous().clone() if grad_h is not None else cs.new_zeros(B, H)
        dc = grad_c.float().contiguous().clone() if grad_c is not None else cs.new_zeros(B, H)
        dy = grad_out.contiguous() if grad_out is not None else x.new_zeros(T, B, H)
        peep = w_peep is not None
        pp = w_peep.float().contiguous() if peep else cs  # cs: a pointer never read
        resident = _resident_backward_launch(H, B, x.device, x.dtype, tuning)
        constants = dict(
            H=H, HAS_LENS=ctx.has_lens, DOT_DTYPE=dot_dtype, PREC=prec, ROUND=round_dot
        )  # fmt: skip
        if resident:
            w, ring, dmax, scale, back = _backward_operands(resident, w_dot, dg, constants)
            arrays = (
                dy, cs, cs, gates, w, pp, dg, dg, dh, dc, *ring, _exchange(resident, dh), dmax,
                scale,
            )  # fmt: skip
            _run(
                k.resident_backward_kernel, resident, arrays, lens, T, B, LSTM=True, PEEP=peep,
                **back,
            )  # fmt: skip
        else:
            arrays = (dy, cs, gates, w_dot, pp, dg, dh, dc)
            _run(k.lstm_backward_kernel, cfg, arrays, lens, T, B, PEEP=peep, **constants)
        needs = ctx.needs_input_grad
        dx, dw_ih, dw_hh, db = _weight_grads(
            dg, x, w_ih, y, (needs[0], needs[3], needs[4], ctx.has_bias and (needs[5] or needs[6]))
        )
        dpeep = None
        if peep and needs[7]:  # Σ over steps and rows of ∂a_i ⊙ c_{t−1}, ∂a_f ⊙ c_{t−1}, ∂a_o ⊙ c_t
            seen = (cs[:T], cs[:T], cs[1:])  # finished rows: their ∂a are zero
            dpeep = torch.cat(
                [
                    torch.einsum("tbh,tbh->h", dg[..., j * H : (j + 1) * H].float(), c)
                    for j, c in zip((0, 1, 3), seen, strict=True)
                ]
            ).to(w_peep.dtype)
        return (
            dx, dh.to(x.dtype) if needs[1] else None, dc.to(x.dtype) if needs[2] else None,
            dw_ih, dw_hh, db, db, dpeep, None, None, None,
        )  # fmt: skip


def kernel_cell(
    spec: CellSpec, weights: Mapping[str, Tensor]
) -> tuple[CellSpec, Mapping[str, Tensor]]:
    """The cell whose kernels compute ``spec``, and one layer direction's weights in its layout.

    Two variants are other cells with tied weights, exactly: the MGU is the reset-before GRU
    with r = f and z = 1 − f = σ(−a_f), so its blocks f|n run as f|−f|n; the coupled LSTM
    (f = 1 − i = σ(−a_i)) is the LSTM with blocks i|−i|g|o and peepholes p_i|−p_i|p_o. The
    copies are torch operations, so autograd adds the tied blocks' gradients back into the
    module's parameters. Every other cell is returned as it is.
    """
    if spec.kind == "mgu":
        kernel = make_spec("gru", reset="before")
    elif spec.kind == "lstm" and spec.coupled:
        kernel = make_spec("lstm", peepholes=spec.peepholes)
    else:
        return spec, weights

    def tied(name: str, t: Tensor) -> Tensor:
        first, *rest = t.chunk(spec.num_peepholes if name == "weight_peep" else spec.gate_blocks)
        return torch.cat([first, -first, *rest])

    return kernel, {name: tied(name, t) for name, t in weights.items()}


def _measured() -> dict:
    """The auto table: {"devices": {device name: [row, ...]}}, each row {kind, dtype, grad, H, B,
    ratio} with ratio = our time over cuDNN's at that size (below 1: ours faster; None: ours
    failed there), and where a sweep found a launch variant faster than the launchers' own
    choice, ``tuning``: its overrides (:data:`TUNING`'s keys). The shipped table, with this
    machine's own rows over it (measured here by :mod:`gatedrnn.backends.gpu_tune`). Tests put
    their tables here; the files are read once, until :func:`table_changed`."""
    return _read_tables()


@functools.cache
def _read_tables() -> dict:
    try:
        table = json.loads(TABLE_PATH.read_text())
    except (OSError, ValueError):
        table = {}
    devices = table.setdefault("devices", {})
    for name, rows in _tune().read_local()["devices"].items():
        merged = {row_key(row): row for row in devices.get(name, [])}
        merged.update((row_key(row), row) for row in rows)
        devices[name] = list(merged.values())
    return table


def row_key(row: Mapping) -> tuple:
    """What an auto table row measured: (kind, dtype, grad, H, B); one row per key and device."""
    return row["kind"], row["dtype"], row["grad"], row["H"], row["B"]


def _tune():
    from gatedrnn.backends import gpu_tune

    return gpu_tune


def _device_name(device) -> str:
    return torch.cuda.get_device_name(device) if torch.cuda.is_available() else ""


def dtype_name(dtype: torch.dtype) -> str:
    """How the auto table names a dtype: ``torch.bfloat16`` → ``"bfloat16"``."""
    return str(dtype).removeprefix("torch.")


def _rows(kind: str, dtype: torch.dtype, grad: bool, device) -> list[dict]:
    """The auto table's rows of this cell, dtype and direction on this GPU model (none for
    float32 in another precision than TF32, the one measured)."""
    if dtype == torch.float32 and fp32_precision() != "tf32":
        return []
    return [
        row
        for row in _measured().get("devices", {}).get(_device_name(device), [])
        if row["kind"] == kind and row["dtype"] == dtype_name(dtype)
        and row["grad"] == grad
    ]  # fmt: skip


def _nearest_row(kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device) -> dict | None:
    """The auto table's row measured nearest (H, B) on this GPU model, or None."""
    rows = _rows(kind, dtype, grad, device)
    if not rows:
        return None
    return min(rows, key=lambda r: (abs(math.log2(r["H"] / H)), abs(math.log2(r["B"] / max(B, 1)))))


def _exact_row(kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device) -> dict | None:
    """The auto table's row measured at exactly (H, B) on this GPU model, or None."""
    return next((r for r in _rows(kind, dtype, grad, device) if (r["H"], r["B"]) == (H, B)), None)


def measured_ratio(
    kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device
) -> float | None:
    """Our time over cuDNN's at the measured size nearest (H, B) on this GPU model (inf where
    ours failed there), or None (float32 was measured with TF32 products: another precision
    counts as unmeasured)."""
    row = _nearest_row(kind, dtype, grad, H, B, device)
    if row is None:
        return None
    return math.inf if row["ratio"] is None else row["ratio"]


def launch_tuning(
    kind: str, dtype: torch.dtype, grad: bool, H: int, B: int, device: torch.device
) -> Mapping:
    """The launch overrides one layer call runs with (forward and backward alike): :data:`TUNING`
    where it sets anything (tuning runs; ``{"table": 0}`` asks for the launchers' own choices),
    else the variant a sweep measured fastest at the nearest size on this GPU model (the auto
    table row's ``tuning``; ``grad``: the row of forward + backward, else of the forward alone),
    where it launches here as well as the launchers' own choice does; else none."""
    if TUNING:
        return dict(TUNING)
    # per call and layer direction: remembered (the table's lookup and the launch checks cost
    # 10–35 µs of Python), keyed by all they read that may change but the table itself, after
    # whose changes table_changed() forgets them
    key = (kind, dtype, grad, H, B, device, fp32_precision() if dtype == torch.float32 else "")
    if key not in _tunings:
        row = _nearest_row(kind, dtype, grad, H, B, device)
        tuning = row.get("tuning", {}) if row else {}
        if tuning and not _launches_here(tuning, H, B, device, dtype, grad):
            tuning = {}
        _tunings[key] = tuning
    return _tunings[key]


_tunings: dict[tuple, Mapping] = {}


def table_changed() -> None:
    """Forget what was read from the auto tables (:func:`_read_tables`, :func:`launch_tuning`'s
    choices): after this machine's table was written."""
    _read_tables.cache_clear()
    _tunings.clear()


def _launches_here(
    tuning: Mapping, H: int, B: int, device: torch.device, dtype: torch.dtype, grad: bool
) -> bool:
    """Whether a table's variant runs every kernel the launchers' own choice would run on chip
    at this size (a variant measured at the nearest size may not fit this one), and TMA only
    where Triton has host-side tensor descriptors."""
    if not tuning.get("resident", 1):
        return _launch(H, B, device, dtype, tuning) is not None
    if tuning.get("tma") and not _tensor_descriptors():
        return False
    launchers = (_resident_launch, _resident_backward_launch) if grad else (_resident_launch,)
    try:
        return all(
            launcher(H, B, device, dtype, tuning) is not None
            or launcher(H, B, device, dtype, {}) is None
            for launcher in launchers
        )
    except ValueError:  # a split where its pairs cannot run at once
        return False


def capturing() -> bool:
    """Whether the current CUDA stream is capturing a CUDA graph (False without CUDA)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _on_device(device: torch.device):
    """The context in which kernels run on ``device``: Triton launches on the *current* CUDA
    device and its current stream, whatever the tensors' device, so a layer on cuda:1 called
    while cuda:0 is current would hand device 1's memory to a launch on device 0 (the backward
    needs nothing: autograd runs it with its device current)."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


@functools.cache
def _tensor_descriptors() -> bool:
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: F401
    except ImportError:
        return False
    return True


_INTERPRETER = " (TRITON_INTERPRET=1 runs its kernels in Triton's CPU interpreter, for tests)"


class TritonBackend:
    """Persistent Triton kernels for the GRU, the LSTM and the plain RNN on CUDA GPUs (the
    variants cuDNN lacks too: the reset-before GRU, peepholes, the coupled gate, the MGU)."""

    name = "triton"
    twice_differentiable = True  # by rerunning the reference loop (differentiable_backward)
    between_graphs = True  # under torch.compile: run eagerly, so auto passes it over there

    # torch.compile runs these as they are, between graphs: they read the GPU's properties, the
    # measured tables and the environment, and keep their answers in caches
    @run_eagerly
    def unsupported(self, config: LayerConfig, input: Tensor) -> str | None:
        spec = config.spec
        if spec.kind not in ("rnn", "gru", "lstm", "mgu"):
            return (
                f"it has kernels for the RNN, the GRU, the LSTM and the MGU only, not {spec.kind}"
            )
        if config.proj_size:
            return "its LSTM kernels have no projection (proj_size)"
        if input.device.type == "cpu" and not interpreting():  # the common refusal, first
            return f"it runs on CUDA GPUs, got a cpu input{_INTERPRETER}"
        reason = untraceable("persistent kernels are Triton launches")
        if reason is not None:
            return reason
        if without_data(input):  # FakeTensorMode, the meta device
            return (
                "its kernels launch on real GPU memory, not fake or meta tensors (cudnn and "
                "reference take those, and auto picks one)"
            )
        if input.dtype not in (torch.float32, torch.bfloat16, torch.float16):
            return f"it computes in float32, bfloat16 or float16, got {input.dtype}"
        T, B = input.shape[:2]
        if (T + 1) * B * 4 * config.hidden_size >= 2**31:
            return "its kernels index with 32-bit offsets: (T+1)·B·4H must stay below 2^31"
        if input.device.type != "cuda" and not interpreting():
            return f"it runs on CUDA GPUs, got a {input.device.type} input{_INTERPRETER}"
        if _launch(config.hidden_size, B, input.device, input.dtype) is None:
            most = _max_batch(config.hidden_size, input.device)
            return (
                f"batch {B} is too large for one resident wave of its programs at hidden size "
                f"{config.hidden_size} (at most {most} on this GPU)"
            )
        return triton_unavailable()

    @run_eagerly
    def auto_declines(self, config: LayerConfig, input: Tensor) -> str | None:
        if input.device.type != "cuda":
            return "the interpreter is for tests, far slower than the CPU backends"
        if config.spec.torch_lacks is not None:
            # cuDNN cannot run this cell (the table compares the standard cells with it): what
            # is left is the reference loop, a few launches per step, slower than ours anywhere
            return None
        size = (
            config.spec.kind, input.dtype, torch.is_grad_enabled(), config.hidden_size,
            input.shape[1], input.device,
        )  # fmt: skip
        _tune().ensure(*size)
        ratio = measured_ratio(*size)
        if ratio is None:
            return (
                "not measured against cuDNN on this GPU (benchmarks/gpu_speed.py, or "
                "GATEDRNN_TRITON_TUNE=1 to measure each size on first use)"
            )
        if ratio > AUTO_MARGIN:
            return (
                f"not measured at least {1 - AUTO_MARGIN:.0%} faster than cuDNN at the nearest "
                f"size (our time ratio {ratio:.2f})"
            )
        return None

    # and this: its kernels are persistent launches with a grid barrier that no compiler may
    # re-grid, fuse or autotune
    @run_eagerly
    def forward(
        self,
        config: LayerConfig,
        input: Tensor,
        lengths: Tensor | None,
        hx: tuple[Tensor, ...],
        weights: Sequence[Mapping[str, Tensor]],
        training: bool,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        with _on_device(input.device):
            return self._forward(config, input, lengths, hx, weights, training)

    def _forward(self, config, input, lengths, hx, weights, training):
        spec = config.spec
        if input.device.type == "cuda" and spec.torch_lacks is None:
            _tune().ensure(
                spec.kind, input.dtype, torch.is_grad_enabled(), config.hidden_size,
                input.shape[1], input.device,
            )  # fmt: skip

        def direction(x, state, w):
            kernel, w = kernel_cell(spec, w)
            x, state, args = fused_arguments(x, state, w)
            # inside forward grad mode is always off, and needs_input_grad ignores it: under
            # no_grad nothing is saved for a backward only when told so
            grad_enabled = torch.is_grad_enabled()
            if kernel.kind == "lstm":
                peep = w.get("weight_peep")
                out, h, c = _LSTM.apply(x, *state, *args, peep, lengths, kernel, grad_enabled)
                return out, (h, c)
            function = _RNN if kernel.kind == "rnn" else _GRU
            out, h = function.apply(x, state[0], *args, lengths, kernel, grad_enabled)
            return out, (h,)

        return run_stack(config, input, lengths, hx, weights, training, direction)
