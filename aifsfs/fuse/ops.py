"""pyfuse3 operations of the AIFS mount: POSIX calls -> AIFS client calls.

Interface:
    AIFSOperations(client, *, attr_timeout=1.0, entry_timeout=1.0, cache_bytes=128 MiB,
                   max_dirty_bytes=64 MiB, readahead_chunks=8, threads=32, read_only=False)
        client: a MountClient (.fs, .data, .assets: aifsfs.protocols), e.g. an AIFSClient.
        a `pyfuse3.Operations`; before `pyfuse3.main()` runs, call `.start(nursery)` (background
        uploads and read-ahead run there); after it returns, `await .shutdown()` commits
        everything still buffered. `await .flush_all()` commits without stopping.

How it behaves (the consistency rules of docs/ARCHITECTURE.md, "The mount"):
- Every client call runs in a worker thread (`trio.to_thread.run_sync`, one CapacityLimiter),
  so many requests overlap. Client exceptions become errno via `aifsfs.errors.errno_for`; a
  server that stays unreachable past the client's bounded retries gives EIO, never a hang.
- Close-to-open: `open` fetches a fresh chunk map (attr + generation) unless this mount already
  holds the file open or dirty; `keep_cache` when the generation is the one this mount last saw.
  `flush` (close) and `fsync` upload and CommitFile; writes are visible at once in this mount
  because reads overlay the write buffer.
- Unlinked-but-open files: the server keeps nlink-0 inodes until Forget; we call Forget when the
  last handle closes. When no file is open in this mount at all, Unlink/RmDir/Rename ask the
  server to drop a removed inode in the same call (`forget`), and say which inode they removed
  (no Lookup first). RmDir/Rename do not while a directory is open here: a removed directory
  still open is kept (fstat gives nlink 0) and forgotten at its last releasedir.
- readdir gives "." and ".." first (offsets 1, 2; server cookie c is offset c + 2); ".." is the
  parent learnt from lookup/mkdir/readdir, or the directory itself when unknown (after a move
  across directories, until the name is looked up or listed again).
- write(2) shows new mtime/ctime at once (a dirty file's times are overlaid, as its size);
  a commit invalidates the kernel's attributes so it takes the server's.
- Round trips saved (a small gRPC call costs ~0.3-1.8 ms here, more under load):
  * security.* and system.posix_acl_* getxattr (the kernel asks security.capability before
    every write) answer ENODATA here: this filesystem stores neither (setxattr refuses them).
  * The kernel drops a directory's cached attributes after each create/unlink in it and asks
    again (default_permissions checks the parent), and a file's after every read (atime):
    replies of our own calls (create/unlink/rename carry the parent's new attributes; open,
    commit, setattr the file's) are kept and getattr serves them for what is left of
    attr_timeout -- exactly what the kernel's own cache would have allowed had it kept them.
  * The first open of a file in this mount keeps the page cache (there can be none yet): no
    invalidation, so the kernel does not drop and re-ask the attributes.
  * open asks GetChunkMap to inline a small file's bytes (unless the page cache we keep
    already holds that generation): they go to the chunk cache, so the first read is local.
  * close of a small file commits its data inside CommitFile (write_buffer.py `inline_max`).
  * an unlink in a directory this mount holds exclusively is answered here and sent in a
    batch (dirops_queue.py; a recall, fsyncdir or a call depending on it sends it first);
    a create there is answered with a delegated inode number and made with its data by one
    CreateFile at the close (sooner when something depends on it).
- What the mount knows per inode lives in one InodeTable (inodes.py); what it shows of an open
  file (buffered writes over stored chunks) is the FileState's (write_buffer.py); read-ahead is
  the handle's ReadWindow and the ChunkReader's (readahead.py).
- Names longer than 255 bytes fail with ENAMETOOLONG before any call. `/.aifs/` is synthetic
  (see synthetic.py) and hidden from the root's listing; `user.aifs.*` xattrs come from
  GetFileInfo.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast

import pyfuse3
import trio

from aifs_core.errors import (
    AlreadyExists,
    CrossDevice,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
)
from aifs_core.types import (
    NAME_MAX,
    ROOT_INO,
    SET_ATIME,
    SET_CTIME,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_SIZE,
    SET_UID,
    Attr,
    ChunkRef,
)
from aifsfs.errors import errno_for, xattr_errno_for
from aifsfs.fuse.chunk_cache import FRAME_SIZE, ChunkCache, split_range
from aifsfs.fuse.dir_fill import Batch, DirFill, plan_batches
from aifsfs.fuse.dir_prefetch import DirPrefetch
from aifsfs.fuse.dirops_queue import DirOps, OrderedFs
from aifsfs.fuse.inodes import InodeTable
from aifsfs.fuse.kernel_names import KernelNames
from aifsfs.fuse.leases import NEGATIVE, LeaseCache
from aifsfs.fuse.readahead import ChunkReader, ReadWindow
from aifsfs.fuse.synthetic import SYN_ROOT, Synthetic, is_synthetic
from aifsfs.fuse.write_buffer import FileState, WriteBuffers
from aifsfs.protocols import MountClient
from aifsfs.rpc.channel import Channel
from aifsfs.rpc.session import LeaseSession

log = logging.getLogger("aifsfs.fuse")
# what a server answers when it refused a change and applied nothing of it
_REFUSED = (AlreadyExists, CrossDevice, InvalidArgument, IsADirectory, NameTooLong,
            NotADirectory, NotEmpty, NotFound, PermissionDenied)

AIFS_XATTRS = (b"user.aifs.asset_id", b"user.aifs.uri", b"user.aifs.kind",
               b"user.aifs.stored_bytes", b"user.aifs.logical_bytes")
SYN_NAME = b".aifs"
RECALLED_FRESH_MAX = 10_000     # recall marks kept before the old ones are swept
INLINE_MAX = 1 << 20          # small-file bytes that ride along with GetChunkMap / CommitFile
# Not stored by this filesystem: answered locally (a round trip per write() otherwise).
_LOCAL_XATTR_PREFIXES = (b"security.", b"system.posix_acl_")
READDIR_PAGE = 1000
# Batched cold opens (a process opening the files of one directory in order): the next
# files' maps and small files' bytes in one ReadDir, BATCH_MIN entries at first, doubling to
# BATCH_MAX while the walk goes on; inline bytes per batch at most INLINE_BATCH and an eighth
# of the memory cache (what a walk does not read is at most that much, once).
BATCH_MIN = 16
BATCH_MAX = 256
INLINE_BATCH = 4 << 20
# Directory fills (dir_fill.py): a listed directory whose small files total at most this (and
# what the page cache may take, or half the memory cache) is fetched whole from the second cold
# open in it on. A wrong guess (two files read of a directory the reader leaves) costs at
# most this much server work, a few seconds.
FILL_MAX = 1 << 30
FILL_PARALLEL_CALLS = 2     # ReadDir calls a fill keeps out: the server decrypts on 2 threads
SPILL_MIN = FRAME_SIZE      # a fill queues for the disk cache only files of a frame or more
# --writeback: closes whose commit may be under way at once, and their bytes (past either,
# a close waits for its commit)
WRITEBACK_MAX = 256
WRITEBACK_BYTES = 16 << 20
BEHIND_GATHER = 0.003       # seconds a queued close waits for the next ones to join its call
# A leased directory that keeps getting lookups of absent names (creates in an existing
# directory: tar, cp -r) is listed whole after this many, so that it becomes complete and the
# next creates ask no negative Lookup -- when it has at most LIST_MAX_PAGES pages.
NEGATIVES_BEFORE_LISTING = 8
LIST_MAX_PAGES = 10
# readdir offsets: 1 and 2 resume after "." and ".."; a server cookie c is offset c + _DOTS
# (server cookies are dentry ids, stable while entries come and go).
_DOTS = 2
_TRACE = bool(os.environ.get("AIFS_FUSE_TRACE"))   # log every operation's duration

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _errors(xattr: bool = False) -> Callable[[F], F]:
    """Turn any exception of a handler into FUSEError(errno); log the unexpected ones."""
    mapper = xattr_errno_for if xattr else errno_for

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        async def wrapper(*args: Any, **kw: Any) -> Any:
            t0 = time.perf_counter() if _TRACE else 0.0
            try:
                return await fn(*args, **kw)
            except pyfuse3.FUSEError:
                raise
            except Exception as exc:  # noqa: BLE001 - every error must become an errno
                num = mapper(exc)
                if num == errno.EIO:
                    log.warning("%s: %s: %s", fn.__name__, type(exc).__name__, exc)
                else:
                    log.debug("%s: %s", fn.__name__, exc)
                raise pyfuse3.FUSEError(num) from None
            finally:
                if _TRACE:
                    log.info("op %s %.3f ms", fn.__name__, (time.perf_counter() - t0) * 1e3)
        return cast(F, wrapper)
    return deco


# FOPEN_NOFLUSH (Linux >= 5.16): the kernel sends no FLUSH at the close of a handle opened
# with it. A handle that cannot write has nothing to commit at its close, and numpy closes each
# sample twice (a dup): 2 of the 4 FUSE requests of a warm epoch's sample (BENCHMARKS "Read-only
# closes without FLUSH"). pyfuse3 3.5 lacks the field; scripts/setup.sh builds it with
# scripts/pyfuse3.patch. Without it, FLUSH arrives and is answered as before.
_NOFLUSH = hasattr(pyfuse3.FileInfo(), "noflush")


def _file_info(fh: int, keep_cache: bool, writable: bool) -> pyfuse3.FileInfo:
    fi = pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fh), keep_cache=keep_cache)
    if _NOFLUSH and not writable:
        fi.noflush = True
    return fi


def _check_name(name: bytes) -> None:
    if len(name) > NAME_MAX:
        raise pyfuse3.FUSEError(errno.ENAMETOOLONG)


def _stale_if_gone(exc: BaseException) -> None:
    """An inode the kernel still knows is gone on the server: ESTALE, so that the kernel
    revalidates the name (path walks retry once with a fresh lookup) instead of ENOENT."""
    if errno_for(exc) == errno.ENOENT:
        raise pyfuse3.FUSEError(errno.ESTALE) from None


class _Handle:
    __slots__ = ("ino", "state", "window", "synthetic")

    def __init__(self, ino: int, state: FileState | None, readahead_chunks: int = 0,
                 synthetic: bool = False) -> None:
        self.ino = ino
        self.state = state
        self.window = ReadWindow(readahead_chunks)
        self.synthetic = synthetic


class _PageAhead:
    """The next page of a listing, asked for while the kernel still takes the one before."""
    __slots__ = ("cookie", "done", "page")

    def __init__(self, cookie: int) -> None:
        self.cookie = cookie
        self.done = trio.Event()
        # (entries, eof, lease mark) once done; None: the call failed (the reader asks again)
        self.page: tuple[list[Any], bool, tuple[int, int] | None] | None = None


class _DirHandle:
    __slots__ = ("ino", "buf", "buf_cookie", "eof", "end", "mark", "ahead")

    def __init__(self, ino: int) -> None:
        self.ino = ino
        self.buf: list[Any] = []        # entries fetched but not yet returned to the kernel
        self.buf_cookie = -1            # the cookie the kernel will resume from to get `buf`
        self.eof = False
        self.end = -1                   # cookie after which this handle's listing ended
        self.mark: tuple[int, int] | None = None    # buf's page was leased as of this mark
        self.ahead: _PageAhead | None = None


class AIFSOperations(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False

    def __init__(self, client: MountClient, *, attr_timeout: float = 1.0, entry_timeout: float = 1.0,
                 cache_bytes: int = 128 << 20, max_dirty_bytes: int = 64 << 20,
                 readahead_chunks: int = 8, threads: int = 32, read_only: bool = False,
                 leases: bool | None = None, sync_dirops: bool | None = None,
                 writeback: bool = False) -> None:
        super().__init__()
        self.client = client
        self.fs = client.fs
        # Leases (docs/LEASES.md): over a real server, one session stream; every Filesystem
        # call then carries its id (so this mount's own changes do not recall its own leases:
        # it drops what they touch itself, _changed). AIFS_LEASES=0 turns them off.
        if leases is None:
            leases = os.environ.get("AIFS_LEASES", "1") != "0"
        self.leases = LeaseCache(None)
        self._session: LeaseSession | None = None
        # what the kernel was told to keep for as long as a lease lasts (kernel_names.py)
        self.kernel = KernelNames()
        # recalled inodes whose fresh attrs (noted from our replies) are old: ino -> when
        self._recalled_fresh: dict[int, float] = {}
        self._recalled_lock = threading.Lock()
        self.requests = {"lookup": 0, "getattr": 0, "flush": 0}   # logged at unmount (tests)
        # Unlinks under an exclusive directory lease are answered here and sent in batches
        # (dirops_queue.py, LEASES.md); AIFS_SYNC_DIROPS=1 sends each one before answering.
        self.dirops: DirOps | None = None
        self._dirops_wake: trio.Event | None = None
        self._batches_going: set[int] = set()     # directories whose full batch is sending
        channel = getattr(client, "channel", None)
        if leases and isinstance(channel, Channel):
            self._session = LeaseSession(channel, self._recalled, self._reset)
            self.leases.session = self._session
            self.fs = self._session.fs
            if sync_dirops is None:
                sync_dirops = os.environ.get("AIFS_SYNC_DIROPS", "0") == "1"
            if not sync_dirops:
                self.dirops = DirOps(self._session, self._dirops_failed,
                                     on_born=self.leases.own_listed)
                self._session.want_excl = True
                self.fs = cast(Any, OrderedFs(self._session.fs, self.dirops))
        # --writeback (LEASES.md "Closes that return before their commit"): the close of a
        # small file made here returns once its CreateFile is queued; ino -> commits under way
        self.writeback = writeback and self.dirops is not None
        self._behind: dict[int, int] = {}
        self._behind_bytes = 0
        self.attr_timeout = attr_timeout
        self.entry_timeout = entry_timeout
        self.read_only = read_only
        self.readahead_chunks = readahead_chunks
        self.limiter = trio.CapacityLimiter(threads)
        self.cache = ChunkCache(cache_bytes)
        self.reader = ChunkReader(client.data, self.cache, self.limiter, readahead_chunks)
        # uploads carry the session id: the server keeps them until our commit (or our end)
        data = self._session.data if self._session is not None else client.data
        self.buffers = WriteBuffers(self.fs, data, self.limiter, self._read_base,
                                    max_dirty_bytes, inline_max=INLINE_MAX)
        self.synthetic = Synthetic(client.assets, self._call, self.reader,
                                   versions=getattr(client, "versions", None),
                                   flush=self.flush_all)
        self.chunk_size = 0                       # learnt from the first chunk map
        self.inodes = InodeTable(attr_timeout)
        self.handles: dict[int, _Handle] = {}
        self.dirs: dict[int, _DirHandle] = {}
        self._next_fh = 1
        self._nursery: trio.Nursery | None = None
        # the directory walk in progress: (parent, cookie of the last file opened or
        # fetched, next batch size) -- a heuristic, shared by all openers
        self._walk: tuple[int, int, int] | None = None
        self._last_cold: int | None = None       # directory of the last cold open's file
        self._fills: dict[int, DirFill] = {}      # directory -> its fill in progress
        self.fill_stats = {"fills": 0, "batches": 0, "pushed": 0}   # and skipped pushes, why
        # a directory whose maps are held but whose bytes left the caches: batched GetChunks
        # once reads show a pass over it (dir_prefetch.py)
        self.prefetch = DirPrefetch(self.reader, self.leases, self._push_whole)
        self._negatives: dict[int, int] = {}     # directory -> negative lookups asked

    # --- plumbing ---------------------------------------------------------------------------
    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self.buffers.start(nursery)
        self.synthetic.start(nursery)    # views' directory prefetches
        if self._session is not None:
            self._session.start()
        if self.dirops is not None:
            self._dirops_wake = trio.Event()
            nursery.start_soon(self._dirops_timer)

    def _recalled(self, inos: list[int]) -> None:
        """The lease stream's recall, before its ack: queued unlinks of a directory recalled
        reach the server first (so the other client's call sees them), then the cache goes."""
        if self.dirops is not None:
            self.dirops.recalled(inos)
        self.leases.recalled(inos)
        # attrs noted from our own replies are old now too: the kernel, told to ask again,
        # must not get them back (this is the lease stream's thread: only marked here)
        now = time.monotonic()
        with self._recalled_lock:
            if len(self._recalled_fresh) > RECALLED_FRESH_MAX:
                # a mark older than attr_timeout outlived every fresh attr it could spoil
                keep = now - self.attr_timeout - 1.0
                self._recalled_fresh = {i: t for i, t in self._recalled_fresh.items()
                                        if t > keep}
            self._recalled_fresh.update((ino, now) for ino in inos)
        self.kernel.recalled(inos)      # the kernel's long-lived entries go before the ack

    def _reset(self) -> None:
        if self.dirops is not None:
            self.dirops.reset()
        self.leases.reset()
        self.kernel.reset()

    def _dirops_failed(self, ino: int) -> None:
        """A batch of ours did not apply: what we and the kernel believe of `ino` goes (any
        thread, a request handler's worker too: the kernel's part is not waited for)."""
        self.leases.drop(ino)
        self.kernel.forget_dir(ino)

    def _lease_timeout(self) -> float | None:
        """How long the kernel may keep what a lease answered (None: no lease now)."""
        s = self._session
        if s is None:
            return None
        t = self.kernel.timeout(s.valid_until, self.entry_timeout)
        return t if t > self.entry_timeout else None

    def _long(self, e: pyfuse3.EntryAttributes, parent: int | None, name: bytes | None,
              under: int | None, mark: tuple[int, int]) -> pyfuse3.EntryAttributes:
        """Let the kernel keep an entry answered from a lease (a name of `parent`, and/or
        the attributes of e.st_ino, covered by `under`'s exclusive lease when given) for as
        long as the lease lasts; recorded first, so that a recall drops it."""
        t = self._lease_timeout()
        if t is None:
            return e
        if parent is not None and name is not None:
            self.kernel.entry(parent, name, t)
            e.entry_timeout = t
        if e.st_ino:
            self.kernel.attr(e.st_ino, t, under)
            e.attr_timeout = t
        if self._nursery is not None:
            # a recall between the lease's answer and the kernel taking this reply would find
            # nothing to drop yet: looked at again once the reply is in (after this returns)
            self._nursery.start_soon(self._recheck, mark, parent, name, int(e.st_ino))
        return e

    def _long_listed(self, parent: int, given: list[tuple[bytes, int]],
                     mark: tuple[int, int]) -> None:
        """readdirplus entries of a leased page handed to the kernel for as long as the lease
        lasts (as `_long` for a lookup): a walk that lists, then opens or unlinks each name
        (a loader's epoch, rm -r, the bench's small-file phases) makes no LOOKUP per name once
        the mount's 1 s entry timeout would have run out. Recorded before the reply leaves
        (the handler has not returned), so a recall drops them; looked at again once the
        reply is in, as `_long`'s."""
        t = self._lease_timeout()
        if t is None:
            return
        # recorded a little longer than handed out: the kernel counts from when it takes
        # the reply, after this
        self.kernel.entries(parent, given, t + 1.0)
        if self._nursery is not None:
            self._nursery.start_soon(self._recheck_listed, mark, parent, given)

    async def _recheck_listed(self, mark: tuple[int, int], parent: int,
                              given: list[tuple[bytes, int]]) -> None:
        if self.leases.recalls()[0] == mark[0]:
            return
        for name, ino in given:
            await self._recheck(mark, parent, name, ino)

    async def _recheck(self, mark: tuple[int, int], parent: int | None, name: bytes | None,
                       ino: int) -> None:
        if self.leases.recalls()[0] == mark[0]:
            return
        if parent is not None and name is not None:
            with contextlib.suppress(Exception):    # not mounted any more: nothing cached
                pyfuse3.invalidate_entry_async(cast(pyfuse3.InodeT, parent), name,
                                               ignore_enoent=True)
        if ino:
            with contextlib.suppress(Exception):
                pyfuse3.invalidate_inode(cast(pyfuse3.InodeT, ino), attr_only=True)

    async def _dirops_timer(self) -> None:
        """Send queued unlinks at most dirops.interval after the first of a batch."""
        assert self.dirops is not None
        while True:
            wake = self._dirops_wake
            assert wake is not None
            await wake.wait()
            self._dirops_wake = trio.Event()
            while self.dirops.queued():
                await trio.sleep(self.dirops.interval)
                for parent in self.dirops.due():
                    await self._send_queued(parent)

    async def _send_queued(self, parent: int, full_only: bool = False) -> None:
        """dirops.flush from a background task: a failure is logged, never raised."""
        assert self.dirops is not None
        try:
            await self._call(self.dirops.flush, parent, full_only=full_only)
        except Exception as exc:  # noqa: BLE001 - flush logs its own failures
            log.warning("sending queued unlinks of %d: %s", parent, exc)

    def _create_unborn(self, parent: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
                       ) -> tuple[Attr, Attr] | None:
        """Answer a create without a call (dirops_queue.py): a regular file, in a directory
        this mount holds exclusively whose leased listing says the name is free, at a
        delegated inode number. Its CreateFile goes with its first commit at the close (or
        sooner, when something depends on it). None: create it with a call."""
        q = self.dirops
        if (q is None or not stat.S_ISREG(mode) or not q.held(parent)
                or self.leases.lookup(parent, name) is not NEGATIVE):
            return None
        pa = self.leases.attr(parent)
        ino = q.take_ino() if pa is not None else None
        if pa is None or ino is None:
            return None
        # as the server's create: a setgid directory gives its group
        gid = pa.gid if pa.mode & stat.S_ISGID else ctx.gid
        mark = self.leases.recalls()
        now = time.time_ns()
        if not q.add_unborn(parent, name, ino, mode & 0o7777, ctx.uid, gid, born_ns=now):
            return None     # the number is not used: a gap in the tree's numbers, harmless
        a = Attr(ino, stat.S_IFREG | (mode & 0o7777), 1, ctx.uid, gid, 0, 0, now, now, now,
                 0, 0)
        pa = dataclasses.replace(pa, mtime_ns=now, ctime_ns=now)
        # the listing is kept: the name joins it once born (DirOps.on_born)
        self.leases.own_entry(mark, parent, name, ino, pa, listed_later=True)
        return a, pa

    async def _born(self, ino: int) -> None:
        """A file created here and not yet on the server is created now (empty)."""
        if self.dirops is not None and self.dirops.unborn(ino):
            await self._call(self.dirops.birth, ino)

    async def _unlink_queued(self, parent: int, name: bytes) -> bool:
        """Answer an unlink without a call (dirops_queue.py): in a directory this mount holds
        exclusively, of a name its leased listing knows, a file or symlink with one link and
        not open here. It reaches the server in a batch before anything can see the directory
        (a recall flushes first). False: do it with a call."""
        q = self.dirops
        if q is None or not q.held(parent):
            return False
        a = self.leases.lookup(parent, name)
        if (not isinstance(a, Attr) or stat.S_ISDIR(a.mode) or a.nlink != 1
                or self.inodes.state(a.ino) is not None):
            return False
        mark = self.leases.recalls()
        n = q.try_unlink(parent, name, a.ino)
        if n is None:
            return False
        t0 = time.monotonic()
        # the directory's times as the batch will set them (within the interval): the kernel
        # asks for them after every unlink, and asking the server would flush the queue
        pa = self.leases.attr(parent)
        if pa is not None:
            now = time.time_ns()
            pa = dataclasses.replace(pa, mtime_ns=now, ctime_ns=now)
        self.leases.own_entry(mark, parent, name, None, pa)
        self._changed(a.ino)
        self._note_attr(pa, t0)
        self.inodes.drop_fresh(a.ino)
        self.inodes.drop_seen_gen(a.ino)
        if n == 1 and self._dirops_wake is not None:
            self._dirops_wake.set()
        if n >= 2 * q.max_batch:
            # a batch is on its way and another full one waits: the server is behind, so
            # this unlink waits for both (the queue stays bounded)
            await self._call(q.flush, parent)
        elif n >= q.max_batch:
            self._send_batch_soon(parent)
        return True

    def _send_batch_soon(self, parent: int) -> None:
        """A full batch goes at once, without the unlink that filled it waiting for the
        call: the next unlinks queue while the server applies it (one per directory)."""
        if self._nursery is None or parent in self._batches_going:
            return
        self._batches_going.add(parent)

        async def send() -> None:
            try:
                await self._send_queued(parent, full_only=True)
            finally:
                self._batches_going.discard(parent)

        self._nursery.start_soon(send)

    async def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kw),
                                             limiter=self.limiter)

    async def _read_base(self, ref: ChunkRef, n: int) -> bytes:
        return await self.reader.read(ref, 0, n, whole=True)

    def _changed(self, *inos: int | None) -> None:
        """This mount changed these inodes: the server recalls only the other mounts'
        leases, so drop what ours cover (after the call: a leased reply in flight that read
        the old state is refused by the epoch this bumps)."""
        self.leases.drop(*inos)

    # leasable reads: each runs in one worker thread, so that the lease answer of its call
    # (thread-local in the LeaseSession) is the one the cache checks
    def _lookup_sync(self, parent: int, name: bytes) -> Attr:
        tok = self.leases.begin()
        try:
            a: Attr = self.fs.lookup(parent, name)
        except NotFound:
            self.leases.put_negative(tok, parent, name)
            if self._session is not None:
                if len(self._negatives) > 1000:
                    self._negatives.clear()
                self._negatives[parent] = self._negatives.get(parent, 0) + 1
            raise
        self.leases.put_entry(tok, parent, name, a)
        return a

    def _getattr_sync(self, ino: int) -> Attr:
        tok = self.leases.begin()
        a: Attr = self.fs.getattr(ino)
        self.leases.put_attr(tok, a)
        return a

    def _readdir_sync(self, ino: int, cookie: int) -> tuple[list[Any], bool]:
        tok = self.leases.begin()
        entries, eof = self.fs.readdir(ino, cookie, READDIR_PAGE)
        self.leases.put_page(tok, ino, cookie, entries, eof)
        return entries, eof

    def _open_map_sync(self, ino: int, inline_max: int, seen: int | None
                       ) -> tuple[Attr, int, list[ChunkRef], bytes]:
        tok = self.leases.begin()
        a, cs, refs, data = self.fs.open_chunk_map(ino, inline_max, seen)
        self.leases.put_map(tok, a, cs, refs)
        return a, cs, refs, data

    def _mkdir_sync(self, parent: int, name: bytes, mode: int, uid: int, gid: int
                    ) -> tuple[Attr, Attr | None, int]:
        tok = self.leases.begin()
        a, pa, cookie = self.fs.mkdir_entry(parent, name, mode, uid, gid)
        self.leases.put_new_dir(tok, a)        # empty, if the server leased it to us
        return a, pa, cookie

    async def _add_entry(self, parent: int, name: bytes, fn: Callable[..., Any], *args: Any
                         ) -> tuple[Attr, Attr | None]:
        """Run one of this mount's calls that adds `name` to `parent` (returning the new
        attrs, the parent's and maybe the name's listing cookie): a leased directory gets the
        name instead of being dropped, so lookups in it stay local (a failed call drops it),
        and with a cookie its kept listing takes the name too."""
        mark = self.leases.recalls()
        try:
            a, pa, *cookie = await self._call(fn, *args)
        except BaseException:
            self._changed(parent)
            raise
        listed = bool(cookie and cookie[0])
        self.leases.own_entry(mark, parent, name, a.ino, pa, listed_later=listed)
        if listed:
            self.leases.own_listed(parent, name, a, cookie[0])
        return a, pa

    def _maps_sync(self, parent: int, cookie: int, n: int, inline_total: int
                   ) -> tuple[list[Any], bool, int, dict[int, tuple[list[ChunkRef], bytes]]]:
        assert self._session is not None
        tok = self.leases.begin()
        entries, eof, cs, maps = self._session.fs.readdir_maps(parent, cookie, n, INLINE_MAX,
                                                               inline_total)
        for e in entries:
            m = maps.get(e.attr.ino)
            if m is not None:
                self.leases.put_map(tok, e.attr, cs, m[0])
        return entries, eof, cs, maps

    async def _batched_open(self, ino: int) -> tuple[Attr, int, list[ChunkRef], bytes] | None:
        """A cold open of a file of a listed directory: from the directory's fill (the
        second cold open in a directory that fits starts one), else, when this file follows
        the last one opened cold there in listing order, with the next files' maps in one
        ReadDir (their opens then hit the leases, their bytes the chunk cache). None: ask
        one GetChunkMap (the first open of a walk, or random order in a large directory)."""
        pos = self.leases.position(ino) if self._session is not None else None
        if pos is None:
            return None
        parent, before, cookie = pos
        fill = self._fills.get(parent)
        if fill is None:
            # From a second cold open in a directory whose files fit what a fill may take,
            # fetch all of it, ahead of the reader: whatever order the opens take (a shuffled
            # DataLoader epoch, sorted names over a listing in creation order), what is
            # fetched stays cached until they come.
            last, self._last_cold = self._last_cold, parent
            if last == parent:
                fill = self._start_fill(parent, ino)
        if fill is not None:
            if await fill.wait_for(ino):
                hit = self.leases.chunk_map(ino)
                if hit is not None:
                    return (*hit, b"")        # its bytes: page cache and/or chunk cache
            return None
        walk = self._walk
        if walk is None or walk[0] != parent or walk[1] != before:
            self._walk = (parent, cookie, BATCH_MIN)     # random order: one GetChunkMap
            return None
        n = walk[2]
        total = min(INLINE_BATCH, self.cache.capacity // 8)
        entries, eof, cs, maps = await self._call(self._maps_sync, parent, before, n, total)
        self._walk = (None if eof or not entries
                      else (parent, entries[-1].cookie, min(2 * n, BATCH_MAX)))
        mine: tuple[Attr, int, list[ChunkRef], bytes] | None = None
        for e in entries:
            m = maps.get(e.attr.ino)
            if m is None:
                continue
            refs, data = m
            if data and len(refs) == 1 and refs[0].index == 0 and len(data) == refs[0].length:
                self.cache.put(refs[0].chunk_id, 0, data)
            if e.attr.ino == ino:
                mine = (e.attr, cs, refs, data)
        return mine

    def _fill_limit(self) -> int:
        """Bytes a directory fill may fetch: half the memory cache, or what the page cache
        may take (at most FILL_MAX) when pages are pushed."""
        pages = self.reader.pages
        in_cache = self.cache.capacity // 2
        if pages is not None and pages.enabled:
            return max(in_cache, min(FILL_MAX, pages.budget()))
        return in_cache

    def _start_fill(self, parent: int, ino: int) -> DirFill | None:
        """Start fetching the files of a listed directory whose maps this mount lacks, when
        they fit (_fill_limit); None when not (not listed whole, too large, no nursery)."""
        size = self.leases.dir_bytes(parent)
        if self._nursery is None or size is None or size > self._fill_limit():
            return None
        listing = self.leases.unmapped(parent)
        if not listing:
            return None
        batches = plan_batches(listing, INLINE_MAX, INLINE_BATCH, BATCH_MAX)
        fill = DirFill(parent, batches, functools.partial(self._fill_batch, parent, size),
                       FILL_PARALLEL_CALLS)
        fill.start_at(ino)
        self._fills[parent] = fill
        self.fill_stats["fills"] += 1
        self._nursery.start_soon(self._run_fill, fill)
        return fill

    async def _run_fill(self, fill: DirFill) -> None:
        try:
            await fill.run()
        finally:
            if self._fills.get(fill.parent) is fill:
                del self._fills[fill.parent]

    async def _fill_batch(self, parent: int, dir_size: int, b: Batch) -> None:
        """One ReadDir(with_maps) of a fill: maps leased (_maps_sync), whole small files
        pushed into the kernel's page cache, queued for the disk cache, and into the memory
        cache when the directory fits half of it or an open waits for the file."""
        pages = self.reader.pages
        while (pages is not None and pages.pending_bytes > pages.max_pending // 2
               and not b.wanted):
            # never outrun the pusher (a dropped push is a wasted fetch) -- unless an open
            # waits: the pusher may itself wait for a page a read of ours has locked
            await trio.sleep(0.005)
        fill = self._fills.get(parent)
        entries, _eof, cs, maps = await self._call(
            self._maps_sync, parent, b.cookie, len(b.inos), max(1, b.inline_bytes))
        self.fill_stats["batches"] += 1
        in_cache = dir_size <= self.cache.capacity // 2
        disk = self.reader.disk
        for e in entries:
            m = maps.get(e.attr.ino)
            if m is None:
                continue
            refs, data = m
            if not (data and len(refs) == 1 and refs[0].index == 0
                    and len(data) == refs[0].length):
                continue
            if in_cache or (fill is not None and fill.waiting(e.attr.ino)):
                self.cache.put(refs[0].chunk_id, 0, data)
            if disk is not None and len(data) >= SPILL_MIN:
                # best effort (dropped when the writer is behind): the next epoch after the
                # page cache lost these pages reads them here, not through GetChunks. Not
                # files under a frame: a cache file each cost more (small read 1,367 -> 872
                # files/s) than refetching them in the prefetch's batched calls. The whole
                # chunk: a small one goes into a pack, no file of its own (disk_cache.py)
                disk.submit(refs[0].chunk_id, 0, data, whole=True)
            self._push_whole(e.attr, cs, data, refs[0].chunk_id)

    def _push_whole(self, a: Attr, cs: int, data: bytes, chunk_id: bytes) -> None:
        """Push a small file's bytes, fetched with its leased map, into the kernel's page
        cache before any open asks: only for an inode the kernel holds (listed), not open
        here, whose pages can only be of this generation, while the map is still leased (a
        change since would have recalled it: then the next open fetches the map and drops
        the kernel's pages, keep_cache being false for a generation other than seen_gen)."""
        pages = self.reader.pages
        node = self.inodes.get(a.ino)
        why = ("off" if pages is None or not pages.enabled or a.size != len(data)
               else "forgotten" if node is None or node.lookups <= 0
               else "open" if node.state is not None
               else "other generation" if node.seen_gen not in (None, a.generation)
               else "not leased" if not self.leases.has_map(a.ino, a.generation)
               else "")
        t = None if why or pages is None else pages.target_for(a.ino, cs, a.size)
        if t is None or pages is None:
            why = why or "writer"
            self.fill_stats[why] = self.fill_stats.get(why, 0) + 1
            return
        self.inodes.set_seen_gen(a.ino, a.generation)
        pages.offer(t, 0, data, chunk_id)
        self.fill_stats["pushed"] += 1

    async def _list_whole(self, parent: int, name: bytes) -> Any:
        """List a directory that keeps being asked for absent names, so that its lease
        makes it complete; then the lease's answer for `name` (None: ask)."""
        self._negatives[parent] = 0
        cookie = 0
        for _ in range(LIST_MAX_PAGES):
            entries, eof = await self._call(self._readdir_sync, parent, cookie)
            if eof or not entries:
                break
            cookie = entries[-1].cookie
        hit = self.leases.lookup(parent, name)
        if hit is None:
            # not complete (too big, or changed meanwhile): try again only much later
            self._negatives[parent] = -16 * NEGATIVES_BEFORE_LISTING
        return hit

    def _leased_ino(self, parent: int, name: bytes) -> int | None:
        a = self.leases.lookup(parent, name)
        return a.ino if isinstance(a, Attr) else None

    def _fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _entry(self, a: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        st = self.inodes.state(a.ino)
        size, mtime, ctime = a.size, a.mtime_ns, a.ctime_ns
        if st is not None and (st.is_dirty() or (st.handles and st.generation >= a.generation)):
            # this mount's writes are visible at once; a clean state of an older generation
            # than these attrs (another mount rewrote the file since) does not hide their size
            size = st.size
            if st.mtime_ns and st.is_dirty():
                # write(2) marks mtime/ctime at once; the commit stores this mtime later
                mtime, ctime = st.mtime_ns, max(ctime, st.mtime_ns)
        self.inodes.kernel_sees(a)
        e.st_ino = cast(pyfuse3.InodeT, a.ino)
        e.generation = 0
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        if is_synthetic(a.ino):
            # a snapshot's view cannot change: the kernel keeps it without asking again
            t = self.synthetic.timeout(a.ino)
            if t is not None:
                e.entry_timeout = e.attr_timeout = t
        e.st_mode = cast(pyfuse3.ModeT, a.mode)
        e.st_nlink = a.nlink
        e.st_uid = a.uid
        e.st_gid = a.gid
        e.st_rdev = a.rdev
        e.st_size = size
        e.st_blksize = self.chunk_size or 1 << 20    # cp & co. size their buffers by this
        e.st_blocks = a.blocks
        e.st_atime_ns = a.atime_ns
        e.st_mtime_ns = mtime
        e.st_ctime_ns = ctime
        return e

    @staticmethod
    def _dot_entry(ino: int) -> pyfuse3.EntryAttributes:
        # readdirplus: the kernel takes no lookup reference for "." and ".." and ignores their
        # attributes; only the inode number and the type (d_ino, d_type) reach readdir(3).
        e = pyfuse3.EntryAttributes()
        e.st_ino = cast(pyfuse3.InodeT, ino)
        e.st_mode = cast(pyfuse3.ModeT, stat.S_IFDIR | 0o755)
        e.entry_timeout = 0
        e.attr_timeout = 0
        return e

    def _note_attr(self, a: Attr | None, asked_at: float) -> None:
        """Keep attrs from the reply to one of our calls made at `asked_at` (monotonic): the
        kernel drops its copy when it knows something changed locally (a directory after
        create/unlink in it; a file's atime after every read) and asks again; the server's
        answer would be these same attrs, so getattr gives them without a call for what is
        left of attr_timeout. Whatever else this mount changes drops or refreshes them."""
        self.inodes.note_attr(a, asked_at)

    def _cached_attr(self, ino: int) -> pyfuse3.EntryAttributes | None:
        if self._recalled_fresh:
            with self._recalled_lock:
                marked = self._recalled_fresh.pop(ino, None)
            if marked is not None:
                self.inodes.drop_fresh(ino)
                return None
        hit = self.inodes.fresh_attr(ino)
        if hit is None:
            return None
        e = self._entry(hit[0])
        e.attr_timeout = min(e.attr_timeout, hit[1])   # no longer than from the reply's time
        return e

    async def _forget_remote(self, ino: int) -> None:
        """The server drops an nlink-0 inode on Forget (a linked one is left alone)."""
        try:
            await self._call(self.fs.forget, ino)
        except Exception as exc:  # noqa: BLE001 - GC collects orphans if this fails
            log.info("forget %d: %s", ino, exc)

    # --- lookups and attributes -------------------------------------------------------------
    @_errors()
    async def lookup(self, parent_inode: pyfuse3.InodeT, name: bytes,
                     ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        _check_name(name)
        self.requests["lookup"] += 1
        if parent_inode == ROOT_INO and name == SYN_NAME:
            a = self.synthetic.root_entry()
        elif is_synthetic(parent_inode):
            a = await self.synthetic.lookup(parent_inode, name)
        else:
            mark = self.leases.recalls()
            hit = self.leases.lookup(parent_inode, name)
            under = None
            if hit is None and self.dirops is not None:
                hit = self.dirops.made_in(parent_inode, name)
                under = parent_inode if hit is not None else None
            if hit is None and self._negatives.get(parent_inode, 0) >= NEGATIVES_BEFORE_LISTING:
                hit = await self._list_whole(parent_inode, name)
            if hit is None:
                try:
                    hit = await self._call(self._lookup_sync, parent_inode, name)
                except NotFound:
                    if self.leases.lookup(parent_inode, name) is not NEGATIVE:
                        raise           # not leased: the kernel asks again next time
                    hit = NEGATIVE
                else:
                    leased = self.leases.lookup(parent_inode, name)
                    if not (isinstance(leased, Attr) and leased.ino == hit.ino):
                        self.inodes.remember_lookup(hit.ino)
                        self.inodes.saw_in(hit, parent_inode)
                        return self._entry(hit)
            if hit is NEGATIVE:
                # a negative entry the kernel keeps while the lease lasts (st_ino 0)
                if self._lease_timeout() is None:
                    raise pyfuse3.FUSEError(errno.ENOENT)
                neg = pyfuse3.EntryAttributes()
                neg.st_ino = cast(pyfuse3.InodeT, 0)
                return self._long(neg, parent_inode, name, None, mark)
            a = hit
            self.inodes.remember_lookup(a.ino)
            self.inodes.saw_in(a, parent_inode)
            return self._long(self._entry(a), parent_inode, name, under, mark)
        self.inodes.remember_lookup(a.ino)
        self.inodes.saw_in(a, parent_inode)
        return self._entry(a)

    async def forget(self, inode_list: Sequence[tuple[pyfuse3.InodeT, int]]) -> None:
        for ino, n in inode_list:
            if self.inodes.forget(ino, n) and is_synthetic(ino):
                self.synthetic.forget(ino)

    @_errors()
    async def getattr(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self.requests["getattr"] += 1
        if is_synthetic(inode):
            return self._entry(await self.synthetic.getattr(inode))
        cached = self._cached_attr(inode)
        if cached is not None:
            return cached
        mark = self.leases.recalls()
        leased = self.leases.attr(inode)
        under = None
        if leased is None and self.dirops is not None:
            m = self.dirops.made(inode)         # created here, its directory held
            leased, under = (m[2], m[0]) if m is not None else (None, None)
        if leased is not None:
            return self._long(self._entry(leased), None, None, under, mark)
        st = self.inodes.state(inode)
        try:
            a = await self._call(self._getattr_sync, inode)
        except Exception as exc:
            if st is not None:   # open here (maybe unlinked and forgotten): what we know
                return self._entry(st.attr)
            _stale_if_gone(exc)
            raise
        if self.leases.attr(inode) is not None:     # the reply was leased
            return self._long(self._entry(a), None, None, None, mark)
        return self._entry(a)

    @_errors()
    async def setattr(self, inode: pyfuse3.InodeT, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: pyfuse3.FileHandleT | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        if is_synthetic(inode) or self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        self.inodes.drop_fresh(inode)
        bits = 0
        kw: dict[str, int] = {}
        if fields.update_mode:
            bits |= SET_MODE
            kw["mode"] = attr.st_mode & 0o7777
        if fields.update_uid:
            bits |= SET_UID
            kw["uid"] = attr.st_uid
        if fields.update_gid:
            bits |= SET_GID
            kw["gid"] = attr.st_gid
        if fields.update_size:
            bits |= SET_SIZE
            kw["size"] = attr.st_size
        if fields.update_atime:
            bits |= SET_ATIME
            kw["atime_ns"] = attr.st_atime_ns
        if fields.update_mtime:
            bits |= SET_MTIME
            kw["mtime_ns"] = attr.st_mtime_ns
        if fields.update_ctime:
            bits |= SET_CTIME
            kw["ctime_ns"] = attr.st_ctime_ns
        if bits & SET_SIZE:
            await self.reader.fence(inode)    # no pushed page may land past the new size
        st = self.inodes.state(inode)
        if st is not None and st.is_dirty() and bits & (SET_SIZE | SET_MTIME | SET_ATIME):
            if not bits & SET_SIZE and self.dirops is not None and self.dirops.unborn(inode):
                # tar's utimens before its close: folded into the CreateFile, whose commit
                # then stores this mtime (a write after it marks a new one, as it should)
                if bits & SET_MTIME:
                    st.mtime_ns = kw["mtime_ns"]
            else:
                # Commit first: a later commit must not undo a truncate or a preserved mtime.
                await self._commit(st)
        if not bits:
            # chown(f, -1, -1) and the like: the kernel asks for a change of nothing, which
            # still marks ctime for update (Linux's notify_change with ATTR_CTIME only).
            bits = SET_CTIME
            kw["ctime_ns"] = time.time_ns()
        t0 = time.monotonic()
        local = None if bits & SET_SIZE else self._setattr_local(inode, bits, kw, st)
        if local is not None:
            if st is not None:
                st.attr = local
            self._note_attr(local, t0)
            if self._dirops_wake is not None:
                self._dirops_wake.set()     # queued: sent within the interval
            return self._entry(local)
        try:
            a: Attr = await self._call(self.fs.setattr, inode, bits, **kw)
        finally:
            if bits & SET_SIZE:
                self._changed(inode)
            else:
                # a directory's chmod or utimens (tar's, at the end) leaves its listing
                self.leases.drop_attr(inode)
        self._note_attr(a, t0)
        if st is not None:
            st.attr = a
            if bits & SET_SIZE:
                await self._reload(st)
        if bits & SET_SIZE:
            self.inodes.set_seen_gen(inode, a.generation)
        return self._entry(a)

    def _setattr_local(self, ino: int, bits: int, kw: dict[str, int], st: FileState | None
                       ) -> Attr | None:
        """Answer an attribute change (no size) without a call (dirops_queue.py): of a file
        this mount created in a directory it holds exclusively, folded into its CreateFile
        if that is not sent yet, else queued with the directory's unlinks (tar's chown,
        chmod and utimens after each close). The server is told our ctime, so what it stores
        is what we answered. None: make the call."""
        q = self.dirops
        if q is None:
            return None
        if q.unborn(ino):
            cur = st.attr if st is not None else None
        else:
            m = q.made(ino)
            cur = m[2] if m is not None else None
        if cur is None or not stat.S_ISREG(cur.mode):
            return None
        attrs = dict(kw, fields=bits | SET_CTIME)
        attrs.setdefault("ctime_ns", time.time_ns())
        a = dataclasses.replace(
            cur,
            mode=stat.S_IFMT(cur.mode) | (kw["mode"] & 0o7777) if bits & SET_MODE else cur.mode,
            uid=kw["uid"] if bits & SET_UID else cur.uid,
            gid=kw["gid"] if bits & SET_GID else cur.gid,
            atime_ns=kw["atime_ns"] if bits & SET_ATIME else cur.atime_ns,
            mtime_ns=kw["mtime_ns"] if bits & SET_MTIME else cur.mtime_ns,
            ctime_ns=attrs["ctime_ns"])
        mark = self.leases.recalls()
        if q.try_setattr(ino, attrs, a) is None:
            return None
        self._changed(ino)          # a read lease's attrs of it are old now
        if not q.unborn(ino):
            # what the batch will store, answered here: the directory's kept listing shows
            # it (tar's utimens after each file) and stays local
            self.leases.own_attr(mark, a)
        return a

    def _still_trusted(self, st: FileState) -> bool:
        """Whether a state held open here may answer another open without a call: read under
        a lease that no reset has lost since (a recall is take_changed's business), or made
        here under the directory's exclusive lease that still holds."""
        if st.lease_mark is not None and st.lease_mark == self.leases.held_mark():
            return True
        return st.made_here and self.dirops is not None and self.dirops.made(st.ino) is not None

    async def _reload(self, st: FileState) -> None:
        """Refresh a clean state's chunk map (after a truncate, or another client's change),
        keeping it in the lease cache when the reply was leased (st.lease_mark says so)."""
        t0 = time.monotonic()
        mark = self.leases.held_mark()
        a, cs, refs, _ = await self._call(self._open_map_sync, st.ino, 0, None)
        self._note_attr(a, t0)
        st.reload(a, cs, refs)
        st.made_here = False
        st.lease_mark = mark if self.leases.has_map(st.ino, a.generation) else None

    # --- directory entries ------------------------------------------------------------------
    @_errors()
    async def mkdir(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable(parent_inode, name)
        t0 = time.monotonic()
        a, pa = await self._add_entry(parent_inode, name, self._mkdir_sync, parent_inode, name,
                                      mode & 0o7777, ctx.uid, ctx.gid)
        self._note_attr(pa, t0)
        self.inodes.remember_lookup(a.ino)
        self.inodes.saw_in(a, parent_inode)
        return self._entry(a)

    @_errors()
    async def mknod(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable(parent_inode, name)
        t0 = time.monotonic()
        a, pa = await self._add_entry(parent_inode, name, self.fs.create_entry, parent_inode,
                                      name, mode, ctx.uid, ctx.gid, rdev)
        self._note_attr(pa, t0)
        self.inodes.remember_lookup(a.ino)
        return self._entry(a)

    @_errors()
    async def symlink(self, parent_inode: pyfuse3.InodeT, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable(parent_inode, name)
        t0 = time.monotonic()
        a, pa = await self._add_entry(parent_inode, name, self.fs.symlink_entry, parent_inode,
                                      name, target, ctx.uid, ctx.gid)
        self._note_attr(pa, t0)
        self.inodes.remember_lookup(a.ino)
        return self._entry(a)

    @_errors()
    async def readlink(self, inode: pyfuse3.InodeT, ctx: pyfuse3.RequestContext) -> bytes:
        if is_synthetic(inode):
            return await self.synthetic.readlink(inode)
        return cast(bytes, await self._call(self.fs.readlink, inode))

    @_errors()
    async def link(self, inode: pyfuse3.InodeT, new_parent_inode: pyfuse3.InodeT,
                   new_name: bytes, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        self._check_writable(new_parent_inode, new_name)
        if is_synthetic(inode):
            raise pyfuse3.FUSEError(errno.EXDEV)
        t0 = time.monotonic()
        try:
            a, pa = await self._add_entry(new_parent_inode, new_name, self.fs.link_entry,
                                          inode, new_parent_inode, new_name)
        finally:
            self._changed(inode)
        self._note_attr(pa, t0)
        self._note_attr(a, t0)
        self.inodes.remember_lookup(a.ino)
        return self._entry(a)

    def _check_writable(self, parent: int, name: bytes) -> None:
        _check_name(name)
        if self.read_only or is_synthetic(parent):
            raise pyfuse3.FUSEError(errno.EROFS)
        if parent == ROOT_INO and name == SYN_NAME:
            raise pyfuse3.FUSEError(errno.EEXIST)

    def _nothing_open(self) -> bool:
        """No file of this mount has an open handle: none can be unlinked-but-open here, so
        the server may drop a removed inode in the removing call itself."""
        return not any(st.handles > 0 for st in self.inodes.states())

    async def _after_unlink(self, a: Attr | None, forgotten: bool) -> None:
        """`a` (its attrs after the call) lost one link: if that was its last, drop it now or
        when its last handle closes. `forgotten`: the server already dropped it."""
        if a is None:
            return
        self.inodes.drop_fresh(a.ino)
        if not stat.S_ISDIR(a.mode) and a.nlink > 0:
            return
        if stat.S_ISDIR(a.mode) and not forgotten and self.inodes.dir_open(a.ino):
            # fstat gives nlink 0 until the last releasedir; the server keeps it until then
            self.inodes.mark_dead_dir(a.ino)
            return
        st = self.inodes.state(a.ino)
        if st is not None and st.handles > 0:
            st.unlinked = True          # Forget at the last release
            return
        if st is not None:
            self.buffers.drop(st)
            self.inodes.drop_state(st)
        self.inodes.drop_seen_gen(a.ino)
        if not forgotten:
            await self._forget_remote(a.ino)

    async def _remove(self, parent: int, name: bytes, directory: bool) -> None:
        self._check_writable(parent, name)
        if not directory and await self._unlink_queued(parent, name):
            return
        # A removed directory may be one of the open ones (we do not know its inode before
        # the call): then the server must keep it, _after_unlink decides.
        forget = self._nothing_open() and not (directory and self.dirs)
        t0 = time.monotonic()
        victim = self._leased_ino(parent, name)
        mark = self.leases.recalls()
        try:
            r = await self._call(self.fs.remove, parent, name, directory=directory,
                                 forget=forget)
        except BaseException:
            self._changed(parent, victim)
            raise
        # the directory keeps its lease minus the name (lookups of the others stay local)
        self.leases.own_entry(mark, parent, name, None, r.parent)
        self._changed(victim, r.attr.ino if r.attr is not None else None)
        self._note_attr(r.parent, t0)
        await self._after_unlink(r.attr, forget)

    @_errors()
    async def unlink(self, parent_inode: pyfuse3.InodeT, name: bytes,
                     ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, directory=False)

    @_errors()
    async def rmdir(self, parent_inode: pyfuse3.InodeT, name: bytes,
                    ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, directory=True)

    @_errors()
    async def rename(self, parent_inode_old: pyfuse3.InodeT, name_old: bytes,
                     parent_inode_new: pyfuse3.InodeT, name_new: bytes, flags: int,
                     ctx: pyfuse3.RequestContext) -> None:
        self._check_writable(parent_inode_old, name_old)
        self._check_writable(parent_inode_new, name_new)
        forget = self._nothing_open() and not self.dirs   # the replaced one may be an open dir
        # what a rename changes: both directories, the moved inode (its ctime; a directory's
        # ".."), a replaced one. The rest of the lease cache stands (an atomic save -- write a
        # temporary file, rename it over the old one -- must not make every other cached
        # listing and file ask the server again); an inode we cannot name drops it all.
        moved = self.leases.lookup(parent_inode_old, name_old)
        target = self.leases.lookup(parent_inode_new, name_new)
        t0 = time.monotonic()
        named = [moved.ino if isinstance(moved, Attr) else None,
                 target.ino if isinstance(target, Attr) else None]
        try:
            r = await self._call(self.fs.rename_entry, parent_inode_old, name_old,
                                 parent_inode_new, name_new, flags, forget=forget)
        except _REFUSED:
            # the server refused it and changed nothing (a retried call that had applied
            # would answer its result): only what we knew of these names is in doubt
            self._changed(parent_inode_old, parent_inode_new, *named)
            raise
        except BaseException:
            self.leases.reset()         # applied or not, we cannot tell what moved
            raise
        if isinstance(moved, Attr) and (
                target is NEGATIVE or isinstance(target, Attr) or r.replaced is not None):
            self._changed(parent_inode_old, parent_inode_new, *named,
                          r.replaced.ino if r.replaced is not None else None)
        else:
            self.leases.reset()
        # a moved directory's ctime changed and we do not know its inode: forget them all
        self.inodes.clear_fresh()
        if parent_inode_old != parent_inode_new:
            # a directory may have moved (or two swapped): its ".." is unknown until the next
            # lookup or listing names it again (readdir then gives its own inode)
            self.inodes.moved_between(parent_inode_old, parent_inode_new)
        self._note_attr(r.parent, t0)
        self._note_attr(r.new_parent, t0)
        await self._after_unlink(r.replaced, forget)

    # --- directories ------------------------------------------------------------------------
    @_errors()
    async def opendir(self, inode: pyfuse3.InodeT,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.FileHandleT:
        fh = self._fh()
        self.dirs[fh] = _DirHandle(inode)
        self.inodes.dir_opened(inode)
        return cast(pyfuse3.FileHandleT, fh)

    @_errors()
    async def readdir(self, fh: pyfuse3.FileHandleT, start_id: int,
                      token: pyfuse3.ReaddirToken) -> None:
        dh = self.dirs[fh]
        # "." and ".." first (readdir(3), ls -a): offsets 1 and 2, no lookup reference
        if start_id < 1 and not pyfuse3.readdir_reply(token, b".", self._dot_entry(dh.ino), 1):
            return
        if start_id < 2 and not pyfuse3.readdir_reply(
                token, b"..", self._dot_entry(self.inodes.parent_of(dh.ino)), 2):
            return
        start = max(0, start_id - _DOTS)
        if is_synthetic(dh.ino):
            items = await self.synthetic.listdir(dh.ino)
            for i, (name, a) in enumerate(items[start:], start=start):
                if not pyfuse3.readdir_reply(token, name, self._entry(a), i + 1 + _DOTS):
                    return
                self.inodes.remember_lookup(a.ino)
                self.inodes.saw_in(a, dh.ino)
            return
        cookie = start
        if cookie == dh.end:
            # the kernel asks once more after the last entry to learn the end: known here
            # (the listing of this handle is at its end; a rewind starts from 0 again)
            return
        given: list[tuple[bytes, int]] = []     # entries handed out under the lease
        mark: tuple[int, int] | None = None
        try:
            while True:
                if dh.buf and dh.buf_cookie == cookie:
                    entries, eof, mark = dh.buf, dh.eof, dh.mark
                else:
                    entries, eof, mark = await self._dir_page(dh, cookie)
                if mark is not None and self.leases.recalls()[0] != mark[0]:
                    mark = None                 # a recall since: the mount's timeouts
                t = None if mark is None else self._lease_timeout()
                dh.buf = []
                for i, e in enumerate(entries):
                    if dh.ino == ROOT_INO and e.name == SYN_NAME:
                        continue
                    ent = self._entry(e.attr)
                    if t is not None:
                        ent.entry_timeout = ent.attr_timeout = t
                    if not pyfuse3.readdir_reply(token, e.name, ent, e.cookie + _DOTS):
                        dh.buf, dh.buf_cookie, dh.eof, dh.mark = entries[i:], cookie, eof, mark
                        return
                    if t is not None:
                        given.append((e.name, e.attr.ino))
                    self.inodes.remember_lookup(e.attr.ino)
                    self.inodes.saw_in(e.attr, dh.ino)
                    cookie = e.cookie
                if eof or not entries:
                    dh.end = cookie
                    return
                cookie = entries[-1].cookie
        finally:
            if given and mark is not None:
                self._long_listed(dh.ino, given, mark)

    async def _dir_page(self, dh: _DirHandle, cookie: int
                        ) -> tuple[list[Any], bool, tuple[int, int] | None]:
        """The page of dh's directory from `cookie` with the lease mark it was read under
        (None: not leased): the lease cache's, the one fetched ahead, or a call's. A page
        the server sent that is not the last has the next one fetched at once, so the
        server reads page k+1 while the kernel takes page k (they took turns: half of a
        cold listing's time, one of the two cores idle)."""
        ahead, dh.ahead = dh.ahead, None
        if ahead is not None and ahead.cookie == cookie:
            await ahead.done.wait()
            if ahead.page is not None:
                self._fetch_ahead(dh, ahead.page[0], ahead.page[1])
                return ahead.page
        page = await self._fetch_page(dh.ino, cookie)
        self._fetch_ahead(dh, page[0], page[1])
        return page

    async def _fetch_page(self, ino: int, cookie: int
                          ) -> tuple[list[Any], bool, tuple[int, int] | None]:
        mark: tuple[int, int] | None = self.leases.recalls()
        page = self.leases.readdir(ino, cookie)
        if page is None:
            page = await self._call(self._readdir_sync, ino, cookie)
            if self.leases.readdir(ino, cookie) is None:
                mark = None         # the reply was not leased
        return page[0], page[1], mark

    def _fetch_ahead(self, dh: _DirHandle, entries: list[Any], eof: bool) -> None:
        if eof or not entries or self._nursery is None:
            return
        cookie = entries[-1].cookie
        if self.leases.readdir(dh.ino, cookie) is not None:
            return                  # the lease cache has it
        ahead = dh.ahead = _PageAhead(cookie)

        async def fetch() -> None:
            try:
                ahead.page = await self._fetch_page(dh.ino, cookie)
            except Exception as exc:  # noqa: BLE001 - the reader asks again and reports it
                log.debug("listing %d ahead from %d: %s", dh.ino, cookie, exc)
            finally:
                ahead.done.set()

        self._nursery.start_soon(fetch)

    async def releasedir(self, fh: pyfuse3.FileHandleT) -> None:
        dh = self.dirs.pop(fh, None)
        if dh is not None and self.inodes.dir_closed(dh.ino):
            await self._forget_remote(dh.ino)

    async def fsyncdir(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        # metadata calls are durable on the server when they return; queued unlinks go now
        dh = self.dirs.get(fh)
        if dh is not None and self.dirops is not None and self.dirops.pending(dh.ino):
            await self._call(self.dirops.flush, dh.ino)

    # --- files ------------------------------------------------------------------------------
    async def _load_state(self, ino: int, want_data: bool = False) -> tuple[FileState, bool]:
        """The file's state for a new handle, and whether the kernel may keep its page cache.
        want_data: the handle will read, so a small file's bytes may come with the map."""
        # One state load at a time per inode: two opens racing must share one FileState, or
        # each would buffer and commit its own view of the slots and undo the other's writes.
        lock = self.inodes.load_lock(ino)
        try:
            async with lock:
                return await self._load_state_locked(ino, want_data)
        finally:
            self.inodes.release_load_lock(ino, lock)

    async def _load_state_locked(self, ino: int, want_data: bool = False
                                 ) -> tuple[FileState, bool]:
        st = self.inodes.state(ino)
        if st is not None and (st.handles > 0 or st.is_dirty()):
            if st.is_dirty():
                return st, True
            changed = self.leases.take_changed(ino)
            if not changed and self._still_trusted(st):
                return st, True
            # Held open here (or its last release not yet arrived: the kernel sends RELEASE
            # after close returns) while another client changed it, which recalled our
            # lease -- or without a lease that would have told us (a grant refused, or the
            # session reset since): an open after such a change must see it (close-to-open).
            gen = st.generation
            try:
                await self._reload(st)
            except Exception as exc:
                _stale_if_gone(exc)
                raise
            self.inodes.set_seen_gen(ino, st.generation)
            self._kernel_catch_up(st.attr)
            return st, st.generation == gen
        mark = self.leases.held_mark()
        t0 = time.monotonic()
        self.leases.take_changed(ino)      # what is loaded now is newer than that recall
        hit = self.leases.chunk_map(ino)
        if hit is not None:
            # leased: no change since it was read (another mount's would have recalled it)
            (a, cs, refs), data = hit, b""
        else:
            try:
                got = await self._batched_open(ino) if want_data else None
                a, cs, refs, data = got if got is not None else await self._call(
                    self._open_map_sync, ino, INLINE_MAX if want_data else 0,
                    self.inodes.seen_gen(ino))
            except Exception as exc:
                _stale_if_gone(exc)
                raise
            self._note_attr(a, t0)
        if data and len(refs) == 1 and refs[0].index == 0 and len(data) == refs[0].length:
            # content-addressed: these bytes stay right for this chunk id whatever happens next
            self.cache.put(refs[0].chunk_id, 0, data)
        if a.nlink == 0 and self.inodes.state(ino) is None:
            # Reached through a dentry the kernel cached before another mount replaced or
            # removed the name: ESTALE makes the kernel look the name up again (close-to-open).
            raise pyfuse3.FUSEError(errno.ESTALE)
        if cs:
            self.chunk_size = self.chunk_size or cs
        st = FileState(ino, cs or self.chunk_size or (1 << 20), a, refs)
        st.lease_mark = mark if self.leases.has_map(ino, a.generation) else None
        self.inodes.set_state(st)
        # keep_cache when the kernel's pages are of this generation -- or when it can hold
        # none: pages come only through an open here, which records the generation, and
        # inode numbers are never reused. (Without keep_cache the kernel also drops the
        # attributes and asks for them again: a round trip per first open.)
        seen = self.inodes.seen_gen(ino)
        keep = seen is None or seen == a.generation
        self.inodes.set_seen_gen(ino, a.generation)
        self._kernel_catch_up(a)
        return st, keep

    def _kernel_catch_up(self, a: Attr) -> None:
        """Another mount changed the file since the kernel cached its attributes: make it
        fetch them again, or reads would stop at the old size (close-to-open)."""
        kernel = self.inodes.kernel_gen(a.ino)
        if kernel is not None and kernel != a.generation:
            self.inodes.kernel_sees(a)
            try:
                pyfuse3.invalidate_inode(cast(pyfuse3.InodeT, a.ino), attr_only=True)
            except OSError as exc:
                log.debug("invalidate_inode %d: %s", a.ino, exc)

    @_errors()
    async def open(self, inode: pyfuse3.InodeT, flags: int,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        writable = bool(flags & (os.O_WRONLY | os.O_RDWR))
        if is_synthetic(inode):
            if writable:
                raise pyfuse3.FUSEError(errno.EROFS)
            await self.synthetic.open(inode)
            fh = self._fh()
            self.handles[fh] = _Handle(inode, None, synthetic=True)
            return _file_info(fh, True, writable)
        if self.read_only and writable:
            raise pyfuse3.FUSEError(errno.EROFS)
        st, keep = await self._load_state(
            inode, want_data=not flags & (os.O_WRONLY | os.O_TRUNC))
        if flags & os.O_TRUNC:
            # libfuse enables atomic O_TRUNC: the truncation arrives here, not as a setattr.
            if st.is_dirty():
                await self._commit(st)
            try:
                a = await self._call(self.fs.setattr, inode, SET_SIZE, size=0)
            finally:
                self._changed(inode)
            st.attr = a
            await self._reload(st)
            self.inodes.set_seen_gen(inode, st.generation)
            keep = False
        fh = self._fh()
        if writable:                      # no page push while it may write (page_push.py)
            await self.reader.writer_open(inode, fh)
        elif not keep:
            await self.reader.fence(inode)    # pushed pages of the old content land first
        st.handles += 1
        self.handles[fh] = _Handle(inode, st, self.readahead_chunks)
        self.reader.opened(inode)         # a fill stopping after the last close runs on
        if not writable:
            self.prefetch.opened(inode)
        return _file_info(fh, keep, writable)

    @_errors()
    async def create(self, parent_inode: pyfuse3.InodeT, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext
                     ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        self._check_writable(parent_inode, name)
        t0 = time.monotonic()
        mark = self.leases.recalls()
        local = self._create_unborn(parent_inode, name, mode, ctx)
        a, pa = local if local is not None else await self._add_entry(
            parent_inode, name, self.fs.create_entry, parent_inode, name, mode, ctx.uid, ctx.gid)
        self._note_attr(pa, t0)
        self._note_attr(a, t0)
        if not self.chunk_size:
            _, cs, _ = await self._call(self.fs.get_chunk_map, a.ino)
            self.chunk_size = cs or (1 << 20)
        st = FileState(a.ino, self.chunk_size, a, [])
        # Made here under the directory's exclusive lease, the file is ours until a recall of
        # the directory (DirOps.made says so). Made by a Create call, it is not leased to us
        # (Create grants none on the new inode): another open while it is held asks again.
        st.made_here = local is not None
        self.inodes.set_state(st)
        self.inodes.set_seen_gen(a.ino, a.generation)
        st.handles += 1
        fh = self._fh()
        await self.reader.writer_open(a.ino, fh)
        self.handles[fh] = _Handle(a.ino, st, self.readahead_chunks)
        self.inodes.remember_lookup(a.ino)
        e = self._entry(a)
        if local is not None:       # in a directory held exclusively: the kernel keeps it
            e = self._long(e, parent_inode, name, parent_inode, mark)
        return pyfuse3.FileInfo(fh=cast(pyfuse3.FileHandleT, fh)), e

    @_errors()
    async def read(self, fh: pyfuse3.FileHandleT, off: int, size: int) -> bytes:
        h = self.handles[fh]
        if h.synthetic:
            return await self.synthetic.read(h.ino, off, size)
        st = h.state
        assert st is not None
        end = min(off + size, st.size)
        if off >= end:
            return b""
        if off == 0 and self._nursery is not None:
            # a cold read of a small file of a listed directory may start its prefetch; a
            # read of a chunk the prefetch plans waits for its call instead of its own
            self.prefetch.cold_read(self._nursery, h.ino, st)
            ref = st.refs.get(0)
            if ref is not None:
                await self.prefetch.wait_planned(ref.chunk_id)
        seq = h.window.observe(off, size)
        cs = st.chunk_size
        push = None if seq else self.reader.target(st)   # taken before any await
        parts = [await st.read_slot(idx, o, n, seq, self.reader.read)
                 for idx, o, n in split_range(off, end - off, cs)]
        if seq and self._nursery is not None:
            ahead = h.window.advance(end, st.size, cs)
            if ahead:
                self.reader.prefetch(self._nursery, st.clean_refs(ahead))
            # slots behind the reader leave the memory cache (readahead.ChunkReader.consumed)
            self.reader.consumed(st, h.window.passed(off, end, cs, st.size))
        elif self._nursery is not None and h.window.wants_fill(st.size, self.reader.fill_budget()):
            # random access to a file that fits the cache: fetch all of it behind the reader
            self.reader.fill(self._nursery, h.ino, st.clean_refs(range(-(-st.size // cs))),
                             push if self.reader.fits(st.size) else None)
        if push is not None:
            self.reader.push_read(push, st, off, end)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @_errors()
    async def write(self, fh: pyfuse3.FileHandleT, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if h.synthetic or self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        st = h.state
        assert st is not None
        await self.buffers.write(st, off, buf)
        return len(buf)

    async def _commit(self, st: FileState, durable: bool = False,
                      ready: Callable[[int, tuple[Any, dict[str, Any]]],
                                      Awaitable[Attr | None]] | None = None) -> None:
        t0 = time.monotonic()
        mark = self.leases.recalls()
        try:
            a = await self.buffers.flush(st, durable=durable, ready=ready)
        finally:
            self._changed(st.ino)
        if a is not None:
            if self.dirops is not None and self.dirops.made(st.ino) is not None:
                # made here, in a directory held alone: its attrs stay the lease cache's, so
                # a listing of the directory (readdirplus names them) needs no call
                self.leases.own_attr(mark, a)
            self._note_attr(a, t0)
            self.inodes.set_seen_gen(st.ino, a.generation)
            self.inodes.kernel_sees(a)
            # The kernel may hold the times overlaid while the data was buffered (_entry):
            # the server's ctime is the commit's, so make it ask again (getattr then serves
            # the attrs just noted, without a call). attr_only: no page-cache lock taken.
            try:
                pyfuse3.invalidate_inode(cast(pyfuse3.InodeT, st.ino), attr_only=True)
            except OSError as exc:      # not mounted (any more): nothing cached to fix
                log.debug("invalidate_inode %d: %s", st.ino, exc)

    @_errors()
    async def flush(self, fh: pyfuse3.FileHandleT) -> None:
        self.requests["flush"] += 1
        h = self.handles.get(fh)
        if h is None or h.state is None:
            return
        if not h.state.is_dirty():
            await self._born(h.ino)      # close returns once the file is on the server
            return
        if await self._commit_behind(h.state):
            return
        await self._commit(h.state)

    async def _commit_behind(self, st: FileState) -> bool:
        """--writeback: commit a small file made here (unborn, its bytes inline) in the
        background, and return once its CreateFile is queued (DirOps.queue_birth): from then
        on a recall, an fsync or any call that depends on it sends it with its data. An error
        before that is the close's; one after it is logged and the commit retried. False: not
        such a file, or WRITEBACK_MAX commits are under way already (commit it now)."""
        q = self.dirops
        if (not self.writeback or q is None or self._nursery is None
                or sum(self._behind.values()) >= WRITEBACK_MAX
                or self._behind_bytes + st.size > WRITEBACK_BYTES
                or st.size > self.buffers.inline_max or not q.unborn(st.ino)):
            return False
        queued = trio.Event()
        failed: list[BaseException] = []
        size = st.size

        async def ready(ino: int, commit: tuple[Any, dict[str, Any]]) -> Attr | None:
            if not q.queue_birth(ino, commit):
                return None             # born since: the close waits for its commit
            queued.set()
            # the next closes join its call meanwhile (fewer, larger calls); most are then
            # sent by another's call, and need no thread of their own
            await trio.sleep(BEHIND_GATHER)
            return q.sent_behind(ino)

        async def commit() -> None:
            try:
                await self._commit(st, ready=ready)
            except Exception as exc:  # noqa: BLE001 - the close's, or logged and retried
                if not queued.is_set():
                    failed.append(exc)
                else:
                    log.warning("commit of inode %d after its close failed (%s); kept, will "
                                "retry", st.ino, exc)
                    self._schedule_retry(st)
            finally:
                queued.set()
                self._behind_bytes -= size
                n = self._behind.pop(st.ino) - 1
                if n:
                    self._behind[st.ino] = n
            if not failed and st.ino not in self._behind:
                await self._maybe_drop(st)

        self._behind[st.ino] = self._behind.get(st.ino, 0) + 1
        self._behind_bytes += size
        self._nursery.start_soon(commit)
        await queued.wait()
        if failed:
            raise failed[0]
        return True

    @_errors()
    async def fsync(self, fh: pyfuse3.FileHandleT, datasync: bool) -> None:
        h = self.handles.get(fh)
        if h is None or h.state is None:
            return
        await self._commit(h.state, durable=True)
        await self._born(h.ino)

    async def release(self, fh: pyfuse3.FileHandleT) -> None:
        self.reader.released(fh)
        h = self.handles.pop(fh, None)
        if h is None or h.state is None:
            return
        st = h.state
        st.handles -= 1
        if st.handles == 0:
            self.reader.closed(st.ino)      # a fill of it stops pushing pages nobody reads
        if st.ino in self._behind:
            return                      # committed behind the close: that drops it after
        if st.is_dirty():
            try:
                await self._commit(st)
            except Exception as exc:  # noqa: BLE001 - nobody to report to: keep and retry
                log.warning("commit of inode %d at close failed (%s); kept, will retry",
                            st.ino, exc)
                self._schedule_retry(st)
                return
        await self._maybe_drop(st)

    async def _maybe_drop(self, st: FileState) -> None:
        if st.handles > 0 or st.is_dirty() or not self.inodes.drop_state(st):
            return
        if st.unlinked:
            self.inodes.drop_seen_gen(st.ino)
            await self._forget_remote(st.ino)

    def _schedule_retry(self, st: FileState) -> None:
        if self._nursery is None or not self.inodes.retry_started(st.ino):
            return
        self._nursery.start_soon(self._retry_commit, st)

    async def _retry_commit(self, st: FileState) -> None:
        delay = 1.0
        try:
            while st.is_dirty() and self.inodes.state(st.ino) is st:
                await trio.sleep(delay)
                try:
                    await self._commit(st)
                except Exception as exc:  # noqa: BLE001
                    log.info("retrying commit of inode %d: %s", st.ino, exc)
                    delay = min(delay * 2, 30.0)
            await self._maybe_drop(st)
        finally:
            self.inodes.retry_ended(st.ino)

    async def flush_all(self) -> list[tuple[int, BaseException]]:
        """Commit every buffered file, send the queued unlinks and the files created here
        and not on the server yet; returns the failures (inode, error)."""
        failed: list[tuple[int, BaseException]] = []
        for st in self.inodes.states():
            if st.is_dirty():
                try:
                    await self._commit(st)
                except Exception as exc:  # noqa: BLE001
                    failed.append((st.ino, exc))
        if self.dirops is not None:
            await self._call(self.dirops.flush_all)
        return failed

    async def shutdown(self) -> None:
        """After unmount: commit what is left, then forget unlinked inodes."""
        while self._behind:                 # --writeback commits under way (each bounded
            await trio.sleep(0.01)          # by the call's retry time)
        failed = await self.flush_all()
        for ino, exc in failed:
            log.error("inode %d: could not commit buffered data at unmount: %s", ino, exc)
        for st in self.inodes.states():
            if st.unlinked:
                await self._forget_remote(st.ino)
        for ino in self.inodes.dead_dirs():
            await self._forget_remote(ino)
        self.inodes.clear_dead_dirs()
        if self.fill_stats["fills"]:
            log.info("directory fills: %s", self.fill_stats)
        self.prefetch.stop()
        if self.prefetch.stats["runs"]:
            log.info("directory prefetches: %s", self.prefetch.stats)
        if self.dirops is not None:
            log.info("queued dirops: %s", self.dirops.stats)
        log.info("fuse requests: %s; kernel entries dropped: %s", self.requests,
                 self.kernel.stats)
        if self._session is not None:
            await trio.to_thread.run_sync(self._session.close)

    # --- extended attributes ----------------------------------------------------------------
    async def _is_regular(self, ino: int) -> bool:
        if self.inodes.state(ino) is not None:
            return True
        a = await self._call(self.fs.getattr, ino)
        return stat.S_ISREG(a.mode)

    @_errors(xattr=True)
    async def getxattr(self, inode: pyfuse3.InodeT, name: bytes,
                       ctx: pyfuse3.RequestContext) -> bytes:
        if is_synthetic(inode) or name.startswith(_LOCAL_XATTR_PREFIXES):
            raise pyfuse3.FUSEError(errno.ENODATA)
        if name in AIFS_XATTRS:
            if not await self._is_regular(inode):
                raise pyfuse3.FUSEError(errno.ENODATA)
            st = self.inodes.state(inode)
            if st is not None and st.is_dirty():
                await self._commit(st)
            info = await self._call(self.fs.file_info, inode)
            key = name[len(b"user.aifs."):].decode()
            return str(getattr(info, key)).encode()
        return cast(bytes, await self._call(self.fs.getxattr, inode, name))

    @_errors()
    async def listxattr(self, inode: pyfuse3.InodeT,
                        ctx: pyfuse3.RequestContext) -> Sequence[bytes]:
        if is_synthetic(inode):
            return []
        names: list[bytes] = list(await self._call(self.fs.listxattr, inode))
        if await self._is_regular(inode):
            names.extend(n for n in AIFS_XATTRS if n not in names)
        return names

    @_errors(xattr=True)
    async def setxattr(self, inode: pyfuse3.InodeT, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if is_synthetic(inode) or self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if name.startswith(b"user.aifs."):
            raise pyfuse3.FUSEError(errno.EPERM)   # computed by the server, not settable
        if name.startswith(_LOCAL_XATTR_PREFIXES):
            # capabilities, security labels and ACLs are not stored (getxattr answers ENODATA
            # for them without asking the server): refuse, as a filesystem without them does
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        self.inodes.drop_fresh(inode)
        try:
            await self._call(self.fs.setxattr, inode, name, value, 0)
        finally:
            self._changed(inode)

    @_errors(xattr=True)
    async def removexattr(self, inode: pyfuse3.InodeT, name: bytes,
                          ctx: pyfuse3.RequestContext) -> None:
        if is_synthetic(inode) or self.read_only:
            raise pyfuse3.FUSEError(errno.EROFS)
        if name.startswith(b"user.aifs."):
            raise pyfuse3.FUSEError(errno.EPERM)
        self.inodes.drop_fresh(inode)
        try:
            await self._call(self.fs.removexattr, inode, name)
        finally:
            self._changed(inode)

    # --- filesystem -------------------------------------------------------------------------
    @_errors()
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = await self._call(self.fs.statfs)
        d = pyfuse3.StatvfsData()
        bsize = s.block_size or 4096
        d.f_bsize = bsize
        d.f_frsize = bsize
        d.f_blocks = s.blocks
        d.f_bfree = s.blocks_free
        d.f_bavail = s.blocks_avail
        d.f_files = s.files
        d.f_ffree = s.files_free
        d.f_favail = s.files_free
        d.f_namemax = s.name_max or NAME_MAX
        return d

    async def access(self, inode: pyfuse3.InodeT, mode: int,
                     ctx: pyfuse3.RequestContext) -> bool:
        return True   # default_permissions: the kernel checks modes itself


__all__ = ["AIFSOperations", "SYN_ROOT"]
