#!/usr/bin/env bash
# The README's main command: sets up, builds and runs kvforge's main job on a built-in
# default. Training, conversion and evaluation are being built (see docs/status.md); until
# they land, the main job is the engine's own check: the command overview and the CPU
# benchmark of matmul and fused attention (forward + backward).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${KVF_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)"
"$build"/kvforge --help
echo
"$build"/kvf_bench_cpu --quick
