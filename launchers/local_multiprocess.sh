#!/usr/bin/env bash
# launchers/local_multiprocess.sh 2 run --config=quick --workdir=runs/quick-mp
#
# Runs one multi-process JAX job on this machine: starts N processes of
#
#   ntkbench ARGS... --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=I
#
# for I = 0..N-1 (identical arguments except --process_id), each with JAX_PLATFORMS=cpu unless
# JAX_PLATFORMS is already set (even to the empty string, which means "let JAX choose"). On CPU
# the CLI switches JAX to gloo collectives. Use it to exercise the multi-process code paths on a
# laptop or in CI; on one multi-GPU machine prefer launchers/local_single.sh (one process drives
# every local device).
#
# Usage: launchers/local_multiprocess.sh N ARGS...
#
# Behaviour:
#   - The coordinator port is a free port picked automatically, or NTKBENCH_COORDINATOR_PORT.
#   - Each line a process writes (stdout and stderr merged) is printed as "[I] line" on stdout;
#     the launcher's own messages go to stderr as "[launcher] ...".
#   - SIGTERM, SIGINT and SIGHUP sent to the launcher are forwarded to every process (SIGHUP is
#     forwarded as SIGTERM). A second signal kills them all with SIGKILL. Each process runs in
#     its own session (when `setsid` exists), so Ctrl-C in a terminal reaches each one exactly
#     once, through the launcher, and a signal reaches the whole process tree of a process.
#   - When a process exits with a non-zero status, the others get NTKBENCH_KILL_GRACE seconds
#     (default 30) to exit on their own (a multi-process job cannot go on without one of its
#     processes); then they get SIGTERM, and SIGKILL another NTKBENCH_KILL_GRACE seconds later.
#     So one dead process never leaves the others hanging in a collective forever.
#   - Exit status: the first non-zero exit status of a process (in the order they exited), or 0.
#     75 means "interrupted, resumable": rerun the same command to resume. 2 is bad input.
#
# Environment:
#   NTKBENCH_BIN                the ntkbench executable (default: `ntkbench` on PATH)
#   NTKBENCH_COORDINATOR_PORT   coordinator port (default: a free port)
#   NTKBENCH_KILL_GRACE         seconds before stopping the rest after a failure (default 30)
#   JAX_PLATFORMS               passed through if set; otherwise cpu
#   JAX_NUM_CPU_DEVICES         passed through: fake CPU devices per process
#   DRY_RUN=1                   print the N commands instead of running them
set -euo pipefail

readonly EXIT_USAGE=2
readonly EXIT_RESUMABLE=75

log() { printf '[launcher] %s\n' "$*" >&2; }
die() { printf 'local_multiprocess.sh: error: %s\n' "$1" >&2; exit "$EXIT_USAGE"; }
# shellcheck source=launchers/_quote.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/_quote.sh"

if (( $# < 2 )); then
  die "usage: local_multiprocess.sh N ARGS..., e.g. local_multiprocess.sh 2 run --config=quick --workdir=runs/quick-mp"
fi
num_processes=$1
shift
[[ $num_processes =~ ^[1-9][0-9]*$ ]] || die "N must be a positive integer, got '${num_processes}'."
for arg in "$@"; do
  case $arg in
    --coordinator_address*|--num_processes*|--process_id*|--distributed|--nodistributed)
      die "do not pass ${arg%%=*}: the launcher adds --coordinator_address, --num_processes and --process_id itself." ;;
  esac
done

bin=${NTKBENCH_BIN:-ntkbench}
grace=${NTKBENCH_KILL_GRACE:-30}
[[ $grace =~ ^[0-9]+$ ]] || die "NTKBENCH_KILL_GRACE must be a whole number of seconds, got '${grace}'."
export JAX_PLATFORMS="${JAX_PLATFORMS-cpu}"

free_port() {
  # Ask the kernel for a free port; fall back to probing random ports without Python.
  local py port
  for py in python3 python; do
    if command -v "$py" >/dev/null 2>&1 &&
       port=$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' 2>/dev/null); then
      printf '%s\n' "$port"
      return 0
    fi
  done
  for (( try = 0; try < 100; try++ )); do
    port=$(( 20000 + RANDOM % 40000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
      printf '%s\n' "$port"
      return 0
    fi
  done
  return 1
}

if [[ -n ${NTKBENCH_COORDINATOR_PORT:-} ]]; then
  port=$NTKBENCH_COORDINATOR_PORT
  if ! [[ $port =~ ^[0-9]+$ ]] || (( port < 1 || port > 65535 )); then
    die "NTKBENCH_COORDINATOR_PORT must be a port number (1-65535), got '${port}'."
  fi
else
  port=$(free_port) || die "could not find a free port; set NTKBENCH_COORDINATOR_PORT."
fi

command_for() {  # command_for I ARGS...: sets `cmd` to the exact argv of process I
  local i=$1
  shift
  cmd=("$bin" "$@" "--coordinator_address=127.0.0.1:${port}" "--num_processes=${num_processes}"
       "--process_id=${i}")
}

if [[ ${DRY_RUN:-0} != 0 ]]; then
  for (( i = 0; i < num_processes; i++ )); do
    command_for "$i" "$@"
    quote_cmd "JAX_PLATFORMS=${JAX_PLATFORMS}" "${cmd[@]}"
  done
  exit 0
fi

command -v "$bin" >/dev/null 2>&1 ||
  die "'${bin}' not found; activate the virtual environment that has ntkbench or set NTKBENCH_BIN."

tmp=$(mktemp -d "${TMPDIR:-/tmp}/ntkbench-mp.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
mkfifo "$tmp/tick"
exec {tick}<>"$tmp/tick"  # nothing is ever written: `read -t` on it is a fork-free sleep

use_setsid=0
command -v setsid >/dev/null 2>&1 && use_setsid=1

prefix_lines() {  # prefix_lines I: copy stdin to stdout as "[I] line"
  local line
  while IFS= read -r line || [[ -n $line ]]; do
    printf '[%s] %s\n' "$1" "$line"
  done
}

pids=()
prefixers=()
status=()
signal_running() {  # signal_running SIG: send SIG to every process that is still running
  local i
  for i in "${!pids[@]}"; do
    [[ -z ${status[i]} ]] || continue
    if (( use_setsid )); then
      kill -s "$1" -- "-${pids[i]}" 2>/dev/null || kill -s "$1" "${pids[i]}" 2>/dev/null || true
    else
      kill -s "$1" "${pids[i]}" 2>/dev/null || true
    fi
  done
}

signals_received=0
# shellcheck disable=SC2317  # invoked by the traps below
on_signal() {
  signals_received=$(( signals_received + 1 ))
  if (( signals_received == 1 )); then
    log "received SIG$1; forwarding it to every process (a second signal kills them)"
    signal_running "$1"
  else
    log "received SIG$1 again; killing every process"
    signal_running KILL
  fi
}
trap 'on_signal TERM' TERM
trap 'on_signal INT' INT
trap 'on_signal TERM' HUP

for (( i = 0; i < num_processes; i++ )); do
  (( signals_received == 0 )) || break  # interrupted while starting: start no more
  command_for "$i" "$@"
  mkfifo "$tmp/out$i"
  prefix_lines "$i" <"$tmp/out$i" &
  prefixers+=("$!")
  # Asynchronous commands of a script ignore SIGINT; reset it so a forwarded SIGINT works.
  if (( use_setsid )); then
    ( trap - INT QUIT; exec setsid "${cmd[@]}" ) </dev/null >"$tmp/out$i" 2>&1 &
  else
    ( trap - INT QUIT; exec "${cmd[@]}" ) </dev/null >"$tmp/out$i" 2>&1 &
  fi
  pids+=("$!")
  status+=("")
done
if (( ${#pids[@]} == 0 )); then
  exit "$EXIT_RESUMABLE"
fi
log "started ${#pids[@]} processes (coordinator 127.0.0.1:${port}, JAX_PLATFORMS=${JAX_PLATFORMS}): pids ${pids[*]}"

first_failure=0
deadline=-1     # SECONDS at which the survivors of a failure get the next, harsher signal
escalation=TERM
remaining=${#pids[@]}
while (( remaining > 0 )); do
  for i in "${!pids[@]}"; do
    [[ -z ${status[i]} ]] || continue
    kill -0 "${pids[i]}" 2>/dev/null && continue
    rc=0
    wait "${pids[i]}" || rc=$?
    status[i]=$rc
    remaining=$(( remaining - 1 ))
    if (( rc != 0 )); then
      if (( first_failure == 0 )); then
        first_failure=$rc
        if (( remaining > 0 )); then
          log "process $i exited with status $rc; the other ${remaining} get ${grace}s to exit, then SIGTERM"
          deadline=$(( SECONDS + grace ))
        fi
      else
        log "process $i exited with status $rc"
      fi
    fi
  done
  if (( remaining > 0 && deadline >= 0 && SECONDS >= deadline )); then
    log "sending SIG${escalation} to the ${remaining} processes still running"
    signal_running "$escalation"
    escalation=KILL
    deadline=$(( SECONDS + grace ))
  fi
  if (( remaining > 0 )); then
    read -r -t 0.2 -u "$tick" _ || true
  fi
done

# Let the prefixers print the last lines; a leftover grandchild holding a pipe cannot block us.
for (( k = 0; k < 50; k++ )); do
  alive=0
  for p in "${prefixers[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
  (( alive )) || break
  read -r -t 0.1 -u "$tick" _ || true
done
for p in "${prefixers[@]}"; do kill "$p" 2>/dev/null || true; done
wait "${prefixers[@]}" 2>/dev/null || true

exit "$first_failure"
