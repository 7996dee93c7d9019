#!/usr/bin/env bash
# TPU_NAME=my-v4-32 ZONE=us-central2-b launchers/tpu_pod.sh --config=quick --workdir=/mnt/shared/ntkbench/quick
#
# Runs one ntkbench sweep on every worker (host) of a Cloud TPU pod slice at once:
#
#   gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all \
#     --command="cd ~/ntkbench && ntkbench run --distributed FLAGS..."
#
# On a TPU VM jax.distributed.initialize() reads the worker number, the worker count and the
# coordinator (worker 0) from the TPU metadata, so every worker runs the same command. All workers
# must start together (that is what --worker=all does) and see the same WORKDIR: a filesystem
# every worker mounts (NFS, Filestore), since each worker's disk is its own.
#
# Usage: TPU_NAME=... ZONE=... launchers/tpu_pod.sh FLAGS...   (FLAGS of `ntkbench run`)
#
# Environment:
#   TPU_NAME, ZONE     the TPU VM (required); PROJECT optional (else gcloud's default project)
#   REMOTE_DIR         the checkout on every worker, relative to the home directory or absolute
#                      (default: ntkbench)
#   INSTALL=1          first install on every worker: `cd REMOTE_DIR && pip install -e ".[tpu]"`
#                      (jax[tpu] with libtpu); with REPO_URL set, clone it into REMOTE_DIR first
#                      (or pull if it is there). Without REPO_URL, copy the code yourself, e.g.
#                      gcloud compute tpus tpu-vm scp --recurse . $TPU_NAME:ntkbench --zone=$ZONE --worker=all
#   REPO_URL           git URL to clone on every worker (with INSTALL=1)
#   NTKBENCH_BIN       the ntkbench executable on the workers (default: ntkbench; ~/.local/bin is
#                      put on PATH, where a user `pip install` puts it)
#   DRY_RUN=1          print the gcloud command instead of running it
#
# Exit status: gcloud's, non-zero when the command failed on a worker; ntkbench's 75 means
# "interrupted, resumable" (e.g. a preempted spot TPU): run the same command again to resume from
# WORKDIR. "TPU in use" errors mean an earlier run still holds the chips on some worker: stop it
# there (`sudo lsof -w /dev/accel*` or `/dev/vfio/*` shows the process).
set -euo pipefail

die() { printf 'tpu_pod.sh: error: %s\n' "$1" >&2; exit 2; }
# shellcheck source=launchers/_quote.sh disable=SC1091
source "$(dirname "${BASH_SOURCE[0]}")/_quote.sh"

[[ -n ${TPU_NAME:-} ]] || die "set TPU_NAME (and ZONE), e.g. TPU_NAME=my-v4-32 ZONE=us-central2-b launchers/tpu_pod.sh --config=quick --workdir=/mnt/shared/ntkbench/quick"
[[ -n ${ZONE:-} ]] || die "set ZONE, the zone of TPU ${TPU_NAME}, e.g. ZONE=us-central2-b."
REMOTE_DIR=${REMOTE_DIR:-ntkbench}
NTKBENCH_BIN=${NTKBENCH_BIN:-ntkbench}
INSTALL=${INSTALL:-0}
REPO_URL=${REPO_URL:-}

workdir=""
for arg in "$@"; do
  case $arg in
    --workdir=*) workdir=${arg#--workdir=} ;;
    --coordinator_address*|--num_processes*|--process_id*)
      die "do not pass ${arg%%=*}: on a TPU pod jax.distributed.initialize() finds it itself." ;;
  esac
done
[[ -n $workdir ]] || die "pass --workdir=DIR, a directory every worker sees (e.g. an NFS or Filestore mount)."
if [[ $workdir != /* && $workdir != gs://* ]]; then
  printf 'tpu_pod.sh: warning: --workdir=%s is relative to %s on each worker; every worker must see the same directory.\n' \
    "$workdir" "$REMOTE_DIR" >&2
fi

# The command every worker runs (in its login shell, bash on TPU VM images; it starts in $HOME).
# shellcheck disable=SC2088  # a literal "~/" given by the user, expanded on the worker
if [[ $REMOTE_DIR == "~/"* ]]; then
  dir_q="\"\$HOME\"/$(quote_cmd "${REMOTE_DIR#\~/}")"
else
  dir_q=$(quote_cmd "$REMOTE_DIR")
fi
# shellcheck disable=SC2016  # expanded on the worker
remote='set -e; export PATH="$HOME/.local/bin:$PATH"'
if [[ $INSTALL != 0 && -n $REPO_URL ]]; then
  remote+="; if [ -d ${dir_q}/.git ]; then git -C ${dir_q} pull --ff-only; else git clone $(quote_cmd "$REPO_URL") ${dir_q}; fi"
fi
remote+="; cd ${dir_q}"
if [[ $INSTALL != 0 ]]; then
  remote+='; python3 -m pip install --quiet -e ".[tpu]"'
fi
remote+="; $(quote_cmd "$NTKBENCH_BIN" run --distributed "$@")"

gcloud_cmd=(gcloud compute tpus tpu-vm ssh "$TPU_NAME" "--zone=${ZONE}")
if [[ -n ${PROJECT:-} ]]; then
  gcloud_cmd+=("--project=${PROJECT}")
fi
gcloud_cmd+=(--worker=all "--command=${remote}")

if [[ ${DRY_RUN:-0} != 0 ]]; then
  quote_cmd "${gcloud_cmd[@]}"
  exit 0
fi
command -v gcloud >/dev/null 2>&1 || die "gcloud not found: install the Google Cloud CLI (https://cloud.google.com/sdk)."
exec "${gcloud_cmd[@]}"
