"""Small durable-file helpers shared by the key files, the data dir and the token files.

Interface:
    write_file_atomic(path, data, mode=0o600)   temp file in the same directory, mode set on
                                                it before the name appears (the umask can
                                                neither widen nor narrow it), fsync, rename,
                                                directory fsync; the temp file never outlives
                                                a failure
    fsync_dir(path)                             make a directory's entries durable
"""

from __future__ import annotations

import os
import tempfile


def fsync_dir(path: str | os.PathLike[str]) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(directory)
