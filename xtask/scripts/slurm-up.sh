#!/usr/bin/env bash
# A one-node Slurm cluster on this machine, for the Slurm end-to-end tests (tests/slurm_e2e.rs).
#
# Installs Debian's slurm-wlm and munge (Debian 12 ships Slurm 22.05) if they are missing, writes
# a slurm.conf for this host, and starts munged, slurmctld and slurmd without systemd. Idempotent:
# on a machine where the cluster is already up it checks it and returns within a second or two.
# Needs root (CI and the dev machines run as root). Stop it with slurm-down.sh.
#
# Every setting below was checked against Debian's 22.05 man pages (`man slurm.conf`):
# - JobRequeue=1: batch jobs may be requeued (our sbatch scripts also pass --requeue).
# - ReturnToService=2: a DOWN node becomes usable as soon as it registers with a valid config,
#   so a restarted slurmd (or a node that was down) takes jobs again without `scontrol update`.
# - AuthInfo=cred_expire=10: a requeued batch job cannot start again until the credential of its
#   previous run has expired (default 120 s); 10 s keeps the restart test short.
# - ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, JobAcctGatherType=jobacct_gather/none:
#   no cgroups and no systemd are needed (a container has neither); linuxproc tracks a job's
#   processes through their parent ids, which is enough for one node.
# - SelectType=select/cons_tres with CR_CPU: tasks are given CPUs, as with --cpus-per-task.
# - The node line is what `slurmd -C` reports for this machine (its real CPUs and memory).
set -euo pipefail

ETC=/etc/slurm
STATE=/var/lib/tessera-slurm
LOG=/var/log/tessera-slurm
RUN=/run/tessera-slurm
HOST=$(hostname -s)

say() { echo "slurm-up: $*"; }

cluster_ready() {
  # The controller answers and our node is idle or busy (not down/drained).
  timeout 5 scontrol ping >/dev/null 2>&1 &&
    [ -n "$(timeout 5 sinfo -h -n "$HOST" -o '%t' 2>/dev/null | grep -E '^(idle|mix|alloc|comp)' || true)" ]
}

if command -v slurmctld >/dev/null && [ -f "$ETC/slurm.conf" ] && cluster_ready; then
  say "already up ($(sinfo -h -o '%P %D %t %c CPUs'))"
  exit 0
fi

# 1. Packages.
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  say "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# 2. munge: a key, then the daemon as the munge user.
mkdir -p /etc/munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then
    mungekey --create --keyfile=/etc/munge/munge.key
  else
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
  fi
fi
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge
chmod 0700 /etc/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null
fi

# 3. slurm.conf for this host.
mkdir -p "$ETC" "$STATE/ctld" "$STATE/d" "$LOG" "$RUN"
NODE=$(slurmd -C | head -n1)
case "$NODE" in
  NodeName=*) ;;
  *) echo "slurm-up: unexpected 'slurmd -C' output: $NODE" >&2; exit 1 ;;
esac
# slurmd -C names the node after the host; address it on the loopback.
NODE="$NODE NodeAddr=127.0.0.1 State=UNKNOWN"
cat >"$ETC/slurm.conf.new" <<EOF
# Written by tessera's xtask/scripts/slurm-up.sh: a one-node cluster for the tests.
ClusterName=tessera
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobRequeue=1
ReturnToService=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
# Keep finished jobs visible to 'scontrol show job' for 10 minutes (xtask's submit reads the
# final state there when accounting is off).
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=10
Waittime=0
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
$NODE
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$ETC/slurm.conf.new" "$ETC/slurm.conf" 2>/dev/null; then
  mv "$ETC/slurm.conf.new" "$ETC/slurm.conf"
  changed=1
else
  rm "$ETC/slurm.conf.new"
  changed=0
fi

# 4. The daemons (restarted when the config changed).
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {
  if running "$1"; then
    kill "$(cat "$1")" 2>/dev/null || true
    for _ in $(seq 50); do running "$1" || break; sleep 0.1; done
  fi
}
if [ "$changed" = 1 ]; then
  stop "$RUN/slurmd.pid"
  stop "$RUN/slurmctld.pid"
fi
if ! running "$RUN/slurmctld.pid"; then
  say "starting slurmctld"
  slurmctld
fi
if ! running "$RUN/slurmd.pid"; then
  say "starting slurmd"
  slurmd
fi

# 5. Wait until the node takes jobs.
for _ in $(seq 150); do
  if cluster_ready; then
    say "up ($(sinfo -h -o '%P %D %t %c CPUs'))"
    exit 0
  fi
  sleep 0.2
done
echo "slurm-up: the cluster did not come up in 30 s; sinfo says:" >&2
sinfo -N -l >&2 || true
tail -n 20 "$LOG/slurmctld.log" "$LOG/slurmd.log" >&2 || true
exit 1
