#!/usr/bin/env bash
# Train one run config once per attention design and compare them:
#   scripts/compare.sh CONFIG.yaml [DESIGN...] [--set key=value...]
# Prints a table of validation loss against KV-cache bytes per token and writes the loss
# curves of every run to OUT_DIR/curves.svg (OUT_DIR = the config's run.out_dir).
set -euo pipefail
cd "$(dirname "$0")/.."
kvf=${KVF_BIN:-build/kvforge}
config=$1; shift
designs=(); sets=()
while [ $# -gt 0 ]; do
  case $1 in
    --set) sets+=(--set "$2"); shift 2 ;;
    *) designs+=("$1"); shift ;;
  esac
done
[ ${#designs[@]} -gt 0 ] || designs=(mha gqa2 mqa sqa_q2kv2 cla2_mha mla_r32)
out=$(sed -n 's/^ *out_dir: *//p' "$config" | head -1); out=${out:-runs}
metrics=()
for d in "${designs[@]}"; do
  echo "== $d"
  rm -rf "$out/$d"
  "$kvf" train "$config" --set model.attention="$d" --set run.name="$d" ${sets[@]+"${sets[@]}"}
  metrics+=("$out/$d/metrics.jsonl")
done
echo
"$kvf" plot "${metrics[@]}" -o "$out/curves.svg"
