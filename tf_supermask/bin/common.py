"""What every configuration-driven binary shares: flags from a config dataclass, one call."""

from absl import app

from tf_supermask.config import define_flags, from_flags
from tf_supermask.training.run_dir import RunDirError


def config_app(config_class, run_config):
    """Defines `config_class`'s flags; returns (main, run) for an absl app calling run_config.

    Bad flags, refused run directories and missing data become usage errors.
    """
    define_flags(config_class)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]}")
        try:
            run_config(from_flags(config_class))
        except (RunDirError, ValueError, FileNotFoundError) as error:
            raise app.UsageError(str(error)) from None

    def run():
        app.run(main)

    return main, run
