#!/usr/bin/env bash
# gpu_train.sh — GPU training check and benchmark in one go, on a machine with a GPU.
# Run from the repository root:  bench/gpu_train.sh
#
#   1. binaries: prebuilt ones in $BIN (kvforge, test_gpu, kvf_bench_train) when they run
#      here, else a Release build with -DKVF_CUDA=ON into $BUILD (those three targets)
#   2. test_gpu: the CUDA kernels against the CPU, AdamW/norm kernels, training steps and
#      kvf_train on cuda (label gpu; KVF_GPU_TESTS=... picks groups)
#   3. kvf_bench_train at the PyTorch peer's shapes (B 16, T 1024) for the six variants,
#      then T 8192 B 2 for each (no OOM), bf16 compute with f32 masters
#   3b. (part rc) the same B 16 T 1024 run with --recompute blocks: memory vs speed
#   4. KJV convergence: bench/kjv_converge.yaml trained on the CPU (f32) and on cuda (bf16),
#      both val losses, and `kvforge eval` of the cuda checkpoint on both devices
#   5. the PyTorch peer: B=16 STEPS=$STEPS python3 -u $PEER (torch.compile, fused AdamW)
# then a table: kvforge vs torch tokens/s (ratio) and peak memory per variant.
#   3c. (part nondet) the same with KVF_CUDNN_DETERMINISTIC=0: cuDNN may sum dQ with atomics,
#       as PyTorch's SDPA backward does (kvforge's default is bitwise reproducible)
# Logs and JSON go to $OUT (default /tmp/kvf_gpu_train). PARTS=test,bench,nondet,rc,long,kjv,torch
# picks steps. Exit status 0 when every step that ran passed.
set -u
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-/tmp/kvf_gpu_train}
BIN=${BIN:-.dev/bin}
BUILD=${BUILD:-build-gpu}
PEER=${PEER:-.dev/peer/torch_baseline.py}
KJV=${KJV:-.dev/kjv.txt}
STEPS=${STEPS:-20}
PARTS=${PARTS:-test,bench,nondet,rc,long,kjv,torch}
VARIANTS=${VARIANTS:-mha,gqa4,mqa,cla2_mha,sqa_q6kv6,mla_r256}
mkdir -p "$OUT"
RUNS=$(mktemp -d /tmp/kvf_gpu_runs.XXXXXX)
T0=$(date +%s)
FAILED=0
want() { [[ ",$PARTS," == *",$1,"* ]]; }
say() { echo "== $* ($(($(date +%s) - T0))s)"; }

echo "kvforge GPU training check — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null

# ---- 1. binaries --------------------------------------------------------------------------
# Shared libraries the prebuilt binaries need and a bare GPU machine may lack (OpenBLAS,
# jansson, libyaml, PCRE2, libarchive, ...): $LIBS, a tar.xz of them, unpacked into /tmp.
LIBS=${LIBS:-.dev/kvlibs.tar.xz}
. bench/gpu_env.sh
B=""
if [ -x "$BIN/test_gpu" ] && [ -x "$BIN/kvforge" ] && [ -x "$BIN/kvf_bench_train" ] &&
    ! ldd "$BIN/test_gpu" "$BIN/kvforge" "$BIN/kvf_bench_train" 2>/dev/null | grep -q "not found" &&
    "$BIN/kvforge" --help >/dev/null 2>&1; then
    B=$BIN
    say "using the prebuilt binaries in $BIN"
else
    ldd "$BIN/test_gpu" 2>&1 | grep "not found"
    say "building into $BUILD"
    if cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKVF_CUDA=ON ${CMAKE_ARGS:-} >"$OUT/build.log" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc)" --target kvforge test_gpu kvf_bench_train >>"$OUT/build.log" 2>&1; then
        mkdir -p "$RUNS/bin"
        cp "$BUILD/kvforge" "$BUILD/tests/test_gpu" "$BUILD/gpu/kvf_bench_train" "$RUNS/bin/"
        B=$RUNS/bin
    else
        tail -n 30 "$OUT/build.log"
        echo "GPU TRAIN CHECK FAILED: build"
        exit 1
    fi
fi

# ---- 2. GPU tests -------------------------------------------------------------------------
if want test; then
    say "test_gpu"
    if ! KVF_EXPECT_CUDNN=${KVF_EXPECT_CUDNN:-1} timeout "${TEST_TIMEOUT:-240}" "$B/test_gpu" >"$OUT/test_gpu.log" 2>&1; then
        FAILED=1
        grep -E ":[FE]:|relative error|failed|Error" "$OUT/test_gpu.log" | head -n 30
    fi
    grep -E "^trainer:|^cuDNN:|Checks:" "$OUT/test_gpu.log"
fi

# ---- 3. kvforge training throughput ---------------------------------------------------------
if want bench; then
    say "kvf_bench_train B 16 T 1024"
    timeout 300 "$B/kvf_bench_train" --variants "$VARIANTS" --batch 16 --seq 1024 --steps "$STEPS" \
        --warmup 3 --profile >"$OUT/bench_b16.jsonl" 2>"$OUT/bench.log" || FAILED=1
    cat "$OUT/bench.log"
fi
if want nondet; then
    say "kvf_bench_train B 16 T 1024, cuDNN's non-deterministic attention backward (as torch's)"
    KVF_CUDNN_DETERMINISTIC=0 timeout 300 "$B/kvf_bench_train" --variants "$VARIANTS" --batch 16 \
        --seq 1024 --steps "$STEPS" --warmup 3 >"$OUT/bench_b16_nondet.jsonl" 2>"$OUT/bench_nondet.log" || FAILED=1
    cat "$OUT/bench_nondet.log"
fi
if want rc; then
    say "kvf_bench_train B 16 T 1024, --recompute blocks"
    timeout 300 "$B/kvf_bench_train" --variants "$VARIANTS" --batch 16 --seq 1024 --steps "$STEPS" \
        --warmup 3 --recompute blocks >"$OUT/bench_b16_rc.jsonl" 2>"$OUT/bench_rc.log" || FAILED=1
    cat "$OUT/bench_rc.log"
fi
if want long; then
    say "kvf_bench_train B 2 T 8192"
    timeout 300 "$B/kvf_bench_train" --variants "$VARIANTS" --batch 2 --seq 8192 --steps 5 \
        --warmup 2 >"$OUT/bench_t8192.jsonl" 2>>"$OUT/bench.log" || FAILED=1
    grep "T  8192\|T 8192\|8192" "$OUT/bench.log" | tail -n 12
fi

# ---- 4. KJV convergence: CPU f32 vs cuda bf16 -------------------------------------------------
if want kjv; then
    say "KJV convergence (bench/kjv_converge.yaml)"
    for dev in cpu cuda; do
        "$B/kvforge" train bench/kjv_converge.yaml --set run.device=$dev --set run.name=$dev \
            --set run.out_dir="$RUNS/kjv" --set data.train="$KJV" >>"$OUT/kjv.log" 2>&1 || FAILED=1
    done
    grep -E "kvforge train:|^eval step|^step +300" "$OUT/kjv.log"
    for dev in cuda cpu; do
        printf "eval of the cuda checkpoint on %-4s: " $dev
        "$B/kvforge" eval --model "$RUNS/kjv/cuda/checkpoint" --data "$KJV" --max-tokens 65537 \
            --seq-len 128 --device $dev --json 2>&1 | tee -a "$OUT/kjv.log" || FAILED=1
    done
fi

# ---- 5. the PyTorch peer -----------------------------------------------------------------------
if want torch; then
    say "PyTorch peer ($PEER, B=16 STEPS=$STEPS)"
    OUT="$OUT" B=16 STEPS="$STEPS" ONLY="$VARIANTS" timeout "${TORCH_TIMEOUT:-420}" \
        python3 -u "$PEER" >"$OUT/torch.log" 2>&1 || { FAILED=1; tail -n 20 "$OUT/torch.log"; }
    grep -v "^ *$" "$OUT/torch.log" | grep -E "^\{|^(mha|gqa4|mqa|cla2_mha|sqa_q6kv6|mla_r256) " | cut -c1-200
fi

# ---- table ------------------------------------------------------------------------------------
say "summary"
python3 - "$OUT" <<'EOF' | tee "$OUT/summary.txt"
import json, os, sys
out = sys.argv[1]
def rows(name):
    p = os.path.join(out, name)
    r = {}
    if os.path.exists(p):
        for line in open(p):
            line = line.strip()
            if line.startswith("{"):
                d = json.loads(line); r[d["variant"]] = d
    return r
k16, k8k, knd = rows("bench_b16.jsonl"), rows("bench_t8192.jsonl"), rows("bench_b16_nondet.jsonl")
tp = os.path.join(out, "torch_baseline.json")
t = json.load(open(tp)) if os.path.exists(tp) else {}
print("| variant | kvforge tok/s | torch tok/s | ratio | non-det. tok/s | ratio | kvforge peak GB | torch peak GB | kvforge T8192 B2 tok/s | T8192 peak GB |")
print("|---|---|---|---|---|---|---|---|---|---|")
for v in ["mha", "gqa4", "mqa", "cla2_mha", "sqa_q6kv6", "mla_r256"]:
    k, tv, l = k16.get(v, {}), t.get(v, {}), k8k.get(v, {})
    kt, tt = k.get("tok_per_s"), tv.get("tok_per_s")
    f = lambda x, fmt: (fmt % x) if isinstance(x, (int, float)) else "-"
    ratio = f(kt / tt, "%.2f") if kt and tt else "-"
    nd = knd.get(v, {}).get("tok_per_s")
    rnd = f(nd / tt, "%.2f") if nd and tt else "-"
    print(f"| {v} | {f(kt, '%.0f')} | {f(tt, '%.0f')} | {ratio} | {f(nd, '%.0f')} | {rnd} | {f(k.get('peak_mem_gb'), '%.1f')} | "
          f"{f(tv.get('peak_mem_gb'), '%.1f')} | {f(l.get('tok_per_s'), '%.0f')} | {f(l.get('peak_mem_gb'), '%.1f')} |")
EOF
echo
if [ $FAILED -eq 0 ]; then echo "GPU TRAIN CHECK PASSED ($(($(date +%s) - T0))s)"; else echo "GPU TRAIN CHECK FAILED ($(($(date +%s) - T0))s)"; fi
rm -rf "$RUNS"
exit $FAILED
