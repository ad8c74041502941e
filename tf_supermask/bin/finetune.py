"""tf-supermask-finetune: prune trained weights by magnitude and fine-tune them (Liu et al.).

    tf-supermask-finetune --flagfile=flags/finetune_resnet20_cifar10.cfg
    tf-supermask-finetune --flagfile=flags/finetune_resnet20_cifar10.cfg \\
        --dense_run=runs/finetune_resnet20/dense --prune_method=gradual --run_dir=...
"""

from tf_supermask.bin.common import config_app
from tf_supermask.experiments.config import FinetuneConfig


def run_experiment(config, callbacks=()):
    """--compare runs the equal-budget comparison; otherwise one prune-and-fine-tune."""
    if config.compare:
        from tf_supermask.experiments.comparison import run_comparison

        return run_comparison(config, callbacks)
    from tf_supermask.experiments.finetune import run_finetune

    return run_finetune(config, callbacks)


main, run = config_app(FinetuneConfig, run_experiment)

if __name__ == "__main__":
    run()
