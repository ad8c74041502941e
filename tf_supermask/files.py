"""Files written whole or not at all: a temporary name beside the target, then one rename.

Shared by run directories (``tf_supermask.training.run_dir``) and the batch
runner; it needs only the standard library, so light tools can use it without
loading Keras.
"""

import contextlib
import os
import signal
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


@contextlib.contextmanager
def atomic_file(path):
    """Yields a temporary path beside `path`; on success it is renamed onto `path`.

    The temporary name keeps `path`'s ending (Keras checks for ``.keras`` and
    ``.weights.h5``). On an error, or a signal turned into an exception, the
    temporary file is removed and `path` is left as it was. The new file gets the
    permissions the umask allows (``mkstemp`` alone would create it 0600).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-",
                                         suffix="-" + os.path.basename(path))
    os.close(handle)
    try:
        yield temp_path
        os.chmod(temp_path, file_mode())
        kill_point("before_rename:" + os.path.basename(path))
        os.replace(temp_path, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(temp_path)
        raise


def write_atomic(path, text):
    """Writes `text` to `path` through a temporary file and a rename."""
    with atomic_file(path) as temp_path:
        with open(temp_path, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
