#!/usr/bin/env bash
# The README's main command: set up, build, and run kvforge's main job on a built-in
# default — train six attention designs from scratch on the King James Bible at equal
# parameter count, compare validation loss against KV-cache size, draw the loss curves,
# then evaluate and sample from one of the models. A few minutes on 2 CPU cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
build=${KVF_BUILD_DIR:-build}
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc 2>/dev/null || echo 2)"
bash scripts/get_data.sh
export KVF_BIN="$build/kvforge"
bash scripts/compare.sh recipes/scratch/demo.yaml "$@"
echo
"$KVF_BIN" info --model runs/demo/gqa2/checkpoint
tail -c 100000 corpus/kjv.txt > runs/demo/heldout.txt
"$KVF_BIN" eval --model runs/demo/gqa2/checkpoint --data runs/demo/heldout.txt --seq-len 96
"$KVF_BIN" generate --model runs/demo/gqa2/checkpoint --prompt "And God said" --max-new 120 --seed 1
echo "loss curves: runs/demo/curves.svg"
