#!/usr/bin/env bash
# Issue 4's measured comparison on 2 CPU cores: fine-tuning vs lottery ticket vs late
# rewinding at 50/70/90% sparsity, pretraining at lr 0.1 and 0.01, 3 seeds, then the report.
#   scripts/compare_study.sh [OUT=runs/compare_fc_fmnist] [RESULTS=runs/results/compare_fc_fashion_mnist]
# Finished experiments are skipped (tf-supermask-finetune resumes), so a cut study restarts.
# A reduced study: LRS="0.1" SEEDS="0" scripts/compare_study.sh OUT RESULTS; extra flags
# (e.g. EXTRA_FLAGS="--data_dir=$HOME/.cache/tf_supermask" for the offline .npz) go to
# every run.
set -euo pipefail
out=${1:-runs/compare_fc_fmnist}
results=${2:-runs/results/compare_fc_fashion_mnist}
start=$(date +%s)
for lr in ${LRS:-0.1 0.01}; do
  for seed in ${SEEDS:-0 1 2}; do
    run_dir="$out/lr${lr}_seed${seed}"
    if [[ -f "$run_dir/results.json" ]]; then echo "$run_dir: done earlier"; continue; fi
    t0=$(date +%s)
    tf-supermask-finetune --flagfile=flags/finetune_compare_fc_fashion_mnist.cfg \
      --lr="$lr" --seed="$seed" --run_dir="$run_dir" ${EXTRA_FLAGS:-}
    echo "$run_dir: $(( $(date +%s) - t0 ))s"
  done
done
echo "study wall time $(( $(date +%s) - start ))s"
tf-supermask-report "$out"/lr* --output="$results" \
  --title="LeNet-300-100, Fashion-MNIST: fine-tune vs lottery vs rewind"
