"""Chunk stores: where sealed chunk envelopes are kept, by stored name (object-shaped).

Interface:
    ChunkStore (Protocol)            shaped like an object store (Put, Get with a range, Head,
                                     Delete, List), so that a remote store pays one request
                                     per batch or per object, never a directory fsync or a stat
        url: str                     where it is (file:///..., s3://...): for messages
        put_many(items) -> list[bool]
                items: (name, data) pairs, possibly a lazy iterable (a store may start writing
                before it ends). Atomic and idempotent per name: False if the name was already
                there. Durable when it returns, for every name of the batch (also those that
                were already there). A failure raises after the rest of the batch settled.
        put(name, data) -> bool      put_many of one item
        get(name, offset=0, length=None) -> bytes
                                     up to `length` bytes at `offset` (to the end if None;
                                     fewer only past the end); errors.NotFound if absent
        reader(name) -> RangeReader  the object open for several ranged reads (a context
                                     manager: .size, .read_at(offset, n) -> bytes, .close());
                                     what the read path uses: an envelope's header, then its
                                     frames, on one open object. errors.NotFound if absent
        has_many(names) -> list[bool]   a name reported present is durable
        size(name) -> int            stored bytes (a HEAD); errors.NotFound if absent
        delete(name) -> bool         False if it was not there
        list_names() -> Iterator[str]   every stored name
        usage() -> StoreUsage(stored_bytes, free)   free: bytes left for the store, or None
                                     where that is unknown or unbounded (an object store);
                                     a tuple, so `used, free = store.usage()` works
    StoreUsage(stored_bytes, free)
    LocalChunkStore(root)            a directory: root/ab/cd/<name>, and envelopes of at most
                                     SMALL_MAX bytes as rows of root/small.sqlite (one
                                     transaction per batch: small_chunks.py). A put writes a
                                     temp file in the final directory, fsyncs it, links it into
                                     place (so concurrent puts of one name store it once); a
                                     batch then fsyncs each fan-out directory it touched once.
                                     ENOSPC/EDQUOT -> errors.NoSpace saying where; temp files
                                     never outlive a failed put.
        .stale_temp_files(older_than, stop) -> (paths, complete)   temp files a crash left
        .remove_temp_file(path) -> bytes freed, None if already gone

Names are chosen by chunks.ChunkService (64 lowercase hex digits); a store accepts names of
[0-9a-z] and 4-128 characters, anything else is InvalidArgument.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import NamedTuple, Protocol

from aifs_core.errors import InvalidArgument, NoSpace, NotFound
from aifs_core.fileutil import fsync_dir
from aifs_server.small_chunks import SMALL_MAX, SmallChunks
from aifs_server.sqlite_full import disk_full

_NAME = re.compile(r"[0-9a-z]{4,128}")
_TMP_PREFIX = ".tmp-"
SMALL_FILE = "small.sqlite"   # envelopes of at most SMALL_MAX bytes (small_chunks.py)
# Threads writing one batch's files: their fsyncs overlap (they release the GIL).
WRITE_WORKERS = 4
# Threads fsyncing a batch's directories together (see LocalChunkStore._sync).
SYNC_WORKERS = 8
# The free-space figure a write checks against min_free is asked again (statvfs) after this
# long, or whenever a write would bring it within this margin of min_free.
FREE_RECHECK_S = 1.0
FREE_RECHECK_MARGIN = 256 << 20

Data = bytes | bytearray | memoryview

# Envelopes of at least DIRECT_MIN bytes have their block-aligned head written with O_DIRECT
# from an aligned buffer (the tail, under a block, through the page cache). Why: a buffered
# write copied every byte into fresh page-cache pages, 30 % of the server's CPU in a 1 GiB
# sequential write here (perf: copy_folio_from_iter_atomic), for pages nobody reads soon (a
# chunk is read back when a cold reader asks, long after). Where the file system refuses
# O_DIRECT (EINVAL), writes are buffered from then on.
DIRECT_MIN = 256 << 10
DIRECT_MAX = 16 << 20          # bigger envelopes are written buffered (the buffers' bound)
DIRECT_BUFFERS = WRITE_WORKERS  # aligned buffers kept; a writer finding none writes buffered
_BLOCK = 4096


class StoreUsage(NamedTuple):
    stored_bytes: int
    free: int | None


class RangeReader(Protocol):
    size: int

    def read_at(self, offset: int, n: int) -> bytes: ...
    def close(self) -> None: ...
    def __enter__(self) -> RangeReader: ...
    def __exit__(self, *exc: object) -> None: ...


class ChunkStore(Protocol):
    url: str

    def put_many(self, items: Iterable[tuple[str, Data]]) -> list[bool]: ...
    def put(self, name: str, data: Data) -> bool: ...
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes: ...
    def reader(self, name: str) -> RangeReader: ...
    def has_many(self, names: Iterable[str]) -> list[bool]: ...
    def size(self, name: str) -> int: ...
    def delete(self, name: str) -> bool: ...
    def list_names(self) -> Iterator[str]: ...
    def usage(self) -> StoreUsage: ...


def check_range(offset: int, length: int | None) -> None:
    if offset < 0 or (length is not None and length < 0):
        raise InvalidArgument(f"bad range offset={offset} length={length}: must be >= 0")


class _BytesRange:
    """A small chunk's envelope, read whole from its row: ranges are slices."""

    __slots__ = ("data", "size")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.size = len(data)

    def read_at(self, offset: int, n: int) -> bytes:
        check_range(offset, n)
        return self.data[offset:offset + n]

    def close(self) -> None:
        pass

    def __enter__(self) -> _BytesRange:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


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
        check_range(offset, n)
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
        self.url = "file://" + self.root
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self._lock = threading.Lock()
        self._used: int | None = None  # bytes used, computed on first usage() then tracked
        # Bytes a chunk write leaves free on the disk (the server sets its space reserve's
        # size): the metadata database on the same disk always has room to record deletions.
        self.min_free = 0
        # Directories holding links whose directory fsync has not happened yet (a count per
        # directory): has_many fsyncs such a directory before it reports a name in it, so
        # "present" always means durable, even mid-way through another thread's batch.
        self._unsynced: dict[str, int] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._dir_pool: ThreadPoolExecutor | None = None
        # free bytes on the disk as last asked (statvfs) minus what was written since, and
        # when it was asked: see _check_room
        self._free_est: tuple[int, float] = (0, -FREE_RECHECK_S)
        self._small = SmallChunks(os.path.join(self.root, SMALL_FILE))

    def _path(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"invalid chunk store name {name!r}: use 4-128 characters of [0-9a-z]"
            )
        return os.path.join(self.root, name[0:2], name[2:4], name)

    def _missing(self, name: str) -> NotFound:
        return NotFound(f"chunk {name} is not in the chunk store at {self.root}")

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

    # --- writes ----------------------------------------------------------------------------
    def _write(self, name: str, data: Data) -> bool:
        """Store one file (fsynced) and link it into place; its directory entry is left for
        the batch's directory fsync, counted in _unsynced until then."""
        path = self._path(name)
        if os.path.exists(path):
            return False
        directory = os.path.dirname(path)
        tmp = os.path.join(directory, f"{_TMP_PREFIX}{name}-{os.getpid()}-{threading.get_ident()}")
        parents: list[Future[None]] = []
        try:
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            except FileNotFoundError:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                parents = self._sync_parents(directory)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            view = memoryview(data).cast("B")
            nbytes = len(view)
            self._check_room(directory, nbytes)
            try:
                _DIRECT.write(fd, view)
                os.fsync(fd)
            finally:
                os.close(fd)
            for done in parents:
                done.result()   # the new directory is durable before a name appears in it
            # link, unlike rename, fails if another writer got there first: the chunk is then
            # stored exactly once and this put reports "already there". Under the lock so the
            # usage counter and the unsynced count match the files.
            with self._lock:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    return False
                if self._used is not None:
                    self._used += nbytes
                self._unsynced[directory] = self._unsynced.get(directory, 0) + 1
            return True
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise self._no_space(name, exc) from None
            raise
        finally:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass

    def _sync_parents(self, directory: str) -> list[Future[None]]:
        """fsync the parent and the root of a fan-out directory just made, in the background:
        they run while the chunk's own file is written and fsynced (concurrent fsyncs share
        the file system's journal commits). One after the other, these four fsyncs were most
        of a small file's create in a fresh store, where nearly every chunk makes its leaf
        directory (~11-12 ms against ~4.5 ms a chunk on a busy disk). The caller waits for
        both before it links the chunk's name, as it did when they ran first."""
        parent = os.path.dirname(directory)
        return [self._sync_pool().submit(fsync_dir, d) for d in (parent, os.path.dirname(parent))]

    def _sync(self, directories: Iterable[str], linked: Iterable[str]) -> None:
        """fsync each directory once, then drop the unsynced counts of our own links.

        The directories are fsynced at the same time (a batch's chunks land in as many
        fan-out directories as it has chunks): concurrent fsyncs share the filesystem's
        journal commits, where one after the other each waits for its own (a fresh store's
        8-chunk batch: ~45-60% of put_many's time in serial directory fsyncs)."""
        todo = sorted(set(directories))
        if len(todo) > 1:
            for _ in self._sync_pool().map(fsync_dir, todo):
                pass
        else:
            for directory in todo:
                fsync_dir(directory)
        with self._lock:
            for directory in linked:
                left = self._unsynced.get(directory, 0) - 1
                if left > 0:
                    self._unsynced[directory] = left
                else:
                    self._unsynced.pop(directory, None)

    def _writer_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(WRITE_WORKERS, thread_name_prefix="aifs-store")
            return self._pool

    def _sync_pool(self) -> ThreadPoolExecutor:
        # its own threads: a batch's directory fsyncs never queue behind other batches' writes
        with self._lock:
            if self._dir_pool is None:
                self._dir_pool = ThreadPoolExecutor(SYNC_WORKERS,
                                                    thread_name_prefix="aifs-store-dirsync")
            return self._dir_pool

    def _check_room(self, directory: str, nbytes: int) -> None:
        """Refuse a write that would leave less than min_free bytes on the disk.

        statvfs is asked only when the figure is old (FREE_RECHECK_S) or the disk is near
        the line (FREE_RECHECK_MARGIN): between asks, writes take their bytes off the last
        figure. Near full, every write asks, so ENOSPC comes exactly when it did before."""
        if not self.min_free:
            return
        now = time.monotonic()
        with self._lock:
            est, at = self._free_est
            if (now - at < FREE_RECHECK_S
                    and est - nbytes >= self.min_free + FREE_RECHECK_MARGIN):
                self._free_est = (est - nbytes, at)
                return
        st = os.statvfs(directory)
        free = st.f_bavail * st.f_frsize
        if free - nbytes < self.min_free:
            raise OSError(errno.ENOSPC, "below the space kept for deletions")
        with self._lock:
            self._free_est = (free - nbytes, now)

    def put_many(self, items: Iterable[tuple[str, Data]]) -> list[bool]:
        names: list[str] = []
        futures: list[Future[bool]] = []
        small: list[tuple[str, Data, Future[bool]]] = []
        failure: BaseException | None = None
        try:
            single = isinstance(items, list | tuple) and len(items) == 1
            for name, data in items:  # may be lazy: writes start as items arrive
                self._path(name)  # a bad name fails the batch before anything is queued
                names.append(name)
                done: Future[bool] = Future()
                if memoryview(data).nbytes <= SMALL_MAX:
                    small.append((name, data, done))
                elif single:   # written in this thread: no hand-off to the pool
                    try:
                        done.set_result(self._write(name, data))
                    except BaseException as exc:
                        done.set_exception(exc)
                else:
                    done = self._writer_pool().submit(self._write, name, data)
                futures.append(done)
        except BaseException as exc:
            failure = exc
        self._put_small(small)
        packed = {name for name, _data, _done in small}
        created: list[bool] = []
        linked: list[str] = []
        for name, fut in zip(names, futures, strict=False):
            try:
                new = fut.result()
            except BaseException as exc:
                failure = failure or exc
                new = False
            created.append(new)
            if new and name not in packed:
                linked.append(os.path.dirname(self._path(name)))
        # Every directory of the batch, including those of names that were already there:
        # another writer may have linked one and not yet synced its directory.
        directories = [os.path.dirname(self._path(n)) for n, f in zip(names, futures,
                                                                        strict=False)
                       if f.exception() is None and n not in packed]
        self._sync(directories, linked)
        if failure is not None:
            raise failure
        return created

    def _put_small(self, small: list[tuple[str, Data, Future[bool]]]) -> None:
        """Store the batch's small envelopes as rows, in one transaction; each future gets
        its result, or the batch's error. A name stored as a file already is not stored
        again (a store written before small chunks were packed, or by a larger SMALL_MAX)."""
        if not small:
            return
        try:
            self._check_room(self.root, sum(memoryview(d).nbytes for _n, d, _f in small))
            made = self._small.put_many(((name, data) for name, data, _done in small),
                                        skip=lambda name: os.path.exists(self._path(name)))
        except BaseException as exc:
            error = self._small_error(small[0][0], exc)
            for _name, _data, done in small:
                done.set_exception(error)
            return
        with self._lock:
            if self._used is not None:
                self._used += sum(memoryview(data).nbytes for (_n, data, _d), new
                                  in zip(small, made, strict=True) if new)
        for (_name, _data, done), new in zip(small, made, strict=True):
            done.set_result(new)

    def _small_error(self, name: str, exc: BaseException) -> BaseException:
        """What a failed row write raises: NoSpace naming the store for a full disk (the room
        check's ENOSPC, SQLite's full disk: sqlite_full.disk_full), else the error itself."""
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return self._no_space(name, exc)
        if isinstance(exc, sqlite3.Error) and disk_full(self._small.path, exc):
            return self._no_space(name, OSError(errno.ENOSPC, str(exc)))
        return exc

    def put(self, name: str, data: Data) -> bool:
        return self.put_many([(name, data)])[0]

    # --- reads -----------------------------------------------------------------------------
    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        self._path(name)
        packed = self._small.get(name)
        if packed is not None:
            return packed[offset:] if length is None else packed[offset:offset + length]
        if offset == 0 and length is None:
            try:
                with open(self._path(name), "rb", buffering=0) as f:
                    return f.read()
            except FileNotFoundError:
                raise self._missing(name) from None
        with self.reader(name) as r:
            return r.read_at(offset, max(0, r.size - offset) if length is None else length)

    def reader(self, name: str) -> RangeReader:
        path = self._path(name)
        packed = self._small.get(name)
        if packed is not None:
            return _BytesRange(packed)
        try:
            return _FileRange(path)
        except FileNotFoundError:
            raise self._missing(name) from None

    def has_many(self, names: Iterable[str]) -> list[bool]:
        todo = list(names)
        for name in todo:
            self._path(name)
        packed = self._small.present(todo)
        out: list[bool] = []
        synced: set[str] = set()
        for name in todo:
            if name in packed:
                out.append(True)
                continue
            path = self._path(name)
            present = os.path.exists(path)
            if present:
                directory = os.path.dirname(path)
                with self._lock:
                    pending = directory in self._unsynced
                if pending and directory not in synced:
                    fsync_dir(directory)  # another thread's link, its batch not yet synced
                    synced.add(directory)
            out.append(present)
        return out

    def size(self, name: str) -> int:
        path = self._path(name)
        packed = self._small.size(name)
        if packed is not None:
            return packed
        try:
            return os.stat(path).st_size
        except FileNotFoundError:
            raise self._missing(name) from None

    def delete(self, name: str) -> bool:
        path = self._path(name)
        freed = self._small.delete(name)
        with self._lock:
            if freed is not None and self._used is not None:
                self._used -= freed
            try:
                size = os.stat(path).st_size
                os.unlink(path)
            except FileNotFoundError:
                return freed is not None
            if self._used is not None:
                self._used -= size
        return True

    def list_names(self) -> Iterator[str]:
        yield from self._file_names()
        yield from self._small.names()

    def _file_names(self) -> Iterator[str]:
        """The names stored as chunk files (ab/cd/<name>), sorted."""
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

    def usage(self) -> StoreUsage:
        """Bytes of envelopes (chunk files and small.sqlite's rows), and bytes free for an
        unprivileged writer on the device."""
        with self._lock:
            if self._used is None:
                self._used = self._small.stored_bytes() + sum(
                    os.stat(self._path(n)).st_size for n in self._file_names())
            used = self._used
        st = os.statvfs(self.root)
        return StoreUsage(used, st.f_bavail * st.f_frsize)

    def stale_temp_files(self, older_than: float, stop: Callable[[], bool] = lambda: False
                         ) -> tuple[list[str], bool]:
        """(paths, complete): temp files older than `older_than` s, which only a writer that
        crashed leaves behind; `stop` is asked once per directory (complete False if it said
        so). A file that disappears meanwhile (linked into place) is skipped."""
        cutoff, found = time.time() - older_than, list[str]()
        for dirpath, _dirs, files in os.walk(self.root):
            if stop():
                return sorted(found), False
            for f in files:
                if f.startswith(_TMP_PREFIX):
                    p = os.path.join(dirpath, f)
                    with contextlib.suppress(FileNotFoundError):
                        if os.stat(p).st_mtime < cutoff:
                            found.append(p)
        return sorted(found), True

    def remove_temp_file(self, path: str) -> int | None:
        """Delete one temp file `stale_temp_files` named; the bytes freed (None if it was
        gone already)."""
        if not os.path.basename(path).startswith(_TMP_PREFIX) or \
                not os.path.abspath(path).startswith(self.root + os.sep):
            raise InvalidArgument(f"{path} is not a temp file of the chunk store {self.root}")
        try:
            size = os.stat(path).st_size
            os.unlink(path)
        except FileNotFoundError:
            return None
        return size


class _DirectWriter:
    """Writes an envelope into a fresh file: the block-aligned head with O_DIRECT when it is
    big enough and a buffer is free (see DIRECT_MIN), the rest through the page cache."""

    def __init__(self) -> None:
        self.enabled = hasattr(os, "O_DIRECT")
        self._free: list[mmap.mmap] = []
        self._made = 0
        self._lock = threading.Lock()

    def write(self, fd: int, view: memoryview) -> None:
        n = len(view)
        head = n - n % _BLOCK
        done = 0
        if self.enabled and DIRECT_MIN <= n and head <= DIRECT_MAX:
            buf = self._take()
            if buf is not None:
                try:
                    done = self._direct(fd, buf, view, head)
                finally:
                    self._give(buf)
        while done < n:
            done += os.pwrite(fd, view[done:], done)

    def _direct(self, fd: int, buf: mmap.mmap, view: memoryview, head: int) -> int:
        """Bytes written directly: `head`, or 0 when the file system refuses O_DIRECT (or a
        short write left the rest unaligned): the caller then writes it all buffered."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        try:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags | os.O_DIRECT)
        except OSError:
            self.enabled = False
            return 0
        try:
            mv = memoryview(buf)
            mv[:head] = view[:head]
            done = 0
            while done < head:
                done += os.pwrite(fd, mv[done:head], done)
            return head
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise               # ENOSPC and the like: the put fails as before
            self.enabled = False
            return 0
        finally:
            fcntl.fcntl(fd, fcntl.F_SETFL, flags)

    def _take(self) -> mmap.mmap | None:
        """A kept buffer, a new one while fewer than DIRECT_BUFFERS exist, else None. Each
        maps DIRECT_MAX bytes (page-aligned); only the pages an envelope touches become
        resident, so one size serves every envelope."""
        with self._lock:
            if self._free:
                return self._free.pop()
            if self._made >= DIRECT_BUFFERS:
                return None
            self._made += 1
        try:
            return mmap.mmap(-1, DIRECT_MAX)
        except OSError:
            with self._lock:
                self._made -= 1
            return None

    def _give(self, buf: mmap.mmap) -> None:
        with self._lock:
            self._free.append(buf)


_DIRECT = _DirectWriter()   # one per process: the buffers are shared by every store
