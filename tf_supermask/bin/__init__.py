"""Thin absl binaries over the library.

Importing any of them first quiets TensorFlow's C++ logging (start-up notices, the
``cuInit`` error of a machine without a GPU, "Local rendezvous is aborting" at the
end of each epoch's data), before TensorFlow is imported; ``--verbose=3`` on the
command line or in a flagfile keeps it, and so does a ``TF_CPP_MIN_LOG_LEVEL``
already set in the environment. absl's and Python's warnings are quieted once the
flags are parsed (``tf_supermask.bin.common.run_main``).
"""

import contextlib
import os
import sys


def debug_requested(argv):
    """Whether `argv` (or a flagfile it names, one level deep) asks for --verbose=3."""
    for arg in argv[1:]:
        if arg == "--verbose=3":
            return True
        if arg.startswith("--flagfile="):
            try:
                with open(os.path.expanduser(arg.split("=", 1)[1])) as stream:
                    if any(line.strip() == "--verbose=3" for line in stream):
                        return True
            except OSError:
                pass  # absl reports a missing flagfile itself
    return False


@contextlib.contextmanager
def stderr_to_devnull():
    """Sends file descriptor 2 to /dev/null for the block (C++ libraries write there
    directly, past sys.stderr)."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def help_only(argv):
    """Whether `argv` only asks for help (``--help`` and its spellings, ``--helpfull``):
    then nothing imports Keras, and the binary answers at once."""
    from tf_supermask.bin.help import help_requested

    return help_requested(argv) or any(arg in ("--helpfull", "-helpfull") for arg in argv[1:])


def runs_without_keras(argv):
    """Whether this process is a binary that only starts other processes and reads their
    files (tf-supermask-study): it never imports Keras, so `list` answers at once."""
    program = os.path.abspath(argv[0]) if argv else ""
    return (os.path.basename(program) == "tf-supermask-study"
            or program.endswith(os.path.join("tf_supermask", "bin", "study.py")))


def version_requested(argv):
    return any(arg in ("--version", "-version") for arg in argv[1:])


if version_requested(sys.argv):  # answered before anything imports a framework
    from tf_supermask import __version__

    print(f"{os.path.basename(sys.argv[0]) or 'tf_supermask'} {__version__}")
    sys.exit(0)

DEBUG = debug_requested(sys.argv)
QUIET = not DEBUG and not help_only(sys.argv) and "TF_CPP_MIN_LOG_LEVEL" not in os.environ
if QUIET:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"


def import_framework_quietly():
    """Imports Keras (and with it the backend) with stderr closed: some start-up notices
    ("Could not find cuda drivers", "All log messages before absl::InitializeLog()")
    ignore TF_CPP_MIN_LOG_LEVEL. ``run_main`` calls it once the flags are parsed, so a
    mistyped flag is reported before the frameworks load. An import error is still
    raised."""
    if QUIET and not runs_without_keras(sys.argv):
        with stderr_to_devnull():
            import keras  # noqa: F401,F811
