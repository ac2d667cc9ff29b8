#!/usr/bin/env bash
# A real single-node Slurm on this machine, for the sweep's Slurm tests and for trying tools.sweep
# --launcher slurm without a cluster: installs Debian's slurm-wlm and munge when missing (root, apt),
# writes a slurm.conf for this one node (its real CPUs and memory, one partition, requeue allowed),
# starts munged, slurmctld and slurmd, and waits until sinfo shows the node idle.
# Idempotent: when this Slurm already answers, it is reused. Stop it with stop_local_slurm.sh.
# usage: source <(bash tools/slurm/start_local_slurm.sh)   # prints: export SLURM_CONF=...
# Environment: SLURM_STATE (default /var/tmp/mupl-slurm): config, state, logs and pid files.
set -euo pipefail
STATE=${SLURM_STATE:-/var/tmp/mupl-slurm}
CONF="$STATE/slurm.conf"
export SLURM_CONF="$CONF"

say() { echo "$*" >&2; }
die() { say "Error: $*"; exit 1; }

node_idle() {
    [[ "$(sinfo -h -N -o %t 2>/dev/null | head -n1)" =~ ^(idle|mix|alloc)$ ]]
}

install_missing() {
    local missing=()
    command -v munged >/dev/null || missing+=(munge)
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    (( ${#missing[@]} )) || return 0
    [[ $EUID == 0 ]] || die "Slurm is not installed and this is not root: apt-get install ${missing[*]}"
    say "Installing ${missing[*]} (apt-get, once)"
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

write_conf() {
    local host cpus memory
    host=$(hostname -s)
    cpus=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)   # nproc counts OMP_NUM_THREADS (the tests set 1) as CPUs
    memory=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 1024 ))   # MB, 1 GB left to the system
    mkdir -p "$STATE/ctld" "$STATE/d" "$STATE/log"
    cat > "$CONF" <<CONF
# Written by tools/slurm/start_local_slurm.sh: one node (this machine), for tests.
ClusterName=mupl-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
KillWait=10
MinJobAge=600
SchedulerParameters=sched_interval=1
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start_daemons() {
    mkdir -p /run/munge
    chown munge:munge /run/munge 2>/dev/null || true
    if ! munge -n >/dev/null 2>&1; then
        runuser -u munge -- munged >&2
        touch "$STATE/munged.ours"   # stop_local_slurm.sh stops only a munged this script started
    fi
    pgrep -F "$STATE/slurmctld.pid" >/dev/null 2>&1 || slurmctld -f "$CONF" >&2
    pgrep -F "$STATE/slurmd.pid" >/dev/null 2>&1 || slurmd -f "$CONF" >&2
}

main() {
    if [[ -f "$CONF" ]] && node_idle; then
        say "Slurm already running ($CONF)"
    else
        install_missing
        write_conf
        start_daemons
        local waited=0
        until node_idle; do
            (( waited < 60 )) || die "the node did not come up in 60 s; see $STATE/log/"
            sleep 1
            waited=$(( waited + 1 ))
        done
        say "Slurm is up: $(sinfo -h -o '%P %D %t %c CPUs')"
    fi
    echo "export SLURM_CONF=$CONF"
}

main
