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
