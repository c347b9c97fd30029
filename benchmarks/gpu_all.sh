#!/usr/bin/env bash
# Every GPU benchmark of the wall-clock study, on one host with 2 GPUs (H200 for the published numbers), then the
# report. Writes the JSON into $OUT (default benchmarks/results), regenerates benchmarks/RESULTS.md, the figures
# and benchmarks/results/summary.json:
#
#   bash benchmarks/gpu_all.sh                 # full run (expected 5-6 minutes on 2 H200)
#   QUICK=1 bash benchmarks/gpu_all.sh         # fewer seeds and iterations: every code path (about 3-4 minutes)
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
else  # each overridable: TINY_SEEDS, BATCHES, SD_SEEDS, WIN_ITERS, REPLAY_SEEDS
  SEEDS=(--seeds "${TINY_SEEDS:-8}" --batch "${BATCHES:-1,2,4,8}"); SD_SEEDS="${SD_SEEDS:-4}"
  WIN=(--iters "${WIN_ITERS:-3}" --replay-seeds "${REPLAY_SEEDS:-3}")
fi
t0=$(date +%s)
log() { echo "[$(( $(date +%s) - t0 )) s] $*"; }
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")
G1=1; [ "$NGPU" -ge 2 ] || G1=0   # one GPU: the sections run one after the other on GPU 0, no 2-GPU sweep
run() {  # run GPU NAME ARGS...: one section in the background, its log next to its JSON
  local gpu=$1 name=$2; shift 2
  CUDA_VISIBLE_DEVICES=$gpu "$PY" benchmarks/wallclock.py "$@" --out "$OUT/$name.json" > "$OUT/$name.log" 2>&1 &
  [ "$G1" = 1 ] || wait $! || { tail -30 "$OUT/$name.log"; exit 1; }
}
finish() { for _ in "$@"; do wait -n || { for n in "$@"; do tail -20 "$OUT/$n.log"; done; exit 1; }; done; }
log "tiny-dit (GPU 0) and tiny-sd (GPU $G1)"
run 0 tiny tiny "${SEEDS[@]}"
run "$G1" sd sd --seeds "$SD_SEEDS"
[ "$G1" = 0 ] || finish tiny sd
SEQ="$OUT/tiny.json,$OUT/sd.json"
log "window sweeps, one GPU each (XL on GPU 0, SD-UNet on GPU $G1)"
run 0 windows1_xl windows --models xl --sequences "$SEQ" "${WIN[@]}"
run "$G1" windows1_sd windows --models sd --sequences "$SEQ" "${WIN[@]}"
[ "$G1" = 0 ] || finish windows1_xl windows1_sd
if [ "$NGPU" -ge 2 ]; then
  log "window sweeps on 2 GPUs (torchrun, NCCL)"
  "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/wallclock.py windows --models xl,sd \
    --sequences "$SEQ" "${WIN[@]}" --out "$OUT/windows2.json" > "$OUT/windows2.log" 2>&1 \
    || { tail -30 "$OUT/windows2.log"; exit 1; }
else
  log "one GPU only: no 2-GPU sweep"
fi
log "report"
"$PY" benchmarks/report.py --dir "$OUT"
log "done"
