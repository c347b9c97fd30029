#!/usr/bin/env bash
# check.sh -- smoke-test a cluster started by start.sh: sinfo, sbatch + squeue,
# srun inside a job, fake-GPU allocation, scancel, and sacct (when accounting
# is on). Exits non-zero on the first failure. Takes ~10 s.
#
# Usage:  bash check.sh [DIR]      (DIR as given to start.sh)
set -euo pipefail

DIR="${1:-${SLURM_LOCAL_DIR:-/tmp/parataa-slurm}}"
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
export SLURM_CONF="$DIR/etc/slurm.conf"
OUT="$(mktemp -d /tmp/slurm-check.XXXXXX)"
trap 'rm -rf "$OUT"' EXIT
fail() { echo "check.sh: FAIL: $*" >&2; exit 1; }
ok() { echo "check.sh: ok: $*"; }

# wait_job ID: wait until the job left the queue (COMPLETED/FAILED/CANCELLED...).
wait_job() {
    for _ in $(seq 1 150); do
        case "$(squeue -h -t all -j "$1" -o '%T' 2>/dev/null | head -n1)" in
            PENDING|CONFIGURING|RUNNING|COMPLETING|"") sleep 0.2 ;;
            *) return 0 ;;
        esac
    done
    fail "job $1 did not finish within 30 s"
}

# (the node appears once per partition; look at the first line only)
[ "$(sinfo -h -N -o '%T' | head -n1)" = idle ] || fail "node not idle: $(sinfo -N)"
ok "sinfo: $(sinfo -h -N -o '%N %T cpus=%c mem=%m gres=%G' | head -n1), partitions: $(sinfo -h -o '%P' | tr '\n' ' ')"

# A plain batch job that also launches a job step with srun.
jid=$(sbatch --parsable -o "$OUT/plain.out" --wrap 'hostname; srun echo step-ok')
wait_job "$jid"
grep -q step-ok "$OUT/plain.out" || fail "batch job output: $(cat "$OUT/plain.out")"
ok "sbatch + srun (job $jid): $(tr '\n' ' ' < "$OUT/plain.out")"

# Fake GPUs: the whole node's GPUs, and one more than exists must be refused.
ngpu=$(sinfo -h -N -o '%G' | head -n1 | sed -n 's/^gpu:\([0-9]*\).*/\1/p')
if [ -n "$ngpu" ] && [ "$ngpu" -gt 0 ]; then
    jid=$(sbatch --parsable --gpus-per-node="$ngpu" -o "$OUT/gpu.out" \
        --wrap 'echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"')
    wait_job "$jid"
    grep -q "CUDA_VISIBLE_DEVICES=0" "$OUT/gpu.out" || fail "gpu job: $(cat "$OUT/gpu.out")"
    ok "--gpus-per-node=$ngpu accepted: $(cat "$OUT/gpu.out")"
    if sbatch --gpus-per-node=$(( ngpu + 1 )) --wrap true >/dev/null 2>&1; then
        fail "--gpus-per-node=$(( ngpu + 1 )) should have been refused"
    fi
    ok "--gpus-per-node=$(( ngpu + 1 )) refused at submit time"
fi

# scancel of a running job.
jid=$(sbatch --parsable -o /dev/null --wrap 'sleep 300')
for _ in $(seq 1 50); do
    [ "$(squeue -h -j "$jid" -o '%T')" = RUNNING ] && break; sleep 0.2
done
scancel "$jid"
wait_job "$jid"
ok "scancel: job $jid is $(squeue -h -t all -j "$jid" -o '%T')"

# sacct, when accounting is configured.
if grep -q '^AccountingStorageType=accounting_storage/slurmdbd' "$SLURM_CONF"; then
    sleep 1   # the job-end record reaches slurmdbd asynchronously
    state=$(sacct -n -X -P -j "$jid" -o State | head -n1)
    case "$state" in CANCELLED*) ;; *) fail "sacct says '$state' for cancelled job $jid" ;; esac
    ok "sacct: job $jid $state"
else
    echo "check.sh: note: accounting disabled, sacct not checked"
fi
echo "check.sh: all checks passed"
