#!/usr/bin/env bash
# Builds the libFuzzer targets of tests/fuzz with clang (ASan + UBSan) in build-fuzz and runs
# each for a bounded time (docs/fuzzing.md).
#
#   scripts/fuzz.sh [-t SECONDS] [-j PARALLEL] [TARGET...]
#
#   -t SECONDS   time per target (default $KVF_FUZZ_TIME or 60)
#   -j PARALLEL  targets run at once (default $KVF_FUZZ_JOBS or the number of cores, max 4)
#   TARGET       safetensors hf_config tokenizer_json tokenize yaml corpus (default: all)
#   --build-only build, do not run
#
# New corpus entries go to build-fuzz/corpus/TARGET (the seeds in tests/fuzz/corpus/TARGET are
# read, never written); crashers, leaks and timeouts to build-fuzz/crashes/TARGET-*; logs to
# build-fuzz/logs/TARGET.log. Exits non-zero when any target found something. Extra libFuzzer
# flags can be passed in $KVF_FUZZ_FLAGS. The build folder is $KVF_FUZZ_BUILD_DIR or build-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
all_targets=(safetensors hf_config tokenizer_json tokenize yaml corpus)
secs=${KVF_FUZZ_TIME:-60}
cores=$(nproc 2>/dev/null || echo 2)
jobs=${KVF_FUZZ_JOBS:-$((cores < 4 ? cores : 4))}
build=${KVF_FUZZ_BUILD_DIR:-build-fuzz}
build_only=0
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    -t) secs=$2; shift 2 ;;
    -j) jobs=$2; shift 2 ;;
    --build-only) build_only=1; shift ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=("${all_targets[@]}")
for t in "${targets[@]}"; do
  [ -f "tests/fuzz/fuzz_$t.c" ] || { echo "fuzz.sh: no target '$t' (${all_targets[*]})" >&2; exit 2; }
done

# ---- toolchain: clang with libFuzzer, plus the library's own packages ------------------------
bash scripts/setup.sh
fuzzer_ok() {
  command -v clang >/dev/null 2>&1 || return 1
  local d; d=$(mktemp -d)
  printf '#include <stdint.h>\n#include <stddef.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { return 0; }\n' > "$d/t.c"
  clang -fsanitize=fuzzer,address,undefined "$d/t.c" -o "$d/t" >/dev/null 2>&1
  local rc=$?
  rm -rf "$d"
  return $rc
}
if ! fuzzer_ok; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "fuzz.sh: installing clang and its sanitizer runtimes (libFuzzer)"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    clang libclang-rt-dev libomp-dev
  fuzzer_ok || { echo "fuzz.sh: clang -fsanitize=fuzzer does not work" >&2; exit 1; }
fi

# ---- build ----------------------------------------------------------------------------------
CC=clang cmake -S . -B "$build" -DKVF_FUZZ=ON -DKVF_CUDA=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j"$cores" --target $(printf 'fuzz_%s ' "${targets[@]}")
[ "$build_only" -eq 1 ] && exit 0

# ---- run ------------------------------------------------------------------------------------
mkdir -p "$build/crashes" "$build/logs"
export OMP_NUM_THREADS=1
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:symbolize=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
run_one() {
  local t=$1 dict=()
  mkdir -p "$build/corpus/$t"
  [ -f "tests/fuzz/dict/$t.dict" ] && dict=(-dict="tests/fuzz/dict/$t.dict")
  # shellcheck disable=SC2086
  "$build/tests/fuzz/fuzz_$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -max_len=65536 -print_final_stats=1 "${dict[@]}" -artifact_prefix="$build/crashes/$t-" \
    ${KVF_FUZZ_FLAGS:-} "$build/corpus/$t" "tests/fuzz/corpus/$t" > "$build/logs/$t.log" 2>&1
}
echo "fuzz.sh: ${targets[*]}: ${secs}s each, $jobs at a time (logs in $build/logs)"
failed=()
pids=() names=()
wait_one() { # waits for the oldest running target
  local rc=0
  wait "${pids[0]}" || rc=$?
  local t=${names[0]}
  pids=("${pids[@]:1}") names=("${names[@]:1}")
  local execs; execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$build/logs/$t.log" | grep -o '[0-9]*$' || true)
  if [ "$rc" -ne 0 ]; then
    failed+=("$t")
    echo "fuzz.sh: $t FAILED (exit $rc); see $build/logs/$t.log:"
    grep -E 'ERROR:|SUMMARY:|requirement failed|runtime error|Test unit written' "$build/logs/$t.log" | head -8 | sed 's/^/    /'
  else
    echo "fuzz.sh: $t ok (${execs:-?} runs, corpus $(ls "$build/corpus/$t" | wc -l) entries)"
  fi
}
for t in "${targets[@]}"; do
  [ ${#pids[@]} -ge "$jobs" ] && wait_one
  run_one "$t" & pids+=($!) names+=("$t")
done
while [ ${#pids[@]} -gt 0 ]; do wait_one; done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz.sh: findings in: ${failed[*]} (inputs under $build/crashes/)" >&2
  exit 1
fi
echo "fuzz.sh: no findings"
