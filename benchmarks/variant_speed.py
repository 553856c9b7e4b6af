"""The variants torch.nn lacks (GRU with the reset before, peephole and coupled-gate LSTM, MGU) on
our CPU backends: the reference loop, the PyTorch loops (``cpu-python``) and the compiled loops
(``cpu``), with torch.nn's standard cell of the same family (the GRU for the MGU) as the anchor,
all with the same input, interleaved in each round (rotated, so no arm always runs first).
Prints ms per call and ratios; writes JSON. Nothing here is asserted in CI.

    python benchmarks/variant_speed.py                    # H 128, 256; B 1, 32; T 100
    python benchmarks/variant_speed.py --hidden 512 --batch 16
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

import gatedrnn
from gatedrnn.atomic import write_atomic
from gatedrnn.bench import environment

ROOT = Path(__file__).resolve().parents[1]
# name → (our layer, its options, torch.nn's standard layer of the family); cifg: the coupled
# input-forget gate
VARIANTS = {
    "gru-before": (gatedrnn.GRU, {"reset": "before"}, torch.nn.GRU),
    "lstm-peep": (gatedrnn.LSTM, {"peepholes": True}, torch.nn.LSTM),
    "lstm-cifg": (gatedrnn.LSTM, {"coupled": True}, torch.nn.LSTM),
    "lstm-cifg-peep": (gatedrnn.LSTM, {"peepholes": True, "coupled": True}, torch.nn.LSTM),
    "mgu": (gatedrnn.MGU, {}, torch.nn.GRU),
}
BACKENDS = ("reference", "cpu-python", "cpu")


def _call(layer: torch.nn.Module, x: torch.Tensor, backward: bool):
    def forward():
        with torch.no_grad():
            layer(x)

    def forward_backward():
        out, _ = layer(x)
        out.sum().backward()

    return forward_backward if backward else forward


def _time(arms: dict, rounds: int) -> dict[str, list[float]]:
    """ms per call of each arm, one call per arm per round, the order rotated each round."""
    times: dict[str, list[float]] = {name: [] for name in arms}
    names = list(arms)
    for r in range(rounds + 1):  # the first round warms up
        for name in names[r % len(names) :] + names[: r % len(names)]:
            start = time.perf_counter()
            arms[name]()
            if r:
                times[name].append((time.perf_counter() - start) * 1e3)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    parser.add_argument("--hidden", default="128,256")
    parser.add_argument("--batch", default="1,32")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/variant_speed.json")
    args = parser.parse_args()
    chosen = args.variants.split(",")
    unknown = [v for v in chosen if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant {unknown[0]!r}; expected one of {', '.join(VARIANTS)}")
    rows = []
    print(f"T={args.steps}, median of {args.rounds} interleaved rounds, ms per call; ratios to the")
    print("reference loop and to torch.nn's standard cell of the family (the GRU for the MGU)")
    print(f"{'variant':15} {'H':>4} {'B':>3} {'mode':5} {'torch.nn':>9} {'reference':>10} "
          f"{'py/ref':>7} {'cpu/ref':>8} {'cpu/torch':>10}")  # fmt: skip
    for name in chosen:
        layer, options, standard = VARIANTS[name]
        for hidden in (int(h) for h in args.hidden.split(",")):
            for batch in (int(b) for b in args.batch.split(",")):
                torch.manual_seed(0)
                x = torch.randn(args.steps, batch, hidden)
                anchor = standard(hidden, hidden)
                ours = {b: layer(hidden, hidden, backend=b, **options) for b in BACKENDS}
                for b in BACKENDS[1:]:
                    ours[b].load_state_dict(ours["reference"].state_dict())
                for mode in ("fwd", "f+b"):
                    backward = mode == "f+b"
                    arms = {"torch.nn": _call(anchor, x, backward)}
                    arms.update({b: _call(m, x, backward) for b, m in ours.items()})
                    ms = {arm: statistics.median(t) for arm, t in _time(arms, args.rounds).items()}
                    rows.append({"variant": name, "hidden": hidden, "batch": batch, "mode": mode,
                                 "ms": ms})  # fmt: skip
                    print(f"{name:15} {hidden:4} {batch:3} {mode:5} {ms['torch.nn']:9.2f} "
                          f"{ms['reference']:10.2f} {ms['cpu-python'] / ms['reference']:7.2f} "
                          f"{ms['cpu'] / ms['reference']:8.2f} {ms['cpu'] / ms['torch.nn']:10.2f}",
                          flush=True)  # fmt: skip
    document = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": environment("cpu"),
        "results": rows,
    }
    write_atomic(args.out, lambda path: path.write_text(json.dumps(document, indent=2)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
