"""Every task with data, trained briefly on its real data (../shared/data or GATEDRNN_DATA): the
metric after a short run and seconds per epoch, as JSON and a table. A check that each task
trains end to end at a small size, not a benchmark of the cells.

    python benchmarks/task_tour.py --data-dir ../shared/data [--cells gru,lstm] [--epochs 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gatedrnn.atomic import write_json  # noqa: E402
from gatedrnn.train import TrainConfig, train  # noqa: E402

# task → (config overrides, task options): small enough for a 2-core CPU in about a minute each
TOUR = {
    "jsb": ({"hidden_size": 100, "batch_size": 16}, {}),
    "nottingham": ({"hidden_size": 100, "batch_size": 32, "fraction": 0.25}, {"chunk": 100}),
    "musedata": ({"hidden_size": 100, "batch_size": 32, "fraction": 0.2}, {"chunk": 100}),
    "pianomidi": ({"hidden_size": 100, "batch_size": 16, "fraction": 0.5}, {"chunk": 100}),
    "ptb": ({"hidden_size": 200, "batch_size": 20, "fraction": 0.1, "lr": 3e-3}, {"bptt": 35}),
    "wikitext2": (
        {"hidden_size": 200, "batch_size": 20, "fraction": 0.05, "lr": 3e-3},
        {"bptt": 35},
    ),
    "sst2": ({"hidden_size": 100, "batch_size": 32, "lr": 3e-3}, {}),
    "fsdd": ({"hidden_size": 64, "batch_size": 32, "lr": 3e-3}, {}),
    "multi30k": ({"hidden_size": 128, "batch_size": 64, "fraction": 0.1, "lr": 3e-3}, {"beam": 3}),
    "adding": ({"hidden_size": 64, "batch_size": 50}, {"steps": 50, "train_size": 5000}),
    "copy": ({"hidden_size": 64, "batch_size": 50, "lr": 3e-3}, {"steps": 20, "train_size": 5000}),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    parser.add_argument("--cells", default="gru,lstm")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--tasks", default=",".join(TOUR))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/task_tour.json")
    parser.add_argument("--append", action="store_true", help="add to the rows already in --out")
    args = parser.parse_args()
    rows = json.loads(args.out.read_text()) if args.append and args.out.exists() else []
    for task in args.tasks.split(","):
        overrides, options = TOUR[task]
        for cell in args.cells.split(","):
            config = TrainConfig.from_dict(
                {
                    "task": task,
                    "cell": cell,
                    "epochs": args.epochs,
                    "patience": 0,
                    "task_options": options,
                    **overrides,
                }
            )
            start = time.perf_counter()
            result = train(config, data_dir=args.data_dir)
            row = {
                "task": task, "cell": cell, "status": result.status,
                "valid": result.best_valid, "test": result.test,
                "seconds_per_epoch": result.seconds_per_epoch,
                "wall_seconds": time.perf_counter() - start, "parameters": result.parameters,
                "backend": result.backend, "config": config.to_dict(),
            }  # fmt: skip
            rows.append(row)
            test = ", ".join(f"{k} {v:.4g}" for k, v in (result.test or {}).items())
            print(
                f"{task:10} {cell:5} {result.status:9} test {test:28} "
                f"{result.seconds_per_epoch or 0:7.1f} s/epoch  {result.parameters:>8} params",
                flush=True,
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
