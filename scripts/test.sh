#!/usr/bin/env bash
# Sets up (installs missing Debian packages), builds and runs the whole test suite.
# This is the README's test command and what CI runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${KVF_BUILD_DIR:-build}
jobs=$(nproc 2>/dev/null || echo 2)
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j"$jobs"
shared=${KVF_SHARED:-../shared}
if [ ! -d "$shared/fixtures" ]; then
  echo "test.sh: warning: no $shared/fixtures: the Hugging Face parity and conversion-quality" \
       "checks will skip (put the shared folder beside the checkout or set KVF_SHARED)" >&2
fi
ctest --test-dir "$build" --output-on-failure -j"$jobs" "$@"
