"""Small calls, where the fixed cost of a call is most of its time: our layers (``backend="auto"``
unless ``--backend`` says otherwise) and cells against torch.nn's with the same weights, at
batch 1 and a few time steps (a decoder fed step by step, a streaming model, a short sentence).
Each round times ``--calls`` calls of one side and then of the other, the order alternating
between rounds; the median over rounds of the time per call is reported. Writes JSON and prints
a table (ratio < 1: ours is faster). Nothing here is asserted in CI.

    python benchmarks/call_overhead.py
    python benchmarks/call_overhead.py --cells gru --steps 1 --hidden 64 --backend cpu
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from rich import box
from rich.console import Console
from rich.table import Table

import gatedrnn
from gatedrnn.atomic import write_json
from gatedrnn.bench import OUR_LAYERS, TORCH_LAYERS, environment

_CELLS = {"rnn": "RNNCell", "gru": "GRUCell", "lstm": "LSTMCell"}


def _call(module, x, backward: bool):
    """One call of ``module`` on ``x`` (a leaf needing a gradient when ``backward``), and its
    backward when asked."""
    if not backward:

        def forward() -> None:
            with torch.no_grad():
                module(x)

        return forward

    def both() -> None:
        out = module(x)
        out = out[0] if isinstance(out, tuple) else out
        out.sum().backward()

    return both


def _time(fns: dict, calls: int, rounds: int) -> dict[str, float]:
    """Median µs per call of each function, over ``rounds`` rounds of ``calls`` calls each."""
    for fn in fns.values():  # warm up
        for _ in range(calls):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            start = time.perf_counter()
            for _ in range(calls):
                fns[name]()
            times[name].append((time.perf_counter() - start) / calls * 1e6)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--steps", default="1,10", help="sequence lengths of the layer calls")
    parser.add_argument("--hidden", default="32,128")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--calls", type=int, default=200, help="calls per timed round")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument(
        "--out", default=str(Path(__file__).parent / "results" / "call_overhead.json")
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [
        (cell, steps, hidden)
        for cell in args.cells.split(",")
        for steps in [*map(int, args.steps.split(",")), None]  # None: the cell, one step
        for hidden in map(int, args.hidden.split(","))
    ]
    rows = []
    for cell, steps, hidden in cases:
        torch.manual_seed(0)
        if steps is None:
            theirs = getattr(torch.nn, _CELLS[cell])(hidden, hidden)
            ours = getattr(gatedrnn, _CELLS[cell])(hidden, hidden)
            shape: tuple[int, ...] = (args.batch, hidden)
        else:
            theirs = TORCH_LAYERS[cell](hidden, hidden)
            ours = OUR_LAYERS[cell](hidden, hidden, backend=args.backend)
            shape = (steps, args.batch, hidden)
        ours.load_state_dict(theirs.state_dict())
        for mode in ("forward", "forward+backward"):
            backward = mode == "forward+backward"
            x = torch.randn(shape, requires_grad=backward)
            fns = {"torch.nn": _call(theirs, x, backward), "ours": _call(ours, x, backward)}
            calls = args.calls if not backward else max(1, args.calls // 2)
            medians = _time(fns, calls, args.rounds)
            rows.append({
                "cell": cell, "module": "cell" if steps is None else "layer", "steps": steps,
                "hidden": hidden, "batch": args.batch, "mode": mode, "us_per_call": medians,
                "ours_backend": getattr(ours, "last_backend", None),
            })  # fmt: skip
    table = Table(
        title=f"Small calls against torch.nn (batch {args.batch}, median of {args.rounds} rounds "
        f"of {args.calls} calls; µs per call)",
        box=box.SIMPLE,
    )
    for column in ("module", "T", "H", "mode", "torch.nn", "ours", "ours / torch.nn", "ran on"):
        table.add_column(column, justify="left" if column in ("module", "mode") else "right")
    for row in rows:
        us = row["us_per_call"]
        table.add_row(
            f"{row['cell']} {row['module']}", str(row["steps"] or "-"), str(row["hidden"]),
            row["mode"], f"{us['torch.nn']:.1f}", f"{us['ours']:.1f}",
            f"{us['ours'] / us['torch.nn']:.2f}", row["ours_backend"] or "-",
        )  # fmt: skip
    Console().print(table)
    env = environment()
    env.update(backend=args.backend, calls=args.calls, rounds=args.rounds)
    write_json(Path(args.out), {"environment": env, "rows": rows})
    print(f"JSON: {args.out}")


if __name__ == "__main__":
    main()
