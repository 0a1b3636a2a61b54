#!/usr/bin/env bash
# Installs every Debian package kvforge needs. Idempotent: installs only what is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config
      libopenblas-openmp-dev liblapacke-dev libarchive-dev check libsubunit-dev
      libjansson-dev libyaml-dev libpcre2-dev libomp-dev bible-kjv)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "setup: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "setup: all packages present"
fi

# Where the CUDA backend will be built (nvcc present): cudnn-frontend's headers, for cuDNN's
# fused attention (gpu/cudnn_attention.cpp). Header-only; libcudnn itself is loaded at run
# time on the GPU machine. Without them the backend builds with its own attention kernels.
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  platlib=$(python3 -c "import sysconfig; print(sysconfig.get_paths()['platlib'])" 2>/dev/null || true)
  if [ -n "$platlib" ] && [ ! -f "$platlib/include/cudnn_frontend.h" ]; then
    echo "setup: installing cudnn-frontend headers (pip nvidia-cudnn-frontend==1.32.0)"
    python3 -m pip install --quiet --no-deps nvidia-cudnn-frontend==1.32.0 ||
      echo "setup: cudnn-frontend not installed; CUDA attention will use kvforge's own kernels"
  fi
fi
