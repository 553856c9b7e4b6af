"""Check the triton kernels against the float64 reference at a real size without a GPU: under
Triton's interpreter, on the grid the launchers plan for a GPU with this many multiprocessors,
every program at once in threads (``tests/backends/concurrent.py``: the barriers, the TMA ring,
the K split's pairs and the float16 backward's gathered maxima are real). Slow (minutes per cell
at H = 1024), so not a test; prints each cell's relative errors and the launches it ran.

    TRITON_INTERPRET=1 python scripts/interpreted_grid_check.py --H 1024 --B 8 --T 8 \
        --tuning '{"f16": 1}'
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "src")]
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
from tests.backends import concurrent  # noqa: E402
from tests.backends import test_triton as checks  # noqa: E402
from tests.interpreter import patch_once_per_launch  # noqa: E402

from gatedrnn.backends import gpu  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--H", type=int, default=1024)
    parser.add_argument("--B", type=int, default=8)
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--I", type=int, default=32, help="input size")
    parser.add_argument("--sms", type=int, default=132, help="multiprocessors (H100, H200: 132)")
    parser.add_argument(
        "--cells",
        default="gru,lstm",
        help="of gru, gru-before, lstm, lstm-peepholes, lstm-coupled, lstm-coupled-peepholes, mgu, "
        "rnn, rnn-relu",
    )
    parser.add_argument("--tuning", default="{}", help="gpu.TUNING overrides, as JSON")
    args = parser.parse_args()
    reason = concurrent.unsupported()
    if reason:
        sys.exit(f"cannot run the programs concurrently here: {reason}")
    patch_once_per_launch()  # as the test suite runs it: the same kernels, faster
    gpu.POISON = True
    gpu.TUNING.update(json.loads(args.tuning))
    cpu = torch.device("cpu")
    with concurrent.concurrent_programs(args.sms, jitter=0.0, pause=0.0):
        for launcher in (gpu._resident_launch, gpu._resident_backward_launch, gpu._launch):
            print(launcher.__name__, launcher(args.H, args.B, cpu, torch.float32), flush=True)
        for cell in args.cells.split(","):
            start = time.perf_counter()
            errors = checks.check(
                cell, torch.float32, T=args.T, B=args.B, I=args.I, H=args.H, seed=args.H + args.B
            )
            shown = {what: f"{error:.1e}" for what, error in errors.items()}
            print(cell, f"{time.perf_counter() - start:.0f} s", shown, flush=True)


if __name__ == "__main__":
    main()
