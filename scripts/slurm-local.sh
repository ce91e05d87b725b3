#!/usr/bin/env bash
# A single-node Slurm cluster on localhost for tests and trials: munged + slurmctld + slurmd,
# all state under one folder, no systemd and no cgroups (proctrack/linuxproc, task/none).
#
#   scripts/slurm-local.sh start    install slurm-wlm/munge if missing (root), start, wait ready
#   scripts/slurm-local.sh stop     cancel jobs, wait for them to end, stop the daemons
#   scripts/slurm-local.sh status   exit 0 when the cluster answers
#   scripts/slurm-local.sh env      print `export SLURM_CONF=...` for sbatch/squeue/submitit
#
# State folder: $ANBENCH_SLURM_DIR (default $TMPDIR/anbench-slurm). Needs root: slurmd starts
# jobs as the submitting user. Nothing here is a production setup: no limits are enforced.
set -euo pipefail

D=${ANBENCH_SLURM_DIR:-${TMPDIR:-/tmp}/anbench-slurm}
CONF=$D/etc/slurm.conf
export SLURM_CONF=$CONF

say() { echo "slurm-local: $*" >&2; }

pid_of() {  # the pid recorded in a daemon's pid file, if that process is alive
  local file=$1 pid
  [ -f "$file" ] || return 1
  pid=$(cat "$file" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

answers() { timeout 10 sinfo -h -o %T >/dev/null 2>&1; }

install_packages() {
  local missing=()
  for cmd in munged slurmctld slurmd sbatch; do
    command -v "$cmd" >/dev/null || missing+=("$cmd")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    say "missing ${missing[*]}: install the Debian packages slurmctld slurmd slurm-client munge"
    exit 1
  fi
  say "apt-get install slurmctld slurmd slurm-client munge"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

write_conf() {
  local cpus mem
  cpus=$(nproc)
  mem=$(awk '/MemTotal/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)
  mkdir -p "$D/etc" "$D/spool/ctld" "$D/spool/d" "$D/log"
  cat > "$CONF" <<EOF
ClusterName=anbenchlocal
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$D/run/munge.sock
StateSaveLocation=$D/spool/ctld
SlurmdSpoolDir=$D/spool/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SwitchType=switch/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MinJobAge=3600
KillWait=5
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
}

start() {
  if pid_of "$D/run/slurmctld.pid" >/dev/null && answers; then
    say "already running ($CONF)"
    return 0
  fi
  [ "$(id -u)" = 0 ] || { say "needs root (slurmd starts jobs as their user)"; exit 1; }
  install_packages
  for port in 6817 6818; do
    if port_busy "$port"; then
      say "port $port is in use (another Slurm?); not starting"
      exit 1
    fi
  done
  write_conf
  # munged refuses a socket folder that is not 0755 and a key readable by others.
  mkdir -p "$D/run" "$D/key"
  chmod 0755 "$D" "$D/run"
  chmod 0700 "$D/key"
  [ -f "$D/key/munge.key" ] || mungekey --create --keyfile="$D/key/munge.key" >/dev/null
  chmod 0600 "$D/key/munge.key"
  if ! pid_of "$D/run/munged.pid" >/dev/null; then
    munged --force --key-file "$D/key/munge.key" --socket "$D/run/munge.sock" \
      --pid-file "$D/run/munged.pid" --log-file "$D/log/munged.log" \
      --seed-file "$D/key/munged.seed"
  fi
  slurmctld -f "$CONF"
  slurmd -f "$CONF" -N localhost
  for _ in $(seq 60); do
    if answers && [ -n "$(sinfo -h -N -o %T 2>/dev/null | grep -E 'idle|mix|alloc')" ]; then
      say "running: $(sinfo -h -o '%P %D %T %c CPUs') ($CONF)"
      return 0
    fi
    sleep 0.5
  done
  say "the cluster did not come up; logs in $D/log"
  tail -n 5 "$D/log/slurmctld.log" "$D/log/slurmd.log" >&2 || true
  exit 1
}

stop() {
  if answers; then
    # Cancel what is left, then wait: stopping slurmd while a job is being killed can leave
    # a slurmstepd behind.
    scancel --full --quiet --user "$(id -un)" 2>/dev/null || true
    for _ in $(seq 60); do
      [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
  for _ in $(seq 40); do
    pgrep -x slurmstepd >/dev/null || break
    sleep 0.5
  done
  local pids=() pid
  for name in slurmd slurmctld munged; do
    pid=$(pid_of "$D/run/$name.pid") && pids+=("$pid")
  done
  [ ${#pids[@]} -eq 0 ] && { say "not running"; return 0; }
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 40); do
    local alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    [ ${#alive[@]} -eq 0 ] && { say "stopped"; return 0; }
    sleep 0.5
  done
  kill -KILL "${alive[@]}" 2>/dev/null || true
  say "stopped (killed ${alive[*]})"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) answers && pid_of "$D/run/slurmctld.pid" >/dev/null && { sinfo; exit 0; }
          say "not running"; exit 1 ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|status|env" >&2; exit 2 ;;
esac
