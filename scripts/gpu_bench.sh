#!/usr/bin/env bash
# The GPU speed measurement of issue 16, in one command, under JAX (not yet run).
#
#   bash scripts/prepare_gpu_bundle.sh --no-data   # here, once: the wheels (.whl/)
#   # on the device machine, carrying .whl, from the repository root:
#   bash scripts/gpu_bench.sh                       # results under $OUT (default /tmp/out)
#
# What it measures, each a separate tf-supermask-bench call writing its own JSON and
# log, so a call cut short by its time limit loses only itself:
#   1. conv4 top-k with each exact select (count, sort, radix): which one `auto`
#      should pick on a GPU (layers/masks.py TOPK_CHOICES; the GPU rows are a guess);
#   2. conv2, conv4, conv6, conv8, resnet20, resnet18, every mask mode, float32,
#      device input pipeline (bare step and whole epochs), batch 128, k = 0.5;
#   3. the same in bf16 (--mixed_precision: masks and scores stay float32);
#   4. conv4 with the host pipeline, and with --steps_per_execution=8, for the
#      effect of each.
# Targets (issue 16): conv4 top-k >= 250,000 images/s at batch 128 with the input
# pipeline included; masked/dense <= x1.10 for every mode.
#
# Environment: OUT (default /tmp/out), STEPS (timed steps per round, default 100),
# REPEATS (default 2), LIMIT (seconds per call, default 150), MODELS (default the six).
set -uo pipefail

OUT=${OUT:-/tmp/out}
STEPS=${STEPS:-100}
REPEATS=${REPEATS:-2}
LIMIT=${LIMIT:-150}
MODELS=${MODELS:-conv2 conv4 conv6 conv8 resnet20 resnet18}
export KERAS_BACKEND=${KERAS_BACKEND:-jax}

if [[ ! -f setup.cfg || ! -d tf_supermask ]]; then
  echo "run this from the tf_supermask repository root" >&2
  exit 1
fi
# shellcheck source=scripts/gpu_env.sh
source scripts/gpu_env.sh || { echo "environment setup failed" >&2; exit 1; }
mkdir -p "$OUT/bench"

bench() {  # NAME FLAGS...: one bench call, its JSON and log under $OUT/bench
  local name=$1
  shift
  echo "== $name: $*"
  timeout "$LIMIT" "$PYTHON" -m tf_supermask.bin.bench --batch_size=128 --k=0.5 \
    --steps="$STEPS" --repeats="$REPEATS" --output="$OUT/bench/$name.json" "$@" \
    2>&1 | grep -v "^WARNING\|^I0000\|^E0000" | tee "$OUT/bench/$name.log"
}

start=$(date +%s)
for method in count sort radix; do
  bench "conv4_topk_$method" --models=conv4 --masks=dense,topk --topk_method="$method" \
    --noepochs
done
for model in $MODELS; do
  bench "${model}_f32_device" --models="$model" --input_pipeline=device
done
for model in $MODELS; do
  bench "${model}_bf16_device" --models="$model" --input_pipeline=device --mixed_precision
done
bench conv4_f32_host --models=conv4 --input_pipeline=host
bench conv4_f32_device_spe8 --models=conv4 --input_pipeline=device --steps_per_execution=8

"$PYTHON" - "$OUT/bench" <<'PYTHON'
import glob, json, os, sys
rows = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    for r in json.load(open(path)):
        rows.append((os.path.basename(path)[:-5], r))
with open(os.path.join(sys.argv[1], "summary.md"), "w") as out:
    out.write("| call | model | mask | step images/s | x dense | epoch images/s | x dense |\n")
    out.write("| --- | --- | --- | --- | --- | --- | --- |\n")
    fmt = lambda v, f: "-" if v is None else format(v, f)
    for name, r in rows:
        out.write(f"| {name} | {r['model']} | {r['mask']} | {fmt(r['images_per_s'], ',.0f')} | "
                  f"{fmt(r['ratio_to_dense'], '.3f')} | {fmt(r['epoch_images_per_s'], ',.0f')} | "
                  f"{fmt(r['epoch_ratio_to_dense'], '.3f')} |\n")
print(open(os.path.join(sys.argv[1], "summary.md")).read())
PYTHON
echo "done in $(( $(date +%s) - start )) s; results in $OUT/bench"
