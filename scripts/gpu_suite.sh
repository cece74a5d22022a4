#!/usr/bin/env bash
# The whole GPU suite in one command, at most 10 minutes on one GPU: the tests marked `gpu`, then every
# benchmark (kernel microbenchmarks at their --quick shapes, the end-to-end training step and the
# scaling sweeps at full size, spread over a fixed time budget). Everything lands in one folder:
#   device.txt       nvidia-smi, torch, triton, flash-attn / xformers versions
#   pytest_gpu.txt   the GPU tests' output (pytest_gpu.xml: JUnit)
#   *.json, *.png    each benchmark's results and plot; summary.md / summary.json: the one table
#
#   scripts/gpu_suite.sh [OUT_DIR]        (default benchmarks/results/gpu-<date>)
# Budget: tests <= 150 s, benchmarks <= 400 s (+ start-up); PYTHON picks the interpreter.
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

timeout 150 "$PY" -m pytest -m gpu -p no:cacheprovider --junitxml="$OUT/pytest_gpu.xml" 2>&1 | tee "$OUT/pytest_gpu.txt"
tests=${PIPESTATUS[0]}

timeout 420 "$PY" -m benchmarks.run --out "$OUT" --budget 400 --micro-quick
bench=$?

echo "gpu suite: tests exit $tests, benchmarks exit $bench; results in $OUT ($(head -n 2 "$OUT/device.txt" | tail -n 1))"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
