"""What every configuration-driven binary shares: flags from a config dataclass, one call,
and user errors as one line instead of a traceback."""

import importlib
import os
import re
import signal
import sys

from absl import app

from tf_supermask.bin import DEBUG, import_framework_quietly
from tf_supermask.bin.help import help_requested, print_help_and_exit
from tf_supermask.config import define_flags, from_flags

# Errors a user can cause and fix: bad flags and data files and refused run directories
# (ValueError, RunDirError among them), full or read-only disks (OSError), a diverged
# loss (FloatingPointError, DivergedError among them). The binaries print their message
# on one line, without a traceback. Named by their builtin bases, so that importing this
# module (the batch runner does) does not import Keras.
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def error_message(error):
    """One line saying what went wrong, for a user error."""
    from tf_supermask.files import disk_full

    if disk_full(error):  # h5py's message spans lines and names a temporary file
        where = f" writing {error.filename}" if getattr(error, "filename", None) else ""
        return (f"the disk is full (no space left on device){where}; free some space and "
                "run the command again (what was finished is kept)")
    if isinstance(error, OSError) and error.strerror:
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror}{where}"
    return " ".join(str(error).split("\n")[0].split()) or type(error).__name__


def quiet_logs():
    """Unless --verbose=3: only errors from absl logging (TensorFlow's Python messages,
    e.g. export's "Assets written to" temporary paths), no Keras/TensorFlow warnings."""
    if DEBUG:
        return
    import logging
    import warnings

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.ERROR)
    for name in ("tensorflow", "jax"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(keras|tensorflow|absl|jax|tensorflow_datasets)\b")


def _terminate(signum, frame):
    """SIGTERM as an exception, so temporary files are cleaned up on the way out."""
    raise SystemExit(128 + signum)


def run_main(main, module=None, config_class=None, framework_first=True):
    """Runs `main(argv)` as an absl app: user errors and Ctrl-C end it with one line on
    stderr (exit status 1, 130 for Ctrl-C), SIGTERM cleans up before exiting.

    ``--help`` prints the docstring of `module` (default: the one defining `main`) and
    its flags in groups (those of `config_class` too), then exits 0. The frameworks are
    imported (quietly) once the flags are parsed, before `main` unless
    `framework_first` is False (a configuration binary imports them once its
    configuration is checked, so that a bad value is reported at once too).
    """
    if help_requested(sys.argv):
        print_help_and_exit(module or sys.modules[main.__module__], config_class)

    def guarded(argv):
        if framework_first:  # after the flags: a bad flag is reported at once
            import_framework_quietly()
        quiet_logs()
        try:
            return main(argv)
        except app.UsageError as error:
            sys.stderr.write(f"error: {error_message(error)}\n")
            sys.exit(1)
        except KeyboardInterrupt:
            sys.stderr.write("interrupted; run the same command again to resume\n")
            sys.exit(130)
        except USER_ERRORS as error:
            sys.stderr.write(f"error: {error_message(error)}\n")
            sys.exit(1)

    signal.signal(signal.SIGTERM, _terminate)
    app.run(guarded, flags_parser=parse_flags)


def flagfile_of(name, argv):
    """The --flagfile of `argv` (one level deep) that sets flag `name`, or None."""
    for arg in argv[1:]:
        if not arg.startswith("--flagfile="):
            continue
        path = os.path.expanduser(arg.split("=", 1)[1])
        try:
            with open(path) as stream:
                lines = [line.strip() for line in stream]
        except OSError:
            continue
        if any(re.match(rf"--(no)?{re.escape(name)}(=|$)", line) for line in lines):
            return path
    return None


def parse_flags(argv):
    """absl's flag parsing, with a bad flag as one ``error:`` line (naming the flagfile
    it came from) instead of absl's usage text."""
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        message = error_message(error)
        match = re.search(r"flag '(?:--)?(\w+)'|--(\w+)", message)
        where = flagfile_of(next(g for g in match.groups() if g), argv) if match else None
        sys.stderr.write(f"error: {message}{f' (in --flagfile={where})' if where else ''}\n")
        sys.exit(1)


def config_app(config_class, run_config, module=None):
    """Defines `config_class`'s flags; returns (main, run) for an absl app calling run_config.

    `run_config` is a function of the configuration, or its name as "module:function",
    imported when the binary runs (so that ``--help`` does not import Keras).

    Bad flags, refused run directories, bad data files, full or read-only disks and a
    diverged loss end the binary with a one-line message. `module` (default: the
    caller's) is the binary's module, whose docstring ``--help`` prints.
    """
    module = module or sys.modules[sys._getframe(1).f_globals["__name__"]]
    define_flags(config_class)

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {argv[1:]} (every flag, on the command "
                                 "line or in a --flagfile, is --name=value; these are not)")
        try:
            config = from_flags(config_class)
        except (ValueError, TypeError) as error:
            raise app.UsageError(error_message(error)) from None
        import_framework_quietly()  # the configuration holds: now the frameworks load
        function = run_config
        if isinstance(function, str):
            module_name, name = function.split(":")
            function = getattr(importlib.import_module(module_name), name)
        function(config)

    def run():
        run_main(main, module, config_class, framework_first=False)

    return main, run
