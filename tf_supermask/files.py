"""Files written whole or not at all: a temporary name beside the target, then one rename.

Shared by run directories (``tf_supermask.training.run_dir``) and the batch
runner; it needs only the standard library, so light tools can use it without
loading Keras.
"""

import contextlib
import errno
import os
import signal
import sys
import tempfile

# Test hook: a process whose environment names one of the points passed to kill_point()
# kills itself there with SIGKILL, so tests can interrupt the production code path at an
# exact moment.
KILL_ENV = "TF_SUPERMASK_KILL_AT"


def kill_point(name):
    """SIGKILLs this process if the environment variable ``TF_SUPERMASK_KILL_AT`` is `name`
    (a test hook; does nothing otherwise)."""
    if os.environ.get(KILL_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def file_mode():
    """The mode a new file gets from ``open()`` under the current umask (0o666 & ~umask)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


# The errors of a write on a full disk (or over the user's quota).
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file that could not be written because the disk (or the user's quota) is full;
    its ``filename`` is the file that was being written."""


def disk_full(error):
    """Whether `error` says the disk is full: an OSError with ENOSPC or EDQUOT, or an
    HDF5 error from h5py whose text carries that errno."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    if not isinstance(error, Exception):
        return False
    text = str(error)
    return any(sign in text for sign in (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT),
                                         f"errno = {errno.ENOSPC},", f"errno = {errno.EDQUOT},"))


def open_hdf5_files():
    """The ids of the HDF5 files open in this process (none if h5py is not loaded)."""
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return set()
    try:
        return {fid.id for fid in h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)}
    except Exception:  # noqa: BLE001 - a best effort
        return set()


def close_hdf5_files(before):
    """Closes the HDF5 files opened since `before` (``open_hdf5_files()``).

    A write that failed on a full disk leaves its HDF5 file open with data that
    cannot be flushed; HDF5 then fails again when the file's objects are freed and
    crashes the interpreter at exit (a segmentation fault). Closed here, it does not.
    """
    h5py = sys.modules.get("h5py")
    if h5py is None:
        return
    try:
        files = h5py.h5f.get_obj_ids(types=h5py.h5f.OBJ_FILE)
    except Exception:  # noqa: BLE001 - a best effort
        return
    for fid in files:
        if fid.id not in before:
            with contextlib.suppress(Exception):
                fid.close()


def discard_failed_write(error, temp_path, path, hdf5_before=frozenset()):
    """Removes `temp_path` after `error` ended the write of `path` (a file or folder).

    Returns:
      None, or the DiskFullError to raise instead of `error` when the disk is full
      (its HDF5 files closed first, see ``close_hdf5_files``).
    """
    full = disk_full(error)
    if full and os.path.isfile(temp_path):
        with contextlib.suppress(OSError):
            os.truncate(temp_path, 0)  # frees the space HDF5 needs to close the file
    if full:
        close_hdf5_files(hdf5_before)
    if os.path.isdir(temp_path) and not os.path.islink(temp_path):
        import shutil

        shutil.rmtree(temp_path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.remove(temp_path)
    if not full or isinstance(error, DiskFullError):  # a nested write's names its file
        return None
    return DiskFullError(errno.ENOSPC, "No space left on device (the disk is full)", path)


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside `path`; on success it is renamed onto `path`.

    The temporary name keeps `path`'s ending (Keras checks for ``.keras`` and
    ``.weights.h5``). On an error, or a signal turned into an exception, the
    temporary file is removed and `path` is left as it was. The new file gets the
    permissions the umask allows (``mkstemp`` alone would create it 0600).

    Raises:
      DiskFullError: the disk is full (an OSError with ENOSPC or EDQUOT, or h5py's
        error saying so, from the block); it names `path`.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-",
                                             suffix="-" + os.path.basename(path))
    except OSError as error:
        if disk_full(error):
            raise DiskFullError(errno.ENOSPC, "No space left on device (the disk is full)",
                                path) from None
        raise
    os.close(handle)
    hdf5_before = open_hdf5_files()
    try:
        yield temp_path
        os.chmod(temp_path, file_mode())
        kill_point("before_rename:" + os.path.basename(path))
        os.replace(temp_path, path)
    except BaseException as error:
        replacement = discard_failed_write(error, temp_path, path, hdf5_before)
        if replacement is not None:
            raise replacement from error
        raise


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file and a rename."""
    with atomic_file(path) as temp_path:
        with open(temp_path, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
