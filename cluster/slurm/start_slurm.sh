#!/usr/bin/env bash
# FMBoost CI: a throw-away local Slurm cluster (Debian slurm-wlm 22.05) on this one machine, without
# systemd, so that cluster/submit.py and its tests run against a real scheduler with accounting.
# munged + [mariadbd + slurmdbd] + slurmctld + N slurmd daemons (Debian's slurmd is built with --enable-multiple-slurmd, so n1..nN all run on this host).
#
# Idempotent: installs packages only if missing, does nothing if the cluster it
# started earlier is still up, and otherwise starts from empty job state and accounting.
# Every daemon's PID is recorded in $SLURM_LOCAL_DIR/run/pids for stop_slurm.sh.
#
# Environment knobs (all optional):
#   SLURM_LOCAL_DIR      state/log/pid folder            (default: /tmp/fmboost-slurm)
#   SLURM_NODES          number of slurmd daemons/nodes   (default: 2)
#   SLURM_CPUS_PER_NODE  CPUs advertised by each node     (default: 2)
#   SLURM_ACCOUNTING     1 = MariaDB + slurmdbd so `sacct` works (submitit needs it to see
#                        CANCELLED/FAILED/TIMEOUT states); 0 = no accounting   (default: 1)
#   SLURM_PARTITION      partition name                   (default: debug)
#   SLURM_WAIT_S         max seconds to wait for idle nodes (default: 90)
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

BASE=${SLURM_LOCAL_DIR:-/tmp/fmboost-slurm}
NODES=${SLURM_NODES:-2}
CPUS=${SLURM_CPUS_PER_NODE:-2}
ACCT=${SLURM_ACCOUNTING:-1}
PART=${SLURM_PARTITION:-debug}
WAIT_S=${SLURM_WAIT_S:-90}
CONF=/etc/slurm/slurm.conf
DBDCONF=/etc/slurm/slurmdbd.conf
PIDS=$BASE/run/pids
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
DB_PORT=16033
T0=$(date +%s%N)

log() { local ms=$(( ($(date +%s%N) - T0) / 1000000 )); printf '[start_slurm %d.%03ds] %s\n' $((ms / 1000)) $((ms % 1000)) "$*"; }
alive() { # alive PID -> true if the process exists and is not a zombie
  local s; [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}
record() { echo "$1 $2" >>"$PIDS"; }
wait_pidfile() { # wait_pidfile FILE SECONDS -> echoes pid once the file names a live process
  local f=$1 n=$(( $2 * 10 )) p
  for _ in $(seq "$n"); do
    p=$(cat "$f" 2>/dev/null || true)
    if [ -n "$p" ] && alive "$p"; then echo "$p"; return 0; fi
    sleep 0.1
  done
  return 1
}

# ---------------------------------------------------------------- 0. already up?
if [ -s "$PIDS" ]; then
  all=1
  while read -r name pid; do alive "$pid" || { all=0; log "recorded $name ($pid) is gone"; }; done <"$PIDS"
  if [ $all = 1 ] && timeout 10 sinfo -h >/dev/null 2>&1; then
    log "cluster already running (pids in $PIDS)"; sinfo; exit 0
  fi
  log "cluster half up: stopping remnants first"
  SLURM_LOCAL_DIR=$BASE bash "$HERE/stop_slurm.sh" || true
fi

# ---------------------------------------------------------------- 1. install
pkgs=()
command -v munged >/dev/null || pkgs+=(munge)
command -v slurmctld >/dev/null || pkgs+=(slurmctld)
command -v slurmd >/dev/null || pkgs+=(slurmd)
command -v sbatch >/dev/null || pkgs+=(slurm-client)
if [ "$ACCT" = 1 ]; then
  command -v slurmdbd >/dev/null || pkgs+=(slurmdbd)
  command -v mariadbd >/dev/null || pkgs+=(mariadb-server)
fi
if [ ${#pkgs[@]} -gt 0 ]; then
  log "installing: ${pkgs[*]}"
  # keep invoke-rc.d from starting the packaged services (no systemd here anyway)
  tmp_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; tmp_policy=1; fi
  apt_ok=0
  for _ in 1 2; do
    if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${pkgs[@]}" >"/tmp/start_slurm_apt.log" 2>&1; then apt_ok=1; break; fi
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null 2>&1 || true   # stale/missing lists
  done
  [ $tmp_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $apt_ok = 1 ] || { cat /tmp/start_slurm_apt.log; echo "apt-get install failed" >&2; exit 1; }
  log "installed ($(slurmd -V))"
fi

# A cluster that is not up starts empty: job state saved by daemons that are gone (a machine image
# taken mid-run, a killed CI) would come back as RUNNING jobs that hold the nodes for minutes, and
# the accounting DB must forget them too so that job IDs and sacct agree.
rm -rf "$BASE"/{ctld,spool,mysql}
mkdir -p "$BASE"/{run,log,ctld,spool} /etc/slurm
: >"$PIDS"

# ---------------------------------------------------------------- 2. munge
if timeout 5 munge -n </dev/null 2>/dev/null | timeout 5 unmunge >/dev/null 2>&1; then
  log "munged already running (not ours, left alone)"
else
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key 2>/dev/null \
      || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  fi
  chown munge:munge /etc/munge /etc/munge/munge.key; chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key
  mkdir -p /run/munge /var/lib/munge /var/log/munge
  chown munge:munge /run/munge /var/lib/munge /var/log/munge
  chmod 755 /run/munge; chmod 700 /var/log/munge; chmod 711 /var/lib/munge
  rm -f /run/munge/munged.pid
  runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1 \
    || runuser -u munge -- /usr/sbin/munged --force --pid-file=/run/munge/munged.pid </dev/null >/dev/null 2>&1
  pid=$(wait_pidfile /run/munge/munged.pid 10) || { tail -20 /var/log/munge/munged.log; exit 1; }
  record munged "$pid"
  log "munged started (pid $pid)"
fi

HOST=$(hostname -s)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2/1024*0.9}' /proc/meminfo)

# ---------------------------------------------------------------- 3. slurm.conf (sacctmgr needs it too)
if [ "$ACCT" = 1 ]; then
  ACCT_LINES="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux"
else
  ACCT_LINES="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
fi
if [ "$NODES" -gt 1 ]; then NODESPEC="n[1-$NODES]"; PORTS="17001-$((17000 + NODES))"; else NODESPEC=n1; PORTS=17001; fi
cat >"$CONF" <<EOF
# generated by start_slurm.sh -- local single-host test cluster
ClusterName=localci
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s); it
# also bounds how long a step may take to launch, under a second on this one machine
AuthInfo=cred_expire=5
CredType=cred/munge
SlurmctldPort=6817
StateSaveLocation=$BASE/ctld
SlurmdSpoolDir=$BASE/spool/%n
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
SlurmdLogFile=$BASE/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SlurmdParameters=config_overrides
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# scheduler/backfill passes every second (defaults 60/30): a requeued job restarts 6 s after its
# requeue instead of 15 (the SIGKILL, stall and time-limit tests each wait for one)
SchedulerParameters=bf_interval=1,sched_interval=1
MpiDefault=none
JobCompType=jobcomp/none
$ACCT_LINES
ReturnToService=2
SlurmdTimeout=300
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
MailProg=/bin/true
NodeName=$NODESPEC NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$PORTS CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PART Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF

# ---------------------------------------------------------------- 4. accounting (MariaDB + slurmdbd)
if [ "$ACCT" = 1 ]; then
  DATADIR=$BASE/mysql
  if [ ! -d "$DATADIR/mysql" ]; then
    mkdir -p "$DATADIR"
    mariadb-install-db --no-defaults --datadir="$DATADIR" --user=root --skip-test-db \
      --auth-root-authentication-method=socket >"$BASE/log/mysql_install.log" 2>&1
  fi
  rm -f "$BASE/run/mysqld.pid"
  setsid /usr/sbin/mariadbd --no-defaults --datadir="$DATADIR" --user=root \
    --bind-address=127.0.0.1 --port=$DB_PORT --socket="$BASE/run/mysql.sock" \
    --pid-file="$BASE/run/mysqld.pid" --log-error="$BASE/log/mysqld.log" \
    --innodb-buffer-pool-size=64M --skip-name-resolve </dev/null >/dev/null 2>&1 &
  pid=$(wait_pidfile "$BASE/run/mysqld.pid" 60) || { tail -30 "$BASE/log/mysqld.log"; exit 1; }
  record mariadbd "$pid"
  for _ in $(seq 100); do mariadb-admin --socket="$BASE/run/mysql.sock" ping >/dev/null 2>&1 && break; sleep 0.2; done
  mariadb --socket="$BASE/run/mysql.sock" -u root -e "
    CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    CREATE DATABASE IF NOT EXISTS slurm_acct_db;
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1'; FLUSH PRIVILEGES;"
  log "mariadbd started (pid $pid, 127.0.0.1:$DB_PORT)"
  cat >"$DBDCONF" <<EOF
# generated by start_slurm.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
LogFile=$BASE/log/slurmdbd.log
PidFile=$BASE/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$DBDCONF"
  rm -f "$BASE/run/slurmdbd.pid"
  slurmdbd </dev/null >/dev/null 2>&1
  pid=$(wait_pidfile "$BASE/run/slurmdbd.pid" 30) || { tail -30 "$BASE/log/slurmdbd.log"; exit 1; }
  record slurmdbd "$pid"
  ok=0
  for _ in $(seq 100); do timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 && { ok=1; break; }; sleep 0.2; done
  [ $ok = 1 ] || { tail -30 "$BASE/log/slurmdbd.log"; echo "slurmdbd not answering" >&2; exit 1; }
  log "slurmdbd started (pid $pid)"
fi

# ---------------------------------------------------------------- 5. slurmctld + slurmd(s)
rm -f "$BASE/run/slurmctld.pid"
slurmctld -i </dev/null >"$BASE/log/slurmctld.stdout" 2>&1
pid=$(wait_pidfile "$BASE/run/slurmctld.pid" 30) || { tail -30 "$BASE/log/slurmctld.log"; exit 1; }
record slurmctld "$pid"
log "slurmctld started (pid $pid)"
for i in $(seq 1 "$NODES"); do
  mkdir -p "$BASE/spool/n$i"
  rm -f "$BASE/run/slurmd-n$i.pid"
  slurmd -N "n$i" </dev/null >"$BASE/log/slurmd-n$i.stdout" 2>&1
  pid=$(wait_pidfile "$BASE/run/slurmd-n$i.pid" 30) || { tail -30 "$BASE/log/slurmd-n$i.log"; exit 1; }
  record "slurmd-n$i" "$pid"
done
log "slurmd started for $NODESPEC"

# ---------------------------------------------------------------- 6. wait for idle nodes
deadline=$(( $(date +%s) + WAIT_S ))
while :; do
  states=$(sinfo -h -N -p "$PART" -o '%t' 2>/dev/null | sort | uniq -c | tr -s ' ' || true)
  n_idle=$(sinfo -h -N -p "$PART" -t idle -o '%N' 2>/dev/null | wc -l || echo 0)
  [ "$n_idle" -ge "$NODES" ] && break
  # nodes restored as down/drained from saved state: resume them
  if sinfo -h -N -t down,drain -o '%N' 2>/dev/null | grep -q .; then
    scontrol update NodeName="$NODESPEC" State=RESUME >/dev/null 2>&1 || true
  fi
  if [ "$(date +%s)" -ge $deadline ]; then
    echo "nodes not idle after ${WAIT_S}s: $states" >&2; sinfo -N -l >&2 || true; exit 1
  fi
  sleep 0.5
done
log "cluster ready: $NODES node(s) idle in partition '$PART'"
sinfo
