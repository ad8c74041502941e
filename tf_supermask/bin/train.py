"""tf-supermask-train: dense or supermask training of one run.

    tf-supermask-train --flagfile=flags/quickstart.cfg
"""

from absl import app, flags

from tf_supermask.config import define_flags, from_flags
from tf_supermask.training import RunDirError, TrainConfig, train

define_flags(TrainConfig)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        train(from_flags(TrainConfig))
    except (RunDirError, ValueError, FileNotFoundError) as error:
        raise app.UsageError(str(error)) from None


def run():
    app.run(main)


if __name__ == "__main__":
    run()
