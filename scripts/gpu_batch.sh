#!/usr/bin/env bash
# Runs a job list on a GPU machine with the batch runner (tf-supermask-batch).
#
#   bash scripts/gpu_batch.sh JOBLIST OUTPUT [runner flags...]
#   e.g. bash scripts/gpu_batch.sh jobs/smoke.txt /tmp/smoke --parallel=4 --time_limit=480
#
# Run it from the repository root. It works on two kinds of machine (see
# scripts/gpu_env.sh, which it sources):
#   - an image with JAX and CUDA but no TensorFlow or Keras (no network): the
#     wheels that `bash scripts/prepare_gpu_bundle.sh` put into .whl/ are
#     installed into $SITE and the jobs run under KERAS_BACKEND=jax;
#   - a machine where tf_supermask is installed with TensorFlow: set
#     KERAS_BACKEND=tensorflow (the jobs then use MirroredStrategy over all GPUs),
#     and no .whl/ is needed.
# CIFAR-10 is decoded from .data/cifar10_jpeg.npz (also made by
# prepare_gpu_bundle.sh) into $DATA_DIR/cifar10.npz unless that file exists.
# The full-scale studies run in time-limited GPU jobs with scripts/gpu_study_window.sh.
#
# Environment:
#   KERAS_BACKEND  backend of the jobs (default: jax)
#   EXTRA_FLAGS    flags for every job, added after --data_dir=$DATA_DIR --verbose=2
#                  (e.g. "--data_workers=4"); an --extra_flags among the runner
#                  flags would replace these, so use this variable instead
#   DATA_DIR       where cifar10.npz is made and looked up (default: /tmp/data)
#   SITE           where the carried wheels are installed (default: /tmp/site)
#   PACK_TO        if set, a folder that receives NAME_summary.md, NAME_summary.csv
#                  and NAME.tar.gz, NAME being OUTPUT's last component: OUTPUT
#                  without checkpoints (and without TensorBoard events if it would
#                  exceed 15 MiB), for machines whose files come back through one
#                  folder; unpacked into runs/, it lets a later batch skip the
#                  finished jobs
#
# The exit status is the runner's: 0 when every job finished, 1 when one failed,
# 2 when the time limit left jobs for a later batch.
set -euo pipefail

if (( $# < 2 )); then
  sed -n '2,5p' "$0" >&2
  exit 64
fi
joblist=$1
output=$2
shift 2

if [[ ! -f setup.cfg || ! -d tf_supermask ]]; then
  echo "run this from the tf_supermask repository root" >&2
  exit 64
fi

# Wheels, PYTHONPATH, KERAS_BACKEND, CIFAR-10 in $DATA_DIR, and a check that Keras imports.
source scripts/gpu_env.sh

status=0
"$PYTHON" -m tf_supermask.bin.batch "$joblist" --output="$output" \
  --extra_flags="--data_dir=$DATA_DIR --verbose=2 ${EXTRA_FLAGS:-}" "$@" || status=$?

if [[ -n "${PACK_TO:-}" && -d "$output" ]]; then
  mkdir -p "$PACK_TO"
  name=$(basename "$output")
  for summary in summary.md summary.csv; do
    [[ -f "$output/$summary" ]] && cp -f "$output/$summary" "$PACK_TO/${name}_$summary"
  done
  archive="$PACK_TO/$name.tar.gz"
  tar -czf "$archive" --exclude="$name/*/checkpoints" -C "$(dirname "$output")" "$name"
  if (( $(stat -c %s "$archive") > 15 * 1048576 )); then
    echo "$archive is over 15 MiB: packing it again without TensorBoard events"
    tar -czf "$archive" --exclude="$name/*/checkpoints" --exclude="$name/*/tensorboard" \
      -C "$(dirname "$output")" "$name"
  fi
  echo "packed $archive ($(( $(stat -c %s "$archive") / 1024 )) KiB)"
fi
exit "$status"
