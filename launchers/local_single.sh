#!/usr/bin/env bash
# launchers/local_single.sh run --config=quick --workdir=runs/quick
#
# One process that drives every device of this machine (all GPUs, all TPU chips of a single-host
# TPU VM, or the CPU): the simplest and, on one machine, fastest way to run ntkbench. It runs
#
#   ntkbench ARGS...
#
# without jax.distributed. Any ntkbench command works (run, status, report, profile, presets).
#
# Environment:
#   NTKBENCH_BIN         the ntkbench executable (default: `ntkbench` on PATH)
#   JAX_PLATFORMS        e.g. cpu to ignore the accelerators (default: JAX picks the best one)
#   JAX_NUM_CPU_DEVICES  fake CPU devices, e.g. 8, to try sharded runs on a laptop
#   DRY_RUN=1            print the command instead of running it
#
# Exit status: that of ntkbench; 75 means "interrupted, resumable" (rerun the same command to
# resume), 2 means bad input. SIGTERM/SIGINT reach ntkbench directly (the script execs it).
set -euo pipefail

# shellcheck source=launchers/_quote.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/_quote.sh"

if (( $# == 0 )); then
  printf 'local_single.sh: error: %s\n' \
    "usage: local_single.sh COMMAND [FLAGS...], e.g. local_single.sh run --config=quick --workdir=runs/quick" >&2
  exit 2
fi

bin=${NTKBENCH_BIN:-ntkbench}
if [[ ${DRY_RUN:-0} != 0 ]]; then
  quote_cmd "$bin" "$@"
  exit 0
fi
if ! command -v "$bin" >/dev/null 2>&1; then
  printf "local_single.sh: error: '%s' not found; activate the virtual environment that has ntkbench or set NTKBENCH_BIN.\n" "$bin" >&2
  exit 2
fi
exec "$bin" "$@"
