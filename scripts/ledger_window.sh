#!/usr/bin/env bash
# One window of the GPU results ledger (issue 17): the one command of a device `run` call.
#
#   bash scripts/ledger_window.sh        # OUT (set by the device tool) receives the files
#
# From the repository root of the device's copy of the working tree, it
#   1. makes the package runnable (scripts/gpu_env.sh: the .whl/ wheels, PYTHONPATH,
#      KERAS_BACKEND=jax, CIFAR-10 decoded from .data/ into $DATA_DIR);
#   2. skips the runs already committed under runs/results/ledger/runs/ (while current)
#      and copies the partly-run directories carried in runs/ledger_partial/ into the
#      batch folder, so they resume;
#   3. runs the next jobs of jobs/ledger.txt with the batch runner, LEDGER_PARALLEL at a
#      time on the one GPU, and stops them LEDGER_PACK_SECONDS before the window's end
#      (LEDGER_WINDOW_SECONDS after this script started; well inside the 10-minute limit
#      of a device command);
#   4. writes into $OUT: ledger_window.tar.gz (every finished run's results.json,
#      flags.txt, metrics.csv and ledger.json, window.json, the batch summary, the logs of
#      cut or failed jobs), ledger_partial.tar.gz (cut run directories without TensorBoard
#      events, up to LEDGER_PARTIAL_MIB), and ledger_window.log (this script's output).
# Back here: bash scripts/ledger_import.sh FOLDER_THE_FILES_CAME_BACK_TO
#
# Environment (defaults in brackets):
#   OUT                    folder for the files that come back (required)
#   LEDGER_WINDOW_SECONDS  the whole window, setup and packing included [510]
#   LEDGER_PACK_SECONDS    kept back at the end for stopping jobs and packing [45]
#   LEDGER_MIN_BATCH_SECONDS  no batch starts with less time left than this [60]
#   LEDGER_PARALLEL        jobs sharing the GPU [8]
#   LEDGER_FIDELITY        auto (run `#@ requires: fidelity` jobs once TrainConfig has
#                          weight_decay_mode), yes, or no [auto]
#   LEDGER_JOBS            the job list [jobs/ledger.txt]
#   LEDGER_RUNS            committed runs [runs/results/ledger/runs]
#   LEDGER_PARTIAL         carried partial runs [runs/ledger_partial]
#   LEDGER_PARTIAL_MIB     most MiB of cut runs packed for the next window [15]
#   LEDGER_MAX_CUTS        skip a job cut in this many full windows, 0: never [2]
#   LEDGER_WORK            the batch's folder [/tmp/ledger_window]
#   EXTRA_FLAGS            flags for every job, after --data_dir=$DATA_DIR --verbose=2
#   KERAS_BACKEND, DATA_DIR, SITE, PYTHON: see scripts/gpu_env.sh
# Exit status: 0, or 1 when a job failed (the archive is written either way).
set -uo pipefail

start=$(date +%s)
if [[ -z "${OUT:-}" ]]; then
  echo "set OUT to the folder the window's files go to (the device tool sets it)" >&2
  exit 64
fi
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
cd "$(dirname "$0")/.." || exit 64

window_seconds=${LEDGER_WINDOW_SECONDS:-510}
deadline=$(( start + window_seconds ))

window() {
  source scripts/gpu_env.sh || return
  # Several jobs share the GPU, and the planning process must not hold 75% of its memory.
  export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}
  local left=$(( deadline - $(date +%s) ))
  echo "setup took $(( $(date +%s) - start )) s; ${left} s of the window left"
  # ledger.py stops its jobs and packs by the deadline itself; this only catches a hang
  # (on SIGTERM it still stops the jobs and packs what finished).
  timeout --signal=TERM --kill-after=15 $(( (left > 1 ? left : 1) + 20 )) \
    "$PYTHON" scripts/ledger.py window --out="$OUT" --deadline="$deadline" \
      --jobs="${LEDGER_JOBS:-jobs/ledger.txt}" \
      --runs="${LEDGER_RUNS:-runs/results/ledger/runs}" \
      --partial="${LEDGER_PARTIAL:-runs/ledger_partial}" \
      --work="${LEDGER_WORK:-/tmp/ledger_window}" \
      --parallel="${LEDGER_PARALLEL:-8}" \
      --pack_seconds="${LEDGER_PACK_SECONDS:-45}" \
      --min_batch_seconds="${LEDGER_MIN_BATCH_SECONDS:-60}" \
      --fidelity="${LEDGER_FIDELITY:-auto}" \
      --max_cuts="${LEDGER_MAX_CUTS:-2}" \
      --partial_mib="${LEDGER_PARTIAL_MIB:-15}" \
      --extra_flags="--data_dir=$DATA_DIR --verbose=2 ${EXTRA_FLAGS:-}"
}

echo "ledger window: started $(date -u +%FT%TZ), ends by $(date -u -d "@$deadline" +%FT%TZ)"
window 2>&1 | tee -a "$OUT/ledger_window.log"
status=${PIPESTATUS[0]}
echo "ledger window: exit status $status after $(( $(date +%s) - start )) s" \
  | tee -a "$OUT/ledger_window.log"
ls -l "$OUT"
exit "$status"
