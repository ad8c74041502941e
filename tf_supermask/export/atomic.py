"""Atomic writes of export outputs: a temporary name, then one rename.

The temporary name says which process made it (``.tmp-NAME-HOST-PID-RANDOM``), so that
the next write of the same output removes what a killed write left behind, without
touching the temporary of a write that is still running.
"""

import contextlib
import os
import re
import shutil
import socket
import time
import uuid

from tf_supermask.files import discard_failed_write, kill_point, open_hdf5_files

# Temporaries of older versions (``.tmp-NAME-RANDOM``, no process in the name) are
# removed once they are this old: no export runs for a day.
LEGACY_MAX_AGE_SECONDS = 24 * 3600


def _host_tag():
    """This host's name in temporary names: letters and digits only, at most 16."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:16] or "host"


def _alive(pid):
    """Whether process `pid` runs on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # it exists, but belongs to another user
        return True
    return True


def _remove(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(path)


def remove_stale(path):
    """Removes what killed writes of `path` left beside it: temporary files and folders
    (``.tmp-NAME-...``) of processes of this host that no longer run (or, in the older
    naming, a day old), and the previous version of a folder set aside
    (``.old-NAME-...``) by a write killed before it removed it. If the kill came
    between the two renames that replace a folder (`path` missing), the previous version
    is put back instead.

    Returns:
      The names removed or put back.
    """
    path = os.path.abspath(path)
    parent, base = os.path.split(path)
    if not os.path.isdir(parent):
        return []
    host = _host_tag()
    ours = re.compile(rf"\.(tmp|old)-{re.escape(base)}-([A-Za-z0-9]+)-(\d+)-[0-9a-f]{{12}}")
    legacy = re.compile(rf"\.(tmp|old)-{re.escape(base)}-[0-9a-f]{{12}}")
    stale = []
    for name in sorted(os.listdir(parent)):
        match = ours.fullmatch(name)
        if match:
            if match[2] == host and not _alive(int(match[3])):
                stale.append((match[1], name))
        elif legacy.fullmatch(name):
            try:
                age = time.time() - os.lstat(os.path.join(parent, name)).st_mtime
            except OSError:
                continue
            if age > LEGACY_MAX_AGE_SECONDS:
                stale.append((legacy.fullmatch(name)[1], name))
    done = []
    for kind, name in stale:
        full = os.path.join(parent, name)
        if kind == "old" and not os.path.lexists(path):
            with contextlib.suppress(OSError):  # killed between the two renames
                os.replace(full, path)
                done.append(name)
                continue
        _remove(full)
        done.append(name)
    return done


def _temporary_name(parent, kind, base):
    return os.path.join(parent, f".{kind}-{base}-{_host_tag()}-{os.getpid()}-"
                                f"{uuid.uuid4().hex[:12]}")


@contextlib.contextmanager
def atomic_path(path, directory=False):
    """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds.

    The temporary file (or folder, created empty) gets the usual permissions
    (the umask's). A folder replaces an existing one only once the new one is
    complete; an existing file is replaced by one rename. What killed writes of
    `path` left beside it is removed first (``remove_stale``).

    Raises:
      tf_supermask.files.DiskFullError: the disk is full (it names `path`).
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    remove_stale(path)
    base = os.path.basename(path)
    temp = _temporary_name(parent, "tmp", base)
    if directory:
        os.mkdir(temp)
    else:
        open(temp, "xb").close()
    hdf5_before = open_hdf5_files()
    try:
        yield temp
        kill_point("before_rename:" + base)
        if directory and os.path.exists(path):
            old = _temporary_name(parent, "old", base)
            os.replace(path, old)
            kill_point("between_renames:" + base)
            os.replace(temp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, path)
    except BaseException as error:
        replacement = discard_failed_write(error, temp, path, hdf5_before)
        if replacement is not None:
            raise replacement from error
        raise
