#!/usr/bin/env bash
# One device call: the GPU correctness tests of the triton backend, the speed grid against cuDNN,
# optional A/B timings; logs and JSON under $OUT. The device tool brings back only a handful of
# files (8 came back, a 9th was left behind): each step writes one log, and at most one JSON.
#
#   bash scripts/gpu_check.sh                                   # tests, grid (BENCH_ARGS=--write-table)
#   FOLD=1 bash scripts/gpu_check.sh                            # + the forward folded, unfolded, default
#   SWEEP=gru:bfloat16:16:1024 SWEEP_VARIANTS='[{}, {"resident": 0}]' bash scripts/gpu_check.sh
#   SWEEP=... SWEEP_ARGS=--write-table bash ...   # each shape's fastest variant into the auto table
#   TEST_K="not streamed" BENCH_ARGS='--write-table --hidden 1024' bash scripts/gpu_check.sh
#                                     # some tests; a partial grid, merged into the auto table
#   GRID=0 TEST_K=eight_chunks SWEEP=... bash scripts/gpu_check.sh   # no grid
#   OTHER_GPU=1 GRID=0 PRECOMPILE=0 TEST_K=no_such_test bash scripts/gpu_check.sh
#                                     # only the GPU tests of the other files
# The tests' kernels are compiled first in parallel (PRECOMPILE=0: not).
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
# pytest in this process, without pyproject's workers (pytest-xdist: the device may not have
# it, and the GPU tests are timed and run one at a time)
SERIAL=(-o "addopts=-ra --strict-markers")
{
  nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used,utilization.gpu --format=csv
  python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cudnn', torch.backends.cudnn.version())"
} 2>&1 | tee "$OUT/tests.log"
if [ "${PRECOMPILE:-1}" != 0 ]; then
  # the selected tests' kernels compiled first, in 16 processes at once (compiled, not run:
  # GATEDRNN_TRITON_COMPILE_ONLY; those runs' results are garbage and ignored), so that the
  # tests below load them from Triton's cache instead of compiling one at a time
  start=$SECONDS ids=$(mktemp -d)
  python3 -m pytest "${SERIAL[@]}" tests/backends/test_triton.py -q -p no:cacheprovider --collect-only ${TEST_K:+-k "$TEST_K"} 2>/dev/null | grep "::" > "$ids/all"
  split -n r/${JOBS:-16} "$ids/all" "$ids/part."
  for part in "$ids"/part.*; do
    GATEDRNN_TRITON_COMPILE_ONLY=1 timeout ${PRECOMPILE_TIMEOUT:-150} xargs -d '\n' -a "$part" python3 -m pytest "${SERIAL[@]}" -q -p no:cacheprovider >/dev/null 2>&1 &
  done
  wait
  echo "precompiled the kernels of $(wc -l < "$ids/all") tests in $((SECONDS - start)) s" | tee -a "$OUT/tests.log"
fi
timeout ${TEST_TIMEOUT:-300} python3 -m pytest "${SERIAL[@]}" tests/backends/test_triton.py -q -p no:cacheprovider -s ${TEST_K:+-k "$TEST_K"} 2>&1 | tee -a "$OUT/tests.log" | grep -v "^gru\|^lstm\|^rnn" | tail -25
grep "^gru\|^lstm\|^rnn" "$OUT/tests.log" | tail -40
if [ "${OTHER_GPU:-0}" != 0 ]; then
  # the GPU tests outside the kernels' file (the training loop's CUDA peak, bench --device cuda,
  # which compiles its own small kernels): opt-in, for a call with time to spare
  timeout ${OTHER_TIMEOUT:-150} python3 -m pytest "${SERIAL[@]}" tests -m gpu --ignore=tests/backends/test_triton.py -q -p no:cacheprovider 2>&1 | tee -a "$OUT/tests.log" | tail -8
fi
if [ "${GRID:-1}" != 0 ]; then
  timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/gpu_speed.py --out "$OUT/gpu_speed.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60
fi
if [ -n "${FOLD:-}" ]; then
  # the resident forward folded (8 units per program: float32 fits at H = 1024; the default where
  # the unfolded one does not fit) and not (at float32 H = 1024: the streamed kernels)
  timeout ${FOLD_TIMEOUT:-150} python3 benchmarks/gpu_speed.py --sweep "${FOLD_SHAPES:-gru:float32:1:1024,gru:float32:16:1024,lstm:float32:1:1024,lstm:float32:16:1024,gru:bfloat16:16:1024}" --variants '[{"fold": 1}, {"fold": 2}]' --out "$OUT/fold.json" 2>&1 | grep "^sweep" | tee "$OUT/fold.log"
fi
if [ -n "${SWEEP:-}" ]; then
  # every timing in sweep.log; here the summary (per shape: each variant against the first)
  timeout ${SWEEP_TIMEOUT:-120} python3 benchmarks/gpu_speed.py --sweep "$SWEEP" --variants "${SWEEP_VARIANTS:-}" --out "$OUT/sweep.json" ${SWEEP_ARGS:-} 2>&1 | grep "^sweep\|^summary\|^compile" | tee "$OUT/sweep.log" | grep "^summary\|^compile" | tail -70
fi
if [ -n "${FP32_ALT:-}" ]; then
  # the float32 checks and a few timings again with another precision of the recurrent product
  {
    GATEDRNN_TRITON_FP32=$FP32_ALT timeout ${ALT_TEST_TIMEOUT:-60} python3 -m pytest "${SERIAL[@]}" tests/backends/test_triton.py -q -p no:cacheprovider -s -m gpu -k float32 2>&1
    GATEDRNN_TRITON_FP32=$FP32_ALT timeout ${ALT_BENCH_TIMEOUT:-90} python3 benchmarks/gpu_speed.py --dtypes float32 --batch 1,64 --hidden 256,1024 --out "$OUT/gpu_speed_alt.json" 2>&1
  } | tee "$OUT/alt.log" | grep -v "^gru\|^lstm" | tail -24
fi
[ -f src/gatedrnn/backends/gpu_table.json ] && cp src/gatedrnn/backends/gpu_table.json "$OUT/" || true
