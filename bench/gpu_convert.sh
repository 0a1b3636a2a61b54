#!/usr/bin/env bash
# gpu_convert.sh — `kvforge convert --device cuda` checked and timed in one go, on a machine
# with a GPU. Run from the repository root:  bench/gpu_convert.sh
#
#   1. binaries: prebuilt ones in $BIN (kvforge, test_gpu, kvf_make_random) with the shared
#      libraries they need in $LIBS (a tar.xz, as bench/gpu_train.sh carries them), else a
#      Release build with -DKVF_CUDA=ON into $BUILD
#   2. test_gpu, groups $GPU_TESTS (default: the conversion groups calib, linalg, convert;
#      empty: all), with KVF_SHARED=$SHARED for the tiny-llama-mha fixture
#   3. a random Llama from kvf_make_random ($LAYERS layers, hidden $HIDDEN, $HEADS heads, ffn
#      $FFN, vocab 512, bf16) with the byte-level tokenizer fixture, converted --to mla
#      --kv-rank $RANK --rope-dim $ROPE with --calib $KJV ($CALIB_TOKENS tokens), on cuda and
#      then on the cpu (at most $CPU_TIMEOUT s); both logs and wall times
# Logs go to $OUT (default /tmp/kvf_gpu_convert). Exit status 0 when every step passed.
set -u
cd "$(dirname "$0")/.." || exit 2

OUT=${OUT:-/tmp/kvf_gpu_convert}
BIN=${BIN:-.dev/gconv/bin}
LIBS=${LIBS:-.dev/gconv/kvlibs.tar.xz}
SHARED=${SHARED:-.dev/gconv/shared}
KJV=${KJV:-$SHARED/data/kjv.txt}
BUILD=${BUILD:-build-gpu}
GPU_TESTS=${GPU_TESTS-calib,linalg,convert}
LAYERS=${LAYERS:-8} HIDDEN=${HIDDEN:-2048} HEADS=${HEADS:-16} FFN=${FFN:-5632}
RANK=${RANK:-512} ROPE=${ROPE:-64} CALIB_TOKENS=${CALIB_TOKENS:-65536}
CPU_TIMEOUT=${CPU_TIMEOUT:-240} GPU_TIMEOUT=${GPU_TIMEOUT:-300}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/kvf_gpu_conv.XXXXXX)
T0=$(date +%s)
FAILED=0
say() { echo "== $* ($(($(date +%s) - T0))s)"; }

echo "kvforge GPU conversion check — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null
echo "cpu cores: $(nproc)"

# ---- 1. binaries -------------------------------------------------------------------------------
. bench/gpu_env.sh
B=""
if [ -x "$BIN/test_gpu" ] && [ -x "$BIN/kvforge" ] && [ -x "$BIN/kvf_make_random" ] &&
    ! ldd "$BIN/test_gpu" "$BIN/kvforge" 2>/dev/null | grep -q "not found" && "$BIN/kvforge" --help >/dev/null 2>&1; then
    B=$BIN
    say "using the prebuilt binaries in $BIN"
else
    ldd "$BIN/kvforge" 2>&1 | grep "not found"
    say "building into $BUILD"
    if cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKVF_CUDA=ON >"$OUT/build.log" 2>&1 &&
        cmake --build "$BUILD" -j "$(nproc)" --target kvforge test_gpu kvf_make_random >>"$OUT/build.log" 2>&1; then
        B=$WORK/bin
        mkdir -p "$B" && cp "$BUILD/kvforge" "$BUILD/tests/test_gpu" "$BUILD/kvf_make_random" "$B/"
    else
        tail -n 30 "$OUT/build.log"
        echo "GPU CONVERT CHECK FAILED: build"
        exit 1
    fi
fi

# ---- 2. GPU tests ------------------------------------------------------------------------------------
say "test_gpu (groups: ${GPU_TESTS:-all})"
if ! KVF_GPU_TESTS="$GPU_TESTS" KVF_SHARED="$SHARED" timeout "${TEST_TIMEOUT:-240}" "$B/test_gpu" >"$OUT/test_gpu.log" 2>&1; then
    FAILED=1
    grep -E ":[FE]:|relative error|failed|Error|off by" "$OUT/test_gpu.log" | head -n 30
fi
grep -E "^convert .* on cuda|Checks:" "$OUT/test_gpu.log"

# ---- 3. a larger random model: --device cuda vs cpu --------------------------------------------------
say "kvf_make_random: $LAYERS layers, hidden $HIDDEN, $HEADS heads, ffn $FFN"
M=$WORK/model
if "$B/kvf_make_random" "$M" --layers "$LAYERS" --hidden "$HIDDEN" --heads "$HEADS" --ffn "$FFN" --vocab 512 \
    --max-seq-len 2048 >"$OUT/make_random.log" 2>&1; then
    cp "$SHARED/fixtures/tok-bytelevel-512/tokenizer.json" "$M/"
    for dev in cuda cpu; do
        say "convert --device $dev --to mla --kv-rank $RANK --rope-dim $ROPE --calib-tokens $CALIB_TOKENS"
        t=$(date +%s%N)
        lim=$([ $dev = cpu ] && echo "$CPU_TIMEOUT" || echo "$GPU_TIMEOUT")
        timeout "$lim" "$B/kvforge" convert --model "$M" --out "$WORK/mla_$dev" --to mla --kv-rank "$RANK" \
            --rope-dim "$ROPE" --calib "$KJV" --calib-tokens "$CALIB_TOKENS" --device $dev >"$OUT/convert_$dev.log" 2>&1
        rc=$?
        ms=$((($(date +%s%N) - t) / 1000000))
        printf "convert --device %s: %d.%03d s wall (exit %d)\n" $dev $((ms / 1000)) $((ms % 1000)) $rc |
            tee -a "$OUT/summary.txt"
        if [ $rc -eq 124 ] && [ $dev = cpu ]; then
            echo "(the cpu run was stopped at $lim s: its time is a lower bound)"
        elif [ $rc -ne 0 ]; then
            FAILED=1
        fi
        grep -E "^calibration: [0-9]+ tokens|accumulated|^factorisations|^layer [0-9]+:|error" "$OUT/convert_$dev.log"
        rm -rf "$WORK/mla_$dev"
    done
else
    tail -n 5 "$OUT/make_random.log"
    FAILED=1
fi
if [ $FAILED -eq 0 ]; then echo "GPU CONVERT CHECK PASSED ($(($(date +%s) - T0))s)"; else echo "GPU CONVERT CHECK FAILED ($(($(date +%s) - T0))s)"; fi
rm -rf "$WORK"
exit $FAILED
