#!/usr/bin/env bash
# gpu_check.sh — build kvforge with the CUDA backend and check it on a GPU machine.
# Run from the repository root:  bench/gpu_check.sh
#
#   1. configure a Release build with -DKVF_CUDA=ON into build-gpu (BUILD=... to change)
#   2. build it (all cores)
#   3. ctest -L gpu: the CUDA kernels against the CPU reference (tests/test_gpu.c)
#   4. the CPU suite (every other test, in parallel)
#   5. kvf_bench_gpu --quick: kernel timings (GEMM, attention, RMSNorm, cross-entropy)
# then prints a summary. Logs: $BUILD/gpu_check/*.log. Exit status 0 only when the GPU
# tests ran (not skipped) and every step passed. Takes about 4-5 minutes on a 16-core
# machine (the CPU suite alone needs ~6 minutes on 2 cores). Extra cmake options: CMAKE_ARGS="-DKVF_CUDA_ARCHS=80" etc.
set -u
cd "$(dirname "$0")/.." || exit 2

BUILD=${BUILD:-build-gpu}
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 8)}
LOGS="$BUILD/gpu_check"
mkdir -p "$LOGS"
T0=$(date +%s)
declare -a SUMMARY
FAILED=0

step() { # step NAME TIMEOUT_S COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0 rc
    t0=$(date +%s)
    echo "== $name: $*"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t0))
    if [ $rc -eq 0 ]; then
        SUMMARY+=("$(printf '%-10s ok      %4ds' "$name" "$dt")")
    else
        [ $rc -eq 124 ] && echo "   (timed out after ${limit}s)" >>"$LOGS/$name.log"
        SUMMARY+=("$(printf '%-10s FAILED  %4ds  (rc %d, see %s)' "$name" "$dt" "$rc" "$LOGS/$name.log")")
        FAILED=1
        tail -n 40 "$LOGS/$name.log"
    fi
    return $rc
}

echo "kvforge GPU check — $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null ||
    echo "(nvidia-smi not available)"
command -v nvcc >/dev/null && nvcc --version | tail -n 2 | head -n 1

# shellcheck disable=SC2086
step configure 300 cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKVF_CUDA=ON ${CMAKE_ARGS:-} &&
    step build 420 cmake --build "$BUILD" -j "$JOBS"

if [ $FAILED -eq 0 ]; then
    step gpu-tests 300 ctest --test-dir "$BUILD" -L gpu --output-on-failure --timeout 280
    if grep -q "Skipped\|Not Run" "$LOGS/gpu-tests.log"; then
        unset 'SUMMARY[-1]'
        SUMMARY+=("gpu-tests  SKIPPED: no usable CUDA device — run $BUILD/tests/test_gpu to see why")
        FAILED=1
    fi
    step cpu-tests 400 ctest --test-dir "$BUILD" -LE gpu -j "$JOBS" --output-on-failure --timeout 380 &&
        grep -E "tests passed|tests failed" "$LOGS/cpu-tests.log"
    step bench 150 "$BUILD/gpu/kvf_bench_gpu" --quick && cat "$LOGS/bench.log"
fi

echo
echo "== summary ($(($(date +%s) - T0))s total)"
for line in "${SUMMARY[@]}"; do echo "  $line"; done
if [ $FAILED -eq 0 ]; then echo "GPU CHECK PASSED"; else echo "GPU CHECK FAILED"; fi
exit $FAILED
