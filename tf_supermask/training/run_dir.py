"""Run directories: created, resumed, or refused, never silently overwritten."""

import json
import os
import shutil
import tempfile

FLAGS_FILE = "flags.txt"
RESULTS_FILE = "results.json"


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file and a rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def write_json(path, data):
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path):
    with open(path) as stream:
        return json.load(stream)


def parse_flagfile(text, ignore=()):
    """{name: value} of a flagfile's `--name=value` / `--name` / `--noname` lines."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("--"):
            continue
        name, _, value = line[2:].partition("=")
        if not _:
            value = "true"
            if name.startswith("no"):
                name, value = name[2:], "false"
        if name not in ignore:
            values[name] = value
    return values


def prepare(run_dir, flagfile_text, overwrite=False, ignore=()):
    """Makes `run_dir` ready for a run with the given flags.

    Args:
      run_dir: the folder.
      flagfile_text: the run's effective flags (written to flags.txt).
      overwrite: replace a finished run, or one made with other flags.
      ignore: flag names that do not matter when comparing with an existing run.

    Returns:
      "new" for a fresh run, "resume" for an unfinished run with the same flags.

    Raises:
      RunDirError: the folder holds a finished run, a run with other flags, or
        something that is not a run directory, and `overwrite` is False.
    """
    flags_path = os.path.join(run_dir, FLAGS_FILE)
    if os.path.isdir(run_dir) and os.listdir(run_dir):
        problem = None
        if not os.path.exists(flags_path):
            problem = f"{run_dir} is not empty and holds no {FLAGS_FILE}: not a run directory"
        elif os.path.exists(os.path.join(run_dir, RESULTS_FILE)):
            problem = f"{run_dir} holds a finished run ({RESULTS_FILE} exists)"
        else:
            with open(flags_path) as stream:
                old = parse_flagfile(stream.read(), ignore)
            new = parse_flagfile(flagfile_text, ignore)
            # A flag only one side knows was added (or removed) by a newer version
            # of the code: it does not make the runs differ.
            changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
            if changed:
                details = ", ".join(f"--{name}: {old.get(name)} -> {new.get(name)}"
                                    for name in changed)
                problem = f"{run_dir} holds a run made with other flags ({details})"
        if problem is None:
            return "resume"
        if not overwrite:
            raise RunDirError(f"{problem}. Nothing was changed; pass --overwrite to replace "
                              "it, or choose another --run_dir.")
        shutil.rmtree(run_dir)
    elif os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"{run_dir} exists and is not a directory")
    os.makedirs(run_dir, exist_ok=True)
    write_atomic(flags_path, flagfile_text)
    return "new"
