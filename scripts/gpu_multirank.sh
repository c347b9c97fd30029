#!/usr/bin/env bash
# The multi-GPU path on ONE GPU, several ranks sharing it (ranks_per_gpu 2, gloo), in one go, with its checks:
#   1. the dress rehearsal (config/paper_rehearsal.yaml: full-size synthetic DiT-XL/2-256 and SD v1.5 checkpoints)
#      through `snakemake --profile local` (baselines, solvers, tables, figures, the audit) at world size 2 with both
#      ranks on the one GPU, and again at world size 1; every stored run of the one must equal the other's bit for
#      bit (same chunk sizes); every job's per-rank peak GPU memory is read from the job records;
#   2. `parataa compare` and `parataa sample` with two ranks on the GPU (--processes 2 --device cuda
#      --ranks-per-gpu 2) against one process with the same --chunk-size: the same bits;
#   3. `pytest -m gpu` (with the world-size-2 job on one GPU of tests/test_distributed.py);
#   4. `benchmarks/wallclock.py windows` under torchrun with two ranks on the GPU, to the end. Its timings mean
#      nothing (two ranks queue on one GPU and talk through gloo): the run proves the code path.
# The rehearsals, the tests and the CLI/benchmark checks run side by side (timings are not the point here); every
# step has a time limit and all end by 8 min 20 s, so the script ends within 9 minutes. It exits 0 only when every check passed.
#
#   OUT=/some/dir bash scripts/gpu_multirank.sh      # results: multirank.json (every check), multirank.log,
#                                                    # jobs_ws{1,2}.json, rehearsal_ws{1,2}.log, pytest_gpu.log,
#                                                    # extras.tar.gz (reports, figures, job logs, CLI and benchmark output)
#   DEVICE=cpu SIZE=tiny OUT=/tmp/o bash scripts/gpu_multirank.sh   # the same paths on the CPU, tiny checkpoints
#
# PYTHON (default python3) runs everything; SCALE multiplies every time limit (default 1 on cuda, 4 on cpu); WORK (default /tmp/parataa_multirank) holds results and configs;
# WEIGHTS (default weights/, where config/paper_rehearsal.yaml reads them) the checkpoints, made unless present.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}" OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's parataa in every process it starts
PY="${PYTHON:-python3}"
DEVICE="${DEVICE:-cuda}"
SIZE="${SIZE:-full}"
WORK="${WORK:-/tmp/parataa_multirank}"
WEIGHTS="${WEIGHTS:-weights}"
SCALE="${SCALE:-$([ "$DEVICE" = cuda ] && echo 1 || echo 4)}"  # time limits x SCALE (a slow CPU needs more)
BUDGET_S="${BUDGET_S:-500}"  # every step ends within BUDGET_S x SCALE seconds of the start (default 8 min 20 s)
lim() {  # a step's time limit: its own (x SCALE), cut to what is left of BUDGET_S (x SCALE) from the start
  local left=$(( t0 + BUDGET_S * SCALE - $(date +%s) ))
  local own=$(( $1 * SCALE ))
  (( left < 1 )) && left=1
  echo $(( own < left ? own : left ))
}
OUT="${OUT:?set OUT to the folder the results go to}"
mkdir -p "$OUT" "$WORK/logs" "$WEIGHTS"
WORK="$(cd "$WORK" && pwd)" WEIGHTS="$(cd "$WEIGHTS" && pwd)"
t0=$(date +%s)
exec > >(tee "$OUT/multirank.log") 2>&1
log() { echo "[gpu_multirank $(( $(date +%s) - t0 )) s] $*"; }
SNAKEMAKE=("$PY" -m snakemake)

if [ "$DEVICE" = cuda ]; then
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device: run with DEVICE=cpu for the CPU check'"
  "$PY" -c "import torch; print('GPUs:', [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())], 'torch', torch.__version__)"
  export CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-0}"  # one GPU, whatever the machine has
  CLI_DEV=(--device cuda --ranks-per-gpu 2)
else
  CLI_DEV=(--device cpu)
fi
log "device $DEVICE, checkpoints $SIZE, work $WORK, weights $WEIGHTS"

# ------------------------------------------------------------------ the checkpoints (both at once)
pids=()  # waited on by pid: a bare `wait` would also wait for the log's tee
for m in dit-xl-2-256 sd-v1-5; do
  if [ ! -f "$WEIGHTS/.$m-synthetic.complete" ]; then  # the marker sits beside the checkpoint, not in it
    ( timeout "$(lim 150)" "$PY" -m parataa.models.synthetic --model "$m" --size "$SIZE" --device "$DEVICE" \
        --out "$WEIGHTS/$m-synthetic" --force > "$WORK/logs/synthetic-$m.log" 2>&1 \
      && touch "$WEIGHTS/.$m-synthetic.complete" ) &
    pids+=($!)
  fi
done
for p in "${pids[@]}"; do wait "$p"; done
for m in dit-xl-2-256 sd-v1-5; do
  [ -f "$WEIGHTS/.$m-synthetic.complete" ] || { log "checkpoint $m failed:"; tail -20 "$WORK/logs/synthetic-$m.log"; exit 1; }
done
log "checkpoints ready"

# ------------------------------------------------------------------ the two rehearsal configs
for w in 1 2; do
  "$PY" - "$w" "$DEVICE" "$SIZE" "$WORK" "$WEIGHTS" <<'PYEOF'
import sys
from pathlib import Path

import yaml

w, device, size, work, weights = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4]), Path(sys.argv[5])
cfg = yaml.safe_load(Path("config/paper_rehearsal.yaml").read_text())
for m in cfg["models"]:
    m["path"] = str(weights / Path(m["path"]).name)
    if device == "cpu":
        m["dtype"] = "float32"  # float16 kernels are a GPU matter
cfg.update(device=device, world_size=w, ranks_per_gpu=w, results_dir=str(work / f"ws{w}" / "results"),
           reports_dir=str(work / f"ws{w}" / "reports"), figures_dir=str(work / f"ws{w}" / "figures"))
if size != "full":
    cfg.update(steps=[6], threads=1)
(work / f"rehearsal_ws{w}.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
PYEOF
done
log "configs: $WORK/rehearsal_ws1.yaml, $WORK/rehearsal_ws2.yaml (world size 2: ranks_per_gpu 2, both ranks on one GPU)"

# ------------------------------------------------------------------ side by side: rehearsals, GPU tests
rehearse() {  # world size -> its workflow, one job at a time
  timeout "$(lim 400)" "${SNAKEMAKE[@]}" --profile local --cores 1 --nolock --configfile "$WORK/rehearsal_ws$1.yaml" \
    > "$OUT/rehearsal_ws$1.log" 2>&1
  echo $? > "$WORK/rc_rehearsal_ws$1"
}
pids=()
rehearse 2 &
pids+=($!)
rehearse 1 &
pids+=($!)
TESTS=(tests/)
[ "$DEVICE" = cuda ] || TESTS=(tests/test_distributed.py)  # on the CPU every gpu test skips: the path alone
( timeout "$(lim 400)" "$PY" -m pytest -q -p no:cacheprovider -m gpu -rs "${TESTS[@]}" > "$OUT/pytest_gpu.log" 2>&1
  echo $? > "$WORK/rc_pytest" ) &
pids+=($!)

# ------------------------------------------------------------------ meanwhile: the CLI with two ranks, one GPU
CLI="$WORK/cli"
mkdir -p "$CLI"
cli() {  # name, then the command's arguments
  local name=$1
  shift
  timeout "$(lim 90)" "$PY" -m parataa "$@" > "$CLI/$name.out" 2> "$CLI/$name.err"
  echo "$name $?" >> "$CLI/rc"
}
rm -f "$CLI/rc"
COMPARE=(compare --json --quiet --model tiny-dit --conditions 3,7 --steps 25 --seeds 0-1 --solvers sequential,taa,fp+
         --chunk-size 6)
SAMPLE=(sample --model tiny-sd --prompt "a red circle" --solver taa --steps 20 --no-progress --chunk-size 4)
cli compare_1 "${COMPARE[@]}" --device "$DEVICE"
cli compare_2 "${COMPARE[@]}" --processes 2 "${CLI_DEV[@]}"
cli sample_1 "${SAMPLE[@]}" --device "$DEVICE" --out "$CLI/sample_1"
cli sample_2 "${SAMPLE[@]}" --processes 2 "${CLI_DEV[@]}" --out "$CLI/sample_2"
log "CLI runs done: $(tr '\n' ' ' < "$CLI/rc")"

# ------------------------------------------------------------------ wallclock windows under torchrun, 2 ranks
WIN=(--models xl,sd --steps 25 --iters 1 --replay-seeds 1)
[ "$SIZE" = full ] || WIN=(--models xl --steps 8 --iters 1 --replay-seeds 1 --small)
timeout "$(lim 200)" "$PY" -m torch.distributed.run --standalone --nproc_per_node 2 benchmarks/wallclock.py windows \
  --device "$DEVICE" --ranks-per-gpu 2 "${WIN[@]}" --out "$WORK/windows_shared.json" > "$WORK/logs/windows.log" 2>&1
echo $? > "$WORK/rc_windows"
log "wallclock windows (2 ranks, one GPU) exit $(cat "$WORK/rc_windows")"

for p in "${pids[@]}"; do wait "$p"; done
log "rehearsals exit ws2 $(cat "$WORK/rc_rehearsal_ws2") ws1 $(cat "$WORK/rc_rehearsal_ws1"), pytest -m gpu exit $(cat "$WORK/rc_pytest")"

# ------------------------------------------------------------------ the checks, into multirank.json
"$PY" - "$WORK" "$OUT" "$DEVICE" <<'PYEOF'
import json
import sys
from pathlib import Path

import numpy as np
import torch

from parataa import storage

work, out, device = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
report = {"device": device, "gpu": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
          "torch": torch.__version__, "checks": {}}
checks = report["checks"]


def rc(name):
    p = work / name
    return int(p.read_text().split()[-1]) if p.exists() else None


# 1. the rehearsals: exit status, every stored run bitwise equal, per-rank peaks from the job records
def job_rows(results):
    rows = []
    for f in sorted((results / "paper_rehearsal" / "jobs").rglob("*.json")):
        rec = json.loads(f.read_text())
        if isinstance(rec, dict) and "runs_dirs" in rec and "wall_s" in rec:
            rows.append({"job": rec.get("name"), "runs": len(rec["runs_dirs"]), "wall_s": rec["wall_s"],
                         "peak_gpu_memory_gib": rec.get("peak_gpu_memory_gib"),
                         "solve_peak_gpu_memory_gib": rec.get("solve_peak_gpu_memory_gib")})
    return rows


def stored(results):
    dirs = sorted(p.parent for p in (results / "paper_rehearsal" / "runs").glob("*/*/*/shard-*/manifest.json"))
    return {str(d.relative_to(results)): d for d in dirs}


rehearsal = {}
for w in (1, 2):
    results = work / f"ws{w}" / "results"
    rows = job_rows(results) if results.exists() else []
    (out / f"jobs_ws{w}.json").write_text(json.dumps(rows, indent=1))
    rehearsal[w] = {"exit": rc(f"rc_rehearsal_ws{w}"), "jobs": rows,
                    "audit": (work / f"ws{w}" / "reports" / "paper_rehearsal" / "audit.md").exists()}
one, two = (stored(work / f"ws{w}" / "results") if (work / f"ws{w}" / "results").exists() else {} for w in (1, 2))
compared, differ = [], []
for name in sorted(set(one) | set(two)):
    if name not in one or name not in two:
        differ.append(f"{name}: stored at one world size only")
        continue
    a, b = storage.load_run(one[name]), storage.load_run(two[name])
    same = {"trajectory": np.array_equal(a.trajectory, b.trajectory), "x0": np.array_equal(a.x0, b.x0),
            "iterates": (a.iterates is None and b.iterates is None) or np.array_equal(a.iterates, b.iterates),
            "iterations": list(a.samples["iterations"]) == list(b.samples["iterations"]),
            "chunk_size": a.manifest["config"]["chunk_size"] == b.manifest["config"]["chunk_size"]}
    compared.append({"run": name, "world_sizes": [a.manifest["world_size"], b.manifest["world_size"]], **same})
    if not all(same.values()):
        differ.append(f"{name}: differs in {[k for k, v in same.items() if not v]}")
parallel = [c for c in compared if c["world_sizes"] == [1, 2]]
sample_jobs = [r for r in rehearsal[2]["jobs"] if "/group-" in str(r["job"])]
peaks_gathered = bool(sample_jobs) and all(
    (r["peak_gpu_memory_gib"] is not None and len(r["peak_gpu_memory_gib"]) == 2) if device == "cuda"
    else r["peak_gpu_memory_gib"] is None for r in sample_jobs)
checks["rehearsal"] = {
    "ok": rehearsal[1]["exit"] == 0 and rehearsal[2]["exit"] == 0 and rehearsal[1]["audit"] and rehearsal[2]["audit"]
    and bool(parallel) and not differ and peaks_gathered,
    "exit_ws2": rehearsal[2]["exit"], "exit_ws1": rehearsal[1]["exit"], "runs_compared": len(compared),
    "runs_at_world_size_2": len(parallel), "bitwise_equal": not differ and bool(compared), "differences": differ,
    "per_rank_peaks_gathered": peaks_gathered, "runs": compared,
    "jobs_ws2": rehearsal[2]["jobs"], "jobs_ws1": rehearsal[1]["jobs"],
}

# 2. the CLI: compare's results (every field but the wall time) and sample's x0, one process against two ranks
cli = work / "cli"
codes = dict(line.split() for line in (cli / "rc").read_text().splitlines()) if (cli / "rc").exists() else {}
cmp_ok, why = False, ""
try:
    res = [json.loads((cli / f"compare_{n}.out").read_text()) for n in (1, 2)]
    strip = [{r["solver"]: {k: v for k, v in r.items() if "wall" not in k and not k.endswith("_s")} for r in x["results"]}
             for x in res]
    procs = [x["setting"].get("processes") for x in res]
    cmp_ok = strip[0] == strip[1] and procs == [1, 2]
    why = "" if cmp_ok else f"processes {procs}; differing solvers {[s for s in strip[0] if strip[0][s] != strip[1].get(s)]}"
except (OSError, ValueError, KeyError) as err:
    why = repr(err)
smp_ok, swhy = False, ""
try:
    x1, x2 = (torch.load(cli / f"sample_{n}" / "x0.pt") for n in (1, 2))
    s2 = json.loads((cli / "sample_2" / "summary.json").read_text())
    smp_ok = torch.equal(x1, x2) and s2["processes"] == 2
    swhy = "" if smp_ok else f"x0 equal {torch.equal(x1, x2)}, processes {s2['processes']}"
except (OSError, ValueError, KeyError, RuntimeError) as err:
    swhy = repr(err)
checks["cli"] = {"ok": cmp_ok and smp_ok and all(v == "0" for v in codes.values()) and len(codes) == 4,
                 "exit": codes, "compare_same_bits": cmp_ok, "compare_note": why, "sample_same_bits": smp_ok,
                 "sample_note": swhy}

# 3. pytest -m gpu
tail = (out / "pytest_gpu.log").read_text().strip().splitlines()[-1:] if (out / "pytest_gpu.log").exists() else []
checks["pytest_gpu"] = {"ok": rc("rc_pytest") == 0, "exit": rc("rc_pytest"), "summary": tail}

# 4. wallclock windows under torchrun, two ranks on the GPU
win = {}
if (work / "windows_shared.json").exists():
    win = json.loads((work / "windows_shared.json").read_text())
checks["wallclock_windows"] = {
    "ok": rc("rc_windows") == 0 and bool(win.get("models")) and not win.get("errors"),
    "exit": rc("rc_windows"), "world_size": win.get("world_size"), "ranks_per_gpu": win.get("ranks_per_gpu"),
    "backend": win.get("backend"), "models": sorted(win.get("models", {})), "errors": win.get("errors"),
    "note": "two ranks on one GPU through gloo: the run proves the code path; its timings mean nothing",
}
report["ok"] = all(c["ok"] for c in checks.values())
(out / "multirank.json").write_text(json.dumps(report, indent=1, default=str))
for name, c in checks.items():
    print(f"{name:<18} {'ok' if c['ok'] else 'FAILED'}")
print(f"{'job':<60} {'runs':>4} {'wall s':>8}  peak GPU memory per rank, GiB: job / after loading")
for w in (2, 1):
    for r in rehearsal[w]["jobs"]:
        def gib(v):
            return " ".join(f"{x:.2f}" for x in v or []) or "-"
        print(f"ws{w} {r['job']:<56} {r['runs']:>4} {r['wall_s']:>8.1f}  {gib(r['peak_gpu_memory_gib'])} / "
              f"{gib(r['solve_peak_gpu_memory_gib'])}")
print("all checks passed" if report["ok"] else "SOME CHECKS FAILED: see multirank.json")
sys.exit(0 if report["ok"] else 1)
PYEOF
status=$?

# ------------------------------------------------------------------ everything else, in one tarball
( cd "$WORK" && find . \( -path './ws*/reports/*' -o -path './ws*/figures/*' -o -name '*.log' -o -name '*_log.out' \
    -o -name '*_log.err' -o -path './cli/*.out' -o -path './cli/*.err' -o -name 'summary.json' -o -name '*.yaml' \
    -o -name 'windows_shared.json' -o -path './cli/rc' \) -type f -print0 \
  | tar --null -czf "$OUT/extras.tar.gz" --files-from - )
log "done (exit $status); $OUT: $(ls "$OUT" | tr '\n' ' ')"
exit $status
