#!/usr/bin/env bash
# The whole device check in one call on a lent GPU machine (bare: python3 with torch, triton and timm, no
# network): install the package without fetching anything (or fall back to PYTHONPATH), run
# scripts/gpu_suite.sh into benchmarks/results/NAME, record the commit that was sent, and pack the folder as
# $OUT/results.tgz (the device tool returns at most 8 files). About 8.5 minutes.
#
#   HJEPA_COMMIT=<hash of the committed tree sent> scripts/device_suite.sh NAME
#
# HJEPA_COMMIT: `git rev-parse` on the device reads the session's starting commit, not the tree that was
# sent, so the caller names it. Unpack here with `tar xzf <files_at>/results.tgz` in the repository root.
set -uo pipefail
cd "$(dirname "$0")/.."
NAME=${1:?usage: HJEPA_COMMIT=<hash> scripts/device_suite.sh NAME (e.g. gpu-h200-20261201)}
R=benchmarks/results/$NAME
mkdir -p "$R"
echo "${HJEPA_COMMIT:-unknown} (the committed tree sent to the device)" > "$R/commit.txt"
if ! { python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . > "$R/install.txt" 2>&1 \
       && python3 -c "import hjepa_fast.kernels"; }; then
  echo "pip install failed: running from the source tree (PYTHONPATH)" | tee -a "$R/install.txt"
  ln -sfn ../kernels hjepa_fast/kernels
  export PYTHONPATH=$PWD
fi
# a 180 s benchmark budget keeps the call near 8.5 minutes (tests <= 180 s, sweep <= 120 s): with a machine's
# start it fits a 15-minute device allowance. The budget goes to the benchmarks of the kernels still waiting
# for GPU numbers (BENCH_BUDGET / BENCH_ARGS override; gpu_suite.sh's own default runs more)
BENCH_BUDGET=${BENCH_BUDGET:-180} BENCH_ARGS=${BENCH_ARGS:---only masked_loss temporal_pool op_batch host_overhead} \
  PYTHON=python3 timeout 540 scripts/gpu_suite.sh "$R" > "$R/suite.txt" 2>&1
status=$?
python3 -m benchmarks.goals "$R" > /dev/null 2>&1  # again: the suite may have been stopped before its own call
cat "$R/goals.md" 2>/dev/null  # what the session needs first, in the command's output
tail -n 1 "$R/suite.txt"
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/results.tgz" "$R"
fi
exit $status
