# gpu_env.sh — sourced by the GPU scripts (gpu_train.sh, gpu_convert.sh): makes the prebuilt
# binaries' libraries findable on the GPU machine. $LIBS (a tar.xz from bench/pack_device.sh:
# OpenBLAS, jansson, libyaml, PCRE2, libarchive, … that the bare image lacks) is unpacked into
# /tmp and put first on LD_LIBRARY_PATH; CUDA's own folders and PyTorch's nvidia/*/lib wheels
# go after it.
# Sourced twice (a script calling another), python3 would load the bundled libraries from
# LD_LIBRARY_PATH and then overwrite them while mapped (SIGBUS): extract once, without them.
if [ -f "${LIBS:-}" ]; then
    if [ ! -e /tmp/kvf_libs/.done ] || [ "$LIBS" -nt /tmp/kvf_libs/.done ]; then
        env -u LD_LIBRARY_PATH python3 -c "import sys, tarfile; tarfile.open(sys.argv[1]).extractall('/tmp/kvf_libs')" "$LIBS" &&
            touch /tmp/kvf_libs/.done
    fi
    case ":${LD_LIBRARY_PATH:-}:" in
        *":$(ls -d /tmp/kvf_libs/*/ 2>/dev/null | head -n 1 | sed 's:/$::'):"*) ;;
        *) export LD_LIBRARY_PATH="$(ls -d /tmp/kvf_libs/*/ | head -n 1 | sed 's:/$::')${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" ;;
    esac
fi
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
    $(python3 -c "import glob, site; print(' '.join(glob.glob(site.getsitepackages()[0] + '/nvidia/*/lib')))" 2>/dev/null); do
    case ":${LD_LIBRARY_PATH:-}:" in *":$d:"*) continue ;; esac
    [ -d "$d" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d"
done
