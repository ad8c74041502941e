"""tf-supermask-lottery: iterative magnitude pruning with rewinding (lottery tickets).

    tf-supermask-lottery --flagfile=flags/lottery_fc_fashion_mnist.cfg
"""

from absl import app

from tf_supermask.config import define_flags, from_flags
from tf_supermask.pruning.lottery import LotteryConfig, run_lottery
from tf_supermask.training import RunDirError

define_flags(LotteryConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        run_lottery(from_flags(LotteryConfig))
    except (RunDirError, ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None


def run():
    app.run(main)


if __name__ == "__main__":
    run()
