#!/usr/bin/env bash
# Stops the one-node Slurm cluster that slurm-up.sh started: cancels its jobs, then stops slurmd,
# slurmctld and munged by their pid files. Leaves the packages and the config installed, so the
# next slurm-up.sh is quick. Idempotent: does nothing when nothing runs.
set -uo pipefail
RUN=/run/tessera-slurm

stop() { # NAME PIDFILE
  local pid
  [ -f "$2" ] || return 0
  pid=$(cat "$2")
  if kill -0 "$pid" 2>/dev/null; then
    echo "slurm-down: stopping $1 ($pid)"
    kill "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$2"
}

if command -v scancel >/dev/null && timeout 5 scontrol ping >/dev/null 2>&1; then
  timeout 10 scancel --full --user="$(id -un)" 2>/dev/null || true
fi
stop slurmd "$RUN/slurmd.pid"
stop slurmctld "$RUN/slurmctld.pid"
stop munged /run/munge/munged.pid
exit 0
