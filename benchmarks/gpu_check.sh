#!/usr/bin/env bash
# One-shot check of a GPU machine: offline install, environment, GPU tests, sweeps, benchmarks.
#
#     bash benchmarks/gpu_check.sh                 # on the GPU machine, in the repository root
#     bash benchmarks/gpu_check.sh --cpu-dry-run   # anywhere: CPU, tiny sizes (a few minutes)
#
# Environment: OUT (results folder, default ./gpu_check_out), WHEELS (offline wheels from
# benchmarks/fetch_wheels.sh, default ./wheels), PYTHON (default python3: the interpreter that
# already holds jax with CUDA), BUDGET_S (wall-clock budget of all steps, default 450 s on a GPU
# so that the whole script stays under 8 minutes), NTKBENCH_INSTALL=pythonpath (skip the
# editable install and use the PYTHONPATH fallback). Relative OUT and WHEELS are taken from the
# directory the script is started in.
#
# Every step runs under `timeout`, writes $OUT/<step>.log and records its exit status; a failed
# step does not stop the later ones. Steps run in priority order and a step that would start
# with less than 20 s of the budget left is skipped, so the total stays within BUDGET_S (+10 s).
# $OUT/summary.md has one row per step: status, seconds, the key figure. Without a GPU (or with
# --cpu-dry-run) the same steps run on CPU at tiny sizes: the figures then only show that the
# steps work.
set -euo pipefail

SELF="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")"
REPO="$(cd "$(dirname "$SELF")/.." && pwd)"

# ------------------------------------------------------------------------------------------------
# Steps (each one runs as `gpu_check.sh __step NAME` under timeout, in $REPO, output to its log)
# ------------------------------------------------------------------------------------------------

ntkb() { "$PY" -m ntkbench.launchers.cli "$@"; }

step_install() {
  echo "python: $(command -v "$PY") ($("$PY" -V 2>&1))"
  local missing=() whl dist have
  if compgen -G "$WHEELS/*.whl" >/dev/null; then
    for whl in "$WHEELS"/*.whl; do
      dist="$(basename "$whl" | cut -d- -f1)"
      if have="$("$PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' \
          "$dist" 2>/dev/null)"; then
        echo "have $dist $have: skip $(basename "$whl")"
      else
        missing+=("$whl")
      fi
    done
  else
    echo "no wheels in $WHEELS (benchmarks/fetch_wheels.sh makes them)"
  fi
  local rc=0
  if ((${#missing[@]})); then
    echo "installing ${#missing[@]} wheels: ${missing[*]##*/}"
    "$PY" -m pip install --disable-pip-version-check --no-index --find-links "$WHEELS" \
      --no-deps "${missing[@]}" || rc=$?
  fi
  local mode=editable
  if [[ "${NTKBENCH_INSTALL:-}" == pythonpath ]]; then
    mode=pythonpath
  elif ! "$PY" -m pip install --disable-pip-version-check --no-index --no-deps \
      --no-build-isolation -e "$REPO"; then
    echo "editable install failed (no setuptools>=64 and wheel in this python?):" \
      "falling back to PYTHONPATH"
    mode=pythonpath
  fi
  if [[ $mode == pythonpath ]]; then
    # pyproject maps kernels/, checkpoints/ and launchers/ to ntkbench.kernels, ... : a folder
    # of links gives the same layout. PYTHONSAFEPATH=1 keeps the repository's own ntkbench/
    # (which lacks those subpackages) from shadowing it when a command runs in $REPO.
    local farm
    farm="$(mktemp -d "${TMPDIR:-/tmp}/ntkbench_path.XXXXXX")"
    mkdir "$farm/ntkbench"
    ln -s "$REPO"/ntkbench/* "$farm/ntkbench/"
    ln -s "$REPO/kernels" "$farm/ntkbench/kernels"
    ln -s "$REPO/checkpoints" "$farm/ntkbench/checkpoints"
    ln -s "$REPO/launchers" "$farm/ntkbench/launchers"
    printf 'export PYTHONPATH=%q\nexport PYTHONSAFEPATH=1\n' "$farm${PYTHONPATH:+:$PYTHONPATH}" \
      >"$OUT/env.sh"
    # shellcheck disable=SC1091
    . "$OUT/env.sh"
  fi
  echo "install mode: $mode"
  "$PY" -c 'import ntkbench, ntkbench.kernels, ntkbench.checkpoints, ntkbench.launchers.cli
import grain, ml_collections, zarr
print("imports ok: ntkbench from", ntkbench.__file__, "; kernels from", ntkbench.kernels.__file__)'
  return "$rc"
}

step_env() {
  command -v nvidia-smi >/dev/null && nvidia-smi || echo "(no nvidia-smi)"
  "$PY" - "$OUT/backend.txt" <<'EOF'
import importlib.metadata as md
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

print("python", sys.version.split()[0], "| jax", jax.__version__, "| jaxlib",
      md.version("jaxlib"), "| numpy", np.__version__)
for dist in sorted(d.metadata["Name"] for d in md.distributions()):
    if dist and any(s in dist.lower() for s in ("jax-cuda", "jax_cuda", "cublas", "cusolver",
                                                "cudnn", "scipy", "equinox", "optax", "orbax")):
        print(f"  {dist} {md.version(dist)}")
print("devices:", jax.devices(), "| default backend:", jax.default_backend())
open(sys.argv[1], "w").write(jax.default_backend() + "\n")
try:
    jax.print_environment_info()
except Exception as e:  # noqa: BLE001
    print("print_environment_info failed:", e)
# Which BLAS/LAPACK the processes load: a device eigh, a CPU eigh, and scipy's host LAPACK.
a = jnp.eye(256) + 0.01
jax.block_until_ready(jnp.linalg.eigh(a))
try:
    jax.block_until_ready(jnp.linalg.eigh(jax.device_put(a, jax.devices("cpu")[0])))
except Exception as e:  # noqa: BLE001
    print("eigh on the CPU backend failed:", e)
import scipy.linalg  # noqa: E402,F401

libs = sorted({ln.split()[-1] for ln in open("/proc/self/maps") if ".so" in ln})
keys = ("blas", "lapack", "cusolver", "mkl", "dnnl", "gfortran", "jaxlib/cpu", "jaxlib/cuda",
        "jax_cuda")
print("loaded BLAS/LAPACK libraries after eigh on the device and on CPU:")
for lib in libs:
    if any(k in lib.lower() for k in keys):
        print("  ", lib)
try:
    from threadpoolctl import threadpool_info

    for i in threadpool_info():
        print(f"  threadpool: {i['internal_api']} {i.get('version')} "
              f"arch={i.get('architecture')} threads={i['num_threads']} {i['filepath']}")
except ImportError:
    print("  (no threadpoolctl)")
print("BLAS environment:", {k: v for k, v in os.environ.items()
                            if k.startswith(("OPENBLAS", "OMP_", "MKL_", "XLA_", "JAX_"))})
print("matmul precision default:", jax.config.jax_default_matmul_precision)
EOF
}

TEST_FILES=(tests/test_kernels.py tests/test_spectrum.py tests/test_matrix_free.py)
# These need 4 CPU devices or inspect CPU LAPACK calls; on one GPU they fail by design.
CPU_ONLY="test_sharded_pack_equals_unsharded or test_no_batched_lapack_call_on_cpu or \
test_shard_map_four_devices or test_lapack_calls_are_chained"

_pytest() {
  local par=()
  if "$PY" -c "import xdist" 2>/dev/null && [[ "$TEST_WORKERS" != 0 ]]; then
    par=(-n "$TEST_WORKERS")
  fi
  "$PY" -m pytest -v -rfE -p no:cacheprovider --maxfail=10 --durations=15 "${par[@]}" "$@"
}

step_tests_gpu() {
  # The float32 tolerances assume full-precision matmuls; XLA's GPU default (TF32) is not that.
  # Several workers share the GPU, each taking a slice of its memory.
  local k="not slow and not ($CPU_ONLY)"
  [[ $DRY == 1 ]] && k="test_pack_map_sequential or test_auto_dispatch or \
test_resolve_and_argument_errors or test_bad_inputs_raise or test_identity"
  local frac
  frac="$(awk -v n="$TEST_WORKERS" 'BEGIN { printf "%.2f", (n > 0 ? 0.8 / n : 0.75) }')"
  echo "JAX_PLATFORMS='${JAX_PLATFORMS:-}' JAX_DEFAULT_MATMUL_PRECISION=highest" \
    "XLA_PYTHON_CLIENT_MEM_FRACTION=$frac, $TEST_WORKERS workers"
  JAX_DEFAULT_MATMUL_PRECISION=highest XLA_PYTHON_CLIENT_MEM_FRACTION="$frac" \
    _pytest "${TEST_FILES[@]}" -k "$k"
}

step_tests_cpu_sharding() {
  # The sharding and CPU-LAPACK tests on 4 fake CPU devices, with this machine's jax.
  local k="$CPU_ONLY"
  [[ $DRY == 1 ]] && k="($CPU_ONLY) and not test_shard_map_four_devices"
  JAX_PLATFORMS=cpu _pytest "${TEST_FILES[@]}" -k "$k"
}

_sweep() {  # _sweep NAME [EIGENSOLVER]
  local wd="$OUT/$1" extra=()
  [[ -n "${2:-}" ]] && extra+=("--config.ntk_eigensolver=$2")
  [[ $DRY == 1 ]] && extra+=("--config.widths=8,32" --config.num_seeds=2)
  rm -rf "$wd"
  ntkb run --config=quick --workdir="$wd" --config.epochs="$SWEEP_EPOCHS" --progress=log \
    "${extra[@]}"
  ntkb status --workdir="$wd" || true
}
step_sweep_auto() { _sweep sweep_auto; }
step_sweep_eigh() { _sweep sweep_eigh eigh; }
step_sweep_subspace() { _sweep sweep_subspace subspace; }
step_sweep_host_lapack() { _sweep sweep_host_lapack host_lapack; }

step_bench_training() {
  if [[ $DRY == 1 ]]; then
    "$PY" benchmarks/bench_training.py --widths=8,32 --seeds=2 --epochs=10
  else
    "$PY" benchmarks/bench_training.py --epochs=100  # widths 8..256 x 8 seeds
  fi
}

step_profile() {
  if [[ $DRY == 1 ]]; then
    ntkb profile --widths=16,64 --n=16 --repeats=2 --pack_size=2
  else
    ntkb profile --widths=256,1024,4096
  fi
}

step_bench_record() {
  # Part 0 (record vs epoch) is skipped: it imports modules that no longer exist. The benchmark
  # still imports the spectral helpers from their old private module, so alias it if missing.
  local args=(--skip-epoch)
  if [[ $DRY == 1 ]]; then
    args+=(--pack 2 --num-samples 16 --num-vectors 8 --width 32 --steps 2 --repeats 2)
  else
    args+=(--repeats 3)  # pack of 4, M = 1280, parts 1 and 2
  fi
  "$PY" - "${args[@]}" <<'EOF'
import runpy
import sys

try:
    import ntkbench._observables  # noqa: F401
except ImportError:
    import ntkbench.observables

    sys.modules["ntkbench._observables"] = ntkbench.observables
sys.argv = ["benchmarks/bench_record.py"] + sys.argv[1:]
runpy.run_path("benchmarks/bench_record.py", run_name="__main__")
EOF
}

step_bench_matrix_free() {
  if [[ $DRY == 1 ]]; then
    "$PY" benchmarks/bench_matrix_free.py --part cost --sizes 160 --widths 16 --repeats 1
  else
    "$PY" benchmarks/bench_matrix_free.py --part cost --sizes 1280 2560 --widths 64 256 --repeats 3
  fi
}

# ------------------------------------------------------------------------------------------------
# Key figures (one short line per step, read from its log; empty when the step printed none)
# ------------------------------------------------------------------------------------------------

key_install() {
  local n
  n="$(grep -oE "^installing [0-9]+ wheels" "$1" | grep -oE "[0-9]+" || echo 0)"
  echo "$n wheels installed, $(grep -E "^install mode" "$1" | tail -1)"
  grep -qE "^imports ok" "$1" && echo "imports ok" || echo "imports FAILED"
}
key_env() {
  grep -E "^devices:" "$1" | head -1
  grep -E "^python .* jax" "$1" | head -1 | sed 's/^python [^|]*| //'
}
_key_pytest() {
  local s
  s="$(grep -E "^=+ .*(passed|failed|error).* in [0-9.]+s" "$1" | tail -1 | tr -d '=')"
  if [[ -n "$s" ]]; then echo "$s"; else
    echo "$(grep -c " PASSED" "$1") passed, $(grep -c -E " (FAILED|ERROR)" "$1") failed so far"
  fi
  grep -E "^(FAILED|ERROR) " "$1" | head -3 | cut -c1-90
}
key_tests_gpu() { _key_pytest "$1"; }
key_tests_cpu_sharding() { _key_pytest "$1"; }
_key_sweep() { grep -E "member-epochs trained in" "$1" | tail -1 | sed 's/; results in.*//'; }
key_sweep_auto() { _key_sweep "$1"; }
key_sweep_eigh() { _key_sweep "$1"; }
key_sweep_subspace() { _key_sweep "$1"; }
key_sweep_host_lapack() { _key_sweep "$1"; }
key_bench_training() {
  local peak
  peak="$(grep -oE "matmul peak in this run: [0-9,.]+ GFLOP/s" "$1" | grep -oE "[0-9,.]+ GFLOP/s")"
  awk -v peak="$peak" '$1 == "packs" && $NF ~ /x$/ {
    printf "packs %s m-e/s steady = %s loop, %s per-width; %s GFLOP/s = %s of matmul peak %s\n",
      $4, $(NF-1), $NF, $6, $7, peak }' "$1"
}
key_profile() {
  awk '$2 == "matmul_peak" { printf "matmul peak %s GFLOP/s; ", $7 }
       $2 == "structured" && $3 == "ok" { w = $1; g = $7; p = $8 }
       END { if (w != "") printf "structured NTK at width %s: %s GFLOP/s = %s%% of peak\n", w, g, p }' "$1"
}
key_bench_record() {
  grep -E "^  new (HOST_LAPACK|SUBSPACE|EIGH): .*x vs today" "$1" \
    | sed -E 's/^  new ([A-Z_]+): .* ([0-9.]+)x vs today/\1 \2x/' | paste -sd' ' - \
    | sed 's/^/vs eigh+full overlap: /'
}
key_bench_matrix_free() {
  awk '/== cost of one record/ { on = 1; next }
       on && $1 ~ /^[0-9]+$/ && NF == 6 { printf "M=%s w%s %sx; ", $1, $2, $6 }' "$1" \
    | sed 's/; $//; s/^/matrix-free \/ exact: /'
}

# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------

if [[ "${1:-}" == __step ]]; then
  cd "$REPO"
  # shellcheck disable=SC1091
  [[ -f "$OUT/env.sh" ]] && . "$OUT/env.sh"
  "step_$2"
  exit $?
fi

DRY=0
for arg in "$@"; do
  case "$arg" in
    --cpu-dry-run) DRY=1 ;;
    -h | --help) sed -n '2,19p' "$SELF" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "unknown argument $arg; use --cpu-dry-run or nothing" >&2; exit 2 ;;
  esac
done

OUT="${OUT:-./gpu_check_out}"
WHEELS="${WHEELS:-./wheels}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
if [[ -d "$(dirname "$WHEELS")" ]]; then
  WHEELS="$(cd "$(dirname "$WHEELS")" && pwd)/$(basename "$WHEELS")"
fi
PY="${PYTHON:-python3}"
rm -f "$OUT"/*.log "$OUT/summary.md" "$OUT/backend.txt" "$OUT/env.sh" "$OUT/steps.tsv"
export OUT WHEELS PY DRY PYTHONUNBUFFERED=1
[[ $DRY == 1 ]] && export JAX_PLATFORMS=cpu

START=$(date +%s)
DEADLINE=0
if [[ -n "${BUDGET_S:-}" ]]; then DEADLINE=$((START + BUDGET_S)); fi

run_step() {  # run_step NAME CAP_SECONDS
  local name="$1" cap="$2" log="$OUT/$1.log" left limit rc=0 t0 t1 secs status key
  if ((DEADLINE)); then left=$((DEADLINE - $(date +%s))); else left=$cap; fi
  if ((left < 20)); then
    echo "skipped: ${left}s of the budget left" >"$log"
    printf '%s\tskipped\t0\tno time left in the budget\n' "$name" >>"$OUT/steps.tsv"
    echo "== $name: skipped (budget)"
    return 0
  fi
  limit=$((cap < left ? cap : left))
  echo "== $name (timeout ${limit}s) -> $log"
  t0=$(date +%s.%N)
  {
    echo "# step $name, timeout ${limit}s, $(date -u +%FT%TZ), dry=$DRY"
    timeout --kill-after=10 "$limit" bash "$SELF" __step "$name" </dev/null
  } >"$log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  secs=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.1f", b - a }')
  case $rc in
    0) status=ok ;;
    124 | 137) status="timeout (${limit}s)" ;;
    *) status="failed (rc $rc)" ;;
  esac
  key="$("key_$name" "$log" 2>/dev/null | paste -sd';' - | tr '\t|' '  ' | cut -c1-220 || true)"
  printf '%s\t%s\t%s\t%s\n' "$name" "$status" "$secs" "$key" >>"$OUT/steps.tsv"
  echo "   $status in ${secs}s: $key"
}

echo "gpu_check: repo $REPO, OUT $OUT, WHEELS $WHEELS, python $PY, dry=$DRY"
run_step install 90
run_step env 60
BACKEND="$(cat "$OUT/backend.txt" 2>/dev/null || echo unknown)"
if [[ $DRY == 0 && $BACKEND != gpu ]]; then
  echo "no GPU backend (jax says '$BACKEND'): running the CPU dry run (tiny sizes)"
  DRY=1
  export JAX_PLATFORMS=cpu
fi
if [[ $DRY == 1 ]]; then
  BUDGET_S="${BUDGET_S:-900}"
  SWEEP_EPOCHS=10
  TEST_WORKERS=0
  OTHER_SOLVER=eigh  # auto is host_lapack on CPU
else
  BUDGET_S="${BUDGET_S:-450}"
  SWEEP_EPOCHS=60
  TEST_WORKERS=8  # of 16 cores; compiling dominates
  OTHER_SOLVER=host_lapack  # auto is eigh on GPUs
fi
DEADLINE=$((START + BUDGET_S))
export DRY SWEEP_EPOCHS TEST_WORKERS

# Priority order: what must come back first. The caps are for a GPU; the budget clips them.
run_step tests_gpu 150
run_step sweep_auto 90
run_step bench_training 90
run_step profile 90
run_step bench_record 100
run_step bench_matrix_free 75
run_step sweep_subspace 60
run_step "sweep_$OTHER_SOLVER" 60
run_step tests_cpu_sharding 60

TOTAL=$(($(date +%s) - START))
{
  echo "# gpu_check summary"
  echo
  echo "- date: $(date -u +%FT%TZ); backend: $BACKEND; dry run: $([[ $DRY == 1 ]] && echo yes || echo no)"
  echo "- $(grep -m1 -E '^devices:' "$OUT/env.log" 2>/dev/null || echo 'devices: ?')"
  echo "- total: ${TOTAL}s (budget ${BUDGET_S}s); logs: $OUT/<step>.log"
  echo
  echo "| step | status | seconds | key figure |"
  echo "| --- | --- | ---: | --- |"
  while IFS=$'\t' read -r name status secs key; do
    echo "| $name | $status | $secs | $key |"
  done <"$OUT/steps.tsv"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
echo "elapsed total: ${TOTAL}s"
