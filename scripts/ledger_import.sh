#!/usr/bin/env bash
# Brings a GPU window's files into the ledger (issue 17) and regenerates its tables.
#
#   bash scripts/ledger_import.sh FOLDER      # where the device tool put the files (files_at)
#   bash scripts/ledger_import.sh ARCHIVE     # or the ledger_window.tar.gz itself
#
# Finished runs go to runs/results/ledger/runs/<job>/ (commit them), the window's record
# and log to runs/results/ledger/windows/, cut and failed jobs to
# runs/results/ledger/attempts.json, cut run directories (ledger_partial.tar.gz) to the
# git-ignored runs/ledger_partial/ (name it in the next window's `carry`), and the tables
# to runs/results/ledger/*.md, *.csv, *.png. See scripts/ledger.py.
set -euo pipefail
if (( $# < 1 )); then
  sed -n '4,5p' "$0" >&2
  exit 64
fi
args=()
for arg in "$@"; do
  [[ -e "$arg" ]] && arg=$(realpath "$arg")
  args+=("$arg")
done
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" scripts/ledger.py import "${args[@]}"
