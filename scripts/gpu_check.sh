#!/usr/bin/env bash
# One device call: the GPU correctness tests of the triton backend, the speed grid against cuDNN,
# and a sweep of launch variants; logs and JSON under $OUT (the device tool brings them back, but
# only a handful of files: keep what lands there few).
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used,utilization.gpu --format=csv | tee "$OUT/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/card.txt"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest tests/backends/test_triton.py -q -p no:cacheprovider -s 2>&1 | tee "$OUT/tests.log" | grep -v "^gru\|^lstm" | tail -25
grep "^gru\|^lstm" "$OUT/tests.log" | tail -40
timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/gpu_speed.py --out "$OUT/gpu_speed.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60
if [ -n "${SWEEP:-}" ]; then
  timeout ${SWEEP_TIMEOUT:-120} python3 benchmarks/gpu_speed.py --sweep "$SWEEP" --variants "${SWEEP_VARIANTS:-}" --out "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log" | grep "^sweep" | tail -30
fi
if [ -n "${FP32_ALT:-}" ]; then
  # the float32 checks and a few timings again with another precision of the recurrent product
  GATEDRNN_TRITON_FP32=$FP32_ALT timeout ${ALT_TEST_TIMEOUT:-60} python3 -m pytest tests/backends/test_triton.py -q -p no:cacheprovider -s -m gpu -k float32 2>&1 | tee "$OUT/tests_alt.log" | grep -v "^gru\|^lstm" | tail -8
  grep "^gru\|^lstm" "$OUT/tests_alt.log" | tail -12
  GATEDRNN_TRITON_FP32=$FP32_ALT timeout ${ALT_BENCH_TIMEOUT:-90} python3 benchmarks/gpu_speed.py --dtypes float32 --batch 1,64 --hidden 256,1024 --out "$OUT/gpu_speed_alt.json" 2>&1 | tee "$OUT/bench_alt.log" | tail -16
fi
[ -f src/gatedrnn/backends/gpu_table.json ] && cp src/gatedrnn/backends/gpu_table.json "$OUT/" || true
