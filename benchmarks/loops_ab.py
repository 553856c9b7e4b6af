"""The `cpu` backend's compiled loops now against the same file at an earlier git revision, in one
process: both builds loaded, the layer's calls interleaved between them (the module swapped
under the layer), so that the machine's drift and its slow phases touch both alike; JSON and a
table of milliseconds and ratios (now / then, < 1 is faster now), the median of paired calls.

    python benchmarks/loops_ab.py --rev 5b58ceb --cells gru,lstm,rnn --hidden 64,74,100 --batch 32

The earlier build takes as long as a first build (about a minute). Nothing here is asserted in CI.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gatedrnn  # noqa: E402
from gatedrnn.atomic import write_json  # noqa: E402
from gatedrnn.backends import compiled  # noqa: E402

SOURCE = "src/gatedrnn/backends/csrc/loops.cpp"


def build_at(rev: str):
    """The loops as they were at git revision ``rev``, built as a module of their own."""
    text = subprocess.run(
        ["git", "show", f"{rev}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = Path(tempfile.gettempdir()) / f"gatedrnn_loops_{digest}.cpp"
    path.write_text(text)
    from torch.utils.cpp_extension import load

    return load(
        f"gatedrnn_loops_ab_{digest}", [str(path)], extra_cflags=compiled._flags(),
        extra_ldflags=["-fopenmp"],
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="the git revision to compare against")
    parser.add_argument("--cells", default="gru,lstm,rnn")
    parser.add_argument("--hidden", default="64,74,100")
    parser.add_argument("--batch", default="32")
    parser.add_argument("--steps", type=int, default=100, help="sequence length T")
    parser.add_argument("--repeats", type=int, default=15, help="paired calls timed")
    parser.add_argument("--modes", default="fwd,fwd+bwd")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "loops_ab.json"))
    args = parser.parse_args(argv)
    now = compiled.compiled_loops()
    if now is None:
        print("the compiled loops are not available here", file=sys.stderr)
        return 1
    then = build_at(args.rev)
    layers = {"gru": gatedrnn.GRU, "lstm": gatedrnn.LSTM, "rnn": gatedrnn.RNN}
    rows = []
    try:
        for cell in args.cells.split(","):
            for batch in map(int, args.batch.split(",")):
                for hidden in map(int, args.hidden.split(",")):
                    torch.manual_seed(0)
                    layer = layers[cell](hidden, hidden, backend="cpu")
                    x = torch.randn(args.steps, batch, hidden)
                    for mode in args.modes.split(","):

                        def call(mode=mode, layer=layer, x=x) -> None:
                            if mode == "fwd":
                                with torch.no_grad():
                                    layer(x)
                            else:
                                out, _ = layer(x)
                                out.sum().backward()

                        times: dict[str, list[float]] = {"then": [], "now": []}
                        for r in range(2 + args.repeats):
                            order = [("then", then), ("now", now)]
                            for name, module in order if r % 2 else order[::-1]:
                                compiled._state["module"] = module
                                start = time.perf_counter()
                                call()
                                if r >= 2:
                                    times[name].append((time.perf_counter() - start) * 1e3)
                        compiled._state["module"] = now
                        ratio = statistics.median(
                            n / t for n, t in zip(times["now"], times["then"], strict=True)
                        )
                        row = {
                            "cell": cell, "hidden": hidden, "batch": batch, "mode": mode,
                            "then_ms": statistics.median(times["then"]),
                            "now_ms": statistics.median(times["now"]), "ratio": ratio,
                        }  # fmt: skip
                        rows.append(row)
                        print(
                            f"{cell:5s} H={hidden:4d} B={batch:3d} {mode:8s} then "
                            f"{row['then_ms']:8.3f} ms  now {row['now_ms']:8.3f} ms  "
                            f"now/then {ratio:.2f}",
                            flush=True,
                        )
    finally:
        compiled._state["module"] = now
    write_json(
        Path(args.out),
        {"rev": args.rev, "threads": torch.get_num_threads(), "steps": args.steps, "rows": rows},
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
