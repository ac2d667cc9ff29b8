#!/usr/bin/env bash
# Stop the Slurm that start_local_slurm.sh started: slurmd and slurmctld by their pid files, then munged
# if that script started it.
# Environment: SLURM_STATE (default /var/tmp/mupl-slurm), as for the start script.
set -euo pipefail
STATE=${SLURM_STATE:-/var/tmp/mupl-slurm}

stop_pid_file() {
    local file=$1 pid
    [[ -f "$file" ]] || return 0
    pid=$(cat "$file")
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$file"
}

stop_pid_file "$STATE/slurmd.pid"
stop_pid_file "$STATE/slurmctld.pid"
if [[ -f "$STATE/munged.ours" ]]; then
    runuser -u munge -- munged --stop >&2 || true
    rm -f "$STATE/munged.ours"
fi
echo "Slurm stopped ($STATE)" >&2
