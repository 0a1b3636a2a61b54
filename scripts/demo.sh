#!/usr/bin/env bash
# The README's main command: set up, build, and run kvforge's main job on a built-in
# default — train six attention designs from scratch on the King James Bible at equal
# parameter count, compare validation loss against KV-cache size, draw the loss curves,
# then evaluate and sample from one of the models, and finally convert the trained MHA model
# to cheaper attention designs without any retraining (GQA with mean pooling vs calibrated
# PCA, DeepSeek-style and partial-RoPE MLA), printing validation loss and KV-cache bytes per
# token before and after. A few minutes on 2 CPU cores.
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

# Conversions of the trained MHA model (docs/conversions.md). Calibration text comes from the
# start of the corpus (training text), evaluation from the held-out tail used above.
echo
if [ ! -d runs/demo/mha/checkpoint ]; then # designs chosen on the command line without mha
  echo "loss curves: runs/demo/curves.svg (no mha run: conversions skipped)"
  exit 0
fi
echo "== convert runs/demo/mha/checkpoint (no training after the conversion)"
head -c 400000 corpus/kjv.txt > runs/demo/calib.txt
data=(--eval runs/demo/heldout.txt --seq-len 96 --eval-tokens 16384)
calib=(--calib runs/demo/calib.txt --calib-tokens 16384)
rows=()
convert() { # NAME OPTIONS...: convert, keep the KV and loss lines of the report
  local name=$1; shift
  rm -rf "runs/demo/convert/$name"; mkdir -p runs/demo/convert
  "$KVF_BIN" convert --model runs/demo/mha/checkpoint --out "runs/demo/convert/$name" "$@" "${data[@]}" \
    > "runs/demo/convert/$name.log"
  local kv loss
  kv=$(sed -n 's/^KV cache: \([0-9]*\) → \([0-9]*\) bytes.*/\1 \2/p' "runs/demo/convert/$name.log")
  loss=$(sed -n 's/^val loss: before \([0-9.]*\) .* after \([0-9.]*\) .*/\1 \2/p' "runs/demo/convert/$name.log")
  rows+=("$name $kv $loss")
}
# MHA: 4 heads of 24 dims, 192 K/V values per token per layer; each target below keeps half
convert gqa2-mean --to gqa --kv-heads 2 --method mean
convert gqa2-calib --to gqa --kv-heads 2 --method calib "${calib[@]}"
convert mla-deepseek --to mla --style deepseek --rope-dim 24 --kv-rank 72 "${calib[@]}"
convert mla-partial --to mla --style partial-rope --rope-dim 6 --kv-rank 72 "${calib[@]}"
printf '\n%-14s %-16s %s\n' conversion "KV bytes/token" "val loss (before → after)"
for r in "${rows[@]}"; do
  read -r name kv0 kv1 l0 l1 <<< "$r"
  printf '%-14s %-18s %s\n' "$name" "$kv0 → $kv1" "$l0 → $l1"
done
echo "converted checkpoints: runs/demo/convert/ (reports: runs/demo/convert/*.log)"
echo "loss curves: runs/demo/curves.svg"
