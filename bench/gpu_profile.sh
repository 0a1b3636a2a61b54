#!/usr/bin/env bash
# gpu_profile.sh — where a training step's GPU time goes, kvforge beside the PyTorch peer.
# Run from the repository root on the GPU machine, after bench/pack_device.sh here:
#
#   VARIANT=mha bench/gpu_profile.sh
#
#   1. kvforge: Nsight Compute times every kernel of one kvf_bench_train step (B 16, T 1024,
#      warm-up 0, --clock-control none --cache-control none: the clocks and caches as a
#      real run has them); kernels are grouped by name into a table (ms, count, share).
#   2. the peer: torch.profiler over 3 compiled steps of the same variant (after 3 warm-up
#      steps), CUDA time per kernel name divided by 3.
# Writes $OUT/kvforge_kernels.{csv,txt} and $OUT/torch_kernels.txt.
set -u
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/kvf_gpu_profile}
BIN=${BIN:-.dev/bin}
PEER=${PEER:-.dev/peer/torch_baseline.py}
VARIANT=${VARIANT:-mha}
B=${B:-16}
mkdir -p "$OUT"
LIBS=${LIBS:-.dev/kvlibs.tar.xz}
. bench/gpu_env.sh

NCU=$(command -v ncu || ls /usr/local/cuda/bin/ncu 2>/dev/null || true)
if [ -n "$NCU" ]; then
    echo "== ncu on kvf_bench_train $VARIANT B $B"
    timeout "${NCU_TIMEOUT:-300}" "$NCU" --clock-control none --cache-control none \
        --metrics gpu__time_duration.sum --csv \
        "$BIN/kvf_bench_train" --variants "$VARIANT" --batch "$B" --seq 1024 --steps 1 --warmup 0 \
        ${KVF_ARGS:-} >"$OUT/kvforge_kernels.csv" 2>"$OUT/ncu.log" || tail -n 5 "$OUT/ncu.log"
    python3 - "$OUT/kvforge_kernels.csv" <<'PY' | tee "$OUT/kvforge_kernels.txt"
import csv, sys, collections
rows = [r for r in csv.reader(l for l in open(sys.argv[1]) if l.startswith('"'))]
if not rows: sys.exit("no ncu rows")
h = rows[0]; ki, mi, vi, ui = h.index("Kernel Name"), h.index("Metric Name"), h.index("Metric Value"), h.index("Metric Unit")
t = collections.defaultdict(float); n = collections.Counter()
for r in rows[1:]:
    if r[mi] != "gpu__time_duration.sum": continue
    v = float(r[vi].replace(",", "")); u = r[ui]
    ms = v / 1e6 if u == "nsecond" else v / 1e3 if u == "usecond" else v if u == "msecond" else v / 1e6
    name = r[ki].split("(")[0][:90]
    t[name] += ms; n[name] += 1
tot = sum(t.values())
print(f"kvforge: {sum(n.values())} kernels, {tot:.2f} ms of kernel time in one step (incl. any setup kernels)")
for k, v in sorted(t.items(), key=lambda x: -x[1])[:40]:
    print(f"{v:9.3f} ms {n[k]:5d}x {100*v/tot:5.1f}%  {k}")
PY
else
    echo "no ncu here"
fi

echo "== torch.profiler on the peer, $VARIANT B $B"
VARIANT=$VARIANT B=$B PEER=$PEER timeout "${TORCH_TIMEOUT:-300}" python3 - <<'PY' 2>&1 | tee "$OUT/torch_kernels.txt"
import os, torch, collections
src = open(os.environ["PEER"]).read()
# the peer's model definitions only (everything before its driver loop)
exec(compile(src[:src.index("B = int(os.environ")], "peer", "exec"))
name = os.environ["VARIANT"]; Bn = int(os.environ["B"])
c = dict(base, **variants[name])
torch.manual_seed(0)
model = GPT(c).to(dev)
opt = torch.optim.AdamW(model.parameters(), lr=3e-4, fused=True)
cm = torch.compile(model)
x = torch.randint(0, c["V"], (Bn, c["T"]), device=dev); y = torch.randint(0, c["V"], (Bn, c["T"]), device=dev)
def step():
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = cm(x, y)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3): step()
torch.cuda.synchronize()
from torch.profiler import profile, ProfilerActivity
with profile(activities=[ProfilerActivity.CUDA]) as p:
    for _ in range(3): step()
    torch.cuda.synchronize()
t = collections.defaultdict(float); n = collections.Counter()
for e in p.events():
    if e.device_type == torch.autograd.DeviceType.CUDA:
        t[e.name[:90]] += e.device_time_total / 1e3 / 3; n[e.name[:90]] += 1
tot = sum(t.values())
print(f"torch: {sum(n.values())//3} kernels, {tot:.2f} ms of kernel time per step")
for k, v in sorted(t.items(), key=lambda x: -x[1])[:40]:
    print(f"{v:9.3f} ms {n[k]//3:5d}x {100*v/tot:5.1f}%  {k}")
PY
