"""Bidirectional layers on the ``cpu`` backend: the two directions' time loops side by side, one
thread each (what the backend does where :func:`gatedrnn.backends.cpu._side_by_side` says so),
against one after the other on all threads (what it did before), and both against torch.nn's
bidirectional layer with the same weights. The three are interleaved within each repeat,
each timed call after an untimed one of the same, the median after warm-up reported; writes
JSON and prints a table (ratios < 1 are faster). Nothing here is asserted in CI.

    python benchmarks/bidirectional_speed.py                      # GRU, LSTM; H 128, 256, 512
    python benchmarks/bidirectional_speed.py --cells gru --hidden 64 --batch 1,8 --repeats 5
    python benchmarks/bidirectional_speed.py --compile --hidden 64,128 --batch 1,2,8  # Inductor
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from unittest import mock

import torch
from rich import box
from rich.console import Console
from rich.table import Table

from gatedrnn.atomic import write_json
from gatedrnn.backends import cpu
from gatedrnn.bench import OUR_LAYERS, TORCH_LAYERS, _step, environment


def _apart(run):
    """``run`` with the directions one after the other."""

    def apart() -> None:
        with mock.patch.object(cpu, "_side_by_side", lambda *_: False):
            run()

    return apart


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gru,lstm")
    parser.add_argument("--hidden", default="128,256,512")
    parser.add_argument("--batch", default="1,8,32")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--compile", action="store_true", help="both sides under torch.compile (Inductor)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "bidirectional_speed.json")
    )
    args = parser.parse_args()
    rows = []
    for cell in args.cells.split(","):
        for hidden in map(int, args.hidden.split(",")):
            for batch in map(int, args.batch.split(",")):
                torch.manual_seed(0)
                theirs = TORCH_LAYERS[cell](hidden, hidden, bidirectional=True)
                ours = OUR_LAYERS[cell](hidden, hidden, bidirectional=True, backend="cpu")
                ours.load_state_dict(theirs.state_dict())
                if args.compile:  # (the rule is asked when the operator runs: _apart holds)
                    torch._dynamo.reset()  # a fresh cache per case: no recompile limit
                    theirs, ours = torch.compile(theirs), torch.compile(ours)
                x = torch.randn(args.steps, batch, hidden)
                for mode in ("forward", "forward+backward"):
                    backward = mode == "forward+backward"
                    side = _step(ours, x, backward)
                    fns = {"torch.nn": _step(theirs, x, backward), "side by side": side,
                           "one after the other": _apart(side)}  # fmt: skip
                    times: dict[str, list[float]] = {name: [] for name in fns}
                    for r in range(args.warmup + args.repeats):
                        for name in fns:
                            # each timed call follows an untimed one of its own: whichever ran
                            # right after torch.nn's GRU at H = 32 took ~0.5 ms longer
                            fns[name]()
                            start = time.perf_counter()
                            fns[name]()
                            if r >= args.warmup:
                                times[name].append((time.perf_counter() - start) * 1e3)
                    medians = {name: statistics.median(t) for name, t in times.items()}
                    rows.append({"cell": cell, "hidden": hidden, "batch": batch, "mode": mode,
                                 "median_ms": medians, "times_ms": times})  # fmt: skip
    table = Table(
        title=f"Bidirectional layers, cpu backend{', compiled' if args.compile else ''} "
        f"(T={args.steps}, median of {args.repeats}, "
        f"{torch.get_num_threads()} threads); ratios < 1 are faster",
        box=box.SIMPLE_HEAD,
    )
    for column in ("cell", "H", "B", "mode", "torch ms", "apart ms", "side ms", "apart/torch",
                   "side/torch", "apart/side"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("cell", "mode") else "right")
    for row in rows:
        m = row["median_ms"]
        torch_ms, apart, side = m["torch.nn"], m["one after the other"], m["side by side"]
        table.add_row(
            row["cell"], str(row["hidden"]), str(row["batch"]),
            row["mode"].replace("forward", "fwd").replace("backward", "bwd"),
            f"{torch_ms:.2f}", f"{apart:.2f}", f"{side:.2f}", f"{apart / torch_ms:.2f}",
            f"{side / torch_ms:.2f}", f"{apart / side:.2f}",
        )  # fmt: skip
    Console(width=max(Console().width, 120)).print(table)
    env = environment(bidirectional=True) | {"compile": args.compile}
    write_json(args.out, {"environment": env, "results": rows})
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
