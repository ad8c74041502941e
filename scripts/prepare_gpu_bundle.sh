#!/usr/bin/env bash
# Prepares what a GPU device machine (JAX + CUDA image, no TensorFlow, no Keras)
# needs to run tf_supermask under KERAS_BACKEND=jax:
#   .whl/  the Keras 3.15 wheel and the requirements the image lacks (namex, optree)
#   .data/ the offline CIFAR-10 copy and its converter (from ../shared/datasets)
# scripts/gpu_batch.sh uses both to run a job list (jobs/*.txt) there.
# Both folders are git-ignored (.gitignore) and travel to the device only when
# named in `carry`.
#
# Run from the repository root, on a machine with pip and network access to PyPI:
#   bash scripts/prepare_gpu_bundle.sh            # wheels and data
#   bash scripts/prepare_gpu_bundle.sh --no-data  # wheels only
#
# Keras's Requires-Dist: absl-py numpy rich namex h5py optree ml-dtypes packaging.
# The device image already has absl-py, numpy, rich, h5py, ml-dtypes, packaging
# (and typing-extensions, which optree needs), so only namex and optree travel.
set -euo pipefail

PYTHON_VERSION=${PYTHON_VERSION:-3.12}   # the device image's python3 is 3.12.3
KERAS_VERSION=${KERAS_VERSION:-3.15.1}
NAMEX_VERSION=${NAMEX_VERSION:-0.1.0}
OPTREE_VERSION=${OPTREE_VERSION:-0.20.0}
SHARED_DATASETS=${SHARED_DATASETS:-../shared/datasets}

with_data=1
if [[ "${1:-}" == "--no-data" ]]; then
  with_data=0
fi

if [[ ! -f setup.cfg || ! -d tf_supermask ]]; then
  echo "run this from the tf_supermask repository root" >&2
  exit 1
fi

mkdir -p .whl
# One version of each wheel: two versions of a package stop the device's install.
rm -f .whl/keras-*.whl .whl/namex-*.whl .whl/optree-*.whl

download() {
  python3 -m pip download -q --no-deps --only-binary=:all: \
    --python-version "$PYTHON_VERSION" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 \
    -d .whl "$1"
}

download "keras==$KERAS_VERSION"
download "namex==$NAMEX_VERSION"
download "optree==$OPTREE_VERSION"

echo "keras $KERAS_VERSION requires:"
unzip -p .whl/keras-*.whl '*/METADATA' | grep '^Requires-Dist' | grep -v 'extra ==' | sed 's/^/  /'

if (( with_data )); then
  mkdir -p .data
  cp -f "$SHARED_DATASETS/make_npz.py" .data/
  chmod u+w .data/*
  # The same arrays, zip-compressed: every 32x32 JPEG repeats the same ~620-byte header,
  # so the copy shrinks from 56 to 18 MB and leaves room in a call's 64 MiB for the rest.
  # np.load (make_npz.py) reads both forms alike.
  python3 - "$SHARED_DATASETS/cifar10_jpeg.npz" .data/cifar10_jpeg.npz <<'PYTHON'
import sys
import numpy as np
source, target = sys.argv[1:]
with np.load(source) as data:
    arrays = {key: data[key] for key in data.files}
np.savez_compressed(target, **arrays)
with np.load(target) as copy:
    assert all(np.array_equal(copy[key], arrays[key]) for key in arrays), "copy differs"
PYTHON
fi

echo
echo "prepared:"
for f in .whl/*.whl; do
  printf '  %-80s %8s KiB\n' "$f" "$(( $(stat -c %s "$f") / 1024 ))"
done
if (( with_data )); then
  for f in .data/*; do
    printf '  %-80s %8s KiB\n' "$f" "$(( $(stat -c %s "$f") / 1024 ))"
  done
fi

bytes_of() { du -sb "$@" 2>/dev/null | awk '{s += $1} END {print s + 0}'; }
repo_bytes=$(git ls-files -z --cached --others --exclude-standard | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1)
whl_bytes=$(bytes_of .whl)
data_bytes=$(( with_data ? $(bytes_of .data) : 0 ))
mib() { awk -v b="$1" 'BEGIN {printf "%.1f MiB", b / 1048576}'; }
echo
echo "sizes: working tree $(mib "$repo_bytes"), .whl $(mib "$whl_bytes"), .data $(mib "$data_bytes")"
echo "  carry .whl:        $(mib $(( repo_bytes + whl_bytes ))) of the 64 MiB a device call takes"
if (( with_data )); then
  echo "  carry .whl .data:  $(mib $(( repo_bytes + whl_bytes + data_bytes ))) of the 64 MiB a device call takes"
fi
if (( repo_bytes + whl_bytes + data_bytes > 60 * 1048576 )); then
  echo "  WARNING: .whl and .data together come close to (or over) the 64 MiB limit;" \
       "carry .data only in calls that need the data"
fi

echo
echo "on the GPU machine (name .whl in carry; add .data when the run needs CIFAR-10):"
echo "  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:\$PWD"
echo "or run a whole job list there (installs the wheels, decodes CIFAR-10, runs under JAX):"
echo "  bash scripts/gpu_batch.sh jobs/smoke.txt /tmp/smoke --parallel=4 --time_limit=480"
