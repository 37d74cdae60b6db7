#!/usr/bin/env bash
# Stop the local Slurm cluster started by start_slurm.sh, using only the PIDs it recorded
# in $SLURM_LOCAL_DIR/run/pids (never by process name). Idempotent.
#   SLURM_LOCAL_DIR   same folder as for start_slurm.sh (default: /tmp/fmboost-slurm)
#   SLURM_WIPE=1      also delete the folder (job state, accounting DB, logs)
set -uo pipefail
export PATH="$PATH:/usr/sbin:/sbin"

BASE=${SLURM_LOCAL_DIR:-/tmp/fmboost-slurm}
PIDS=$BASE/run/pids

alive() {
  local s; [ -n "${1:-}" ] && [ -r "/proc/$1/stat" ] || return 1
  s=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  # a zombie counts as dead: on some machines PID 1 reaps orphans late
  [ -n "$s" ] && [ "$s" != Z ] && [ "$s" != X ]
}
# the recorded PID must still be the program we started (guards against PID reuse)
is_ours() { # is_ours NAME PID
  local exe; exe=$(readlink "/proc/$2/exe" 2>/dev/null || true)
  case "$1" in
    munged) [[ $exe == */munged ]] ;;
    mariadbd) [[ $exe == */mariadbd || $exe == */mysqld ]] ;;
    slurmdbd) [[ $exe == */slurmdbd* ]] ;;
    slurmctld) [[ $exe == */slurmctld* ]] ;;
    slurmd-*) [[ $exe == */slurmd || $exe == */slurmd-wlm ]] ;;
    *) return 1 ;;
  esac
}
stop_pid() { # stop_pid NAME PID
  local name=$1 pid=$2
  alive "$pid" || { echo "[stop_slurm] $name ($pid) already gone"; return 0; }
  is_ours "$name" "$pid" || { echo "[stop_slurm] pid $pid is no longer $name; not touching it"; return 0; }
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 150); do alive "$pid" || { echo "[stop_slurm] stopped $name ($pid)"; return 0; }; sleep 0.1; done
  echo "[stop_slurm] $name ($pid) ignored SIGTERM for 15s; SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  for _ in $(seq 50); do alive "$pid" || return 0; sleep 0.1; done
}

if [ ! -s "$PIDS" ]; then
  echo "[stop_slurm] nothing recorded in $PIDS: nothing to stop"
else
  declare -A P=()
  while read -r name pid; do [ -n "${name:-}" ] && P[$name]=$pid; done <"$PIDS"
  # 1. cancel jobs so no job steps outlive their slurmd
  if [ -n "${P[slurmctld]:-}" ] && alive "${P[slurmctld]}"; then
    if [ -n "$(timeout 10 squeue -h -o %i 2>/dev/null)" ]; then
      timeout 10 scancel --full --quiet --state=PENDING,RUNNING,SUSPENDED,REQUEUED 2>/dev/null \
        || timeout 10 scancel -u root 2>/dev/null || true
      for _ in $(seq 60); do
        [ -z "$(timeout 5 squeue -h -t running,completing -o %i 2>/dev/null)" ] && break; sleep 0.5
      done
    fi
  fi
  # 2. daemons, outermost first
  for name in $(printf '%s\n' "${!P[@]}" | grep '^slurmd-' | sort); do stop_pid "$name" "${P[$name]}"; done
  for name in slurmctld slurmdbd mariadbd munged; do
    [ -n "${P[$name]:-}" ] && stop_pid "$name" "${P[$name]}"
  done
  : >"$PIDS"
fi
if [ "${SLURM_WIPE:-0}" = 1 ]; then rm -rf "$BASE"; echo "[stop_slurm] removed $BASE"; fi
exit 0
