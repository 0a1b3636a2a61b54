#!/usr/bin/env bash
# The kvforge command line end to end: exit codes, error messages naming files, and the
# train → resume → eval → info → generate → plot → prepare → tokenize path on a tiny model,
# then convert (GQA → MQA → CLA, calib, --eval) and its errors on that model.
# Usage: test_cli.sh KVFORGE_BINARY  (CTest passes it). Prints "N passed, M failed".
set -u
K=$1
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
pass=0; fail=0
check() { # check NAME EXPECTED_RC COMMAND... ; stdout+stderr in $T/out
  local name=$1 want=$2; shift 2
  "$@" >"$T/out" 2>&1; local rc=$?
  if [ "$rc" -eq "$want" ]; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $name: rc $rc, want $want"; sed 's/^/  | /' "$T/out" | head -20; fi
}
has() { # has NAME PATTERN : the last check's output matches
  if grep -q -- "$2" "$T/out"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL $1: output lacks '$2'"; sed 's/^/  | /' "$T/out" | head -20; fi
}

check help 0 "$K" --help;                       has help-lists-train "train"
check no-args 2 "$K"
check unknown 2 "$K" frobnicate;                has unknown-msg "kvforge: error: unknown command 'frobnicate'"
check train-help 0 "$K" train --help;           has train-usage "usage: kvforge train"

# a small corpus with structure
for i in $(seq 1 400); do echo "the king spake unto the people of the land number $((i % 7))."; done > "$T/corpus.txt"
cat > "$T/run.yaml" <<YAML
run: {name: r, out_dir: $T/runs, seed: 2}
model: {attention: gqa2, d_model: 32, n_layers: 2, n_heads: 4}
data: {train: $T/corpus.txt, seq_len: 32, batch_size: 4}
optim: {lr: 3e-3, min_lr: 3e-4, warmup_steps: 2}
train: {steps: 20, log_every: 5, eval_every: 10, eval_tokens: 2048}
YAML
check train-bad-key 1 "$K" train "$T/run.yaml" --set model.n_head=4
has train-bad-key-msg "did you mean 'model.n_heads'"
printf 'model:\n  d_model: 32\n  nlayers: 2\n' > "$T/bad.yaml"
check yaml-unknown 1 "$K" train "$T/bad.yaml";  has yaml-unknown-msg "bad.yaml:3: unknown key 'model.nlayers'"
check train-half 0 "$K" train "$T/run.yaml" --stop-after 10
has progress-line "step 10/20 | loss"
check train-again 1 "$K" train "$T/run.yaml";   has needs-resume "--resume"
check resume 0 "$K" train "$T/run.yaml" --resume "$T/runs/r"
has resumed "done: 20 steps"
test -f "$T/runs/r/checkpoint/model.safetensors" && test -f "$T/runs/r/checkpoint/config.json" \
  && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL checkpoint files"; }
check metrics 0 grep -c '"val_loss"' "$T/runs/r/metrics.jsonl"; has two-evals "^2$"

check eval 0 "$K" eval --model "$T/runs/r/checkpoint" --data "$T/corpus.txt" --seq-len 16 --max-tokens 1000 --json
has eval-json '"tokens": 992'
check eval-missing 1 "$K" eval --model "$T/runs/r/checkpoint" --data "$T/nope.txt"
has eval-missing-msg "nope.txt"
check eval-usage 2 "$K" eval --data x
check info 0 "$K" info --model "$T/runs/r/checkpoint" --json
has info-json '"kv_bytes_per_token": 128'
check info-missing 1 "$K" info --model "$T/none";  has info-missing-msg "none"
check generate 0 "$K" generate --model "$T/runs/r/checkpoint" --prompt "the king" --max-new 10 --seed 1
has generate-prompt "the king"
check plot 0 "$K" plot "$T/runs/r/metrics.jsonl" -o "$T/c.svg"; has plot-table "| r |"
grep -q "<svg" "$T/c.svg" && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL svg"; }

check prepare 0 "$K" prepare --tokenizer byte --out "$T/shards" "$T/corpus.txt"
has prepare-msg "wrote 1 shard"
sed -e "s|train: $T/corpus.txt|train: $T/shards|" -e "s|name: r|name: s|" "$T/run.yaml" > "$T/run2.yaml"
check train-shards 0 "$K" train "$T/run2.yaml" --set train.steps=4 --set optim.warmup_steps=0
printf 'hello\n' > "$T/hello.txt"
check tokenize 0 sh -c "\"$K\" tokenize --tokenizer byte < \"$T/hello.txt\""; has tokenize-ids "^104 101 108 108 111 10$"
check detokenize 0 sh -c "echo '[104, 105]' | \"$K\" tokenize --tokenizer byte --decode"; has detokenize-text "^hi"
head -c 2000 "$T/runs/r/checkpoint/model.safetensors" > "$T/trunc.safetensors"
mkdir -p "$T/broken" && cp "$T/runs/r/checkpoint/config.json" "$T/runs/r/checkpoint/kvforge_tokenizer.json" "$T/broken/" \
  && cp "$T/trunc.safetensors" "$T/broken/model.safetensors"
check truncated 1 "$K" eval --model "$T/broken" --data "$T/corpus.txt"; has truncated-msg "model.safetensors"

# convert: the trained GQA model (4 query heads, 2 KV heads, 2 layers) → MQA → CLA, and errors
M="$T/runs/r/checkpoint"
no_out() { # no_out NAME DIR : DIR was not created and no hidden temp folder is left beside it
  if [ ! -e "$2" ] && ! ls -A "$(dirname "$2")" | grep -q "^\.$(basename "$2")\.convert\."; then pass=$((pass+1))
  else fail=$((fail+1)); echo "FAIL $1: $2 or its temp folder exists"; fi
}
check convert-help 0 "$K" convert --help;      has convert-usage "usage: kvforge convert"
check convert-mqa 0 "$K" convert --model "$M" --out "$T/cv-mqa" --to mqa
has convert-kv-line "KV cache: 128 → 64 bytes per token (50.0% less)"
has convert-streams "streaming tensor by tensor"
check convert-chain 0 "$K" convert --model "$T/cv-mqa" --out "$T/cv-cla" --to cla --share 2 --method mean
has convert-chain-kv "KV cache: 64 → 32 bytes per token (50.0% less)"
check convert-eval 0 "$K" convert --model "$M" --out "$T/cv-cla2" --to cla --producers 0 --eval "$T/corpus.txt" --seq-len 16 --eval-tokens 400
has convert-eval-loss "val loss: before [0-9.]* (ppl [0-9.]*) → after [0-9.]* (ppl [0-9.]*) on 384 tokens"
check convert-calib 0 "$K" convert --model "$M" --out "$T/cv-calib" --to mqa --method calib --calib "$T/corpus.txt" --calib-tokens 256 --calib-seq-len 32
has convert-calib-msg "calibration: 256 tokens"
for d in cv-mqa cv-cla cv-calib; do
  check "info-$d" 0 "$K" info --model "$T/$d" --json
  case $d in cv-mqa|cv-calib) has "info-$d-kv" '"kv_bytes_per_token": 64';; cv-cla) has "info-$d-kv" '"kv_bytes_per_token": 32';; esac
  check "eval-$d" 0 "$K" eval --model "$T/$d" --data "$T/corpus.txt" --seq-len 16 --max-tokens 200 --json
  has "eval-$d-json" '"tokens": 192'
  check "generate-$d" 0 "$K" generate --model "$T/$d" --prompt "the king" --max-new 5 --seed 1
  has "generate-$d-prompt" "the king"
done
# uptraining: a run starts from a converted folder (its architecture, weights, tokenizer)
cat > "$T/up.yaml" <<YAML
run: {name: up, out_dir: $T/runs}
model: {init_from: $T/cv-cla}
data: {train: $T/corpus.txt, seq_len: 16, batch_size: 4}
optim: {lr: 1e-3, warmup_steps: 1}
train: {steps: 5, log_every: 5, eval_tokens: 400}
YAML
check uptrain 0 "$K" train "$T/up.yaml";         has uptrain-done "done: 5 steps"
check uptrain-info 0 "$K" info --model "$T/runs/up/checkpoint" --json
has uptrain-kv '"kv_bytes_per_token": 32'
check uptrain-conflict 1 "$K" train "$T/up.yaml" --set run.name=up2 --set model.d_model=64
has uptrain-conflict-msg "model.d_model cannot be combined with model.init_from"
# kvforge uptrain: convert + train + report in one recipe
cat > "$T/rec.yaml" <<YAML
run: {name: rec, out_dir: $T/runs}
convert: {source: $M, to: mqa, method: calib, calib: $T/corpus.txt, calib_tokens: 256, calib_seq_len: 32}
eval: {data: $T/corpus.txt, seq_len: 16, max_tokens: 400}
data: {train: $T/corpus.txt, seq_len: 16, batch_size: 4}
optim: {lr: 1e-3, warmup_steps: 1}
train: {steps: 5, log_every: 5, eval_tokens: 400}
YAML
check uptrain-recipe 0 "$K" uptrain "$T/rec.yaml"
has uptrain-report-src "^source  *128 [0-9.]* (ppl"
has uptrain-report-conv "^converted  *64 [0-9.]* (ppl"
has uptrain-report-up "^uptrained  *64 [0-9.]* (ppl"
check uptrain-again 1 "$K" uptrain "$T/rec.yaml"; has uptrain-again-msg "already holds a converted model"
sed 's/to: mqa/to: mqa, kv_head: 2/' "$T/rec.yaml" > "$T/rec-bad.yaml"
check uptrain-unknown 1 "$K" uptrain "$T/rec-bad.yaml"; has uptrain-unknown-msg "rec-bad.yaml:2: unknown key 'convert.kv_head'"
printf 'model: {d_model: 64}\n' >> "$T/rec-bad.yaml"; sed -i 's/, kv_head: 2//; s/name: rec,/name: rec3,/' "$T/rec-bad.yaml"
check uptrain-model 1 "$K" uptrain "$T/rec-bad.yaml"; has uptrain-model-msg "model.d_model: an uptrain recipe takes its model from convert.source"
check uptrain-usage 2 "$K" uptrain
# usage errors: exit 2, a message naming the option, no output
check convert-no-to 2 "$K" convert --model "$M" --out "$T/cv-x"; has convert-no-to-msg "kvforge: error: .*--to"
check convert-bad-to 2 "$K" convert --model "$M" --out "$T/cv-x" --to moe; has convert-bad-to-msg "kvforge: error: --to must be"
check convert-divide 2 "$K" convert --model "$M" --out "$T/cv-x" --to gqa --kv-heads 3
has convert-divide-msg "kvforge: error: .*--kv-heads 3 does not divide the 4 query heads"
check convert-same 2 "$K" convert --model "$M" --out "$T/cv-x" --to gqa --kv-heads 2; has convert-same-msg "--kv-heads 2"
check convert-no-calib 2 "$K" convert --model "$M" --out "$T/cv-x" --to mqa --method calib
has convert-no-calib-msg "kvforge: error: .*needs calibration text: --calib PATH"
check convert-producers 2 "$K" convert --model "$M" --out "$T/cv-x" --to cla --producers 1
has convert-producers-msg "kvforge: error: .*--producers '1' must start with layer 0"
check convert-producers-range 2 "$K" convert --model "$M" --out "$T/cv-x" --to cla --producers 0,5
has convert-producers-range-msg "layer 5 is out of range"
check convert-mla-rank 2 "$K" convert --model "$M" --out "$T/cv-x" --to mla --kv-rank 999 --rope-dim 4 --style partial-rope --rope-select high
has convert-mla-rank-msg "kvforge: error: .*--kv-rank 999 is above the maximum"
check convert-mla-no-rope-dim 2 "$K" convert --model "$M" --out "$T/cv-x" --to mla --kv-rank 8
has convert-mla-no-rope-dim-msg "--rope-dim"
no_out convert-usage-no-output "$T/cv-x"
# runtime errors: exit 1
mkdir -p "$T/cv-full" && echo keep > "$T/cv-full/keep.txt"
check convert-out-exists 1 "$K" convert --model "$M" --out "$T/cv-full" --to mqa
has convert-out-exists-msg "kvforge: error: .*--out .*cv-full.*not empty"
[ "$(ls -A "$T/cv-full")" = "keep.txt" ] && pass=$((pass+1)) || { fail=$((fail+1)); echo "FAIL convert-out-untouched"; }
check convert-truncated 1 "$K" convert --model "$T/broken" --out "$T/cv-x" --to mqa
has convert-truncated-msg "kvforge: error: .*model.safetensors"
no_out convert-truncated-no-output "$T/cv-x"
check convert-truncated-mem 1 "$K" convert --model "$T/broken" --out "$T/cv-x" --to mqa --eval "$T/corpus.txt"
no_out convert-truncated-mem-no-output "$T/cv-x"
check convert-missing 1 "$K" convert --model "$T/none" --out "$T/cv-x" --to mqa; has convert-missing-msg "none"
GPT2="${KVF_SHARED:-$(dirname "$0")/../../shared}/fixtures/tiny-gpt2"
if [ -f "$GPT2/config.json" ]; then
  check convert-gpt2-mla 1 "$K" convert --model "$GPT2" --out "$T/cv-x" --to mla --kv-rank 8 --rope-dim 4
  has convert-gpt2-mla-msg "kvforge: error: .*--to mla: the source has no RoPE"
  no_out convert-gpt2-no-output "$T/cv-x"
fi

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
