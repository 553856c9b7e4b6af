"""Our persistent Triton GRU, LSTM and RNN against torch.nn (cuDNN) on one CUDA GPU.

    python benchmarks/gpu_speed.py                         # T=256, B 1/16/64/256, H 256/512/1024
    python benchmarks/gpu_speed.py --batch 64 --hidden 1024 --dtypes bfloat16
    python benchmarks/gpu_speed.py --write-table           # also update the backend's auto table
    python benchmarks/gpu_speed.py --shapes lstm:float32:16:1024,gru:bfloat16:64:1024 --write-table
    python benchmarks/gpu_speed.py --sweep lstm:float32:16:1024 --variants '[{}, {"tma": 1}]' \
        --write-table                                      # the faster variant becomes the launch

For each cell, dtype, batch and width: one layer, input size = H, the same weights in both; the
forward alone (no autograd) and forward + backward (gradients of the input, the state and every
weight), each timed with CUDA events by ``triton.testing.do_bench`` (median after warm-up). Our
time includes the input GEMM and the weight-gradient GEMMs, as cuDNN's does. Prints µs per step
and the speed-up (cuDNN time / ours), and writes every number to JSON. Kernels are compiled first
in parallel worker processes (a one-step run per shape fills Triton's disk cache), so compilation
stays out of the timings and the wall time. Nothing here is asserted in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from gatedrnn.atomic import write_json  # noqa: E402
from gatedrnn.backends.gpu_tune import (  # noqa: E402
    AGREEMENT,
    DTYPES,
    _variants,
    disagreement,
    fastest,
    layer_pair,
)


def _set_tuning(tuning: dict) -> None:
    """A precompiling worker's set-up: these launch overrides, and kernels compiled, not run."""
    from gatedrnn.backends import gpu

    os.environ["GATEDRNN_TRITON_COMPILE_ONLY"] = "1"
    gpu.TUNING.update(tuning)


def _compile_one(job: tuple[str, str, int, int]) -> str:
    """Compile (in a worker: ``GATEDRNN_TRITON_COMPILE_ONLY``, not run) each kernel the timings
    will use, filling the disk cache."""
    cell, dtype_name, B, H = job
    try:
        ours, _ = layer_pair(cell, H, DTYPES[dtype_name], "cuda")
        # T = 16: Triton specialises an integer argument by its divisibility by 16 (and 1 by
        # value), so these are the kernels a run of T = 256 launches
        x = torch.randn(16, B, H, device="cuda", dtype=DTYPES[dtype_name], requires_grad=True)
        with torch.no_grad():
            ours(x)
        out, _ = ours(x)
        out.sum().backward()
        torch.cuda.synchronize()
        return ""
    except Exception as error:  # reported, the timing pass records it per shape
        return f"{job}: {type(error).__name__}: {error}"


def _compile_variant(job: tuple[dict, tuple[str, str, int, int]]) -> str:
    """:func:`_compile_one` for one (launch overrides, shape) of a sweep."""
    from gatedrnn.backends import gpu

    variant, shape = job
    gpu.TUNING.clear()
    gpu.TUNING.update({"table": 0, **variant})
    problem = _compile_one(shape)
    return problem and f"{variant} {problem}"


def _precompile(function, jobs: list, workers: int, initargs: tuple = ({},)) -> None:
    """Fill Triton's disk cache for these jobs in ``workers`` processes at once (a resident
    kernel takes seconds to compile; the timing pass then only loads them)."""
    start = time.perf_counter()
    if workers > 1:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_set_tuning, initargs=initargs
        ) as pool:
            for problem in pool.map(function, jobs):
                if problem:
                    print("compile:", problem, flush=True)
    print(f"compiled in {time.perf_counter() - start:.0f} s", flush=True)


def _time(fn, grads_to_none) -> float:
    from triton.testing import do_bench

    return do_bench(fn, warmup=25, rep=100, grad_to_none=grads_to_none, return_mode="median")


def graphed(layer, x: torch.Tensor, dy: torch.Tensor, grad: bool):
    """The layer call as a CUDA graph replay, for timing both sides without the host's launch
    overhead (cuDNN relaunches its GEMM and pointwise kernels each step; a graph replays them
    with no Python or driver work in between): forward alone captured with ``torch.cuda.graph``
    (on a side stream's warm-up first), forward + backward with
    ``torch.cuda.make_graphed_callables``. Returns the function to time."""
    if grad:
        graphed_layer = torch.cuda.make_graphed_callables(layer, (x,))

        def step():
            out, _ = graphed_layer(x)
            out.backward(dy)

        return step
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.no_grad(), torch.cuda.stream(side):
        for _ in range(3):
            layer(x)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        layer(x)
    return graph.replay


def _variant(tuning) -> dict:
    """Launch overrides as a table row or a sweep's result records them (without ``table``)."""
    return {key: value for key, value in tuning.items() if key != "table"}


def measure(cell: str, dtype_name: str, B: int, H: int, T: int, graphs: bool = False) -> list[dict]:
    """Ours and cuDNN's µs per step at one shape, forward alone and forward + backward; each row
    records the launch overrides ours ran with (``tuning``: :data:`TUNING` or the auto table's
    variant for that size) and how far our results were from cuDNN's (``disagreement``;
    ``agrees``: within ``gpu_tune.AGREEMENT``). With ``graphs`` both are also timed as CUDA
    graph replays (:func:`graphed`): ``ours_graph_us_per_step``, ``cudnn_graph_us_per_step``,
    ``speedup_graphs`` (an error, e.g. a capture that failed, is recorded per side)."""
    from gatedrnn.backends import gpu

    dtype = DTYPES[dtype_name]
    ours, reference = layer_pair(cell, H, dtype, "cuda")
    x = torch.randn(T, B, H, device="cuda", dtype=dtype, requires_grad=True)
    dy = torch.randn(T, B, H, device="cuda", dtype=dtype)
    rows = []
    for grad in (False, True):
        times = {}
        for name, layer in (("ours", ours), ("cudnn", reference)):
            params = [x, *layer.parameters()]
            if grad:

                def fn(layer=layer):
                    out, _ = layer(x)
                    out.backward(dy)

            else:

                def fn(layer=layer):
                    with torch.no_grad():
                        layer(x)

            try:
                times[name] = _time(fn, params) * 1e3 / T  # µs per step
            except Exception as error:
                times[name] = None
                times[f"{name}_error"] = f"{type(error).__name__}: {error}"[:300]
            if graphs:
                try:
                    replay = graphed(layer, x, dy, grad)
                    times[f"{name}_graph"] = _time(replay, params) * 1e3 / T
                except Exception as error:
                    times[f"{name}_graph"] = None
                    times[f"{name}_graph_error"] = f"{type(error).__name__}: {error}"[:300]
        row = {"cell": cell, "dtype": dtype_name, "B": B, "H": H, "T": T, "grad": grad}
        row["tuning"] = _variant(gpu.launch_tuning(cell, dtype, grad, H, B, x.device))
        row.update(
            ours_us_per_step=times["ours"],
            cudnn_us_per_step=times["cudnn"],
            **{k: v for k, v in times.items() if k.endswith("_error")},
        )
        if graphs:
            row.update(
                ours_graph_us_per_step=times["ours_graph"],
                cudnn_graph_us_per_step=times["cudnn_graph"],
            )
            if times["ours_graph"] and times["cudnn_graph"]:
                row["speedup_graphs"] = times["cudnn_graph"] / times["ours_graph"]
        if times["ours"] and times["cudnn"]:
            row["speedup"] = times["cudnn"] / times["ours"]
            try:
                row["disagreement"] = disagreement(ours, reference, x, dy, grad)
            except Exception as error:
                row["disagreement"] = float("inf")
                row["ours_error"] = f"{type(error).__name__}: {error}"[:300]
            row["agrees"] = row["disagreement"] <= AGREEMENT[dtype_name]
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--T", type=int, default=256)
    parser.add_argument("--batch", default="1,16,64,256")
    parser.add_argument("--hidden", default="256,512,1024")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--cells", default="gru,lstm", help="gru, lstm, rnn (tanh)")
    parser.add_argument(
        "--shapes",
        default="",
        help="instead of the grid of --cells × --dtypes × --hidden × --batch: these shapes only, "
        "CELL:DTYPE:B:H[,...] (with --write-table, only their rows change)",
    )
    parser.add_argument("--jobs", type=int, default=min(16, os.cpu_count() or 1))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/gpu_speed.json")
    parser.add_argument(
        "--sweep",
        default="",
        help="instead of the grid: time launch variants at CELL:DTYPE:B:H[,...] "
        "(num_warps, BK, num_stages, BH)",
    )
    parser.add_argument(
        "--variants",
        default="",
        help="with --sweep: a JSON list of launch overrides to time instead of the default list, "
        "e.g. '[{}, {\"resident\": 0}]'",
    )
    parser.add_argument(
        "--summarize",
        type=Path,
        help="print the summary of a sweep's JSON (what --sweep prints at its end) and exit",
    )
    parser.add_argument(
        "--tuning",
        default="",
        help="launch overrides for the whole grid, JSON, e.g. '{\"resident\": 0}' times the "
        "kernels that stream the weights every step",
    )
    parser.add_argument(
        "--graphs",
        action="store_true",
        help="also time both sides as CUDA graph replays (no host launch overhead: cuDNN's "
        "per-step launches are then as cheap as they get); not written to the auto table",
    )
    parser.add_argument(
        "--write-table",
        action="store_true",
        help="update the auto table of the triton backend (with --sweep: each shape's fastest "
        "variant becomes the launch the backend uses there)",
    )
    args = parser.parse_args(argv)
    if args.summarize:
        print("\n".join(summarize_sweep(json.loads(args.summarize.read_text()))))
        return 0
    if not torch.cuda.is_available():
        print("gpu_speed: no CUDA device", file=sys.stderr)
        return 2
    if args.sweep:
        variants = json.loads(args.variants) if args.variants else None
        return sweep(args.sweep, args.T, args.out, variants, args.jobs, args.write_table)
    tuning = json.loads(args.tuning) if args.tuning else {}
    if tuning and args.write_table:
        parser.error("--write-table measures the kernels as they launch by default: no --tuning")
    if tuning:
        from gatedrnn.backends import gpu

        gpu.TUNING.update(tuning)
    batches = [int(b) for b in args.batch.split(",")]
    hiddens = [int(h) for h in args.hidden.split(",")]
    dtypes = args.dtypes.split(",")
    cells = args.cells.split(",")
    jobs = [(c, d, B, H) for c in cells for d in dtypes for H in hiddens for B in batches]
    if args.shapes:
        jobs = [_shape(item) for item in args.shapes.split(",")]

    _precompile(_compile_one, jobs, args.jobs, (tuning,))

    rows = []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for job in jobs:
        rows.extend(measure(*job, T=args.T, graphs=args.graphs))
        write_json(args.out.with_suffix(".partial.json"), rows)  # kept if cut off
        last = rows[-1]
        print(
            f"{job}: fwd+bwd ours {last['ours_us_per_step']} cudnn {last['cudnn_us_per_step']}",
            flush=True,
        )
    device = torch.cuda.get_device_name()
    result = {
        "device": device,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "triton": __import__("triton").__version__,
        "python": platform.python_version(),
        "tf32": torch.backends.cudnn.allow_tf32,
        "tuning": tuning,
        "rows": rows,
    }
    write_json(args.out, result)
    # the partial rows were for a cut-off run (the device tool brings back only a few files)
    args.out.with_suffix(".partial.json").unlink(missing_ok=True)
    print_table(rows, device)
    if args.write_table:
        write_table(rows, device)
    return 0


def _shape(item: str) -> tuple[str, str, int, int]:
    """``CELL:DTYPE:B:H`` → (cell, dtype name, B, H)."""
    parts = item.split(":")
    if (
        len(parts) != 4
        or parts[0] not in ("gru", "lstm", "rnn")
        or not all(p.isdigit() for p in parts[2:])
    ):
        raise SystemExit(
            f"gpu_speed: expected CELL:DTYPE:B:H (e.g. gru:float32:16:1024), got {item!r}"
        )
    return parts[0], parts[1], int(parts[2]), int(parts[3])


def _changes(variant: dict, dtype_name: str) -> bool:
    """Whether a sweep's variant changes anything at a shape of this dtype: ``f16`` (a float32
    layer's products in float16) does nothing elsewhere, where it would time the variant
    without it again."""
    return not variant.get("f16") or dtype_name == "float32"


def _distinct(variants: list[dict], cell: str, dtype_name: str, B: int, H: int) -> list[dict]:
    """The sweep's variants worth timing at a shape: on a GPU those that run on chip where the
    launchers' own choice does and launch differently from every earlier one (as the tuner
    picks them, ``gpu_tune._variants``: at float32 H = 1024, B = 64 a TF32 variant that does
    not fit falls back to the streamed kernels, which ``{}`` already times); without one (the
    tests), those that :func:`_changes` keeps."""
    kept = [variant for variant in variants if _changes(variant, dtype_name)]
    if not torch.cuda.is_available():
        return kept
    return _variants(cell, DTYPES[dtype_name], True, H, B, torch.device("cuda"), kept)


def sweep(
    spec: str,
    T: int,
    out: Path,
    variants: list[dict] | None = None,
    workers: int = 1,
    write: bool = False,
) -> int:
    """Time launch variants of our kernels at a few shapes (forward and forward + backward),
    every variant's kernels compiled first in ``workers`` processes; each variant on top of the
    launchers' own choices (``{}``: those alone), not the auto table's; at each shape only the
    variants that launch differently (:func:`_distinct`; those skipped are named). ``write``:
    the fastest variant of each shape and direction into the auto table
    (:func:`fastest_variants`), as each shape's variants are all timed."""
    from gatedrnn.backends import gpu

    variants = variants or [
        {},
        {"num_warps": 2},
        {"num_warps": 8},
        {"BK": 32},
        {"BK": 128},
        {"num_stages": 2},
        {"num_stages": 4},
        {"BH": 32},
        {"resident": 0},
    ]
    results = []
    out.parent.mkdir(parents=True, exist_ok=True)
    shapes = [_shape(item) for item in spec.split(",")]
    timed = {shape: _distinct(variants, *shape) for shape in shapes}
    for shape, kept in timed.items():
        for variant in variants:
            if _changes(variant, shape[1]) and variant not in kept:
                print(f"sweep skip {':'.join(map(str, shape))} {variant}: launches as another")
    jobs = [(v, shape) for shape in shapes for v in timed[shape]]
    _precompile(_compile_variant, jobs, workers)
    for cell, dtype_name, B, H in shapes:
        for variant in timed[(cell, dtype_name, B, H)]:
            gpu.TUNING.clear()
            gpu.TUNING.update({"table": 0, **variant})  # {}: the launchers' own choice
            for row in measure(cell, dtype_name, B, H, T):
                row["variant"] = variant
                results.append(row)
                print(
                    f"sweep {cell} {dtype_name} B={B} H={H} grad={row['grad']} {variant}: "
                    f"ours {row['ours_us_per_step']} cudnn {row['cudnn_us_per_step']} "
                    f"{'' if row.get('agrees', True) else 'WRONG '}{row.get('ours_error', '')}",
                    flush=True,
                )
            # after every variant, so a run cut off by its time limit keeps what it measured
            write_json(out, results)
        if write:  # after every shape, for the same reason
            shape = [row for row in results if (row["cell"], row["dtype"], row["B"], row["H"])
                     == (cell, dtype_name, B, H)]  # fmt: skip
            write_table(fastest_variants(shape), torch.cuda.get_device_name())
    gpu.TUNING.clear()
    print("\n".join(summarize_sweep(results)), flush=True)
    return 0


def fastest_variants(results: list[dict]) -> list[dict]:
    """A sweep's rows as the auto table wants them: per shape and direction the fastest variant
    whose results agreed with cuDNN's (``gpu_tune.fastest``: the launchers' own choice unless
    another beat it by a margin; its overrides as ``tuning``), its speed-up over the
    median of cuDNN's times across the shape's variants (each variant's run timed cuDNN again;
    they differ by noise alone)."""
    groups: dict[tuple, list[dict]] = {}
    for row in results:
        key = (row["cell"], row["dtype"], row["B"], row["H"], bool(row["grad"]))
        groups.setdefault(key, []).append(row)
    chosen = []
    for rows in groups.values():
        timed = [row for row in rows if row.get("ours_us_per_step") and row.get("agrees", True)]
        cudnn = sorted(row["cudnn_us_per_step"] for row in rows if row.get("cudnn_us_per_step"))
        if not timed or not cudnn:
            continue
        by_variant = {json.dumps(row.get("variant", {}), sort_keys=True): row for row in timed}
        best = by_variant[fastest({v: row["ours_us_per_step"] for v, row in by_variant.items()})]
        median = (cudnn[(len(cudnn) - 1) // 2] + cudnn[len(cudnn) // 2]) / 2
        chosen.append(
            {
                **{key: best[key] for key in ("cell", "dtype", "B", "H", "T", "grad")},
                "ours_us_per_step": best["ours_us_per_step"],
                "cudnn_us_per_step": median,
                "speedup": median / best["ours_us_per_step"],
                "tuning": _variant(best.get("variant", {})),
            }
        )
    return chosen


def summarize_sweep(results: list[dict]) -> list[str]:
    """A sweep's rows as one line per shape and variant, every line starting "summary": our µs
    per step forward and forward + backward, each as a ratio to the shape's first variant (the
    default, ``{}``, in the prepared sweeps) and as the speed-up over cuDNN measured with it;
    ``*`` marks the shape's fastest variant in each direction; "wrong": results not within
    ``gpu_tune.AGREEMENT`` of cuDNN's (never fastest)."""
    shapes: dict[tuple, dict[str, dict]] = {}
    for row in results:
        shape = (row["cell"], row["dtype"], row["B"], row["H"])
        variant = json.dumps(row.get("variant", {}), sort_keys=True)
        shapes.setdefault(shape, {}).setdefault(variant, {})[bool(row["grad"])] = row
    lines = [
        "summary shape / variant: forward µs (÷ first variant, × cuDNN) | forward + backward "
        "(the same); * fastest"
    ]
    for (cell, dtype, B, H), variants in shapes.items():
        lines.append(f"summary {cell} {dtype} B={B} H={H}")
        base = next(iter(variants.values()))
        best = {
            grad: min(
                (
                    v
                    for v in variants
                    if variants[v].get(grad, {}).get("ours_us_per_step")
                    and variants[v][grad].get("agrees", True)
                ),
                key=lambda v, grad=grad: variants[v][grad]["ours_us_per_step"],
                default=None,
            )
            for grad in (False, True)
        }
        for variant, pair in variants.items():
            text = []
            for grad in (False, True):
                row = pair.get(grad, {})
                ours = row.get("ours_us_per_step")
                first = base.get(grad, {}).get("ours_us_per_step")
                if not ours or not row.get("agrees", True):
                    text.append(f"{'error' if not ours else 'wrong':>8} {'':>6} {'':>6}")
                    continue
                mark = "*" if variant == best[grad] else " "
                ratio = f"{ours / first:6.2f}" if first else f"{'-':>6}"
                speedup = f"{row['speedup']:5.2f}×" if row.get("speedup") else f"{'-':>6}"
                text.append(f"{ours:7.2f}{mark} {ratio} {speedup}")
            lines.append(f"summary   {variant:48} {text[0]} | {text[1]}")
    return lines


def print_table(rows: list[dict], device: str) -> None:
    print(f"\nµs per step, T={rows[0]['T']}, {device}; speed-up = cuDNN time / ours")
    header = f"{'cell':5} {'dtype':9} {'B':>4} {'H':>5} | {'fwd ours':>9} {'cuDNN':>7} {'×':>5}"
    print(header + f" | {'f+b ours':>9} {'cuDNN':>7} {'×':>5}")
    by_key: dict[tuple, dict] = {}
    for row in rows:
        by_key.setdefault((row["cell"], row["dtype"], row["B"], row["H"]), {})[row["grad"]] = row

    def cells(row, graph=""):
        ours, cudnn = row.get(f"ours{graph}_us_per_step"), row.get(f"cudnn{graph}_us_per_step")
        speedup = row.get("speedup_graphs" if graph else "speedup")
        text = f"{ours:9.2f}" if ours else f"{'error':>9}"
        text += f" {cudnn:7.2f}" if cudnn else f" {'error':>7}"
        return text + (f" {speedup:5.2f}" if speedup else f" {'-':>5}")

    for (cell, dtype, B, H), pair in by_key.items():
        line = f"{cell:5} {dtype:9} {B:4} {H:5} | {cells(pair[False])} | {cells(pair[True])}"
        if "ours_graph_us_per_step" in pair[False]:  # --graphs: the same as graph replays
            line += f" | graphs {cells(pair[False], '_graph')} | {cells(pair[True], '_graph')}"
        variants = [json.dumps(pair[grad].get("tuning", {})) for grad in (False, True)]
        if variants != ["{}", "{}"]:  # launched with a table's (or --tuning's) variant
            line += f" | {variants[0]} | {variants[1]}"
        print(line)


def write_table(rows: list[dict], device: str) -> None:
    """Put this run's ratios into the auto table: rows of the shapes measured replace the
    device's rows of the same shapes, the device's other rows stay (a partial grid, e.g.
    ``--hidden 1024``, refreshes only those; a shape whose results disagreed with cuDNN's keeps
    its old row, or has none). A row's launch overrides (``tuning``: the variant
    it was timed with, a sweep's fastest or the table's own) go with it; written atomically."""
    from gatedrnn.backends.gpu import TABLE_PATH
    from gatedrnn.backends.gpu import row_key as key

    table = json.loads(TABLE_PATH.read_text()) if TABLE_PATH.exists() else {"devices": {}}
    merged = {key(row): row for row in table["devices"].get(device, [])}
    for row in rows:
        if "speedup" in row and row.get("agrees", True):
            entry = {
                "kind": row["cell"],
                "dtype": row["dtype"],
                "grad": bool(row["grad"]),
                "H": row["H"],
                "B": row["B"],
                "ratio": round(1 / row["speedup"], 3),
            }
            if row.get("tuning"):
                entry["tuning"] = _variant(row["tuning"])
            merged[key(entry)] = entry
    table["devices"][device] = sorted(merged.values(), key=key)
    write_json(TABLE_PATH, table)
    print(f"wrote {TABLE_PATH}")


if __name__ == "__main__":
    sys.exit(main())
