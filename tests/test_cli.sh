#!/usr/bin/env bash
# The kvforge command line end to end: exit codes, error messages naming files, and the
# train → resume → eval → info → generate → plot → prepare → tokenize path on a tiny model.
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

echo "cli: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
