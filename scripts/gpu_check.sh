#!/usr/bin/env bash
# One device call: the GPU correctness tests of the triton backend, the speed grid against cuDNN,
# and a sweep of launch variants; logs and JSON under $OUT (the device tool brings them back).
set -o pipefail
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem,memory.used,utilization.gpu --format=csv | tee "$OUT/card.txt"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cudnn', torch.backends.cudnn.version())" | tee -a "$OUT/card.txt"
timeout ${TEST_TIMEOUT:-200} python3 -m pytest tests/backends/test_triton.py -q -x -p no:cacheprovider -s 2>&1 | tee "$OUT/tests.log" | grep -v "^gru\|^lstm" | tail -25
grep "^gru\|^lstm" "$OUT/tests.log" | tail -40
timeout ${BENCH_TIMEOUT:-300} python3 benchmarks/gpu_speed.py --out "$OUT/gpu_speed.json" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log" | tail -60
if [ -n "${SWEEP:-}" ]; then
  timeout ${SWEEP_TIMEOUT:-120} python3 benchmarks/gpu_speed.py --sweep "$SWEEP" --out "$OUT/sweep.json" 2>&1 | tee "$OUT/sweep.log" | grep "^sweep" | tail -30
fi
