#!/usr/bin/env bash
# One GPU, one call: the checks and measurements that need a GPU, each with its own time limit, all ending within
# BUDGET_S (default 560 s), so that one 10-minute device call holds them. Results go to $OUT (required):
#
#   1. families.json   benchmarks/wallclock.py families: DPM-Solver++(2M)-25 on tiny-dit and tiny-sd, flow-Euler-50
#                      on tiny-flow; graphed sequential, Picard, taa-euler, target40 (quiet GPU: timed first)
#   2. tiny.json       benchmarks/wallclock.py tiny (tiny-dit DDIM-100; no torch.compile baseline): the graphed
#                      engines of PARALLEL against graphed Picard and the graphed sequential sampler
#   3. validation.jsonl  benchmarks/validation.py --size full on the PARTS (default validation) in float32, float16
#                      and bfloat16, side by side with
#   4. pytest_gpu.log  `pytest -m gpu` (the graphed engines bitwise equal to the static engine, world size 2)
#
#   OUT=/some/dir bash scripts/gpu_checks.sh
#   STEPS="families tiny" OUT=/some/dir bash scripts/gpu_checks.sh     # only some steps
#
# PYTHON (default python3) runs everything; VAL_SOLVERS, PARTS, SEEDS, ROUNDS override the defaults below. The
# script exits 0 only when every step it ran ended with status 0 (a step cut by its time limit keeps what it wrote).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
STEPS="${STEPS:-families tiny validation pytest}"
BUDGET_S="${BUDGET_S:-560}"
PARTS="${PARTS:-validation}"
VAL_SOLVERS="${VAL_SOLVERS:-target40,taa-euler,picard}"
SEEDS="${SEEDS:-8}"
ROUNDS="${ROUNDS:-5}"
t0=$(date +%s)
log() { echo "[gpu_checks $(( $(date +%s) - t0 )) s] $*"; }
lim() {  # a step's limit: its own, cut to what is left of BUDGET_S
  local left=$(( t0 + BUDGET_S - $(date +%s) )); (( left < 1 )) && left=1
  echo $(( $1 < left ? $1 : left ))
}
has() { [[ " $STEPS " == *" $1 "* ]]; }
status=0
step() {  # step NAME LIMIT CMD...: run in the foreground, log to $OUT/NAME.log
  local name=$1 own=$2; shift 2
  log "$name (limit $(lim "$own") s)"
  timeout "$(lim "$own")" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?; log "$name: exit $rc"; tail -3 "$OUT/$name.log"; (( rc == 0 )) || status=1
}
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu', 'torch', torch.__version__)" | tee "$OUT/device.txt"
has families && step families 150 "$PY" benchmarks/wallclock.py families --seeds "$SEEDS" --rounds "$ROUNDS" \
  --out "$OUT/families.json"
has tiny && step tiny 200 "$PY" benchmarks/wallclock.py tiny --seeds "$SEEDS" --rounds "$ROUNDS" --batch 1,8 \
  --no-compile --out "$OUT/tiny.json"
# the rest side by side: their timings are not the point
pids=()
if has validation; then
  log "validation (limit $(lim 600) s): parts $PARTS, solvers $VAL_SOLVERS"
  timeout "$(lim 600)" "$PY" benchmarks/validation.py --size full --parts "$PARTS" --solvers "$VAL_SOLVERS" \
    --dtypes float32,float16,bfloat16 --out "$OUT/validation.jsonl" > "$OUT/validation.log" 2>&1 &
  pids+=($!)
fi
if has pytest; then
  log "pytest -m gpu (limit $(lim 300) s)"
  timeout "$(lim 300)" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu.log" 2>&1 &
  pids+=($!)
fi
for p in "${pids[@]}"; do wait "$p" || status=1; done
for f in validation pytest_gpu; do [ -f "$OUT/$f.log" ] && { log "$f:"; tail -4 "$OUT/$f.log"; }; done
log "done (status $status)"
exit $status
