#!/usr/bin/env bash
# corpus/kjv.txt: the King James Bible as plain text (public domain), dumped by the `bible`
# program of Debian's bible-kjv package (scripts/setup.sh installs it) — the same text as
# ../shared/data/kjv.txt. Works on any fresh Debian machine; idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p corpus
if [ -s corpus/kjv.txt ]; then exit 0; fi
if command -v bible >/dev/null 2>&1; then
  bible gen1:1-rev22:21 > corpus/kjv.txt.tmp
elif [ -s ../shared/data/kjv.txt ]; then
  cp ../shared/data/kjv.txt corpus/kjv.txt.tmp
else
  echo "get_data: neither the bible program (apt-get install bible-kjv) nor ../shared/data/kjv.txt is here" >&2
  exit 1
fi
mv corpus/kjv.txt.tmp corpus/kjv.txt
echo "get_data: corpus/kjv.txt ($(wc -c < corpus/kjv.txt) bytes)"
