"""A training step of a small model holding a recurrent layer, eager and under torch.compile
(Inductor), torch.nn's layer against ours (``backend``, default ``cpu``); JSON and a table of
milliseconds per step and ratios to torch.nn eager, measured in the same run.

    python benchmarks/compile_speed.py [--cells gru,lstm --hidden 256 --batch 16 --steps 100]

The model: Linear → tanh → a two-layer recurrent stack → ReLU → Linear → log-softmax, SGD.
Rounds interleave the four arms (each compiled once, before the rounds), median over rounds.
Nothing here is asserted in CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gatedrnn  # noqa: E402
from gatedrnn.atomic import write_json  # noqa: E402

ARMS = ("torch.nn eager", "torch.nn compiled", "ours eager", "ours compiled")


class Model(torch.nn.Module):
    def __init__(self, layer: torch.nn.Module, features: int, hidden: int):
        super().__init__()
        self.embed = torch.nn.Linear(features, layer.input_size)
        self.rnn = layer
        self.head = torch.nn.Linear(hidden, 10)

    def forward(self, x):
        out, _ = self.rnn(torch.tanh(self.embed(x)))
        return self.head(torch.relu(out)).log_softmax(-1)


def build(cell: str, ours: bool, hidden: int, backend: str) -> Model:
    torch.manual_seed(0)
    kind = {"gru": "GRU", "lstm": "LSTM", "rnn": "RNN"}[cell]
    options = {"num_layers": 2, "batch_first": True}
    if ours:
        layer = getattr(gatedrnn, kind)(64, hidden, backend=backend, **options)
    else:
        layer = getattr(torch.nn, kind)(64, hidden, **options)
    return Model(layer, 32, hidden)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gru,lstm")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="time steps per sequence")
    parser.add_argument("--backend", default="cpu", help="our layers' backend (default cpu)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--per-round", type=int, default=5, help="training steps per round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/compile_speed.json")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # torch's own notes on compiling, once per arm
    x = torch.randn(args.batch, args.steps, 32)
    results = {}
    for cell in args.cells.split(","):
        arms = {}
        for name in ARMS:
            model = build(cell, name.startswith("ours"), args.hidden, args.backend)
            run = torch.compile(model) if name.endswith("compiled") else model
            optimizer = torch.optim.SGD(model.parameters(), lr=0.01)

            def step(run=run, optimizer=optimizer):
                optimizer.zero_grad(set_to_none=True)
                run(x).mean().backward()
                optimizer.step()

            for _ in range(3):  # compiles, builds the loops, warms caches
                step()
            arms[name] = (step, [])
        for _ in range(args.rounds):
            for step, times in arms.values():
                start = time.perf_counter()
                for _ in range(args.per_round):
                    step()
                times.append((time.perf_counter() - start) / args.per_round * 1e3)
        base = statistics.median(arms["torch.nn eager"][1])
        results[cell] = {
            name: {"ms_per_step": statistics.median(t), "ratio": statistics.median(t) / base,
                   "rounds_ms": t}
            for name, (_, t) in arms.items()
        }  # fmt: skip
        row = "  ".join(
            f"{name} {r['ms_per_step']:.1f} ms ({r['ratio']:.2f})"
            for name, r in results[cell].items()
        )
        print(f"{cell}: {row}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "results": results,
    }
    write_json(args.out, document, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
