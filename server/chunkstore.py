"""Chunk stores: where sealed chunk envelopes are kept, by stored name.

Interface:
    ChunkStore (Protocol)
        put(name, data, sync_dir=True) -> bool
                                        atomic and idempotent: False if `name` was already there;
                                        sync_dir=False leaves the directory entry to a later
                                        sync_dirs() (how a batch pays one directory fsync)
        sync_dirs(names)                fsync the directories holding these names, once each
        get(name) -> bytes              errors.NotFound if absent
        reader(name) -> RangeReader     an open stored object for ranged reads (a context
                                        manager: .size, .read_at(offset, n) -> bytes, a pread;
                                        .close()); errors.NotFound if absent
        read_range(name, offset, length) -> bytes   up to `length` bytes at `offset`
                                        (chunks, gRPC messages) instead of returning them to the
                                        kernel and faulting fresh pages in for the next one
        exists(name) -> bool
        size(name) -> int               stored bytes; errors.NotFound if absent
        delete(name) -> bool            False if it was not there
        iter_names() -> Iterator[str]
        usage() -> (bytes_used, bytes_free_on_device)
    LocalChunkStore(root)               a directory: root/ab/cd/<name>; writes go to a temp file
                                        in the final directory, fsync, then link into place
                                        (so concurrent puts of one name store it once), then
                                        fsync of the directory. ENOSPC/EDQUOT -> errors.NoSpace
                                        saying where; temp files never outlive a failed put.

Names are chosen by chunks.ChunkService (64 lowercase hex digits); a store accepts names of
[0-9a-z] and at least 4 characters, anything else is InvalidArgument.
"""

from __future__ import annotations

import errno
import os
import re
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Protocol

from aifs_core.errors import InvalidArgument, NoSpace, NotFound
from aifs_core.fileutil import fsync_dir

_NAME = re.compile(r"[0-9a-z]{4,128}")
_TMP_PREFIX = ".tmp-"


class RangeReader(Protocol):
    size: int

    def read_at(self, offset: int, n: int) -> bytes: ...
    def close(self) -> None: ...
    def __enter__(self) -> RangeReader: ...
    def __exit__(self, *exc: object) -> None: ...


class ChunkStore(Protocol):
    def put(self, name: str, data: bytes, sync_dir: bool = True) -> bool: ...
    def sync_dirs(self, names: Iterable[str]) -> None: ...
    def get(self, name: str) -> bytes: ...
    def reader(self, name: str) -> RangeReader: ...
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...
    def exists(self, name: str) -> bool: ...
    def size(self, name: str) -> int: ...
    def delete(self, name: str) -> bool: ...
    def iter_names(self) -> Iterator[str]: ...
    def usage(self) -> tuple[int, int]: ...


class _FileRange:
    """One stored file open for preads. Files are immutable once linked into place, and an
    open descriptor keeps a concurrently deleted one readable, so size and reads agree."""

    __slots__ = ("fd", "size")

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.size = os.fstat(self.fd).st_size
        except BaseException:
            os.close(self.fd)
            raise

    def read_at(self, offset: int, n: int) -> bytes:
        if offset < 0 or n < 0:
            raise InvalidArgument(f"bad range offset={offset} length={n}: must be >= 0")
        data = os.pread(self.fd, n, offset)
        if len(data) == n or not data:
            return data
        parts = [data]  # a short read before the end (not seen on local files, but allowed)
        got = len(data)
        while got < n:
            more = os.pread(self.fd, n - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> _FileRange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LocalChunkStore:
    """ChunkStore in a local directory with two levels of fan-out (ab/cd/abcd...)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = os.path.abspath(os.fspath(root))
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes used, computed on first usage() then tracked

    def _path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"invalid chunk store name {name!r}: use 4-128 characters of [0-9a-z]"
            )
        return os.path.join(self.root, name[0:2], name[2:4], name)

    def _no_space(self, name: str, exc: OSError) -> NoSpace:
        try:
            free = os.statvfs(self.root)
            left = f"{free.f_bavail * free.f_frsize} bytes free"
        except OSError:
            left = "free space unknown"
        return NoSpace(
            f"the chunk store's disk is full ({os.strerror(exc.errno or errno.ENOSPC)}, "
            f"{left}) writing chunk {name} under {self.root}: free space on that filesystem "
            f"or move the store to a larger one; nothing was written"
        )

    def put(self, name: str, data: bytes | bytearray | memoryview, sync_dir: bool = True) -> bool:
        path = self._path(name)
        if os.path.exists(path):
            return False
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}")
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                fsync_dir(os.path.dirname(directory))
                fsync_dir(os.path.dirname(os.path.dirname(directory)))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            view = memoryview(data).cast("B")
            nbytes = len(view)
            try:
                while view:
                    view = view[os.write(fd, view) :]
                os.fsync(fd)
            finally:
                os.close(fd)
            # link, unlike rename, fails if another writer got there first: the chunk is then
            # stored exactly once and this put reports "already there". Under the lock so the
            # usage counter matches the files.
            with self._lock:
                try:
                    os.link(tmp, path)
                    created = True
                    if self._used is not None:
                        self._used += nbytes
                except FileExistsError:
                    created = False
            if sync_dir:
                fsync_dir(directory)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space(name, exc) from None
            raise
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        return created

    def sync_dirs(self, names: Iterable[str]) -> None:
        for directory in sorted({os.path.dirname(self._path(n)) for n in names}):
            fsync_dir(directory)

    def get(self, name: str) -> bytes:
        try:
            with open(self._path(name), "rb", buffering=0) as f:
                return f.read()
        except FileNotFoundError:
            raise NotFound(f"chunk {name} is not in the chunk store at {self.root}") from None

    def reader(self, name: str) -> _FileRange:
        try:
            return _FileRange(self._path(name))
        except FileNotFoundError:
            raise NotFound(f"chunk {name} is not in the chunk store at {self.root}") from None

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        with self.reader(name) as r:
            return r.read_at(offset, length)

    def exists(self, name: str) -> bool:
        return os.path.exists(self._path(name))

    def size(self, name: str) -> int:
        try:
            return os.stat(self._path(name)).st_size
        except FileNotFoundError:
            raise NotFound(f"chunk {name} is not in the chunk store at {self.root}") from None

    def delete(self, name: str) -> bool:
        path = self._path(name)
        with self._lock:
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return False
            if self._used is not None:
                self._used -= size
        return True

    def iter_names(self) -> Iterator[str]:
        for top in sorted(os.listdir(self.root)):
            top_dir = os.path.join(self.root, top)
            if len(top) != 2 or not os.path.isdir(top_dir):
                continue
            for sub in sorted(os.listdir(top_dir)):
                sub_dir = os.path.join(top_dir, sub)
                if len(sub) != 2 or not os.path.isdir(sub_dir):
                    continue
                for name in sorted(os.listdir(sub_dir)):
                    if _NAME.fullmatch(name):
                        yield name

    def usage(self) -> tuple[int, int]:
        """(bytes of chunk files, bytes free for an unprivileged writer on the device)."""
        with self._lock:
            if self._used is None:
                self._used = sum(
                    os.stat(self._path(n)).st_size for n in self.iter_names()
                )
            used = self._used
        st = os.statvfs(self.root)
        return used, st.f_bavail * st.f_frsize

    def remove_stale_temp(self, older_than: float = 3600.0) -> int:
        """Delete temp files left by a crash (older than `older_than` s); returns how many."""
        removed, cutoff = 0, time.time() - older_than
        for dirpath, _dirs, files in os.walk(self.root):
            for f in files:
                p = os.path.join(dirpath, f)
                if f.startswith(_TMP_PREFIX) and os.stat(p).st_mtime < cutoff:
                    os.unlink(p)
                    removed += 1
        return removed
