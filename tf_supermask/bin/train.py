"""tf-supermask-train: dense or supermask training of one run.

    tf-supermask-train --flagfile=flags/quickstart.cfg
"""

from tf_supermask.bin.common import config_app
from tf_supermask.training import TrainConfig, train

main, run = config_app(TrainConfig, train)

if __name__ == "__main__":
    run()
