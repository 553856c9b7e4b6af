"""Inference in ONNX Runtime of exported recurrent layers: ours against torch.nn's, exported and
timed in the same run; JSON and a table of milliseconds per call and ratios to torch.nn's.

    python benchmarks/export_speed.py [--cells gru,lstm --hidden 256 --batch 16 --steps 100]

Arms, one layer each (input size = hidden, batch first, the batch and, where said, the length
left free in the exported model):

- ``torch.nn, fused, free length``: torch.nn's layer through torch's TorchScript exporter
  (``dynamo=False``), ONNX's GRU/LSTM operator: the baseline, the only way torch.nn's layers
  export with a free length;
- ``ours, fused, fixed length``: our ``auto`` layer through the default exporter (torch.export),
  ONNX's GRU/LSTM operator, at the exported length;
- ``ours, scan, free length``: the same with the length left free: ONNX's Scan over one step;
- ``variant, scan, free length``: the reset-before GRU or the peephole LSTM, which torch.nn
  lacks, likewise.

Rounds interleave the arms; median over rounds. ``pip install 'gatedrnn[onnx]'``. Nothing here
is asserted in CI.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import gatedrnn  # noqa: E402
from gatedrnn.atomic import write_json  # noqa: E402

VARIANT = {"gru": {"reset": "before"}, "lstm": {"peepholes": True}}


def export(layer: torch.nn.Module, x: torch.Tensor, path: Path, free_length: bool, dynamo: bool):
    """Write ``layer`` (its output sequence only) as ONNX to ``path``."""

    class Output(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = layer

        def forward(self, x):
            return self.layer(x)[0]

    axes = {0: "batch", 1: "time"} if free_length else {0: "batch"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's deprecations and tracer notes
        if dynamo:
            torch.onnx.export(Output().eval(), (x,), path, dynamo=True, dynamic_shapes=(axes,))
        else:
            torch.onnx.export(
                Output().eval(),
                (x,),
                path,
                dynamo=False,
                input_names=["x"],
                dynamic_axes={"x": axes},
            )


def main() -> int:
    import onnxruntime as ort

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="gru,lstm")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=100, help="time steps per sequence")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--per-round", type=int, default=5, help="calls per round")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/export_speed.json")
    args = parser.parse_args()
    x = torch.randn(args.batch, args.steps, args.hidden)
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for cell in args.cells.split(","):
            kind = {"gru": "GRU", "lstm": "LSTM"}[cell]
            torch.manual_seed(0)
            theirs = getattr(torch.nn, kind)(args.hidden, args.hidden, batch_first=True)
            ours = gatedrnn.from_torch(theirs)
            variant = getattr(gatedrnn, kind)(
                args.hidden, args.hidden, batch_first=True, **VARIANT[cell]
            )
            arms = {
                "torch.nn, fused, free length": (theirs, True, False),
                "ours, fused, fixed length": (ours, False, True),
                "ours, scan, free length": (ours, True, True),
                "variant, scan, free length": (variant, True, True),
            }
            sessions = {}
            for i, (name, (layer, free, dynamo)) in enumerate(arms.items()):
                path = Path(tmp) / f"{cell}{i}.onnx"
                export(layer, x, path, free, dynamo)
                session = ort.InferenceSession(
                    str(path), options, providers=["CPUExecutionProvider"]
                )
                feed = {session.get_inputs()[0].name: x.numpy()}
                got = torch.from_numpy(session.run(None, feed)[0])
                with torch.no_grad():
                    torch.testing.assert_close(got, layer(x)[0], rtol=1e-4, atol=1e-4)
                sessions[name] = (session, feed, [])
            for _ in range(args.rounds):
                for session, feed, times in sessions.values():
                    start = time.perf_counter()
                    for _ in range(args.per_round):
                        session.run(None, feed)
                    times.append((time.perf_counter() - start) / args.per_round * 1e3)
            base = statistics.median(sessions["torch.nn, fused, free length"][2])
            results[cell] = {
                name: {"ms_per_call": statistics.median(t), "ratio": statistics.median(t) / base,
                       "rounds_ms": t}
                for name, (_, _, t) in sessions.items()
            }  # fmt: skip
    print(
        f"ONNX Runtime {ort.__version__}, {args.threads} threads, T={args.steps}, "
        f"B={args.batch}, H={args.hidden}: ms per call (ratio to torch.nn's export)"
    )
    for cell, arms_ in results.items():
        for name, r in arms_.items():
            print(f"  {cell:5} {name:30} {r['ms_per_call']:8.2f}  {r['ratio']:5.2f}")
    document = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
        "results": results,
    }
    write_json(args.out, document, indent=2)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
