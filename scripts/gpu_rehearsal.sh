#!/usr/bin/env bash
# The dress rehearsal of config/paper_rehearsal.yaml on a GPU machine, end to end, with its measurements:
# full-size synthetic checkpoints of DiT-XL/2-256 and SD v1.5 (made here unless present), the study through
# `snakemake --profile local` (baselines, every solver, tables, figures, the audit), then every job's wall time and
# peak GPU memory per rank (over the job and after loading), read from the job records the workflow writes.
#
#   bash scripts/gpu_rehearsal.sh                  # world size from the config (2: one process per GPU, NCCL)
#   WORLD_SIZE=1 bash scripts/gpu_rehearsal.sh     # one GPU
#   OUT=/some/dir bash scripts/gpu_rehearsal.sh    # also copy the reports, figures and job logs there
#
# Jobs run one at a time (--cores 1) so that each job's wall time is its own.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
PY="${PYTHON:-python3}"
t0=$(date +%s)
log() { echo "[gpu_rehearsal $(( $(date +%s) - t0 )) s] $*"; }

"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: the rehearsal needs GPUs'"
for m in dit-xl-2-256 sd-v1-5; do  # where config/paper_rehearsal.yaml reads them
  if [ ! -d "weights/$m-synthetic" ]; then
    log "making the full-size synthetic checkpoint weights/$m-synthetic"
    "$PY" -m parataa.models.synthetic --model "$m" --size full --device cuda --out "weights/$m-synthetic"
    du -sh "weights/$m-synthetic"
  fi
done
log "checkpoints ready"

extra=()
[ -z "${WORLD_SIZE:-}" ] || extra=(--config "world_size=$WORLD_SIZE")
"$PY" -m snakemake --profile local --cores 1 --configfile config/paper_rehearsal.yaml "${extra[@]}"
log "workflow done"

# every job's record (group outputs and baseline receipts, under jobs/): name, wall seconds, peak GPU memory per
# rank over the whole job and after loading (the solves alone)
"$PY" - results/paper_rehearsal/jobs reports/paper_rehearsal/jobs.json <<'PYEOF'
import json
import sys
from pathlib import Path

rows = []
for f in sorted(Path(sys.argv[1]).rglob("*.json")):
    rec = json.loads(f.read_text())
    if isinstance(rec, dict) and "runs_dirs" in rec and "wall_s" in rec:
        rows.append({"job": rec.get("name"), "runs": len(rec["runs_dirs"]), "wall_s": rec["wall_s"],
                     "peak_gpu_memory_gib": rec.get("peak_gpu_memory_gib"),
                     "solve_peak_gpu_memory_gib": rec.get("solve_peak_gpu_memory_gib"), "record": str(f)})
Path(sys.argv[2]).parent.mkdir(parents=True, exist_ok=True)
Path(sys.argv[2]).write_text(json.dumps(rows, indent=1))
print(f"{'job':<60} {'runs':>4} {'wall s':>8}  peak GPU memory per rank, GiB: job / after loading")
for r in rows:
    def gib(v):
        return " ".join(f"{x:.2f}" for x in v or []) or "-"
    print(f"{r['job']:<60} {r['runs']:>4} {r['wall_s']:>8.1f}  {gib(r['peak_gpu_memory_gib'])} / "
          f"{gib(r['solve_peak_gpu_memory_gib'])}")
print(f"wrote {sys.argv[2]}")
PYEOF
if [ -n "${OUT:-}" ]; then  # reports, figures and every job log (submitit's per-rank *_log.out/err too)
  mkdir -p "$OUT/reports" "$OUT/figures"
  cp -rT reports/paper_rehearsal "$OUT/reports"
  cp -rT figures/paper_rehearsal "$OUT/figures"
  find results/paper_rehearsal \( -name '*.log' -o -name '*_log.out' -o -name '*_log.err' \) \
    -exec cp --parents {} "$OUT" \;
fi
log "done"
