#!/usr/bin/env bash
# Every GPU benchmark of the wall-clock study, on one host with 2 GPUs (H200 for the published numbers), then the
# report. Writes the JSON into $OUT (default benchmarks/results), regenerates benchmarks/RESULTS.md, the figures
# and benchmarks/results/summary.json:
#
#   bash benchmarks/gpu_all.sh                 # full run (about 5-6 minutes on 2 H200)
#   QUICK=1 bash benchmarks/gpu_all.sh         # fewer seeds and iterations: checks every code path (2-3 minutes)
#
# Order: tiny-dit on GPU 0 and tiny-sd on GPU 1 side by side (each section times its own baselines and solvers
# in one process, so every ratio comes from one run), then the DiT-XL/2- and SD-UNet-shaped window sweeps on one
# GPU each (side by side), then both on the two GPUs under torchrun (NCCL; NVLink multicast stays off).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
PY="${PYTHON:-python3}"
if [ "${QUICK:-0}" = 1 ]; then
  SEEDS=(--seeds 2 --batch 1,8); SD_SEEDS=2; WIN=(--iters 1 --replay-seeds 1)
else
  SEEDS=(--seeds 8 --batch 1,2,4,8); SD_SEEDS=4; WIN=(--iters 3 --replay-seeds 3)
fi
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
log "tiny-dit (GPU 0) and tiny-sd (GPU 1)"
CUDA_VISIBLE_DEVICES=0 "$PY" benchmarks/wallclock.py tiny "${SEEDS[@]}" --out "$OUT/tiny.json" > "$OUT/tiny.log" 2>&1 &
p1=$!
CUDA_VISIBLE_DEVICES=1 "$PY" benchmarks/wallclock.py sd --seeds "$SD_SEEDS" --out "$OUT/sd.json" > "$OUT/sd.log" 2>&1 &
p2=$!
wait $p1 || { tail -30 "$OUT/tiny.log"; exit 1; }
wait $p2 || { tail -30 "$OUT/sd.log"; exit 1; }
SEQ="$OUT/tiny.json,$OUT/sd.json"
log "window sweeps, one GPU each (XL on GPU 0, SD-UNet on GPU 1)"
CUDA_VISIBLE_DEVICES=0 "$PY" benchmarks/wallclock.py windows --models xl --sequences "$SEQ" "${WIN[@]}" \
  --out "$OUT/windows1_xl.json" > "$OUT/windows1_xl.log" 2>&1 &
p1=$!
CUDA_VISIBLE_DEVICES=1 "$PY" benchmarks/wallclock.py windows --models sd --sequences "$SEQ" "${WIN[@]}" \
  --out "$OUT/windows1_sd.json" > "$OUT/windows1_sd.log" 2>&1 &
p2=$!
wait $p1 || { tail -30 "$OUT/windows1_xl.log"; exit 1; }
wait $p2 || { tail -30 "$OUT/windows1_sd.log"; exit 1; }
log "window sweeps on 2 GPUs (torchrun, NCCL)"
"$PY" -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/wallclock.py windows --models xl,sd \
  --sequences "$SEQ" "${WIN[@]}" --out "$OUT/windows2.json" > "$OUT/windows2.log" 2>&1 \
  || { tail -30 "$OUT/windows2.log"; exit 1; }
log "report"
"$PY" benchmarks/report.py --dir "$OUT"
log "done"
