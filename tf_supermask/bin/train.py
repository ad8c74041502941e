"""tf-supermask-train: dense or supermask training of one run.

    tf-supermask-train --flagfile=flags/quickstart.cfg
"""

from tf_supermask.bin.common import config_app
from tf_supermask.training.config import TrainConfig

main, run = config_app(TrainConfig, "tf_supermask.training.trainer:train")

if __name__ == "__main__":
    run()
