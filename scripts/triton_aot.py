"""Compile the triton backend's kernels for a GPU target without a GPU and print each variant's
registers, spills (stack bytes) and shared memory, from cuobjdump's resource report; with
--sass DIR also write the SASS. Free checks before spending device time:

    TRITON_INTERPRET=0 python scripts/triton_aot.py --H 1024 --BB 16 --BH 16
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gatedrnn.backends import triton_kernels as k

POINTERS = {"LENS": "i32", "CNT": "i32", "ERR": "i32", "HQ": "fp16"}
# the layer's dtype; the rest float32
LOW = {"XG", "W", "Y", "DY", "DXG", "DGH", "DG", "DA", "RING_PTR"}


def build(fn, consts, dtype, warps, stages, sass_dir):
    signature = {}
    for name in fn.arg_names:
        if name in consts:
            signature[name] = "constexpr"
        elif name in ("T", "B"):
            signature[name] = "i32"
        elif name in ("W", "RING_PTR") and consts.get("F16"):
            # the float32 layer's weights, scaled, in float16; the rings (or F16 = 2's buffer)
            signature[name] = "*fp16"
        elif name == "RING" and consts.get("TMA"):
            # the TMA ring's descriptor: boxes of (FOLD·blocks, BB, KP / SPLIT / FOLD / CHUNKS)
            blocks = consts["FOLD"] * (4 if fn is k.resident_backward_kernel else 1)
            columns = consts["KP"] // consts["SPLIT"] // consts["FOLD"] // consts["CHUNKS"]
            ring = "fp16" if consts.get("F16") else dtype
            signature[name] = f"tensordesc<{ring}[{blocks}, {consts['BB']}, {columns}]>"
        else:
            signature[name] = "*" + POINTERS.get(name, dtype if name in LOW else "fp32")
    constexprs = {(fn.arg_names.index(c),): v for c, v in consts.items()}
    # pointers 16-byte aligned, as the launcher specialises them: without this hint every load
    # compiles to scalar accesses and the report says nothing about the real kernel
    aligned = {
        (i,): [["tt.divisibility", 16]]
        for i, n in enumerate(fn.arg_names)
        if signature[n].startswith("*")
    }
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=aligned)
    options = {"num_warps": warps, "num_stages": stages}
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
    cuobjdump = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        usage = subprocess.run([cuobjdump, "-res-usage", f.name], capture_output=True, text=True)
        line = next(x.strip() for x in usage.stdout.splitlines() if "REG" in x)
        if sass_dir:
            sass = subprocess.run([cuobjdump, "-sass", f.name], capture_output=True, text=True)
            name = f"{fn.__name__}_{dtype}_{consts.get('RESET_AFTER', consts.get('LSTM', ''))}.sass"
            Path(sass_dir, name).write_text(sass.stdout)
    regs, stack = line.split()[0], line.split()[1]
    shown = ("RESET_AFTER", "SAVE", "LSTM", "BB", "FOLD", "SPLIT", "CHUNKS", "SEPARATE", "TMA")
    shown += ("F16", "PEEP", "RELU")
    flags = {k_: v for k_, v in consts.items() if k_ in shown}
    print(f"{fn.__name__:22} {dtype} {flags} {regs} {stack} smem {compiled.metadata.shared}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--H", type=int, default=1024)
    parser.add_argument("--BB", type=int, default=16)
    parser.add_argument("--B", type=int, default=16, help="batch, for the resident kernel's sizes")
    parser.add_argument(
        "--fold", type=int, default=0, help="the resident kernels' FOLD (1, 2; 0: the launcher's)"
    )
    parser.add_argument(
        "--chunks", type=int, default=0, help="the resident backward's CHUNKS (0: the launcher's)"
    )
    parser.add_argument(
        "--forward-chunks", type=int, default=0, help="the resident forward's CHUNKS (0: 1)"
    )
    parser.add_argument(
        "--separate", action="store_true", help="the resident kernels' chunk products separate"
    )
    parser.add_argument(
        "--tma", action="store_true", help="the resident kernels' operand read by TMA from a ring"
    )
    parser.add_argument(
        "--split", action="store_true", help="the resident kernels' K split between two programs"
    )
    parser.add_argument(
        "--f16",
        type=int,
        nargs="?",
        const=1,
        default=0,
        choices=(0, 1, 2),
        help="the float32 resident kernels' products in float16 (TUNING['f16']: 1, or 2 with "
        "the backward's gradients stored in float16)",
    )
    parser.add_argument("--resident-only", action="store_true", help="skip the streamed kernels")
    parser.add_argument(
        "--no-save",
        action="store_true",
        help="the forward kernels as calls without gradients run them (nothing stored for a "
        "backward)",
    )
    parser.add_argument("--BH", type=int, default=16)
    parser.add_argument("--BK", type=int, default=128)
    parser.add_argument("--warps", type=int, default=4)
    parser.add_argument("--stages", type=int, default=3)
    parser.add_argument("--sass", default="")
    args = parser.parse_args()
    if args.sass:
        os.makedirs(args.sass, exist_ok=True)
    tuning = {
        "fold": args.fold, "chunks": args.chunks, "forward_chunks": args.forward_chunks,
        "separate": int(args.separate), "tma": int(args.tma), "split": 2 if args.split else 0,
        "f16": args.f16,
    }  # fmt: skip
    save = not args.no_save
    for dtype, dot in (("fp32", tl.float32), ("bf16", tl.bfloat16)):
        common = dict(
            H=args.H, BH=args.BH, BB=args.BB, BK=args.BK, HAS_LENS=False, DOT_DTYPE=dot,
            PREC=os.environ.get("PREC", "tf32") if dtype == "fp32" else "ieee",
            ROUND=dtype == "fp32" and os.environ.get("PREC", "tf32") == "tf32",
            SPIN_LIMIT=1 << 20,
        )  # fmt: skip
        jobs = [
            (k.gru_forward_kernel, dict(RESET_AFTER=True, SAVE=save, Y_IS_HS=dtype == "fp32")),
            (k.gru_forward_kernel, dict(RESET_AFTER=False, SAVE=save, Y_IS_HS=False)),
            (k.gru_backward_kernel, dict(RESET_AFTER=True)),
            (k.gru_backward_kernel, dict(RESET_AFTER=False)),
            (k.lstm_forward_kernel, dict(SAVE=save, PEEP=False)),
            (k.lstm_forward_kernel, dict(SAVE=save, PEEP=True)),
            (k.lstm_backward_kernel, dict(PEEP=False)),
            (k.lstm_backward_kernel, dict(PEEP=True)),
            (k.rnn_forward_kernel, dict(RELU=False, SAVE=save, Y_IS_HS=dtype == "fp32")),
            (k.rnn_forward_kernel, dict(RELU=True, SAVE=save, Y_IS_HS=False)),
            (k.rnn_backward_kernel, dict(RELU=False)),
            (k.rnn_backward_kernel, dict(RELU=True)),
        ]
        for fn, extra in [] if args.resident_only else jobs:
            build(fn, {**common, **extra}, dtype, args.warps, args.stages, args.sass)
        # the resident kernels, with the launcher's sizes for this H and batch (sm_90)
        for fn, launcher, extra in (
            (k.resident_forward_kernel, "_resident_launch", {"SAVE": save, "Y_IS_HS": False}),
            (k.resident_backward_kernel, "_resident_backward_launch", {}),
        ):
            launch = resident_launch(launcher, args.H, args.B, dtype, tuning)
            if launch is None:
                print(f"{fn.__name__} {dtype} does not fit at H={args.H}, B={args.B}")
                continue
            for lstm, peep in ((False, False), (True, False), (True, True)):
                keys = ("H", "HAS_LENS", "DOT_DTYPE", "PREC", "SPIN_LIMIT")
                consts = {key: common[key] for key in keys}
                consts.update(launch["meta"], LSTM=lstm, PEEP=peep, ROUND=common["ROUND"], **extra)
                if consts.get("F16"):  # as gpu._forward_operands launches it
                    consts.update(DOT_DTYPE=tl.float16, PREC="ieee", ROUND=False)
                warps = consts.pop("num_warps")
                build(fn, consts, dtype, warps, args.stages, args.sass)


def resident_launch(launcher, H, B, dtype, tuning=None):
    """gpu's launcher for a resident kernel on a 132-multiprocessor sm_90 GPU, without one, with
    the ``TUNING`` overrides in ``tuning`` that are set (non-zero)."""
    from unittest import mock

    import torch

    from gatedrnn.backends import gpu

    torch_dtype = torch.float32 if dtype == "fp32" else torch.bfloat16
    with (
        mock.patch.object(gpu, "_sm_count", lambda index: 132),
        mock.patch.object(torch.cuda, "get_device_capability", lambda index: (9, 0)),
        mock.patch.object(torch.cuda, "current_device", lambda: 0),
        mock.patch.object(gpu, "fp32_precision", lambda: "tf32"),
        mock.patch.dict(gpu.TUNING, {key: v for key, v in (tuning or {}).items() if v}),
    ):
        return getattr(gpu, launcher)(H, B, torch.device("cuda", 0), torch_dtype)


if __name__ == "__main__":
    main()
