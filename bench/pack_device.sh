#!/usr/bin/env bash
# pack_device.sh — builds the payload the GPU scripts carry to the GPU machine, whose image
# has CUDA and PyTorch but not the Debian -dev packages kvforge links (OpenBLAS, jansson,
# libyaml, PCRE2, libarchive, Check). Run here, then hand `.dev` to the device call:
#
#   bench/pack_device.sh
#   device run, carry [".dev/bin", ".dev/kvlibs.tar.xz", ".dev/kjv.txt", ".dev/peer", ".dev/shared"]
#   (not the whole .dev, which may hold other work):
#       bench/gpu_train.sh        # tests, throughput vs torch (+ recompute), T 8192, KJV
#       BIN=.dev/bin LIBS=.dev/kvlibs.tar.xz SHARED=.dev/shared bench/gpu_convert.sh
#
# Writes (all git-ignored):
#   .dev/bin/          kvforge, test_gpu, kvf_bench_train (+ kvf_bench_recompute, kvf_make_random
#                      for gpu_convert.sh with PACK_CONVERT=1)
#                      (Release, -DKVF_CUDA=ON, -DKVF_NATIVE=OFF: no -march=native surprises)
#   .dev/kvlibs.tar.xz the shared libraries they need beyond glibc and CUDA, in one folder
#   .dev/kjv.txt       the corpus;  .dev/peer/torch_baseline.py  the PyTorch peer
#   .dev/shared/       fixtures/tiny-llama-mha, fixtures/tok-bytelevel-512, data/kjv.txt
# The carry limit is 64 MiB: the script prints the payload's size and fails above it.
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared}
BUILD=${BUILD:-build-dev}
[ -d "$SHARED/fixtures" ] || { echo "pack_device.sh: no $SHARED/fixtures (set SHARED=)" >&2; exit 2; }

cmake -S . -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DKVF_CUDA=ON -DKVF_NATIVE=OFF >/dev/null
cmake --build "$BUILD" -j"$(nproc)" --target kvforge test_gpu kvf_bench_train kvf_bench_recompute \
    kvf_make_random >/dev/null
bins=("$BUILD/kvforge" "$BUILD/tests/test_gpu" "$BUILD/gpu/kvf_bench_train")
# the conversion script's tools only when asked: the carry limit is tight
[ "${PACK_CONVERT:-0}" = 1 ] && bins+=("$BUILD/kvf_bench_recompute" "$BUILD/kvf_make_random")

rm -rf .dev/bin .dev/kvlibs.tar.xz .dev/shared .dev/peer .dev/kjv.txt
mkdir -p .dev/bin .dev/peer .dev/shared/fixtures .dev/shared/data
cp "${bins[@]}" .dev/bin/

# every library the binaries resolve here, except glibc's own and CUDA's (the GPU machine has
# its driver and toolkit; its versions must be the ones used)
libdir=$(mktemp -d)
mkdir "$libdir/kvlibs"
ldd "${bins[@]}" | awk '/=> \//{print $3}' | sort -u | while read -r lib; do
    case "$(basename "$lib")" in
        libc.so*|libm.so*|libdl.so*|librt.so*|libpthread.so*|ld-linux*|libresolv.so*) ;;
        libcuda.so*|libcudart*|libcublas*|libcusolver*|libcusparse*|libnvJitLink*|libcudnn*) ;;
        *) cp -L "$lib" "$libdir/kvlibs/" ;;
    esac
done
tar -C "$libdir" -cJf .dev/kvlibs.tar.xz kvlibs
rm -rf "$libdir"

cp "$SHARED/data/kjv.txt" .dev/kjv.txt
cp "$SHARED/data/kjv.txt" .dev/shared/data/kjv.txt
cp "$SHARED/bench/torch_baseline.py" .dev/peer/
cp -r "$SHARED/fixtures/tiny-llama-mha" "$SHARED/fixtures/tok-bytelevel-512" .dev/shared/fixtures/

size=$(du -sm .dev/bin .dev/kvlibs.tar.xz .dev/kjv.txt .dev/peer .dev/shared | awk '{s += $1} END {print s}')
echo "pack_device.sh: .dev payload ${size} MiB (limit 64): $(ls .dev/bin | tr '\n' ' ')"
[ "$size" -le 64 ] || { echo "pack_device.sh: payload too large to carry" >&2; exit 1; }
