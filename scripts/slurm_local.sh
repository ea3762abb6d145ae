#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests and for trying the slurm executor.
#
#   scripts/slurm_local.sh          # = start: install, configure, start, wait until idle
#   scripts/slurm_local.sh status   # sinfo + which daemons run
#   scripts/slurm_local.sh stop     # stop slurmd, slurmctld and munged (by their pid files)
#
# Needs root on Debian/Ubuntu. Idempotent: running `start` again on a healthy cluster only
# checks it. No systemd (containers have none): the daemons are started directly. No
# accounting database: `sacct` does not work here, the executor falls back to `squeue`.
# Overridable: SLURM_PARTITION (debug), SLURM_CONF_DIR (/etc/slurm), SLURM_WAIT_S (60).
set -euo pipefail

ACTION="${1:-start}"
CONF_DIR="${SLURM_CONF_DIR:-/etc/slurm}"
CONF="$CONF_DIR/slurm.conf"
PARTITION="${SLURM_PARTITION:-debug}"
WAIT_S="${SLURM_WAIT_S:-60}"
STATE_DIR=/var/spool/slurmctld
SLURMD_DIR=/var/spool/slurmd
LOG_DIR=/var/log/slurm
RUN_DIR=/run/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"
NODE="$(hostname -s)"

say() { echo "slurm_local: $*"; }
die() { echo "slurm_local: error: $*" >&2; exit 1; }

running() {  # running PIDFILE: the process named in the pid file is alive
    local pid
    pid="$(cat "$1" 2>/dev/null)" && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v sbatch >/dev/null && command -v munged >/dev/null; then
        return
    fi
    say "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # The packages try to start their services; without systemd that fails harmlessly.
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

start_munge() {
    mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating the munge key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge /etc/munge/munge.key /run/munge /var/lib/munge /var/log/munge
    chmod 0700 /etc/munge /var/lib/munge /var/log/munge
    chmod 0755 /run/munge  # clients (sbatch as any user) must reach the socket
    chmod 0400 /etc/munge/munge.key
    if ! running "$MUNGE_PID"; then
        say "starting munged"
        runuser -u munge -- /usr/sbin/munged
    fi
    munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"
}

write_config() {
    local cpus mem new
    cpus="$(nproc)"
    # slurmd marks the node invalid if it has less memory than configured: stay 5 % under.
    mem="$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')"
    mkdir -p "$CONF_DIR" "$STATE_DIR" "$SLURMD_DIR" "$LOG_DIR" "$RUN_DIR"
    new="$(cat <<EOF
# Written by scripts/slurm_local.sh: a one-node cluster on localhost.
ClusterName=localcluster
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE_DIR
SlurmdSpoolDir=$SLURMD_DIR
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# No cgroups in a container: track processes by parent pid, bind nothing.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
# One CPU per task slot (not whole cores); memory is not a consumable resource.
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
MinJobAge=300
MaxArraySize=10001
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
)"
    if [ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new" ]; then
        return 1  # unchanged
    fi
    say "writing $CONF (node $NODE, $cpus CPUs, ${mem} MB)"
    printf '%s\n' "$new" > "$CONF"
    return 0
}

stop_daemon() {  # stop_daemon NAME PIDFILE
    if running "$2"; then
        local pid
        pid="$(cat "$2")"
        say "stopping $1 (pid $pid)"
        kill "$pid"
        for _ in $(seq 1 50); do running "$2" || break; sleep 0.2; done
    fi
    rm -f "$2"
}

start_slurm() {
    if ! running "$CTLD_PID"; then
        say "starting slurmctld"
        slurmctld
    fi
    if ! running "$SLURMD_PID"; then
        say "starting slurmd"
        slurmd
    fi
}

node_state() {
    sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n 1 || true
}

wait_idle() {
    local state=""
    for _ in $(seq 1 "$WAIT_S"); do
        state="$(node_state)"
        case "$state" in
            idle|mixed|allocated) say "node $NODE is $state"; return 0 ;;
            down*|drain*) scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true ;;
        esac
        sleep 1
    done
    die "node $NODE is '${state:-unknown}' after ${WAIT_S}s; see $LOG_DIR/slurmctld.log and $LOG_DIR/slurmd.log"
}

start() {
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts daemons)"
    install_packages
    start_munge
    if write_config; then  # a changed config needs fresh daemons
        stop_daemon slurmd "$SLURMD_PID"
        stop_daemon slurmctld "$CTLD_PID"
    fi
    start_slurm
    wait_idle
    say "ready: try 'sbatch --wrap hostname'; stop with '$0 stop'"
}

stop() {
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$CTLD_PID"
    stop_daemon munged "$MUNGE_PID"
}

status() {
    for pair in "munged:$MUNGE_PID" "slurmctld:$CTLD_PID" "slurmd:$SLURMD_PID"; do
        if running "${pair#*:}"; then say "${pair%%:*} running"; else say "${pair%%:*} stopped"; fi
    done
    sinfo 2>/dev/null || true
}

case "$ACTION" in
    start) start ;;
    stop) stop ;;
    status) status ;;
    *) die "usage: $0 [start|stop|status]" ;;
esac
