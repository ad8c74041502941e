"""Run directories: created, resumed, or refused, never silently overwritten; one writer each.

Every file of a run is written under a temporary name in its folder and renamed into
place (``atomic_file``), so a process killed at any moment leaves either the old file
or the new one, never half of one. A run directory is held by one process at a time
through an OS-level lock (``flock`` on ``<run_dir>/.lock``), which the operating
system releases when that process ends, however it ends.

A finished run replaced with ``overwrite`` is not lost if the new run fails: its files
are moved aside into ``<run_dir>/.replaced`` when the new run starts, removed once the
new run's results.json is written, and moved back if it fails (or, if the process was
killed, by the next command on the folder).
"""

import contextlib
import datetime
import json
import os
import shutil
import socket
import warnings

from tf_supermask import choices
from tf_supermask.files import (KILL_ENV, atomic_file, file_mode, kill_point,  # noqa: F401
                                write_atomic)

FLAGS_FILE = choices.FLAGS_FILE
RESULTS_FILE = choices.RESULTS_FILE
LOCK_FILE = ".lock"
# The replaced run's files while the new run has not finished (see ``begin``), and the
# folder's names during the steps a kill can interrupt: moving them aside, removing
# what a failed new run wrote, moving them back.
REPLACED = ".replaced"
MOVING_ASIDE = ".replaced-moving"
CLEARING = ".replaced-clearing"
RESTORING = ".replaced-restoring"
_REPLACE_FOLDERS = (MOVING_ASIDE, REPLACED, CLEARING, RESTORING)
_NOT_ENTRIES = (LOCK_FILE,) + _REPLACE_FOLDERS


class RunDirError(ValueError):
    """A run directory that cannot be used as asked."""


class RunDirBusy(RunDirError):
    """Another process is writing the run directory."""


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


# Locks this process holds: real path of the run directory -> open lock file.
_HELD = {}
# Run directories (real paths) whose old run this process moved aside (``begin``).
_REPLACING = set()


def _holder(lock_path):
    try:
        with open(lock_path) as stream:
            return stream.read().strip() or "an unknown process"
    except OSError:
        return "an unknown process"


def acquire(run_dir):
    """Makes this process the only writer of `run_dir` (created if missing).

    Returns:
      True if the lock was taken now, False if this process already held it.

    Raises:
      RunDirBusy: another process holds the run directory (the message names it:
        pid, host, start time).
      RunDirError: the folder cannot be written.
    """
    import fcntl

    key = os.path.realpath(run_dir)
    if key in _HELD:
        return False
    lock_path = os.path.join(run_dir, LOCK_FILE)
    try:
        os.makedirs(run_dir, exist_ok=True)
        stream = open(lock_path, "a+")
    except OSError as error:
        raise RunDirError(f"cannot write in {run_dir}: {error.strerror}") from None
    try:
        fcntl.flock(stream.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        stream.close()
        raise RunDirBusy(f"{run_dir} is in use by another run ({_holder(lock_path)}); "
                          "wait for it to finish or stop it") from None
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    stream.seek(0)
    stream.truncate()
    stream.write(f"pid {os.getpid()} on {socket.gethostname()}, started {started}\n")
    stream.flush()
    with contextlib.suppress(OSError):
        os.chmod(lock_path, file_mode())
    _HELD[key] = stream
    return True


def release(run_dir):
    """Gives up this process's lock on `run_dir` (the lock file stays; it is empty then).

    If this process replaced a run there (``begin``), the replaced run is removed now if
    the new one finished (its results.json exists), else it is put back.
    """
    key = os.path.realpath(run_dir)
    if key in _REPLACING:
        _REPLACING.discard(key)
        try:
            recover(run_dir)
        except OSError as error:  # the next command on the folder finishes the job
            warnings.warn(f"could not finish replacing the run in {run_dir}: {error}")
    stream = _HELD.pop(key, None)
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.truncate(0)
        stream.close()  # closing the file releases the flock


def _entries(run_dir):
    """The folder's entries other than the lock file and a replaced run set aside."""
    return [name for name in os.listdir(run_dir) if name not in _NOT_ENTRIES]


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.remove(path)


def _move_entries(source, target):
    """Moves every entry of `source` into `target` (one rename each), then removes
    `source`. No name may be in both."""
    for name in sorted(os.listdir(source)):
        os.replace(os.path.join(source, name), os.path.join(target, name))
        kill_point("replace:moving_back")
    os.rmdir(source)


def _move_aside(run_dir):
    """Moves the run in `run_dir` into ``run_dir/.replaced``: entry by entry into
    ``.replaced-moving``, then one rename commits it."""
    moving = os.path.join(run_dir, MOVING_ASIDE)
    os.mkdir(moving)
    for name in _entries(run_dir):
        os.replace(os.path.join(run_dir, name), os.path.join(moving, name))
        kill_point("replace:moving_aside")
    os.replace(moving, os.path.join(run_dir, REPLACED))
    kill_point("replace:moved_aside")


def recover(run_dir):
    """Settles a replaced run left in `run_dir` (call with the lock held).

    The replaced run is removed if the new run finished (results.json exists), else it
    is put back as it was, and what the new run wrote is removed; a kill at any step
    is settled by calling this again.

    Returns:
      "kept" (the new run finished), "restored" (the replaced run is back) or None
      (nothing was left).
    """
    def path(name):
        return os.path.join(run_dir, name)

    if os.path.isdir(path(MOVING_ASIDE)):  # killed while moving it aside: put it back
        _move_entries(path(MOVING_ASIDE), run_dir)
        return "restored"
    if os.path.isdir(path(REPLACED)):
        if os.path.exists(path(RESULTS_FILE)):  # the new run finished
            shutil.rmtree(path(REPLACED))
            return "kept"
        os.replace(path(REPLACED), path(CLEARING))
    elif not os.path.isdir(path(CLEARING)) and not os.path.isdir(path(RESTORING)):
        return None
    if os.path.isdir(path(CLEARING)):  # the failed new run's files go
        kill_point("replace:clearing")
        for name in _entries(run_dir):
            _remove(path(name))
        os.replace(path(CLEARING), path(RESTORING))
    _move_entries(path(RESTORING), run_dir)
    return "restored"


def _problem(run_dir, flagfile_text, ignore):
    """Why `run_dir` cannot be resumed with these flags (None: new or resumable)."""
    if not os.path.isdir(run_dir) or not _entries(run_dir):
        return None
    flags_path = os.path.join(run_dir, FLAGS_FILE)
    if not os.path.exists(flags_path):
        return f"{run_dir} is not empty and holds no {FLAGS_FILE}: not a run directory"
    if os.path.exists(os.path.join(run_dir, RESULTS_FILE)):
        return f"{run_dir} holds a finished run ({RESULTS_FILE} exists)"
    with open(flags_path) as stream:
        old = parse_flagfile(stream.read(), ignore)
    new = parse_flagfile(flagfile_text, ignore)
    # A flag only one side knows was added (or removed) by a newer version of the
    # code: it does not make the runs differ.
    changed = sorted(name for name in set(old) & set(new) if old[name] != new[name])
    if changed:
        details = ", ".join(f"--{name}: {old.get(name)} -> {new.get(name)}" for name in changed)
        return f"{run_dir} holds a run made with other flags ({details})"
    return None


def check(run_dir, flagfile_text, overwrite=False, ignore=()):
    """Decides what a run with these flags does with `run_dir`, and locks it; writes nothing
    else.

    Args:
      run_dir: the folder.
      flagfile_text: the run's effective flags.
      overwrite: replace a finished run, or one made with other flags.
      ignore: flag names that do not matter when comparing with an existing run.

    Returns:
      "new" (empty or missing folder), "resume" (an unfinished run with the same
      flags) or "replace" (a run to be replaced, with `overwrite`); pass it to
      ``begin`` once the new run has started correctly.

    Raises:
      RunDirError: the folder holds a finished run, a run with other flags, or
        something that is not a run directory, and `overwrite` is False; or another
        process holds it; or it cannot be written.
    """
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise RunDirError(f"{run_dir} exists and is not a directory")
    had_folder = os.path.isdir(run_dir)
    had_lock = os.path.exists(os.path.join(run_dir, LOCK_FILE))
    try:
        taken = acquire(run_dir)
    except RunDirBusy:
        raise
    except RunDirError:
        problem = _problem(run_dir, flagfile_text, ignore)
        if problem and not overwrite:  # the more useful message on a read-only finished run
            raise RunDirError(f"{problem}. Nothing was changed.") from None
        raise
    try:
        if taken:  # a replacement a kill interrupted: the old run comes back
            recover(run_dir)
    except OSError as error:
        release(run_dir)
        raise RunDirError(f"cannot restore the replaced run in {run_dir}: {error}") from None
    problem = _problem(run_dir, flagfile_text, ignore)
    if problem is None:
        return "resume" if _entries(run_dir) else "new"
    if not overwrite:
        _remove_finished_leftovers(run_dir)
        _untouched(run_dir, had_folder, had_lock)
        raise RunDirError(f"{problem}. Nothing was changed; pass --overwrite to replace "
                          "it, or choose another --run_dir.")
    return "replace"


# The resume backup of a run; a kill between results.json and its removal leaves it.
BACKUP_DIR = os.path.join("checkpoints", "backup")


def _remove_finished_leftovers(run_dir):
    """In a finished run (results.json written), the resume backup and the temporary
    files a kill left behind are leftovers nothing reads: removed, with the lock held."""
    if not os.path.exists(os.path.join(run_dir, RESULTS_FILE)):
        return
    shutil.rmtree(os.path.join(run_dir, BACKUP_DIR), ignore_errors=True)
    remove_temporaries(run_dir)


def _untouched(run_dir, had_folder, had_lock):
    """Releases `run_dir` and removes what locking it created (the lock file, the folder),
    so that a refused folder is left as it was."""
    release(run_dir)
    if not had_lock:
        with contextlib.suppress(OSError):
            os.remove(os.path.join(run_dir, LOCK_FILE))
    if not had_folder:
        with contextlib.suppress(OSError):
            os.rmdir(run_dir)


def remove_temporaries(run_dir):
    """Removes the temporary files a killed writer left in `run_dir` (call with the lock
    held, so that no writer is using them)."""
    for folder, folders, files in os.walk(run_dir):
        if folder == run_dir:  # a replaced run set aside is left as it is
            folders[:] = [name for name in folders if name not in _REPLACE_FOLDERS]
        for name in files:
            if name.startswith(".tmp-"):
                with contextlib.suppress(OSError):
                    os.remove(os.path.join(folder, name))


def begin(run_dir, flagfile_text, state):
    """Starts the run decided by ``check``: sets a replaced run aside, or removes the
    temporary files of a killed attempt of a resumed one; writes flags.txt.

    A replaced run is moved into ``run_dir/.replaced``, not deleted: ``release`` removes
    it once the new run's results.json exists and puts it back otherwise (a failed or
    interrupted new run); after a kill, the next ``check`` on the folder puts it back.
    """
    if state == "resume":
        remove_temporaries(run_dir)
        return
    if state == "replace":
        _REPLACING.add(os.path.realpath(run_dir))  # from here on, release settles it
        _move_aside(run_dir)
    write_atomic(os.path.join(run_dir, FLAGS_FILE), flagfile_text)


def prepare(run_dir, flagfile_text, overwrite=False, ignore=()):
    """``check`` then ``begin`` at once: makes `run_dir` ready for a run with the given flags.

    Returns:
      "new" for a fresh (or replaced) run, "resume" for an unfinished run with the
      same flags.

    Raises:
      RunDirError: as ``check``.
    """
    state = check(run_dir, flagfile_text, overwrite, ignore)
    begin(run_dir, flagfile_text, state)
    return "resume" if state == "resume" else "new"


def require_run(run_dir, *needed):
    """Checks that `run_dir` is a run directory holding the files `needed` (paths inside it).

    Raises:
      FileNotFoundError: naming what is wrong: the folder does not exist, is not a
        run directory (no flags.txt), or the run has not finished (a needed file is
        missing).
    """
    if not os.path.exists(run_dir):
        raise FileNotFoundError(f"{run_dir} does not exist")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(f"{run_dir} is not a directory")
    if not os.path.exists(os.path.join(run_dir, FLAGS_FILE)):
        raise FileNotFoundError(f"{run_dir} is not a run directory (no {FLAGS_FILE})")
    missing = [name for name in needed if not os.path.exists(os.path.join(run_dir, name))]
    if missing:
        raise FileNotFoundError(f"{run_dir}: the run has not finished (no "
                                f"{' or '.join(missing)})")


def dataset_stem(config):
    """The dataset's name in a directory name (an .npz path's file name without .npz)."""
    return os.path.splitext(os.path.basename(config.dataset))[0]


def default_run_dir(config, *parts, root="runs"):
    """The one default-directory rule of every binary: ``root/<parts>_<hash>``, the parts
    joined by "_", then a hash of the non-default flags other than run control (two runs
    with other flags get other folders; a flag added later, at its default, keeps old
    names)."""
    from tf_supermask.choices import RUN_CONTROL_FIELDS
    from tf_supermask.config import config_hash

    name = "_".join(str(part) for part in parts if part != "")
    return os.path.join(root, f"{name}_{config_hash(config, RUN_CONTROL_FIELDS)}")


def model_stem(config):
    """The model's name in a folder name (a user's model: its file or function name)."""
    from tf_supermask.choices import model_stem as stem

    return stem(config.model)
