"""Local disk cache of decrypted chunk frames, sealed under a key only this mount holds.

Interface:
    DiskCache(root, capacity, *, max_pending=32 MiB, min_free_ratio=0.05)
        .open()                 make this mount's directory root/m-<random>/ (locked with
                                flock while we live), remove the directories of mounts that
                                are gone, start the writer thread
        .has(chunk_id, start, stop) -> bool      every 64 KiB frame of [start, stop) is here
        .read(chunk_id, start, stop) -> bytes | None   blocking (file I/O + AES-GCM); None is
                                a miss: absent, evicted meanwhile, or a frame that fails its
                                tag (a torn or altered entry: dropped, counted, never served)
        .read_many(ranges) -> [bytes | None]     read() of each (chunk_id, start, stop); whole
                                entries lying back to back in one pack (a directory's
                                samples, packed in listing order) are read with one pread
        .submit(chunk_id, start, data, whole=False)   queue a write (start frame-aligned, data
                                up to the chunk's end or whole frames; whole: the entire chunk,
                                which, up to PACK_ENTRY_MAX, goes into a pack); dropped when
                                the queue holds max_pending bytes: caching is best effort,
                                reads never wait
        .flush(timeout) -> bool                  wait until the queue is written (tests)
        .pending_bytes                           bytes queued for the writer
        .clear()                drop every entry
        .close()                stop the writer and remove this mount's directory
        .stats() -> dict
    default_cache_dir() -> str                   $XDG_CACHE_HOME/aifs or ~/.cache/aifs
    default_cache_size(cache_dir) -> int         min(10 GiB, 20% of the free space there)
    scan(root) -> list[dict]                     every mount directory under root, live or not,
                                                 with its size and its last stats (aifs cache)
    clear_dir(root) -> (removed_dirs, cleared_live)   remove dead mounts' directories; ask live
                                                 mounts to drop their entries

Why frames, sealed one by one: a chunk (1 MiB by default) is one file of fixed-size slots,
slot i = [nonce 12][length 4][ciphertext][tag 16][zeros up to SLOT, a multiple of 512]
holding plaintext frame i (64 KiB, the server's frame and the unit of a random read); slots are
written and read with O_DIRECT where the file system allows it (see SLOT, _read_slots). A
random 4 KiB read then reads and opens one 64 KiB slot, not the whole chunk, and random reads
fill a chunk's file frame by frame. The AAD
binds each frame to its chunk id, index and length, so a slot moved, truncated, zeroed by a torn
write or flipped on disk fails its tag. Entries never go stale: chunk ids are content hashes.

The key and the file-name key are random per DiskCache and live only in this process's memory:
a stolen disk or another local user learns nothing (names are keyed hashes, so they do not
even reveal which chunks are cached), and a restarted mount starts cold. Hence no on-disk
index and no fsync: after a crash the entries are unreadable anyway, and the next mount on
the same root removes them (the dead mount's flock is released). The index (chunk id ->
frame bit mask, LRU order, bytes) is in memory; eviction removes a chunk's file.

Whole chunks (up to PACK_ENTRY_MAX: a data set's small files, default 1 MiB chunks read
whole) share pack files (packs/<n>, PACK_BYTES each, numbers never reused): the same slots,
an entry's frames back to back from its `base` slot, appended through one open descriptor.
Why: a file per entry cost the mount a create (and later an unlink) per chunk, and creating
files on this machine's ext4 (no journal: each new inode is checked against recently deleted
ones) took 20-500 us of CPU each: 16 % of the mount's CPU in a cold epoch of 147 KiB samples,
5 % in a cold sequential read. A pack is evicted whole (when its oldest entry is the least
recently used one): its entries go together, FIFO, as a log-structured cache's segments do;
one packed entry dropped alone (damaged) leaves its bytes counted until its pack goes.

Thread-safe: the trio thread calls has/submit, worker threads call read, one writer thread
writes; the index is under one lock, file I/O is not.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import logging
import mmap
import os
import queue
import shutil
import struct
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aifsfs.fuse.chunk_cache import FRAME_SIZE

log = logging.getLogger("aifsfs.disk_cache")

_HDR = struct.Struct("<12sI")          # nonce, plaintext length
_TAG = 16
# Stride of the slots in an entry file: a slot rounded up to 512 bytes (the padding is
# zeros), so whole slots can be written with O_DIRECT from a page-aligned buffer. Why direct:
# a cold sequential read writes every fetched chunk here, and through the page cache that
# cost the mount as much CPU as a third of its read path (copying into the page cache,
# allocating and later writing back its pages); O_DIRECT costs about a third of that. Where
# the file system refuses O_DIRECT (tmpfs) or this alignment, writes are buffered.
_DIO_ALIGN = 512
SLOT = -(-(_HDR.size + FRAME_SIZE + _TAG) // _DIO_ALIGN) * _DIO_ALIGN
_BUF_SLOTS = 16                        # slots sealed and written per pwrite (1 MiB chunk)
_AAD = b"aifs-disk-cache-v1"
READ_BUFFERS = 4                       # chunk-sized read buffers kept between reads (~4 MiB)
_RUN_SLOTS = _BUF_SLOTS                # slots read_many reads with one pread (a kept buffer)
# Whole chunks up to this size go into packs (a data set's small files, a default 1 MiB
# chunk read whole); bigger ones, and chunks filled frame by frame, get a file of their own
# (evicted one by one, LRU)
PACK_ENTRY_MAX = 16 * FRAME_SIZE
# A pack's size: evicted whole, so a small part of the capacity
PACK_BYTES = 16 << 20
PACKS_DIR = "packs"
LOCK_NAME = "lock"
STATS_NAME = "stats.json"
CLEAR_NAME = "clear-request"
_TICK = 0.5                            # seconds between the writer's housekeeping passes


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "aifs")


def _free_bytes(path: str) -> tuple[int, int]:
    """(free bytes for us, total bytes) of the file system holding `path` (or its parent)."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    st = os.statvfs(p)
    return st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize


def default_cache_size(cache_dir: str) -> int:
    """A bounded fraction of the free space: min(10 GiB, 20% of what is free there)."""
    try:
        free, _ = _free_bytes(cache_dir)
    except OSError:
        return 0
    return min(10 << 30, free // 5)


class _Entry:
    __slots__ = ("name", "mask", "nbytes", "pack", "base")

    def __init__(self, name: str, pack: int = -1, base: int = 0) -> None:
        self.name = name
        self.mask = 0        # bit i: frame i is written and readable
        self.nbytes = 0      # bytes its own file's slots take (a packed entry: 0, its pack's)
        self.pack = pack     # the pack holding it, -1: a file of its own (`name`)
        self.base = base     # in its pack: the slot of its frame 0


class _Pack:
    __slots__ = ("chunk_ids", "nbytes")

    def __init__(self) -> None:
        self.chunk_ids: set[bytes] = set()    # its entries still in the index
        self.nbytes = 0                       # bytes written into it (for the capacity)


def _pread_file(path: str, flags: int, view: memoryview, offset: int) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | flags)
    try:
        return os.preadv(fd, [view], offset)
    finally:
        os.close(fd)


def _frames(start: int, stop: int) -> range:
    return range(start // FRAME_SIZE, (stop - 1) // FRAME_SIZE + 1)


def _bits(start: int, stop: int) -> int:
    r = _frames(start, stop)
    return ((1 << len(r)) - 1) << r.start


class DiskCache:
    def __init__(self, root: str, capacity: int, *, max_pending: int = 32 << 20,
                 min_free_ratio: float = 0.05) -> None:
        self.root = Path(root)
        self.capacity = max(0, capacity)
        self.max_pending = max_pending
        self.min_free_ratio = min_free_ratio
        self._aead = AESGCM(os.urandom(32))     # never written anywhere
        self._name_key = os.urandom(32)
        self._nonces = itertools.count(1)       # a counter: nonces unique under the key
        self._lock = threading.Lock()
        self._index: OrderedDict[bytes, _Entry] = OrderedDict()
        self.used_bytes = 0
        self._packs: dict[int, _Pack] = {}
        self._pack_no = 0                       # the pack being appended to (writer thread)
        self._pack_fd = -1
        self._pack_end = 0                      # slots written into it
        self._pack_bytes = max(2 * PACK_ENTRY_MAX // FRAME_SIZE * SLOT,
                               min(PACK_BYTES, self.capacity // 16))
        self._queue: queue.Queue[tuple[bytes, int, bytes, bool] | None] = queue.Queue()
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self._direct = hasattr(os, "O_DIRECT")   # until a write shows it does not work
        self._direct_reads = self._direct          # until a read shows it does not work
        self._read_bufs: list[memoryview] = []     # aligned read buffers kept (_give_buffer)
        self._buf = memoryview(mmap.mmap(-1, _BUF_SLOTS * SLOT))   # page-aligned
        self._lock_fd = -1
        self.dir = self.root / "unopened"
        self._dir_str = str(self.dir)
        self._low_space = False
        self._space_checked = 0.0
        self.counters = dict(hits=0, hit_bytes=0, misses=0, writes=0, written_bytes=0,
                             corrupt=0, dropped=0, evicted=0, errors=0)

    # --- life cycle -------------------------------------------------------------------------
    def open(self) -> DiskCache:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        _sweep_dead(self.root)
        self.dir = self.root / f"m-{os.urandom(6).hex()}"
        self._dir_str = str(self.dir)
        self.dir.mkdir(mode=0o700)
        self._lock_fd = os.open(self.dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        os.write(self._lock_fd, f"{os.getpid()}\n".encode())
        self._thread = threading.Thread(target=self._writer, name="aifs-disk-cache",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(30)
            self._thread = None
        self._close_pack()
        with self._lock:
            self._index.clear()
            self._packs.clear()
            self.used_bytes = 0
        shutil.rmtree(self.dir, ignore_errors=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
            self._lock_fd = -1

    # --- lookups ------------------------------------------------------------------------------
    def _path(self, name: str) -> str:
        # a string, not a Path: every read and write builds one (pathlib cost ~5% of the
        # mount's CPU in a disk-cache epoch)
        return os.path.join(self._dir_str, name[:2], name)

    def _pack_path(self, n: int) -> str:
        return os.path.join(self._dir_str, PACKS_DIR, str(n))

    def _where(self, e: _Entry) -> tuple[str, int]:
        """The file holding entry `e` and the slot of its frame 0 there."""
        return (self._path(e.name), 0) if e.pack < 0 else (self._pack_path(e.pack), e.base)

    def has(self, chunk_id: bytes, start: int, stop: int) -> bool:
        if stop <= start:
            return False
        with self._lock:
            e = self._index.get(chunk_id)
            if e is None:
                return False
            want = _bits(start, stop)
            return e.mask & want == want

    def read_many(self, ranges: list[tuple[bytes, int, int]]) -> list[bytes | None]:
        out: list[bytes | None] = [None] * len(ranges)
        run: list[tuple[int, _Entry, int]] = []        # (index, entry, frames), back to back
        run_slots = 0
        for i, (chunk_id, start, stop) in enumerate(ranges):
            e = self._index.get(chunk_id)
            n = len(_frames(start, stop)) if stop > start else 0
            whole = (e is not None and e.pack >= 0 and start == 0 and n
                     and e.mask == (1 << n) - 1)
            if whole and run and e is not None and (
                    e.pack != run[-1][1].pack or e.base != run[-1][1].base + run[-1][2]
                    or run_slots + n > _RUN_SLOTS):
                self._read_run(ranges, run, out)
                run, run_slots = [], 0
            if whole and e is not None:
                run.append((i, e, n))
                run_slots += n
            else:
                out[i] = self.read(chunk_id, start, stop)
        self._read_run(ranges, run, out)
        return out

    def _read_run(self, ranges: list[tuple[bytes, int, int]], run: list[tuple[int, _Entry, int]],
                  out: list[bytes | None]) -> None:
        """Entries back to back in one pack: one pread of their slots, each then opened as
        read() would (an entry evicted or damaged meanwhile: a miss, as there)."""
        if len(run) < 2:
            for i, _e, _n in run:
                out[i] = self.read(*ranges[i])
            return
        with self._lock:
            live = all(self._index.get(ranges[i][0]) is e for i, e, _n in run)
            if live:
                for i, _e, _n in run:
                    self._index.move_to_end(ranges[i][0])
        if not live:
            for i, _e, _n in run:
                out[i] = self.read(*ranges[i])
            return
        first = run[0][1]
        total = sum(n for _, _, n in run)
        buf = self._take_buffer(total * SLOT)
        try:
            try:
                got = self._pread(self._pack_path(first.pack), buf[:total * SLOT],
                                  first.base * SLOT)
            except OSError:
                got = 0         # the pack went meanwhile: each entry below is a miss
            at = 0
            for i, e, n in run:
                chunk_id, start, stop = ranges[i]
                try:
                    pieces = self._open_slots(buf[at * SLOT:], max(0, got - at * SLOT),
                                              chunk_id, 0, n)
                except (InvalidTag, ValueError) as exc:
                    self._failed(chunk_id, e, FileNotFoundError() if got == 0 else exc)
                    at += n
                    continue
                at += n
                data = pieces[0] if n == 1 else b"".join(pieces)
                with self._lock:
                    if len(data) < stop:     # the caller's range was wrong: a miss
                        self.counters["misses"] += 1
                        continue
                    self.counters["hits"] += 1
                    self.counters["hit_bytes"] += stop
                out[i] = data if len(data) == stop else data[:stop]
        finally:
            self._give_buffer(buf)

    def _failed(self, chunk_id: bytes, e: _Entry, exc: BaseException) -> None:
        """A read of entry `e` that failed: missing (cleared or evicted meanwhile) or torn /
        altered (dropped and counted: never served)."""
        corrupt = not isinstance(exc, FileNotFoundError)
        with self._lock:
            if corrupt:
                self.counters["corrupt"] += 1
            self.counters["misses"] += 1
            if self._index.get(chunk_id) is e:
                self._drop(chunk_id)
        if corrupt:
            log.warning("disk cache: dropped a damaged entry (%s)", type(exc).__name__)

    def read(self, chunk_id: bytes, start: int, stop: int) -> bytes | None:
        with self._lock:
            e = self._index.get(chunk_id)
            want = _bits(start, stop)
            if e is None or e.mask & want != want:
                self.counters["misses"] += 1
                return None
            self._index.move_to_end(chunk_id)
        frames = _frames(start, stop)
        path, base = self._where(e)
        try:
            pieces = self._read_slots(path, chunk_id, frames.start, len(frames), base)
        except (OSError, InvalidTag, ValueError) as exc:
            self._failed(chunk_id, e, exc)
            return None
        first = start - frames.start * FRAME_SIZE
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if first or len(data) != stop - start:
            if len(data) < first + (stop - start):
                with self._lock:
                    self.counters["misses"] += 1
                return None   # a frame shorter than asked: the caller's range was wrong
            data = data[first:first + stop - start]
        with self._lock:
            self.counters["hits"] += 1
            self.counters["hit_bytes"] += len(data)
        return data

    def _read_slots(self, path: str, chunk_id: bytes, first: int, count: int, base: int = 0
                    ) -> list[bytes]:
        """The plaintext of slots [first, first + count) of an entry file, read with O_DIRECT
        where the file system allows it into a page-aligned buffer. Direct: the plaintext
        goes on to the file's own page cache (pushed or replied), so a buffered read kept
        each byte twice in memory and paid the kernel's page-cache work for a copy nobody
        reads again (epoch 3 from this cache, 6 alternated pairs: the mount's CPU a sample
        ~670 -> ~590 us median, system time 200-285 -> 150-230)."""
        n = count * SLOT
        buf = self._take_buffer(n)
        view = buf[:n]
        try:
            got = self._pread(path, view, (base + first) * SLOT)
            return self._open_slots(view, got, chunk_id, first, count)
        finally:
            self._give_buffer(buf)

    def _open_slots(self, view: memoryview, got: int, chunk_id: bytes, first: int,
                    count: int) -> list[bytes]:
        """Frames [first, first + count) of a chunk from `view`, of which `got` bytes were
        read: a slot cut short (a torn file, a pack gone) fails as a short slot."""
        return [self._open_slot(view[k * SLOT:min(got, (k + 1) * SLOT)], chunk_id, first + k)
                for k in range(count)]

    def _pread(self, path: str, view: memoryview, offset: int) -> int:
        """Read into `view` at `offset`: with O_DIRECT until the file system refuses it
        (EINVAL at the open, or at the read: our alignment), buffered from then on."""
        if self._direct_reads:
            try:
                return _pread_file(path, os.O_DIRECT, view, offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._direct_reads = False
        return _pread_file(path, 0, view, offset)

    def _take_buffer(self, n: int) -> memoryview:
        with self._lock:
            if n <= _BUF_SLOTS * SLOT and self._read_bufs:
                return self._read_bufs.pop()
        return memoryview(mmap.mmap(-1, max(n, _BUF_SLOTS * SLOT)))

    def _give_buffer(self, buf: memoryview) -> None:
        """Keep up to READ_BUFFERS chunk-sized buffers for the next reads; the rest are
        unmapped once unreferenced (an exception's traceback may still hold a slice)."""
        with self._lock:
            if len(buf) == _BUF_SLOTS * SLOT and len(self._read_bufs) < READ_BUFFERS:
                self._read_bufs.append(buf)

    def _open_slot(self, slot: memoryview, chunk_id: bytes, index: int) -> bytes:
        if len(slot) < _HDR.size + _TAG:
            raise ValueError("short slot")
        nonce, n = _HDR.unpack_from(slot)
        if n > FRAME_SIZE or len(slot) < _HDR.size + n + _TAG:
            raise ValueError("bad slot length")
        aad = b"%s%s%s" % (_AAD, chunk_id, struct.pack("<II", index, n))
        return self._aead.decrypt(nonce, slot[_HDR.size:_HDR.size + n + _TAG], aad)

    # --- writes -------------------------------------------------------------------------------
    def submit(self, chunk_id: bytes, start: int, data: bytes, whole: bool = False) -> None:
        n = len(data)
        if n == 0 or self.capacity <= 0 or start % FRAME_SIZE or self._thread is None:
            return
        with self._lock:
            e = self._index.get(chunk_id)
            if e is not None:
                want = _bits(start, start + n)
                if e.mask & want == want:
                    return
            if self._pending + n > self.max_pending:
                self.counters["dropped"] += 1
                return
            self._pending += n
        self._queue.put((chunk_id, start, data, whole and start == 0))

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def flush(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _writer(self) -> None:
        last_stats: dict[str, Any] | None = None
        last_tick = 0.0
        while True:
            item: tuple[bytes, int, bytes, bool] | tuple[()] | None
            try:
                item = self._queue.get(timeout=_TICK)
            except queue.Empty:
                item = ()  # a housekeeping tick
            if item is None:
                self._write_stats()
                return
            if item:
                chunk_id, start, data, whole = item
                try:
                    if whole and len(data) <= PACK_ENTRY_MAX:
                        self._write_packed(chunk_id, data)
                    else:
                        self._write(chunk_id, start, data)
                except Exception:  # noqa: BLE001 - a failed write is a miss later, not an error
                    log.debug("disk cache write failed", exc_info=True)
                    with self._lock:
                        self.counters["errors"] += 1
                finally:
                    with self._idle:
                        self._pending -= len(data)
                        if not self._pending:
                            self._idle.notify_all()
                if not self._queue.empty() or time.monotonic() - last_tick < _TICK:
                    continue
            last_tick = time.monotonic()
            # idle: honour `aifs cache clear`, publish stats for `aifs cache stats`
            if (self.dir / CLEAR_NAME).exists():
                self.clear()
                with contextlib.suppress(OSError):
                    (self.dir / CLEAR_NAME).unlink()
            stats = self.stats()
            if stats != last_stats:
                self._write_stats(stats)
                last_stats = stats

    def _space_low(self) -> bool:
        now = time.monotonic()
        if now - self._space_checked > 1.0:
            self._space_checked = now
            try:
                free, total = _free_bytes(str(self.dir))
                self._low_space = free < total * self.min_free_ratio
            except OSError:
                self._low_space = True
        return self._low_space

    def _write(self, chunk_id: bytes, start: int, data: bytes) -> None:
        n = len(data)
        if n + SLOT > self.capacity or self._space_low():
            with self._lock:
                self.counters["dropped"] += 1
            return
        with self._lock:
            e = self._index.get(chunk_id)
            if e is None:
                name = hashlib.blake2b(chunk_id, key=self._name_key, digest_size=16).hexdigest()
                e = _Entry(name)
                self._index[chunk_id] = e
            self._index.move_to_end(chunk_id)
            if e.pack >= 0:
                return          # packed: whole already
            frames = [i for i in _frames(start, start + n) if not e.mask >> i & 1]
        if not frames:
            return
        path = self._path(e.name)
        try:
            fd = self._open_for_write(path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            fd = self._open_for_write(path)
        try:
            # runs of consecutive frames, sealed straight into the aligned buffer (no 64 KiB
            # ciphertext object per frame) and written with one pwrite each
            run: list[int] = []
            for i in frames:
                if run and (i != run[-1] + 1 or len(run) >= _BUF_SLOTS):
                    self._write_run(fd, path, chunk_id, start, data, run)
                    run = []
                run.append(i)
            self._write_run(fd, path, chunk_id, start, data, run)
        finally:
            os.close(fd)
        written = len(frames) * SLOT
        with self._lock:
            if self._index.get(chunk_id) is not e:
                return   # cleared or evicted while we wrote: the file is gone or orphaned
            for i in frames:
                e.mask |= 1 << i
            e.nbytes += written
            self.used_bytes += written
            self.counters["writes"] += 1
            self.counters["written_bytes"] += written
            self._evict()

    def _write_packed(self, chunk_id: bytes, data: bytes) -> None:
        """A whole small chunk appended to the current pack (writer thread)."""
        n = len(data)
        if n + SLOT > self.capacity or self._space_low():
            with self._lock:
                self.counters["dropped"] += 1
            return
        frames = list(_frames(0, n))
        with self._lock:
            known = chunk_id in self._index
            pack = self._packs.get(self._pack_no) if self._pack_fd >= 0 else None
        if known:       # packed already, or a file of its own: the frames it lacks go there
            self._write(chunk_id, 0, data)
            return
        if pack is None or (self._pack_end + len(frames)) * SLOT > self._pack_bytes:
            pack = self._new_pack()
        base = self._pack_end
        self._write_run(self._pack_fd, self._pack_path(self._pack_no), chunk_id, 0, data,
                        frames, base)
        self._pack_end += len(frames)
        written = len(frames) * SLOT
        with self._lock:
            if self._packs.get(self._pack_no) is not pack or chunk_id in self._index:
                return   # the pack was cleared or evicted while we wrote: nothing to serve
            e = _Entry("", self._pack_no, base)
            e.mask = (1 << len(frames)) - 1
            self._index[chunk_id] = e
            pack.chunk_ids.add(chunk_id)
            pack.nbytes += written
            self.used_bytes += written
            self.counters["writes"] += 1
            self.counters["written_bytes"] += written
            self._evict()

    def _new_pack(self) -> _Pack:
        """Start the next pack (writer thread); the one before is removed if all its entries
        are gone already."""
        old = self._pack_no
        self._close_pack()
        self._pack_no += 1
        path = self._pack_path(self._pack_no)
        try:
            self._pack_fd = self._open_for_write(path)
        except FileNotFoundError:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            self._pack_fd = self._open_for_write(path)
        self._pack_end = 0
        pack = _Pack()
        with self._lock:
            self._packs[self._pack_no] = pack
            done = self._packs.get(old)
            if done is not None and not done.chunk_ids:
                self._drop_pack(old)
        return pack

    def _close_pack(self) -> None:
        if self._pack_fd >= 0:
            os.close(self._pack_fd)
            self._pack_fd = -1

    def _evict(self) -> None:
        """Least recently used first, until within the capacity (lock held): a file entry
        alone, a packed one with its whole pack."""
        while self.used_bytes > self.capacity and len(self._index) > 1:
            chunk_id, e = next(iter(self._index.items()))
            if e.pack >= 0:
                self.counters["evicted"] += self._drop_pack(e.pack)
            else:
                self._drop(chunk_id)
                self.counters["evicted"] += 1

    def _open_for_write(self, path: str) -> int:
        flags = os.O_WRONLY | os.O_CREAT
        # A direct write waits for the device, which a cold read keeps busy: when the queue
        # backs up (it holds chunks in memory, and drops what does not fit), the page cache
        # absorbs the writes instead (measured: a cold 1 GiB read dropped 40 of 1,024 chunks
        # writing only directly, and the mount's peak RSS grew by the queue's 32 MiB).
        if self._direct and self._pending <= self.max_pending // 4:
            try:
                return os.open(path, flags | os.O_DIRECT, 0o600)
            except OSError as exc:
                if exc.errno != errno.EINVAL:   # EINVAL: no O_DIRECT here (tmpfs)
                    raise
                self._direct = False
        return os.open(path, flags, 0o600)

    def _write_run(self, fd: int, path: str, chunk_id: bytes, start: int, data: bytes,
                   run: list[int], base: int = 0) -> None:
        """Seal frames `run` (consecutive) into the writer's buffer and write them at their
        slots, counted from slot `base` of the file (if O_DIRECT turns out not to work, `fd`
        becomes a buffered descriptor)."""
        buf = self._buf
        view = memoryview(data)
        for k, i in enumerate(run):
            off = i * FRAME_SIZE - start
            piece = view[off:off + FRAME_SIZE]
            n = len(piece)
            nonce = next(self._nonces).to_bytes(12, "big")
            aad = b"%s%s%s" % (_AAD, chunk_id, struct.pack("<II", i, n))
            at = k * SLOT
            _HDR.pack_into(buf, at, nonce, n)
            at += _HDR.size
            self._aead.encrypt_into(nonce, piece, aad, buf[at:at + n + _TAG])
            at += n + _TAG
            buf[at:(k + 1) * SLOT] = bytes((k + 1) * SLOT - at)   # padding: zeros
        size = len(run) * SLOT
        try:
            done = os.pwrite(fd, buf[:size], (base + run[0]) * SLOT)
        except OSError as exc:
            if not self._direct or exc.errno != errno.EINVAL:
                raise
            # this file system refuses our alignment for O_DIRECT: buffered from now on
            # (the buffered descriptor takes the direct one's number: the caller closes it)
            self._direct = False
            plain = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
            try:
                os.dup2(plain, fd)
            finally:
                os.close(plain)
            done = os.pwrite(fd, buf[:size], (base + run[0]) * SLOT)
        if done != size:    # a full disk: the frames stay unmarked, a miss later
            raise OSError(errno.ENOSPC, "short write to the disk cache")

    def _drop(self, chunk_id: bytes) -> None:
        """Forget an entry and remove its file (lock held). A reader that already looked it
        up then fails to open it, or finds slots that fail their tag: a miss either way. A
        packed entry's bytes stay in its pack, which goes when its last entry has gone (and
        it is no longer the one written to)."""
        e = self._index.pop(chunk_id)
        if e.pack >= 0:
            pack = self._packs.get(e.pack)
            if pack is not None:
                pack.chunk_ids.discard(chunk_id)
                if not pack.chunk_ids and e.pack != self._pack_no:
                    self._drop_pack(e.pack)
            return
        self.used_bytes -= e.nbytes
        with contextlib.suppress(OSError):
            os.unlink(self._path(e.name))

    def _drop_pack(self, n: int) -> int:
        """Forget pack `n` and its entries and remove its file (lock held); how many entries
        went. Pack numbers are never reused: a reader that looked one of them up finds no
        file. The writer notices its current pack gone and starts another."""
        pack = self._packs.pop(n, None)
        if pack is None:
            return 0
        for chunk_id in pack.chunk_ids:
            self._index.pop(chunk_id, None)
        self.used_bytes -= pack.nbytes
        with contextlib.suppress(OSError):
            os.unlink(self._pack_path(n))
        return len(pack.chunk_ids)

    def clear(self) -> None:
        with self._lock:
            for cid in list(self._index):
                self._drop(cid)
            for n in list(self._packs):
                self._drop_pack(n)

    # --- stats ------------------------------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counters, pid=os.getpid(), capacity=self.capacity,
                        used_bytes=self.used_bytes, entries=len(self._index),
                        packs=len(self._packs),
                        pending_bytes=self._pending)

    def _write_stats(self, stats: dict[str, Any] | None = None) -> None:
        tmp = self.dir / (STATS_NAME + ".tmp")
        with contextlib.suppress(OSError):
            tmp.write_text(json.dumps(stats or self.stats()))
            os.replace(tmp, self.dir / STATS_NAME)


# --- the cache directory as a whole (aifs cache, and the sweep at open) -------------------------
def _owner_alive(d: Path) -> bool:
    """A mount holds an exclusive flock on its lock file while it lives."""
    try:
        fd = os.open(d / LOCK_NAME, os.O_RDWR)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _sweep_dead(root: Path) -> int:
    n = 0
    for d in root.glob("m-*"):
        if d.is_dir() and not _owner_alive(d):
            shutil.rmtree(d, ignore_errors=True)
            n += 1
    return n


def _du(d: Path) -> tuple[int, int]:
    files = size = 0
    for dirpath, _, names in os.walk(d):
        for nm in names:
            if nm in (LOCK_NAME, STATS_NAME, STATS_NAME + ".tmp", CLEAR_NAME):
                continue   # (the .tmp exists for a moment while the writer publishes stats)
            with contextlib.suppress(OSError):
                size += os.stat(os.path.join(dirpath, nm)).st_blocks * 512
                files += 1
    return files, size


def scan(root: str) -> list[dict[str, Any]]:
    out = []
    for d in sorted(Path(root).glob("m-*")):
        if not d.is_dir():
            continue
        files, size = _du(d)
        stats: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            stats = json.loads((d / STATS_NAME).read_text())
        out.append(dict(dir=str(d), live=_owner_alive(d), files=files, disk_bytes=size,
                        stats=stats))
    return out


def clear_dir(root: str, wait: float = 5.0) -> tuple[int, int]:
    """Remove what dead mounts left; ask live mounts to drop their entries (their writer
    sees the request within a tick). Returns (dead directories removed, live mounts cleared)."""
    rootp = Path(root)
    if not rootp.is_dir():
        return 0, 0
    removed = _sweep_dead(rootp)
    live = [d for d in rootp.glob("m-*") if d.is_dir()]
    for d in live:
        with contextlib.suppress(OSError):
            (d / CLEAR_NAME).write_text("")
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline and any((d / CLEAR_NAME).exists() for d in live):
        time.sleep(0.05)
    return removed, len(live)
