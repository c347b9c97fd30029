#!/usr/bin/env bash
# stop.sh -- stop the single-node SLURM cluster that start.sh brought up in DIR.
#
# Usage (as root):
#     bash stop.sh [DIR]        # DIR defaults to $SLURM_LOCAL_DIR or /tmp/parataa-slurm
#     bash stop.sh --purge [DIR]   # also delete DIR afterwards
#
# Only processes recorded in DIR's pid files are signalled, and only after
# checking that each one really is the expected daemon started for DIR (its
# executable name, and DIR in its command line or environment). No pkill, no
# killall, no systemctl. Order: cancel this cluster's jobs, then slurmd,
# slurmctld, slurmdbd, mariadbd, munged. Each gets SIGTERM, then SIGKILL after
# a grace period. Safe to run twice, and safe when start.sh failed half-way.
set -uo pipefail

PURGE=0
if [ "${1:-}" = "--purge" ]; then PURGE=1; shift; fi
DIR="${1:-${SLURM_LOCAL_DIR:-/tmp/parataa-slurm}}"
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
GRACE="${SLURM_LOCAL_STOP_GRACE:-20}"

if [ ! -d "$DIR" ]; then
    echo "stop.sh: $DIR does not exist; nothing to stop"
    exit 0
fi
export SLURM_CONF="$DIR/etc/slurm.conf"

# Same ownership test as start.sh (see there).
is_ours() {
    local pidfile=$1 exe=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null | tr -dc '0-9')
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ] || return 1
    case "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" in "$exe"*) ;; *) return 1 ;; esac
    tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR" && return 0
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qF "$DIR" && return 0
    return 1
}

# stop_daemon NAME PIDFILE EXE_PREFIX
stop_daemon() {
    local name=$1 pidfile=$2 exe=$3 pid
    if ! is_ours "$pidfile" "$exe"; then
        echo "stop.sh: $name not running"
        rm -f "$pidfile"
        return 0
    fi
    pid=$(cat "$pidfile" 2>/dev/null | tr -dc '0-9')
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 $(( GRACE * 5 ))); do
        is_ours "$pidfile" "$exe" || break
        sleep 0.2
    done
    if is_ours "$pidfile" "$exe"; then
        echo "stop.sh: $name (pid $pid) ignored SIGTERM for ${GRACE}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    echo "stop.sh: $name (pid $pid) stopped"
    rm -f "$pidfile"
}

# 1. Cancel every job of THIS cluster (SLURM_CONF points at it) while
#    slurmctld and slurmd are still up, so slurmstepd processes and the job
#    processes under them end cleanly instead of being orphaned.
if is_ours "$DIR/run/slurmctld.pid" slurmctld; then
    jobs="$(squeue -h -o '%A' 2>/dev/null | tr '\n' ' ')"
    if [ -n "${jobs// /}" ]; then
        echo "stop.sh: cancelling jobs: $jobs"
        # shellcheck disable=SC2086
        scancel $jobs 2>/dev/null || true
        for _ in $(seq 1 $(( GRACE * 5 ))); do
            [ -z "$(squeue -h -t all -o '%A %T' 2>/dev/null | grep -E 'RUNNING|COMPLETING|PENDING|CONFIGURING')" ] && break
            sleep 0.2
        done
    fi
fi

# 2. Daemons, in reverse start order.
stop_daemon slurmd    "$DIR/run/slurmd.pid"    slurmd
stop_daemon slurmctld "$DIR/run/slurmctld.pid" slurmctld
stop_daemon slurmdbd  "$DIR/run/slurmdbd.pid"  slurmdbd
stop_daemon mariadbd  "$DIR/run/mysqld.pid"    mariadbd
stop_daemon munged    "$DIR/munge/munged.pid"  munged

# The optional /etc/slurm/slurm.conf symlink of SLURM_LOCAL_LINK_ETC=1: only
# removed if it points at this DIR.
if [ -L /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" = "$SLURM_CONF" ]; then
    rm -f /etc/slurm/slurm.conf
    echo "stop.sh: removed /etc/slurm/slurm.conf symlink"
fi

if [ "$PURGE" -eq 1 ]; then
    rm -rf "$DIR"
    echo "stop.sh: removed $DIR"
fi
