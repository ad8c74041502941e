"""tf-supermask-prune-init: choose a mask at initialization, then train the weights under it.

    tf-supermask-prune-init --flagfile=flags/prune_init_fc.cfg --method=snip --sparsity=0.9

Methods: random, magnitude, snip, grasp, synflow, kstarts, dissipating,
kstarts_dissipating; --shuffle trains the method's mask shuffled within each
layer (the shuffle ablation). The run directory holds the usual files plus
mask.npz (the final mask by kernel path).
"""

from absl import app

from tf_supermask.config import define_flags, from_flags
from tf_supermask.pruning import PruneInitConfig, prune_init
from tf_supermask.training import RunDirError

define_flags(PruneInitConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        prune_init(from_flags(PruneInitConfig))
    except (RunDirError, ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None


def run():
    app.run(main)


if __name__ == "__main__":
    run()
