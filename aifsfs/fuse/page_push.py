"""Push decrypted file bytes into the kernel's page cache (FUSE notify_store), safely.

Interface:
    PagePusher(store=pyfuse3.notify_store, max_pending=32 MiB, mem_fraction=0.25)
        .start() / .close()          the pusher thread (close drops what is queued)
        .target(st) -> Target | None taken on the trio thread where a read or fill learns which
                                     chunks a clean file holds: None when the file has
                                     buffered changes or a handle open for writing here
        .target_for(ino, chunk_size, size) -> Target | None
                                     the same for a file not open here (a directory fill,
                                     dir_fill.py): None while a handle open for writing lives
        .offer(target, slot, data, chunk_id=None)   queue a push of `data` at slot `slot`'s
                                     start (offset in the slot: .offer_at); dropped when the
                                     queue is full or anything fenced the inode since the
                                     target was taken
        .offer_at(target, slot, offset, data, chunk_id=None) -> bool   queued (False: dropped)
        .queued(chunk_id, offset, length) -> bytes | None   bytes of a push not yet landed
                                     (offered with its chunk id): a read that reaches the
                                     mount before its pages did is served from them
        .budget() -> int             bytes a whole-file push (a fill) may take: `mem_fraction`
                                     of MemAvailable (read at most once a second)
        .fits(size) -> bool          0 < size <= budget()
        await .fence(ino)            after it returns, no push of what was read before lands:
                                     older targets are void and a push in flight has finished
        await .writer_open(ino, fh)  a handle that may write: fence, and no push while it lives
        .released(fh)
        .pending_bytes, .stats() -> dict

Why: a random reader (fio, memmap, a DataLoader) asks the kernel for 4 KiB, and with
read-ahead off (FADV_RANDOM) the kernel asks the mount for exactly that page: every further
page of the frame or chunk the mount already holds decrypted would cost another FUSE round
trip (~50-100 us of Python each, one core's worth at 16 readers). Pushing the frame, and a
random reader's whole file when the background fill fetches it, turns those into page-cache
hits. The page cache is reclaimable memory the kernel manages, as for any file read.

Safety: a push writes the kernel's pages and may extend its file size, so it must never carry
bytes older than what the kernel has: a push is made only from a target taken while the file
was clean and not writable here, and every event that changes what the pages should hold
fences the inode first (an open for writing, a truncate, an open that drops the page cache
because another client changed the file). The fence voids older targets and waits out the
one push in flight (a push may wait on a page locked by a read the trio thread answers:
the fence awaits asynchronously, never blocking that thread). Pushes run on one thread, off
the trio thread, for that reason too.
"""

from __future__ import annotations

import collections
import errno
import itertools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import trio

log = logging.getLogger("aifsfs.page_push")

# Fenced inodes remembered before the table is reset (which voids every older target).
_FENCES_MAX = 65536
_MEMINFO_TTL = 1.0


class Target(NamedTuple):
    ino: int
    token: int          # the pusher's counter when taken: pushes are void once a fence is newer
    chunk_size: int
    size: int           # file size then: nothing is pushed past it


def _mem_available() -> int:
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


class PagePusher:
    def __init__(self, store: Callable[[int, int, bytes], None] | None = None,
                 max_pending: int = 32 << 20, mem_fraction: float = 0.25) -> None:
        if store is None:
            import pyfuse3
            store = pyfuse3.notify_store
        self._store = store
        self.max_pending = max_pending
        self.mem_fraction = mem_fraction
        self._lock = threading.Lock()
        self._cv = threading.Condition(self._lock)
        self._counter = itertools.count(1)
        self._floor = 0                          # targets at or below it are void
        self._fenced: dict[int, int] = {}        # ino -> token of its last fence
        self._writers: dict[int, set[int]] = {}  # ino -> fh that may write
        self._writer_fh: dict[int, int] = {}     # fh -> ino
        self._queue: collections.deque[tuple[Target, int, bytes, bytes | None, int]] = \
            collections.deque()
        # chunk id -> [(offset in the chunk, bytes)] of the pushes queued or in flight
        self._by_chunk: dict[bytes, list[tuple[int, bytes]]] = {}
        self._pending = 0
        self._busy_ino = 0                       # ino of the push in flight (0: none)
        self._thread: threading.Thread | None = None
        self._stop = False
        self._mem = (0.0, 0)
        self.enabled = True
        self.counters = dict(pushes=0, pushed_bytes=0, dropped=0, void=0, errors=0,
                             served=0)   # reads answered by .queued

    def start(self) -> PagePusher:
        self._thread = threading.Thread(target=self._run, name="aifs-page-push", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._queue.clear()
            self._by_chunk.clear()
            self._pending = 0
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        log.info("page pushes: %s", self.stats())

    # --- targets and offers (trio thread) ---------------------------------------------------
    def _valid(self, t: Target) -> bool:
        return (t.token > self._floor and t.token > self._fenced.get(t.ino, 0)
                and t.ino not in self._writers)

    def target(self, st: Any) -> Target | None:
        return None if st.is_dirty() else self.target_for(st.ino, st.chunk_size, st.size)

    def target_for(self, ino: int, chunk_size: int, size: int) -> Target | None:
        if not self.enabled or self._thread is None or size <= 0:
            return None
        with self._lock:
            if ino in self._writers:
                return None
            return Target(ino, next(self._counter), chunk_size, size)

    def budget(self) -> int:
        now = time.monotonic()
        at, avail = self._mem
        if now - at > _MEMINFO_TTL:
            avail = _mem_available()
            self._mem = (now, avail)
        return int(avail * self.mem_fraction)

    def fits(self, size: int) -> bool:
        return 0 < size <= self.budget()

    def offer(self, t: Target, slot: int, data: bytes, chunk_id: bytes | None = None) -> None:
        self.offer_at(t, slot, 0, data, chunk_id)

    def offer_at(self, t: Target, slot: int, offset: int, data: bytes,
                 chunk_id: bytes | None = None) -> bool:
        pos = slot * t.chunk_size + offset
        n = min(len(data), t.size - pos)      # never past the size: a push would extend it
        if n <= 0 or pos % 4096:
            return False
        if n < len(data):
            data = data[:n]
        with self._cv:
            if not self._valid(t):
                self.counters["void"] += 1
                return False
            if self._pending + n > self.max_pending:
                self.counters["dropped"] += 1
                return False
            self._pending += n
            self._queue.append((t, pos, data, chunk_id, offset))
            if chunk_id is not None:
                self._by_chunk.setdefault(chunk_id, []).append((offset, data))
            self._cv.notify()
        return True

    def queued(self, chunk_id: bytes, offset: int, length: int) -> bytes | None:
        # Why: a reader may open a file between the offer of its pages and their landing (a
        # directory fill pushes files the readers are opening in another order); its read
        # then reaches the mount, which holds the bytes only here (a fill of a directory larger
        # than half the memory cache does not keep them there): without this, a server call.
        # Chunks are content-addressed, so these bytes are right for any file naming the
        # chunk, whatever fenced the push meanwhile.
        with self._lock:
            for start, data in self._by_chunk.get(chunk_id, ()):
                if start <= offset and offset + length <= start + len(data):
                    self.counters["served"] += 1
                    return data[offset - start:offset + length - start]
        return None

    def _landed(self, chunk_id: bytes | None, offset: int, data: bytes) -> None:
        """The push of these bytes is done (or void): no longer served by .queued."""
        if chunk_id is None:
            return
        with self._lock:
            held = self._by_chunk.get(chunk_id)
            if held is None:
                return
            for i, (start, d) in enumerate(held):
                if start == offset and d is data:
                    del held[i]
                    break
            if not held:
                del self._by_chunk[chunk_id]

    # --- fences (trio thread) -----------------------------------------------------------------
    async def fence(self, ino: int) -> None:
        with self._lock:
            if len(self._fenced) >= _FENCES_MAX:
                self._fenced.clear()
                self._floor = next(self._counter)   # voids every target taken so far
            self._fenced[ino] = next(self._counter)
        # the one push in flight may be of this inode: wait until it has landed (rarely more
        # than a millisecond; it may be waiting for a read this thread answers meanwhile)
        while self._busy_ino == ino:
            await trio.sleep(0.0005)

    async def writer_open(self, ino: int, fh: int) -> None:
        with self._lock:
            self._writers.setdefault(ino, set()).add(fh)
            self._writer_fh[fh] = ino
        await self.fence(ino)

    def released(self, fh: int) -> None:
        with self._lock:
            ino = self._writer_fh.pop(fh, None)
            if ino is None:
                return
            fhs = self._writers.get(ino)
            if fhs is not None:
                fhs.discard(fh)
                if not fhs:
                    del self._writers[ino]

    # --- the pusher thread --------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._queue and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                t, pos, data, chunk_id, offset = self._queue.popleft()
                self._pending -= len(data)
                if not self._valid(t):
                    self.counters["void"] += 1
                    void = True
                else:
                    void = False
                    self._busy_ino = t.ino
            if void:
                self._landed(chunk_id, offset, data)
                continue
            try:
                self._store(t.ino, pos, data)
                with self._lock:
                    self.counters["pushes"] += 1
                    self.counters["pushed_bytes"] += len(data)
            except OSError as exc:
                if exc.errno == errno.ENOSYS:
                    self.enabled = False
                    log.info("the kernel does not take notify_store: page pushes are off")
                elif exc.errno != errno.ENOENT:   # the kernel forgot the inode: nothing to do
                    log.debug("notify_store of inode %d: %s", t.ino, exc)
                with self._lock:
                    self.counters["errors"] += 1
            except Exception:  # noqa: BLE001 - a push is a hint: never stop the thread
                log.debug("notify_store failed", exc_info=True)
            finally:
                self._busy_ino = 0
                self._landed(chunk_id, offset, data)

    @property
    def pending_bytes(self) -> int:
        return self._pending

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return dict(self.counters, pending_bytes=self._pending,
                        writers=sum(len(v) for v in self._writers.values()))
