#!/usr/bin/env bash
# One time-limited GPU job of the full-scale studies: `tf-supermask-study run --scale=full
# --time_limit=...` for each study in turn, then `pack` of what finished and what was cut.
#
#   OUT=FOLDER bash scripts/gpu_study_window.sh [STUDY ...]
#
# For a GPU that is lent for a few minutes at a time (a queue with a wall-clock limit, a
# shared machine): each call adds finished runs, and cut runs resume in the next call.
# On a machine you keep, run `tf-supermask-study run STUDY --scale=full` instead.
#
# From the repository root it
#   1. makes the package runnable (scripts/gpu_env.sh: carried wheels, KERAS_BACKEND=jax,
#      CIFAR-10 from .data/ into $DATA_DIR);
#   2. unpacks the cut runs an earlier call left in $PARTIAL/*.tar.gz under the root
#      ($ROOT, default runs/results/studies: the committed records, so finished runs are
#      skipped there);
#   3. runs the studies (default: zhou_supermask edgepopup patches liu_compare prune_init,
#      the order of value) at scale full, $PARALLEL at a time, until WINDOW_SECONDS after
#      the start less PACK_SECONDS;
#   4. writes $OUT/STUDY_records.tar.gz (results.json, flags.txt, metrics.csv and wall
#      seconds of every finished run), $OUT/STUDY_partial.tar.gz (cut runs without
#      TensorBoard events, at most PARTIAL_MIB each) and $OUT/window.log.
#
# Back on the machine with the checkout:
#   tf-supermask-study unpack FILES/*_records.tar.gz --root=runs/results/studies  # commit
#   mkdir -p runs/partial && cp FILES/*_partial.tar.gz runs/partial/  # git-ignored; carry
#   tf-supermask-study table STUDY --scale=full --root=runs/results/studies
#
# Environment (defaults in brackets): OUT (required), WINDOW_SECONDS [510],
# PACK_SECONDS [40], PARALLEL [8], PARTIAL_MIB [15], ROOT [runs/results/studies],
# PARTIAL [runs/partial],
# EXTRA_FLAGS (added after --data_dir=$DATA_DIR), STUDY_FILE (studies of one's own, as
# tf-supermask-study --study_file), and scripts/gpu_env.sh's.
# Exit status: 0, or the last non-zero status of a study run (2: cut by the time limit).
set -uo pipefail

start=$(date +%s)
if [[ -z "${OUT:-}" ]]; then
  echo "error: set OUT to the folder the window's files go to" >&2
  exit 64
fi
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
cd "$(dirname "$0")/.." || exit 64
deadline=$(( start + ${WINDOW_SECONDS:-510} - ${PACK_SECONDS:-40} ))
root=${ROOT:-runs/results/studies}
if (( $# )); then
  studies=("$@")
else
  studies=(zhou_supermask edgepopup patches liu_compare prune_init)
fi

window() {
  source scripts/gpu_env.sh || return
  # Several runs share the GPU: none may take 75% of its memory up front.
  export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
  local study=(timeout --signal=TERM --kill-after=15 300 "$PYTHON" -m tf_supermask.bin.study
               ${STUDY_FILE:+--study_file="$STUDY_FILE"})
  local archive
  for archive in "${PARTIAL:-runs/partial}"/*_partial.tar.gz; do
    [[ -f "$archive" ]] && "${study[@]}" unpack "$archive" --root="$root"
  done
  local status=0 name left
  for name in "${studies[@]}"; do
    left=$(( deadline - $(date +%s) ))
    if (( left < 60 )); then
      echo "window: ${left} s left, $name not started"
      continue
    fi
    echo "window: $name at scale full, ${left} s left"
    timeout --signal=TERM --kill-after=15 $(( left + 20 )) \
      "$PYTHON" -m tf_supermask.bin.study run "$name" --scale=full --root="$root" \
        ${STUDY_FILE:+--study_file="$STUDY_FILE"} \
        --parallel="${PARALLEL:-8}" --time_limit="$left" \
        --extra_flags="--data_dir=$DATA_DIR ${EXTRA_FLAGS:-}" || status=$?
  done
  for name in "${studies[@]}"; do
    "${study[@]}" pack "$name" --scale=full --root="$root" \
      --output="$OUT/${name}_records.tar.gz" \
      --partial_output="$OUT/${name}_partial.tar.gz" --partial_mib="${PARTIAL_MIB:-15}" \
      || status=$?
  done
  return "$status"
}

echo "window: started $(date -u +%FT%TZ); studies stop by $(date -u -d "@$deadline" +%FT%TZ)"
window 2>&1 | tee -a "$OUT/window.log"
status=${PIPESTATUS[0]}
echo "window: exit status $status after $(( $(date +%s) - start )) s" | tee -a "$OUT/window.log"
exit "$status"
