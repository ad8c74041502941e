"""tf-supermask-finetune: prune trained weights by magnitude and fine-tune them (Liu et al.).

    tf-supermask-finetune --flagfile=flags/finetune_resnet20_cifar10.cfg
    tf-supermask-finetune --flagfile=flags/finetune_resnet20_cifar10.cfg \\
        --dense_run=runs/finetune_resnet20/dense --prune_method=gradual --run_dir=...
"""

from absl import app

from tf_supermask.config import define_flags, from_flags
from tf_supermask.finetune import FinetuneConfig, run_finetune
from tf_supermask.training import RunDirError

define_flags(FinetuneConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run_finetune(from_flags(FinetuneConfig))
    except (RunDirError, ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None


def run():
    app.run(main)


if __name__ == "__main__":
    run()
