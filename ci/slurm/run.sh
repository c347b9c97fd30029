#!/usr/bin/env bash
# ci/slurm/run.sh -- CI entry for the SLURM part: install and start a real single-node SLURM cluster (munge,
# slurmctld, slurmd, slurmdbd + MariaDB for sacct, 8 fake GPUs as GRES), check it, run the tests marked
# `slurm` (the smoke study through `snakemake --profile slurm`, cancel, preemption + requeue + bitwise resume,
# driver re-attachment), then stop the cluster and delete its directory.
#
# Usage (as root, from anywhere, after scripts/setup.sh made .venv):
#     bash ci/slurm/run.sh [DIR]          # DIR: cluster state, default /tmp/parataa-slurm
# Keep the cluster for interactive use instead:
#     bash ci/slurm/install.sh && bash ci/slurm/start.sh /tmp/parataa-slurm && export SLURM_CONF=/tmp/parataa-slurm/etc/slurm.conf
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${1:-/tmp/parataa-slurm}"
t0=$(date +%s)
stamp() { echo "ci/slurm/run.sh [$(( $(date +%s) - t0 )) s] $*"; }

bash ci/slurm/install.sh
stamp "packages ready"
bash ci/slurm/start.sh "$DIR"
export SLURM_CONF="$DIR/etc/slurm.conf"
trap 'bash ci/slurm/stop.sh --purge "$DIR" || true' EXIT
stamp "cluster up"
bash ci/slurm/check.sh "$DIR"
stamp "cluster checked"

. .venv/bin/activate
# -p no:cacheprovider: the tests run as root inside the checkout; keep it clean.
python -m pytest -q -m slurm -p no:cacheprovider -rs tests/test_workflow.py
stamp "SLURM tests passed"
