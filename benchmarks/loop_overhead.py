"""The training loop's overhead against a bare hand-written loop doing the same work: the same
task, model, optimizer, clipping, shuffles and per-epoch validation, and the same final test and
train evaluation. Wall time of whole runs, interleaved, median of repeats; JSON and a table.

    python benchmarks/loop_overhead.py [--task jsb --cell gru --hidden 100 --epochs 5 --repeats 5]

Target (issue #5): at most 5% per epoch. With --checkpoint the loop also writes its checkpoint
every epoch (the bare loop does not), which shows what durability costs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gatedrnn.atomic import write_json  # noqa: E402
from gatedrnn.tasks import build_task  # noqa: E402
from gatedrnn.train import TrainConfig, train  # noqa: E402


def bare(config: TrainConfig) -> float:
    start = time.perf_counter()
    torch.manual_seed(config.seed)
    task = build_task(config.task, seed=config.seed, **config.task_options)
    model = task.build_model(config.cell, config.hidden_size, config.num_layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    for epoch in range(1, config.epochs + 1):
        model.train()
        for batch in task.batches(
            "train", config.batch_size, shuffle=True, seed=config.seed * 100_003 + epoch
        ):
            loss, n = task.loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            (loss / n).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
        task.evaluate(model, "valid", config.batch_size)
    task.evaluate(model, "test", config.batch_size)
    task.evaluate(model, "train", config.batch_size)
    return time.perf_counter() - start


def ours(config: TrainConfig, checkpoint: bool) -> float:
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        train(config, checkpoint=Path(folder) / "run.pt" if checkpoint else None)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="jsb")
    parser.add_argument("--cell", default="gru")
    parser.add_argument("--hidden", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--checkpoint", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/loop_overhead.json")
    args = parser.parse_args()
    config = TrainConfig.from_dict(
        {
            "task": args.task,
            "cell": args.cell,
            "hidden_size": args.hidden,
            "epochs": args.epochs,
            "patience": 0,
            "deterministic": False,
            "clip_norm": 1.0,
        }
    )
    ours(config, args.checkpoint), bare(config)  # warm-up: imports, compiled loops, caches
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    for _ in range(args.repeats):
        times["ours"].append(ours(config, args.checkpoint))
        times["bare"].append(bare(config))
    medians = {k: statistics.median(v) for k, v in times.items()}
    ratio = medians["ours"] / medians["bare"]
    result = {"config": config.to_dict(), "checkpoint": args.checkpoint, "times": times,
              "median_seconds": medians, "overhead": ratio - 1}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, result)
    per_epoch = {k: v / args.epochs for k, v in medians.items()}
    print(
        f"{args.task}/{args.cell} H={args.hidden}, {args.epochs} epochs, median of {args.repeats}"
    )
    print(f"  bare loop   {per_epoch['bare']:.3f} s/epoch")
    print(f"  gatedrnn    {per_epoch['ours']:.3f} s/epoch   overhead {100 * (ratio - 1):+.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
