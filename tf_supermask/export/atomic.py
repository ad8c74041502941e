"""Atomic writes of export outputs: a temporary name, then one rename."""

import contextlib
import os
import shutil
import uuid


@contextlib.contextmanager
def atomic_path(path, directory=False):
    """Yields a temporary path next to `path`; renames it onto `path` if the block succeeds.

    The temporary file (or folder, created empty) gets the usual permissions
    (the umask's). A folder replaces an existing one only once the new one is
    complete; an existing file is replaced by one rename.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    temp = os.path.join(parent, f".tmp-{os.path.basename(path)}-{uuid.uuid4().hex[:12]}")
    if directory:
        os.mkdir(temp)
    else:
        open(temp, "xb").close()
    try:
        yield temp
        if directory and os.path.exists(path):
            old = os.path.join(parent, f".old-{os.path.basename(path)}-{uuid.uuid4().hex[:12]}")
            os.replace(path, old)
            os.replace(temp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(temp, path)
    except BaseException:
        if os.path.isdir(temp):
            shutil.rmtree(temp, ignore_errors=True)
        elif os.path.exists(temp):
            os.remove(temp)
        raise

