"""tf-supermask-lottery: iterative magnitude pruning with rewinding (lottery tickets).

    tf-supermask-lottery --flagfile=flags/lottery_fc_fashion_mnist.cfg
"""

from tf_supermask.bin.common import config_app
from tf_supermask.experiments.config import LotteryConfig

main, run = config_app(LotteryConfig, "tf_supermask.experiments.lottery:run_lottery")

if __name__ == "__main__":
    run()
