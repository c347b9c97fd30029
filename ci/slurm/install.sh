#!/usr/bin/env bash
# install.sh -- install the Debian packages needed for a one-node SLURM test
# cluster (ci/slurm/: start.sh, stop.sh, check.sh, run.sh; README.md there).
#
# Usage (as root, on Debian 12 "bookworm" or a close relative):
#     bash install.sh
#
# Environment knobs:
#     SLURM_LOCAL_ACCOUNTING=1  (default) also install slurmdbd + MariaDB, so
#                               that `sacct` works. submitit needs `sacct` to
#                               notice jobs that die without writing a result
#                               (scancel, OOM/SIGKILL, node failure); without it
#                               job.result() waits forever. Set to 0 to skip.
#     SLURM_LOCAL_APT_UPDATE=1  (default) run `apt-get update` first. Set to 0
#                               when the package lists are known to be fresh.
#
# What it does NOT do: it does not start any daemon, does not write
# /etc/slurm/slurm.conf and does not touch systemd. On a machine without a
# running systemd (containers, CI sandboxes) the packages' postinst scripts
# cannot start services anyway ("invoke-rc.d: could not determine current
# runlevel"). On a machine WITH systemd, Debian will start the system munged and
# mariadb on their default socket/port; they do not clash with start.sh, which
# uses its own sockets, key and ports.
#
# Timing seen on a 2-core Debian 12 VM with a nearby package mirror:
#     slurmctld slurmd slurm-client munge        ~7 s
#     + slurmdbd mariadb-server                  ~29 s more
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: must run as root" >&2
    exit 1
fi

ACCOUNTING="${SLURM_LOCAL_ACCOUNTING:-1}"
APT_UPDATE="${SLURM_LOCAL_APT_UPDATE:-1}"

# Packages: the controller, the node daemon, the client tools (sbatch, squeue,
# sinfo, scontrol, scancel, sacct, sacctmgr, srun) and the MUNGE auth daemon.
packages=(munge slurmctld slurmd slurm-client)
if [ "$ACCOUNTING" != "0" ]; then
    # slurmdbd only supports MySQL/MariaDB as its storage backend.
    packages+=(slurmdbd mariadb-server mariadb-client)
fi

# Skip apt entirely when everything is already installed (keeps re-runs fast).
missing=()
for p in "${packages[@]}"; do
    status="$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)"
    if [ "$status" != "install ok installed" ]; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install.sh: all packages already installed: ${packages[*]}"
else
    start=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    if [ "$APT_UPDATE" != "0" ]; then
        apt-get update -qq
    fi
    # --no-install-recommends keeps the install small (no mail server, no
    # docs); nothing in start.sh needs the recommended packages.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    echo "install.sh: installed ${missing[*]} in $(( $(date +%s) - start )) s"
fi

# Report what we ended up with (handy in CI logs).
echo "install.sh: $(slurmctld -V 2>/dev/null || echo 'slurmctld: missing')"
for tool in sbatch squeue sinfo scontrol scancel srun munged; do
    command -v "$tool" >/dev/null || { echo "install.sh: $tool not found" >&2; exit 1; }
done
if [ "$ACCOUNTING" != "0" ]; then
    for tool in slurmdbd sacct sacctmgr mariadbd mariadb-install-db mariadb-admin; do
        command -v "$tool" >/dev/null || { echo "install.sh: $tool not found" >&2; exit 1; }
    done
fi
