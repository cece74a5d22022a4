#!/usr/bin/env bash
# The GPU suite (scripts/gpu_suite.sh) on a machine without this package installed and without network access:
# install it from the tree without fetching anything (or run it from the source tree on PYTHONPATH), run the
# suite into benchmarks/results/NAME with the benchmark budget on the kernels (BENCH_BUDGET 180 s; BENCH_ARGS the
# loss and pooling kernels, their batch scaling and host time), record which commit the tree is, print the goals
# table and, where OUT is set, pack the folder as $OUT/results.tgz. About 8.5 minutes.
#
#   HJEPA_COMMIT=<hash of the tree> scripts/device_suite.sh NAME
#
# HJEPA_COMMIT: the commit the tree was copied from (a copy need not be a checkout of it: `git rev-parse` there can
# name another). Unpack with `tar xzf results.tgz` in the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: HJEPA_COMMIT=<hash> scripts/device_suite.sh NAME (e.g. gpu-h200-20261201)}
R=benchmarks/results/$NAME
mkdir -p "$R"
echo "${HJEPA_COMMIT:-unknown} (the commit the tree was copied from)" > "$R/commit.txt"
if ! { python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$R/install.txt" 2>&1 \
       && python3 -c "import hjepa_fast.kernels"; }; then
  echo "pip install failed: running from the source tree (PYTHONPATH)" | tee -a "$R/install.txt"
  ln -sfn ../kernels hjepa_fast/kernels
  export PYTHONPATH=$PWD
fi
BENCH_BUDGET=${BENCH_BUDGET:-180} BENCH_ARGS=${BENCH_ARGS:---only masked_loss temporal_pool op_batch host_overhead} \
  PYTHON=python3 timeout 540 scripts/gpu_suite.sh "$R" > "$R/suite.txt" 2>&1
status=$?
python3 -m benchmarks.goals "$R" > /dev/null 2>&1  # again: a suite stopped by its timeout did not reach it
cat "$R/goals.md" 2>/dev/null
tail -n 1 "$R/suite.txt"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/results.tgz" "$R"
fi
exit $status
