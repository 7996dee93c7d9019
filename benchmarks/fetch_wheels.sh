#!/usr/bin/env bash
# Download the wheels that benchmarks/gpu_check.sh installs offline on a GPU machine.
#
#     bash benchmarks/fetch_wheels.sh [PYTHON_VERSION]        # default 3.12
#     WHEELS=/path/to/wheels bash benchmarks/fetch_wheels.sh 3.11
#
# Run it on a machine that reaches the package registry; copy the folder ($WHEELS, default
# ./wheels) next to the repository on the GPU machine. The GPU machine's python3 is assumed to
# hold jax (with CUDA), equinox, optax, orbax-checkpoint, tensorstore, xarray, matplotlib,
# scikit-learn, scipy, numpy>=2, absl-py, etils, cloudpickle, protobuf, psutil and PyYAML, but
# not the packages below (ntkbench's dependencies and theirs that such an image usually lacks):
#
#   grain -> array-record, portpicker          (and etils, cloudpickle, protobuf: usually there)
#   ml_collections                             (-> absl-py, PyYAML: usually there)
#   zarr  -> numcodecs, donfig, google-crc32c  (-> numpy, packaging, typing-extensions, PyYAML)
#   tqdm, jaxtyping -> wadler_lindig           (often there already; gpu_check.sh skips them then)
#   tabulate, tensorboardX                     (-> numpy, packaging, protobuf: usually there)
#
# Versions are pinned to the ones the test suite ran with (override one with e.g.
# GRAIN=grain==0.2.19). Only binary wheels for Linux x86_64 CPython are fetched, with no
# dependencies resolved (each needed one is named above); the total is a few MiB.
set -euo pipefail

PYVER="${1:-${PYVER:-3.12}}"
WHEELS="${WHEELS:-./wheels}"
PIP="${PIP:-python3 -m pip}"

PKGS=(
  "${GRAIN:-grain==0.2.18}"
  "${ARRAY_RECORD:-array_record==0.8.6}"
  "${PORTPICKER:-portpicker==1.6.0}"
  "${ML_COLLECTIONS:-ml_collections==1.1.0}"
  "${ZARR:-zarr==3.1.6}"
  "${NUMCODECS:-numcodecs==0.16.6}"
  "${DONFIG:-donfig==0.8.1.post1}"
  "${CRC32C:-google-crc32c==1.9.0}"
  "${TQDM:-tqdm==4.67.1}"
  "${JAXTYPING:-jaxtyping==0.3.11}"
  "${WADLER_LINDIG:-wadler_lindig==0.1.8}"
  "${TABULATE:-tabulate==0.10.0}"
  "${TENSORBOARDX:-tensorboardX==2.6.5}"
)

# pip matches manylinux_2_N tags exactly: name the ones these packages ship.
PLATFORMS=()
for n in 39 35 34 31 28 27 24 17; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

mkdir -p "$WHEELS"
echo "fetching ${#PKGS[@]} wheels for CPython $PYVER (Linux x86_64) into $WHEELS"
# shellcheck disable=SC2086  # $PIP is a command with arguments
$PIP download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version "$PYVER" --implementation cp "${PLATFORMS[@]}" -d "$WHEELS" "${PKGS[@]}"

# One version of each: two would make the offline install ambiguous.
dups=$(find "$WHEELS" -maxdepth 1 -name '*.whl' -printf '%f\n' | cut -d- -f1 \
  | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [[ -n "$dups" ]]; then
  echo "more than one version of: $dups; remove the older wheels from $WHEELS" >&2
  exit 1
fi
ls -l "$WHEELS"/*.whl
echo "total: $(du -sh "$WHEELS" | cut -f1) in $(find "$WHEELS" -maxdepth 1 -name '*.whl' | wc -l) wheels"
