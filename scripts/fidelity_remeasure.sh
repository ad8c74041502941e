#!/usr/bin/env bash
# Re-measures the edge-popup fidelity figures (docs/fidelity.md): fc 784-300-100-10 on full
# Fashion-MNIST (10 epochs, seeds 0-2), the reduced CIFAR-10 conv4 check (width 0.25,
# 10,000 training images, 30 epochs, seeds 0-1), the quickstart, and seed 0 of fc with the
# rules of before issue 23 (Keras's momentum rule, round(k n) kept). Needs the offline .npz
# copies in ~/.cache/tf_supermask (python ../shared/datasets/make_npz.py ~/.cache/tf_supermask).
# Finished runs are skipped (a killed one resumes); results under runs/fidelity/.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${FIDELITY_DIR:-runs/fidelity}
data=${FIDELITY_DATA:-$HOME/.cache/tf_supermask}
run() {  # run_dir, then flags
    local dir=$1; shift
    if [ -f "$dir/results.json" ]; then echo "done: $dir"; return; fi
    echo "run: $dir"
    tf-supermask-train "$@" --run_dir="$dir" --verbose=2
}
for seed in 0 1 2; do
    run "$out/fc_seed$seed" --flagfile=flags/edgepopup_fc.cfg --dataset=fashion_mnist \
        --data_dir="$data" --epochs=10 --k=0.5 --seed=$seed
done
for seed in 0 1; do
    run "$out/conv4_reduced_seed$seed" --flagfile=flags/edgepopup_conv4.cfg --data_dir="$data" \
        --width=0.25 --train_size=10000 --epochs=30 --seed=$seed
done
run "$out/quickstart" --flagfile=flags/quickstart.cfg
run "$out/fc_old_rules_seed0" --flagfile=flags/edgepopup_fc.cfg --dataset=fashion_mnist \
    --data_dir="$data" --epochs=10 --k=0.5 --seed=0 --momentum_rule=keras --count_rule=nearest
