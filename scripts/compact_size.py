"""Size of the compact seed-plus-bitmask file against float32 checkpoints.

    python scripts/compact_size.py                      # fc and conv6, bernoulli and topk
    python scripts/compact_size.py --models=conv2 --masks=topk --k=0.3

For each model and mask mode it builds the supermask network (Zhou et al.'s
signed constant weights; k = 0.5 by default), and writes, in a temporary folder:

  checkpoint  the run's float32 checkpoint, model.save() as in checkpoints/final.keras
              (frozen kernels and the float32 scores);
  weights     the float32 weights of the folded network alone (.weights.h5 of
              the plain model: kernels and biases), the smallest float32 file;
  compact     tf_supermask.export.save_compact.

The masks come from the initial scores (about half kept for bernoulli, exactly
k for topk). Random masks are the incompressible case: a trained mask is no
larger.
"""

import argparse
import os
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHAPES = {"fc": (28, 28, 1)}
DEFAULT_SHAPE = (32, 32, 3)


def measure(model_name, mask, k, folder):
    """{"checkpoint", "weights", "compact"} sizes in bytes, and the number of masked weights."""
    from tf_supermask.export import fold_masks, save_compact
    from tf_supermask.models import MaskOptions, build_model

    options = MaskOptions(mask=mask, k=k, init="signed_kaiming_constant",
                          rescale=(mask == "bernoulli"))
    model = build_model(model_name, SHAPES.get(model_name, DEFAULT_SHAPE), 10, options)
    base = os.path.join(folder, f"{model_name}_{mask}")
    model.save(base + ".keras")
    fold_masks(model).save_weights(base + ".weights.h5")
    info = save_compact(model, base + ".npz", options)
    return {"checkpoint": os.path.getsize(base + ".keras"),
            "weights": os.path.getsize(base + ".weights.h5"),
            "compact": info["bytes"], "masked_weights": info["masked_weights"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="fc,conv6")
    parser.add_argument("--masks", default="bernoulli,topk")
    parser.add_argument("--k", type=float, default=0.5)
    args = parser.parse_args()
    print(f"{'model':<6} {'mask':<9} {'weights':>9} {'checkpoint B':>13} {'weights.h5 B':>13} "
          f"{'compact B':>10} {'ckpt/compact':>13} {'w.h5/compact':>13}")
    with tempfile.TemporaryDirectory() as folder:
        for model_name in args.models.split(","):
            for mask in args.masks.split(","):
                sizes = measure(model_name, mask, args.k, folder)
                print(f"{model_name:<6} {mask:<9} {sizes['masked_weights']:>9,} "
                      f"{sizes['checkpoint']:>13,} {sizes['weights']:>13,} "
                      f"{sizes['compact']:>10,} "
                      f"{sizes['checkpoint'] / sizes['compact']:>12.1f}x "
                      f"{sizes['weights'] / sizes['compact']:>12.1f}x", flush=True)


if __name__ == "__main__":
    main()
