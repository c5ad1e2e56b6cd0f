#!/usr/bin/env bash
# Idempotent single-node Slurm cluster for the tests and CI (Debian/Ubuntu, root or passwordless sudo, no
# systemd needed): Debian's slurm-wlm and munge, started by this script.
#   slurm-cluster.sh up      install slurm-wlm + munge if missing, write the configs, start munged (unless one
#                            answers), slurmctld and slurmd, wait until the node takes jobs
#   slurm-cluster.sh down    stop the slurmctld/slurmd (and munged) this script started
#   slurm-cluster.sh conf    print the slurm.conf path (clients need SLURM_CONF=that)
# The node claims SLURM_CI_CPUS CPUs and SLURM_CI_GPUS fake GPUs: gres.conf names device nodes made in
# $SLURM_CI_DIR/dev (copies of /dev/null: Slurm wants character devices; nothing opens them). Slurm then
# allocates them and sets SLURM_JOB_GPUS / CUDA_VISIBLE_DEVICES as on a real GPU node.
# No cgroups, no accounting daemon: proctrack/linuxproc, task/none, jobcomp/filetxt; finished jobs stay
# visible to `scontrol show job` for a day (MinJobAge), which is how tests read states and exit codes.
set -euo pipefail
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
DIR=${SLURM_CI_DIR:-/var/lib/fetcher-slurm}
CONF=$DIR/slurm.conf
CPUS=${SLURM_CI_CPUS:-8}
GPUS=${SLURM_CI_GPUS:-4}
NODE=$(hostname -s)
MUNGE_MARK=$DIR/munged.started-by-us
export SLURM_CONF=$CONF

log() { echo "slurm-cluster: $*"; }

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null && return 0
  log "installing slurm-wlm and munge"
  # A policy-rc.d that says "no" keeps the packages from starting their services (we start our own);
  # Docker-made Debian images have one already.
  local policy=/usr/sbin/policy-rc.d made=""
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null; $SUDO chmod 755 "$policy"; made=1
  fi
  local apt=(env DEBIAN_FRONTEND=noninteractive NEEDRESTART_MODE=l apt-get install -y -qq --no-install-recommends)
  $SUDO "${apt[@]}" slurm-wlm munge >/dev/null \
    || { $SUDO apt-get update -qq && $SUDO "${apt[@]}" slurm-wlm munge >/dev/null; } \
    || { [ -n "$made" ] && $SUDO rm -f "$policy"; return 1; }
  [ -z "$made" ] || $SUDO rm -f "$policy"
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

start_munge() {
  if munge_ok; then log "munged already answering"; return 0; fi
  getent passwd munge >/dev/null || { echo "slurm-cluster: no munge user (is munge installed?)" >&2; return 1; }
  if [ ! -s /etc/munge/munge.key ]; then   # the package makes one; older ones do not
    $SUDO install -d -o munge -g munge -m 0700 /etc/munge
    $SUDO dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  $SUDO chown munge:munge /etc/munge/munge.key; $SUDO chmod 0400 /etc/munge/munge.key
  for d in /run/munge /var/lib/munge /var/log/munge; do $SUDO install -d -o munge -g munge -m 0755 "$d"; done
  $SUDO runuser -u munge -- /usr/sbin/munged
  for _ in $(seq 1 50); do munge_ok && break; sleep 0.1; done
  munge_ok || { echo "slurm-cluster: munged did not start; log:" >&2; $SUDO tail -n 20 /var/log/munge/munged.log >&2 || true; return 1; }
  $SUDO mkdir -p "$DIR"; echo 1 | $SUDO tee "$MUNGE_MARK" >/dev/null
  log "munged started"
}

write_configs() {   # prints "changed" when slurm.conf or gres.conf differ from what was there
  local tmp; tmp=$(mktemp -d)
  cat > "$tmp/slurm.conf" <<EOF
# written by scripts/slurm-cluster.sh (decode-fetcher tests): one node, no cgroups, no accounting daemon
ClusterName=fetcher-ci
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$DIR/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=86400
InactiveLimit=0
KillWait=30
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$CPUS Gres=gpu:$GPUS State=UNKNOWN
PartitionName=ci Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
  {
    echo "# fake GPUs: character devices that are copies of /dev/null (see slurm-cluster.sh)"
    echo "Name=gpu File=$DIR/dev/nvidia[0-$((GPUS - 1))]"
  } > "$tmp/gres.conf"
  $SUDO mkdir -p "$DIR"/{state,spool,log,dev}
  for i in $(seq 0 $((GPUS - 1))); do
    [ -c "$DIR/dev/nvidia$i" ] || $SUDO mknod -m 0666 "$DIR/dev/nvidia$i" c 1 3
  done
  local changed=""
  for f in slurm.conf gres.conf; do
    if ! cmp -s "$tmp/$f" "$DIR/$f"; then $SUDO install -m 0644 "$tmp/$f" "$DIR/$f"; changed=1; fi
  done
  rm -rf "$tmp"
  [ -z "$changed" ] || echo changed
}

pid_alive() { [ -s "$1" ] && $SUDO kill -0 "$(cat "$1")" 2>/dev/null; }

stop_slurm() {
  local f pid
  for f in "$DIR/slurmd.pid" "$DIR/slurmctld.pid"; do
    pid_alive "$f" || continue
    pid=$(cat "$f"); $SUDO kill -TERM "$pid"
    for _ in $(seq 1 100); do $SUDO kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    $SUDO kill -0 "$pid" 2>/dev/null && $SUDO kill -KILL "$pid"
    log "stopped $(basename "$f" .pid) ($pid)"
  done
}

node_state() { sinfo -h -n "$NODE" -o %t 2>/dev/null | head -n 1; }

up() {
  install_packages
  start_munge
  local changed; changed=$(write_configs)
  if [ -n "$changed" ]; then stop_slurm; fi
  if ! pid_alive "$DIR/slurmctld.pid"; then
    $SUDO slurmctld -f "$CONF"
    log "slurmctld started"
  fi
  for _ in $(seq 1 100); do scontrol ping 2>/dev/null | grep -q UP && break; sleep 0.1; done
  if ! pid_alive "$DIR/slurmd.pid"; then
    $SUDO slurmd -f "$CONF" -N "$NODE"
    log "slurmd started"
  fi
  local state=""
  for _ in $(seq 1 300); do
    state=$(node_state)
    case "$state" in
      idle|mix|mixed|alloc|allocated) break ;;
      drain*|down*|inval*) $SUDO env SLURM_CONF="$CONF" scontrol update nodename="$NODE" state=resume >/dev/null 2>&1 || true ;;
    esac
    sleep 0.1
  done
  case "$state" in
    idle|mix|mixed|alloc|allocated) log "node $NODE is $state ($CPUS CPUs, $GPUS fake GPUs); SLURM_CONF=$CONF" ;;
    *) echo "slurm-cluster: node $NODE is '${state:-unknown}' after 30 s; logs:" >&2
       $SUDO tail -n 20 "$DIR/log/slurmctld.log" "$DIR/log/slurmd.log" >&2 || true
       return 1 ;;
  esac
}

down() {
  stop_slurm
  if [ -e "$MUNGE_MARK" ]; then
    local pid; pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
    [ -n "$pid" ] && $SUDO kill -TERM "$pid" 2>/dev/null && log "stopped munged ($pid)"
    $SUDO rm -f "$MUNGE_MARK"
  fi
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  conf) echo "$CONF" ;;
  *) echo "usage: $0 up|down|conf" >&2; exit 2 ;;
esac
