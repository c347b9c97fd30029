#!/usr/bin/env bash
# start.sh -- bring up a real, single-node SLURM cluster on localhost, entirely
# inside one directory (no spaces in its path), without systemd and without
# touching /etc (unless SLURM_LOCAL_LINK_ETC=1). All traffic stays on loopback.
#
# Usage (as root, after install.sh):
#     bash start.sh [DIR]            # DIR defaults to $SLURM_LOCAL_DIR or /tmp/parataa-slurm
#     source DIR/env.sh              # exports SLURM_CONF so sinfo/sbatch/submitit find it
#
# Layout written under DIR:
#     etc/slurm.conf etc/gres.conf etc/slurmdbd.conf   configuration
#     munge/munge.key munge/munge.socket.2             private MUNGE daemon
#     mysql/                                           MariaDB data dir (accounting only)
#     spool/ctld spool/d                               controller state, node spool
#     run/*.pid run/mysqld.sock                        pid files, sockets
#     log/*.log                                        one log per daemon
#     dev/gpuN -> /dev/null                            fake GPU device files for GRES
#     env.sh                                           `export SLURM_CONF=...`
#
# Daemons started, in order, each only if not already running from DIR:
#     munged -> [mariadbd -> slurmdbd] -> slurmctld -> slurmd
# then it waits until `sinfo` reports the node idle. Running it again while the
# cluster is up is a no-op (idempotent). stop.sh stops exactly these daemons,
# by the pid files in DIR/run and DIR/munge.
#
# Environment knobs (all optional):
#     SLURM_LOCAL_ACCOUNTING=1   1: slurmdbd + MariaDB so `sacct` works (default;
#                                submitit relies on sacct); 0: no accounting.
#     SLURM_LOCAL_NODE=localhost node name (slurmd is started with -N NAME)
#     SLURM_LOCAL_PARTITION=debug            default partition (preemptible)
#     SLURM_LOCAL_URGENT_PARTITION=urgent    higher-tier partition whose jobs
#                                preempt (requeue) jobs of the default one
#     SLURM_LOCAL_CPUS=$(nproc)  CPUs advertised; may exceed the real count
#                                (SlurmdParameters=config_overrides) to let more
#                                small test jobs run at once.
#     SLURM_LOCAL_MEM_MB         RealMemory; default min(20000, 85% of MemTotal)
#     SLURM_LOCAL_GPUS=8         fake GPUs (gres/gpu) on the node; 0 = none
#     SLURM_LOCAL_PORT_BASE=6817 slurmctld=BASE, slurmd=BASE+1, slurmdbd=BASE+2
#     SLURM_LOCAL_MYSQL_PORT=13306  MariaDB TCP port (bound to 127.0.0.1 only)
#     SLURM_LOCAL_TIMEOUT=120    seconds to wait for each readiness check
#     SLURM_LOCAL_LINK_ETC=0     1: also symlink /etc/slurm/slurm.conf -> DIR/etc/slurm.conf
#                                so tools that drop SLURM_CONF (e.g. the nested srun
#                                of snakemake-executor-plugin-slurm) still find the
#                                cluster. Refuses to replace a real file; stop.sh
#                                removes the link.
set -euo pipefail

DIR="${1:-${SLURM_LOCAL_DIR:-/tmp/parataa-slurm}}"
ACCOUNTING="${SLURM_LOCAL_ACCOUNTING:-1}"
NODE="${SLURM_LOCAL_NODE:-localhost}"
PARTITION="${SLURM_LOCAL_PARTITION:-debug}"
URGENT="${SLURM_LOCAL_URGENT_PARTITION:-urgent}"
CPUS="${SLURM_LOCAL_CPUS:-$(nproc)}"
GPUS="${SLURM_LOCAL_GPUS:-8}"
PORT_BASE="${SLURM_LOCAL_PORT_BASE:-6817}"
MYSQL_PORT="${SLURM_LOCAL_MYSQL_PORT:-13306}"
TIMEOUT="${SLURM_LOCAL_TIMEOUT:-120}"
LINK_ETC="${SLURM_LOCAL_LINK_ETC:-0}"
if [ -n "${SLURM_LOCAL_MEM_MB:-}" ]; then
    MEM_MB="$SLURM_LOCAL_MEM_MB"
else
    total_mb=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 ))
    MEM_MB=$(( total_mb * 85 / 100 ))
    [ "$MEM_MB" -gt 20000 ] && MEM_MB=20000
fi
CTLD_PORT="$PORT_BASE"
SLURMD_PORT=$(( PORT_BASE + 1 ))
DBD_PORT=$(( PORT_BASE + 2 ))

T0=$(date +%s.%N)
# (awk, not bc: bc is not part of a minimal Debian install)
log() { printf 'start.sh [%5.1fs] %s\n' "$(awk -v a="$(date +%s.%N)" -v b="$T0" 'BEGIN{print a-b}')" "$*"; }
die() { echo "start.sh: ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "must run as root (slurmd has to be able to run jobs as any user)"
command -v slurmctld >/dev/null || die "slurmctld not installed; run install.sh first"
if [ "$ACCOUNTING" != "0" ]; then
    command -v slurmdbd >/dev/null || die "slurmdbd not installed; run install.sh (or set SLURM_LOCAL_ACCOUNTING=0)"
fi

# DIR must be absolute: it ends up in config files read by other processes.
case "$DIR" in /*) ;; *) DIR="$(pwd)/$DIR" ;; esac
mkdir -p "$DIR"/{etc,munge,spool/ctld,spool/d,run,log,dev}
# munged insists that every directory on the socket's path is world-executable
# and that the key is not readable by others; the key may sit in the same dir.
chmod 755 "$DIR" "$DIR/munge"

export SLURM_CONF="$DIR/etc/slurm.conf"
MUNGE_SOCKET="$DIR/munge/munge.socket.2"

# ---------------------------------------------------------------- helpers ---

# is_ours PIDFILE EXE_PREFIX: true if the pid in PIDFILE is a live (non-zombie)
# process whose executable starts with EXE_PREFIX and that was started for
# this DIR (DIR appears in its command line or environment). Guards against
# stale pid files and pid reuse.
is_ours() {
    local pidfile=$1 exe=$2 pid
    [ -s "$pidfile" ] || return 1
    pid=$(cat "$pidfile" 2>/dev/null | tr -dc '0-9')
    [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
    # Zombies still answer `kill -0`; treat them as dead.
    [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != "Z" ] || return 1
    case "$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")" in "$exe"*) ;; *) return 1 ;; esac
    tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF "$DIR" && return 0
    tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qF "$DIR" && return 0
    return 1
}

# wait_for DESCRIPTION COMMAND...: retry COMMAND every 0.2 s until it succeeds
# or TIMEOUT seconds pass.
wait_for() {
    local what=$1; shift
    local deadline=$(( $(date +%s) + TIMEOUT ))
    until "$@" >/dev/null 2>&1; do
        if [ "$(date +%s)" -ge "$deadline" ]; then
            echo "start.sh: timed out after ${TIMEOUT}s waiting for $what" >&2
            return 1
        fi
        sleep 0.2
    done
}

port_in_use() {
    # ss is in iproute2 (present on Debian); if missing, skip the check.
    command -v ss >/dev/null || return 1
    ss -Hltn "sport = :$1" 2>/dev/null | grep -q .
}

show_log() { echo "---- last lines of $1 ----" >&2; tail -n 25 "$1" >&2 2>/dev/null || true; }

node_state() { sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1; }

# Optional /etc/slurm/slurm.conf symlink (see SLURM_LOCAL_LINK_ETC above).
link_etc() {
    [ "$LINK_ETC" = "1" ] || return 0
    if [ -e /etc/slurm/slurm.conf ] && [ "$(readlink /etc/slurm/slurm.conf)" != "$SLURM_CONF" ]; then
        die "/etc/slurm/slurm.conf exists and is not our symlink; not replacing it"
    fi
    mkdir -p /etc/slurm
    ln -sfn "$SLURM_CONF" /etc/slurm/slurm.conf
    log "linked /etc/slurm/slurm.conf -> $SLURM_CONF"
}

# ------------------------------------------------------- fast path: all up ---
all_up() {
    is_ours "$DIR/munge/munged.pid" munged || return 1
    if [ "$ACCOUNTING" != "0" ]; then
        is_ours "$DIR/run/mysqld.pid" mariadbd || return 1
        is_ours "$DIR/run/slurmdbd.pid" slurmdbd || return 1
    fi
    is_ours "$DIR/run/slurmctld.pid" slurmctld || return 1
    is_ours "$DIR/run/slurmd.pid" slurmd || return 1
}
if all_up; then
    state="$(node_state)"
    case "$state" in
        idle|mixed|allocated|completing)
            link_etc
            log "cluster in $DIR already running (node $NODE is $state); nothing to do"
            echo "export SLURM_CONF=$SLURM_CONF"
            exit 0 ;;
    esac
fi

# ------------------------------------------------------------ write config ---
# Config is (re)written only for daemons that are not running yet, i.e. on a
# fresh start; a half-running cluster keeps its files.
if ! is_ours "$DIR/run/slurmctld.pid" slurmctld; then
    for p in "$CTLD_PORT" "$SLURMD_PORT"; do
        port_in_use "$p" && die "TCP port $p is busy (another SLURM running?); set SLURM_LOCAL_PORT_BASE"
    done

    # Fake GPUs: gres/gpu entries need a device file (a gpu without File= is
    # silently dropped by slurmd, which then drains the node with "gres/gpu
    # count reported lower than configured"). Any character device works as
    # long as nothing enforces device cgroups (TaskPlugin=task/none), so each
    # fake GPU is a symlink to /dev/null. Slurm still sets
    # CUDA_VISIBLE_DEVICES=0,1,.. for the allocated indices.
    gres_node=""
    : > "$DIR/etc/gres.conf"
    if [ "$GPUS" -gt 0 ]; then
        for i in $(seq 0 $(( GPUS - 1 ))); do
            ln -sfn /dev/null "$DIR/dev/gpu$i"
        done
        gres_node="Gres=gpu:$GPUS"
        cat > "$DIR/etc/gres.conf" <<EOF
# Written by start.sh. AutoDetect=off: no NVML/RSMI probing on a GPU-less box.
AutoDetect=off
NodeName=$NODE Name=gpu File=$DIR/dev/gpu[0-$(( GPUS - 1 ))]
EOF
    fi

    if [ "$ACCOUNTING" != "0" ]; then
        accounting_block="# Accounting through slurmdbd -> MariaDB, so that sacct works.
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$DBD_PORT
# For the slurmdbd connection the clients and slurmctld take the MUNGE socket
# from AccountingStoragePass, not from AuthInfo; without it sacct/sacctmgr use
# /run/munge/munge.socket.2 and fail with 'Munge encode failed'.
AccountingStoragePass=$MUNGE_SOCKET
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30"
    else
        accounting_block="# No accounting: sacct answers 'Slurm accounting storage is disabled'.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    fi

    cat > "$SLURM_CONF" <<EOF
# Written by start.sh for a single-node test cluster. Everything lives in
# $DIR; clients find this file through SLURM_CONF (see env.sh).
ClusterName=localcluster
# "localhost" is accepted as the controller name whatever hostname says.
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT

# Auth: our own munged, found through its socket path. cred_expire also sets
# how long a requeued job waits before it may start again (default 120 s).
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCKET,cred_expire=10

StateSaveLocation=$DIR/spool/ctld
SlurmdSpoolDir=$DIR/spool/d
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
# Peers are always 127.0.0.1 (SlurmctldHost=localhost, NodeAddr=127.0.0.1);
# also make slurmctld listen on localhost only (slurmd/slurmdbd still listen
# on all addresses, Slurm's default, but nothing talks to them off loopback).
CommunicationParameters=NoCtldInAddrAny
PlugStackConfig=$DIR/etc/plugstack.conf

# No cgroups: process tracking through /proc, no task binding/containment.
# Works in containers and VMs whatever their cgroup setup; the price is that
# memory/GPU limits are only scheduling constraints, not enforced.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobContainerType=job_container/none

# Consumable cores, memory and GPUs, like a real GPU cluster.
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1000
GresTypes=gpu
# Trust slurm.conf over the hardware probe (allows more CPUs/GPUs than exist).
SlurmdParameters=config_overrides
# A node that went DOWN comes back by itself once slurmd registers again.
ReturnToService=2

# Fast turnaround for tests: schedule right away, backfill every second, main
# loop every 2 s (starts requeued jobs promptly), short kill wait
# (submitit ignores SIGTERM, so scancel waits KillWait before SIGKILL).
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2,sched_min_interval=0,batch_sched_delay=0
KillWait=5
# Finished jobs stay visible in squeue/scontrol for 5 min.
MinJobAge=300
MaxArraySize=10001
InactiveLimit=0
SlurmdTimeout=300
SlurmctldTimeout=120

$accounting_block

# Preemption, as on shared GPU clusters: a job in the "$URGENT" partition
# (higher PriorityTier) preempts jobs of "$PARTITION"; they get the --signal
# they asked for (submitit: SIGUSR2) right away (preempt_send_user_signal),
# GraceTime seconds to checkpoint, and are then requeued.
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmctldParameters=preempt_send_user_signal

NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB $gres_node State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP PriorityTier=1 GraceTime=30
PartitionName=$URGENT Nodes=$NODE Default=NO MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
    # An empty plugin stack (the Debian default one lives in /etc/slurm).
    : > "$DIR/etc/plugstack.conf"

    if [ "$ACCOUNTING" != "0" ]; then
        cat > "$DIR/etc/slurmdbd.conf" <<EOF
# Written by start.sh. slurmdbd finds this file next to \$SLURM_CONF.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdPort=$DBD_PORT
SlurmUser=root
LogFile=$DIR/log/slurmdbd.log
PidFile=$DIR/run/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=slurm-local-test
StorageLoc=slurm_acct_db
EOF
        # slurmdbd refuses a config readable by others (it holds a password).
        chmod 600 "$DIR/etc/slurmdbd.conf"
    fi
    printf 'export SLURM_CONF=%s\n' "$SLURM_CONF" > "$DIR/env.sh"
    log "config written to $DIR/etc (node $NODE: CPUs=$CPUS RealMemory=$MEM_MB GPUs=$GPUS, partition $PARTITION, accounting=$ACCOUNTING)"
fi

link_etc
# ------------------------------------------------------------------ munged ---
munge_ok() { munge -n -S "$MUNGE_SOCKET" | unmunge -S "$MUNGE_SOCKET"; }
if ! is_ours "$DIR/munge/munged.pid" munged; then
    if [ ! -s "$DIR/munge/munge.key" ]; then
        # A private key; the Debian package also made /etc/munge/munge.key,
        # which we leave alone.
        dd if=/dev/urandom of="$DIR/munge/munge.key" bs=1024 count=1 status=none
    fi
    chmod 600 "$DIR/munge/munge.key"
    rm -f "$MUNGE_SOCKET" "$MUNGE_SOCKET.lock"
    # munged forks into the background itself and writes its pid file.
    munged --key-file="$DIR/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/log/munged.log" \
        --seed-file="$DIR/munge/munged.seed" || { show_log "$DIR/log/munged.log"; die "munged failed"; }
    wait_for "munged" munge_ok || { show_log "$DIR/log/munged.log"; die "munged not answering"; }
    log "munged up (pid $(cat "$DIR/munge/munged.pid"))"
fi

# ----------------------------------------------------- MariaDB + slurmdbd ---
if [ "$ACCOUNTING" != "0" ]; then
    MYSQL_SOCK="$DIR/run/mysqld.sock"
    mysql_ok() { mariadb-admin --no-defaults -S "$MYSQL_SOCK" -u root ping; }
    if ! is_ours "$DIR/run/mysqld.pid" mariadbd; then
        port_in_use "$MYSQL_PORT" && die "TCP port $MYSQL_PORT is busy; set SLURM_LOCAL_MYSQL_PORT"
        if [ ! -d "$DIR/mysql/mysql" ]; then
            # Fresh data dir, root@localhost authenticated by unix socket
            # (we are root), no test database. Takes 1-4 s.
            mariadb-install-db --no-defaults --datadir="$DIR/mysql" --user=root \
                --auth-root-authentication-method=socket --skip-test-db \
                --innodb-log-file-size=16M > "$DIR/log/mariadb-install.log" 2>&1 \
                || { show_log "$DIR/log/mariadb-install.log"; die "mariadb-install-db failed"; }
            log "MariaDB data dir initialised"
        fi
        # --no-defaults: ignore /etc/mysql/*. TCP only on 127.0.0.1 (slurmdbd
        # connects by host/port; it cannot be given a socket path).
        setsid mariadbd --no-defaults --datadir="$DIR/mysql" --socket="$MYSQL_SOCK" \
            --pid-file="$DIR/run/mysqld.pid" --bind-address=127.0.0.1 --port="$MYSQL_PORT" \
            --user=root --log-error="$DIR/log/mariadb.log" --skip-name-resolve \
            --innodb-buffer-pool-size=128M --innodb-log-file-size=16M \
            --innodb-lock-wait-timeout=900 </dev/null >/dev/null 2>&1 &
        wait_for "mariadbd" mysql_ok || { show_log "$DIR/log/mariadb.log"; die "mariadbd did not come up"; }
        mariadb --no-defaults -S "$MYSQL_SOCK" -u root -e "
            CREATE DATABASE IF NOT EXISTS slurm_acct_db;
            CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm-local-test';
            GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
            FLUSH PRIVILEGES;"
        log "mariadbd up (pid $(cat "$DIR/run/mysqld.pid"), 127.0.0.1:$MYSQL_PORT)"
    fi
    if ! is_ours "$DIR/run/slurmdbd.pid" slurmdbd; then
        port_in_use "$DBD_PORT" && die "TCP port $DBD_PORT is busy; set SLURM_LOCAL_PORT_BASE"
        # slurmdbd has no -f option: it reads slurmdbd.conf from the directory
        # of $SLURM_CONF (exported above). It daemonizes and writes PidFile.
        slurmdbd || { show_log "$DIR/log/slurmdbd.log"; die "slurmdbd failed"; }
        wait_for "slurmdbd" sacctmgr -n -P show cluster \
            || { show_log "$DIR/log/slurmdbd.log"; die "slurmdbd not answering"; }
        log "slurmdbd up (pid $(cat "$DIR/run/slurmdbd.pid"))"
    fi
fi

# --------------------------------------------------------------- slurmctld ---
if ! is_ours "$DIR/run/slurmctld.pid" slurmctld; then
    # -i: ignore unreadable state files instead of refusing to start. The
    # cluster registers itself with slurmdbd on first start (no sacctmgr
    # add cluster needed).
    slurmctld -i -f "$SLURM_CONF" || { show_log "$DIR/log/slurmctld.log"; die "slurmctld failed"; }
    wait_for "slurmctld" bash -c 'scontrol ping | grep -q UP' \
        || { show_log "$DIR/log/slurmctld.log"; die "slurmctld not answering"; }
    log "slurmctld up (pid $(cat "$DIR/run/slurmctld.pid"))"
fi

# ------------------------------------------------------------------ slurmd ---
if ! is_ours "$DIR/run/slurmd.pid" slurmd; then
    # -N: node name independent of `hostname` (so NodeName=localhost works on
    # any machine).
    slurmd -f "$SLURM_CONF" -N "$NODE" || { show_log "$DIR/log/slurmd.log"; die "slurmd failed"; }
    wait_for "slurmd pid file" is_ours "$DIR/run/slurmd.pid" slurmd \
        || { show_log "$DIR/log/slurmd.log"; die "slurmd did not stay up"; }
    log "slurmd up (pid $(cat "$DIR/run/slurmd.pid"))"
fi

# ------------------------------------------------------- wait for the node ---
# A node left DRAINED/DOWN by an earlier run (state is kept in spool/ctld) is
# resumed once; a node that drains again has a real configuration problem.
resumed=0
deadline=$(( $(date +%s) + TIMEOUT ))
while :; do
    state="$(node_state)"
    case "$state" in
        idle|mixed|allocated) break ;;
        *drain*|down*|inval*|fail*)
            if [ "$resumed" -eq 0 ]; then
                scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true
                resumed=1
            fi ;;
    esac
    if [ "$(date +%s)" -ge "$deadline" ]; then
        scontrol show node "$NODE" >&2 || true
        show_log "$DIR/log/slurmd.log"; show_log "$DIR/log/slurmctld.log"
        die "node $NODE not idle after ${TIMEOUT}s (state: '${state}')"
    fi
    sleep 0.2
done
log "node $NODE is $state; cluster ready"
sinfo -N -o '%N %P %T %c %m %G'
echo "export SLURM_CONF=$SLURM_CONF"
