"""tf-supermask-prune-init: choose a mask at initialization, then train the weights under it.

    tf-supermask-prune-init --flagfile=flags/prune_init_fc.cfg --method=snip --sparsity=0.9

Methods: random, magnitude, snip, grasp, synflow, kstarts, dissipating,
kstarts_dissipating; --shuffle trains the method's mask shuffled within each
layer (the shuffle ablation). The run directory holds the usual files plus
mask.npz (the final mask by kernel path).
"""

from tf_supermask.bin.common import config_app
from tf_supermask.experiments.config import PruneInitConfig

main, run = config_app(PruneInitConfig, "tf_supermask.experiments.prune_init:prune_init")

if __name__ == "__main__":
    run()
