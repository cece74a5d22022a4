#!/usr/bin/env bash
# The GPU suite, about 10 minutes on one GPU: the tests marked `gpu` (<= 180 s), the launch-setting sweep of the
# Triton kernels (<= 120 s), then the benchmarks at full size within a time budget (each writes its rows as it
# goes: one stopped at its share keeps what it measured) and the goals table. Everything lands in one folder:
#   device.txt       nvidia-smi, torch, triton, flash-attn / xformers versions
#   pytest_gpu.txt   the GPU tests' output (pytest_gpu.xml: JUnit)
#   sweep_launch.*   time and GB/s of each kernel under each launch setting
#   *.json           each benchmark's results; summary.md / summary.json: the one table
#   goals.md         the kernels' rows against their goals, the fastest launch settings (benchmarks.goals)
#
#   scripts/gpu_suite.sh [OUT_DIR]        (default benchmarks/results/gpu-<date>)
# PYTHON: the interpreter; BENCH_ARGS: the benchmark selection (default: the loss and pooling kernels, their batch
# scaling and host time, the EMA, the training step and planning speed, in that order); BENCH_BUDGET: their
# seconds (default 300).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
OUT=${1:-benchmarks/results/gpu-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
  "$PY" - <<'EOF'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda,
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else "NONE")
for name in ("triton", "flash_attn", "xformers"):
    try:
        print(name, importlib.import_module(name).__version__)
    except ImportError:
        print(name, "not installed")
EOF
} 2>&1 | tee "$OUT/device.txt"

timeout 180 "$PY" -m pytest -m gpu --continue-on-collection-errors -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" 2>&1 | tee "$OUT/pytest_gpu.txt"
tests=${PIPESTATUS[0]}

timeout 120 "$PY" -m benchmarks.sweep_launch --out "$OUT" 2>&1 | tee "$OUT/sweep_launch.txt"
sweep=${PIPESTATUS[0]}

# shellcheck disable=SC2086
BUDGET=${BENCH_BUDGET:-300}
timeout $((BUDGET + 20)) "$PY" -m benchmarks.run --out "$OUT" --budget "$BUDGET" \
  ${BENCH_ARGS:---only masked_loss temporal_pool op_batch host_overhead ema train_step planning} \
  2>&1 | tee "$OUT/benchmarks.txt"
bench=${PIPESTATUS[0]}
"$PY" -m benchmarks.goals "$OUT" > /dev/null

echo "gpu suite: tests exit $tests, sweep exit $sweep, benchmarks exit $bench; results in $OUT ($(head -n 2 "$OUT/device.txt" | tail -n 1))"
[ "$tests" -eq 0 ] && [ "$sweep" -eq 0 ] && [ "$bench" -eq 0 ]
