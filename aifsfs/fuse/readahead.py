"""Chunk reads for the mount: cache, in-flight de-duplication, frame-sized random reads and
sequential read-ahead.

Interface:
    ChunkReader(data, cache, limiter, readahead_chunks=8)     data: a DataClient (get_chunks)
        .disk                    a DiskCache (disk_cache.py) behind the memory cache, or None;
            the mount attaches it. A memory miss reads the disk before the server; what the
            server sends is queued for the disk (never waited for).
        await .read(ref, offset, length, whole=False) -> bytes
            bytes [offset, offset+length) of the chunk slot `ref` (a base.ChunkRef); bytes past
            ref.length (and a ref with no chunk id, a hole) read as zeros. `whole` fetches the
            whole stored chunk (sequential access), else only the 64 KiB frames the range covers.
        .prefetch(nursery, refs)   start whole-chunk fetches of `refs` in the background,
            PREFETCH_GROUP chunks per GetChunks call (they land in the cache; errors are
            dropped: the reader will fetch again and report).
    ReadPattern()                  per-handle sequential detector: .observe(offset, length) -> bool
    ReadWindow(chunks)             per-handle read-ahead window of `chunks` slots, doubling up
                                   to SEQ_WINDOW_MAX while the handle reads sequentially:
        .observe(offset, length) -> bool        sequential? (a handle that has shown random
            access again only after SEQ_RESUME_BYTES read back to back)
        .advance(end, file_size, chunk_size) -> range   the slots to prefetch after a
            sequential read ending at `end` (each slot once per handle; empty when none)
        .passed(offset, end, chunk_size, file_size) -> range   after a sequential read: the
            slots now behind the reader (read to their ends, or read ahead and gone past
            unread because the kernel held their pages), each once
        .wants_fill(file_size, budget) -> bool  after a random read: the handle has shown
            random access (RANDOM_READS non-sequential reads) and the file fits `budget`
            (ChunkReader.fill_budget()): time to fetch the whole file (asked again every
            RANDOM_RECHECK random reads, in case a fill was refused or cut short)
    ChunkReader.holds_in_memory(chunk_id, length) -> bool   the whole chunk is in the memory
                                                  cache or in flight
    await ChunkReader.fetch_many(refs, keep) -> [bytes | None]   whole chunks in ONE call,
        registered in flight first (a directory prefetch: dir_prefetch.py)
    ChunkReader.consumed(st, slots)   a sequential reader is past these slots of file state
        `st` (ReadWindow.passed): in a file larger than a quarter of the memory cache, their chunks
        leave the memory cache (the kernel's page cache holds what was read, the disk cache
        a copy; kept, they only pushed the memory cache and the mount's RSS to the full cache)
    ChunkReader.fill_budget() -> int   bytes a whole-file fill may take: half the disk cache,
        or a quarter of the memory cache when there is no disk cache; or, when more, what the
        page pusher may put in the page cache (PagePusher.budget())
    ChunkReader.fill(nursery, key, refs, target=None)   fetch these chunks (a file's) in the
        background, FILL_PARALLEL whole chunks at a time, into the disk cache (not the memory
        cache, which the reader's working set keeps); once per key at a time, FILL_FILES_MAX
        files at once. With a page_push.Target, each chunk (also one the disk cache holds) is
        pushed into the kernel's page cache as well: the reader's next pages cost no request.
    ChunkReader.closed(key)      the file's last handle closed: its fill pushes no more (and
        stops if it was for the page cache only; one for the disk cache stops
        FILL_AFTER_CLOSE seconds later)
    ChunkReader.opened(key)      the file is open again: its fill for the disk cache runs on
    ChunkReader.pages            a page_push.PagePusher, or None (the mount attaches it)
    ChunkReader.push_read(target, st, offset, end)   after a random read of [offset, end):
        push the whole frames it touched (held in the memory cache) into the page cache;
        a large file's frames then leave the memory cache
    ChunkReader.target(st), .fits(size), await .fence(ino), await .writer_open(ino, fh),
        .released(fh)            the PagePusher's (page_push.py), or nothing without one

Every gRPC call leaves the trio thread with `trio.to_thread.run_sync(..., limiter=limiter)`, so
many readers (DataLoader workers, parallel cp) overlap; a cache hit never leaves the trio thread.
Two readers wanting the same range share one fetch (the second awaits the first's event). Small
ranges (<= BATCH_RANGE_MAX) go out at once while fewer than SMALL_CALLS_MAX such calls are out;
past that they queue and leave together as one multi-range GetChunks call (per-call cost paid
once per batch). Whole-chunk fetches (sequential reads, read-ahead) always get their own call,
so the server reads and decrypts them in parallel. `.calls` counts calls, `.fetches` ranges.
"""

from __future__ import annotations

import errno
import math
import os
from collections.abc import Iterable
from typing import Any

import trio

from aifs_core.errors import MissingChunk, NotFound
from aifsfs.errors import DeadlineExceeded, ServerUnavailable
from aifsfs.fuse.chunk_cache import ChunkCache, frame_align, split_range
from aifsfs.fuse.disk_cache import DiskCache
from aifsfs.fuse.page_push import PagePusher, Target
from aifsfs.protocols import DataClient


class _Fetch:
    __slots__ = ("start", "end", "whole", "done", "data", "error")

    def __init__(self, start: int, end: int, whole: bool = False) -> None:
        self.start = start
        self.end = end
        self.whole = whole      # the entire chunk (the disk cache may pack it)
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class _FillRun:
    """A whole-file fill in progress (ChunkReader.fill): where it pushes (None: nowhere any
    more), whether it also fills the disk cache, and its cancel scope."""

    __slots__ = ("target", "to_disk", "cancel")

    def __init__(self, target: Target | None) -> None:
        self.target = target
        self.to_disk = True
        self.cancel = trio.CancelScope()


class _Req:
    """One small range waiting for a (possibly shared) GetChunks call."""

    __slots__ = ("rng", "done", "data", "error")

    def __init__(self, rng: tuple[bytes, int, int]) -> None:
        self.rng = rng
        self.done = trio.Event()
        self.data: bytes | None = None
        self.error: BaseException | None = None


class ReadPattern:
    """Sequential detection for one open file: a read that starts where the previous one ended
    (or at offset 0, where whole-file readers start) is sequential."""

    def __init__(self) -> None:
        self.next_offset = -1

    def observe(self, offset: int, length: int) -> bool:
        seq = offset == self.next_offset or offset == 0
        self.next_offset = offset + length
        return seq


# Ranges up to this size (random reads: one or a few 64 KiB frames) may share a call.
BATCH_RANGE_MAX = 256 << 10
# Small-range calls out at once before further small ranges wait to go together in one call:
# about what the server's cores can work on at once (fio 16 jobs, 2 cores: 1, 2 or 4 gave
# 700-980 IOPS against ~605 with no batching; the machine was shared, so +-30%).
SMALL_CALLS_MAX = max(2, os.cpu_count() or 2)
BATCH_RANGES_MAX = 32


# Read-ahead chunks fetched together in one GetChunks call (see ChunkReader._fetch_group).
PREFETCH_GROUP = 4


# Random reads a handle makes before the whole file is fetched in the background (a reader
# that seeks a few times, e.g. to a header and back, is not yet a random reader).
RANDOM_READS = 8
RANDOM_RECHECK = 256
# Whole-chunk fetches one fill keeps out at once, and files filled at once: enough to run at
# sequential speed, few enough to leave the random reads' own calls room.
FILL_PARALLEL = 4
FILL_FILES_MAX = 2
# Seconds a fill that also fills the disk cache goes on after its file's last close (unless
# the file is opened again): a few random reads of a big file, then a close, no longer cost
# the whole file's fetching in the background. AIFS_FILL_AFTER_CLOSE overrides it (tests: 0).
FILL_AFTER_CLOSE = float(os.environ.get("AIFS_FILL_AFTER_CLOSE", "5"))


# A handle that keeps reading sequentially has its window doubled at each new slot it
# reaches, up to this many slots: on a cold server disk each chunk is a random read of its own
# file (open + pread; ~130 MiB/s one at a time here, ~340 with 32), so a long sequential reader
# needs many chunks in flight. A short reader (a header, a small file) never gets past the
# first window. Bounded by memory: the window's chunks are in flight or in the memory cache;
# copying 4 GiB through a mount (scripts/memcheck.py), the mount's cold-read peak RSS was
# 235 MiB with 8 slots, 242 with 12, 257-263 with 16 and 289 with 32 (the budget is 256)
# while read chunks stayed in the memory cache; since they leave it (consumed()), 224-227
# with 12 and 208-209 with 32 (one run each, load 7-9), so the window is back to 32.
SEQ_WINDOW_MAX = 32
# A handle that has shown random access is sequential again only after a run of this many
# bytes read back to back. Why: a random reader's misses often fall next to each other (the
# page cache holds the rest of its file: the frames around each miss were pushed, a fill
# pushed most of the file), and each such pair started a whole-chunk read-ahead nobody read:
# in the bench's 16-job random phase ~200 pairs fetched ~830 MiB from the disk cache into the
# memory cache, which then stood full (64 MiB) at the mount's peak RSS. A real sequential
# reader asks the kernel's read-ahead window at a time (128 KiB and up): a few requests.
SEQ_RESUME_BYTES = 512 << 10


class ReadWindow:
    """Read-ahead for one open file: after a sequential read, the next `chunks` slots (the
    window doubling up to SEQ_WINDOW_MAX while the reader stays sequential, back to `chunks`
    after a random read), each started once; after enough random reads, a whole-file fill."""

    __slots__ = ("pattern", "chunks", "window", "prefetched", "random_reads", "last_slot",
                 "run_bytes", "behind")

    def __init__(self, chunks: int) -> None:
        self.pattern = ReadPattern()
        self.chunks = chunks
        self.window = chunks          # current depth: grows while the reader is sequential
        self.prefetched = -1          # highest slot read-ahead was started for
        self.random_reads = 0
        self.last_slot = -1           # slot the last sequential read ended in
        self.run_bytes = 0            # bytes of the current back-to-back run (random readers)
        self.behind = 0               # slots below this one a sequential read went past

    def observe(self, offset: int, length: int) -> bool:
        seq = self.pattern.observe(offset, length)
        if seq and self.random_reads >= RANDOM_READS:
            self.run_bytes += length
            if self.run_bytes >= SEQ_RESUME_BYTES:
                self.random_reads = 0     # a sequential reader now: judged afresh
                self.run_bytes = 0
            else:
                seq = False               # two misses side by side: still a random reader
        elif not seq:
            self.run_bytes = 0
        if not seq:
            self.random_reads += 1
            self.window = self.chunks
        return seq

    def passed(self, offset: int, end: int, chunk_size: int, file_size: int) -> range:
        """After a sequential read of [offset, end): the slots now behind the reader, read to
        their ends or gone past unread since the last call. Why the unread ones: read-ahead
        fetches slots whose pages the kernel may hold already (a file partly in the page
        cache: the kernel asks only for the rest), and such a slot, never read, stayed in the
        memory cache: a `cmp` of a 1 GiB file after the random phases left it full (64 MiB)
        at the mount's peak RSS. Read-ahead reaches at most SEQ_WINDOW_MAX slots ahead, so no
        more than that many lie behind."""
        upto = -(-file_size // chunk_size) if end >= file_size else end // chunk_size
        lo = max(min(self.behind, offset // chunk_size), upto - SEQ_WINDOW_MAX - 1, 0)
        self.behind = max(self.behind, upto)
        return range(lo, upto)

    def wants_fill(self, file_size: int, budget: int) -> bool:
        n = self.random_reads
        if n < RANDOM_READS or not 0 < file_size <= budget:
            return False
        return n == RANDOM_READS or (n - RANDOM_READS) % RANDOM_RECHECK == 0

    def advance(self, end: int, file_size: int, chunk_size: int) -> range:
        if self.chunks <= 0:
            return range(0)
        last = (end - 1) // chunk_size
        if last > self.last_slot >= 0:      # moved on to a new slot, still sequential
            self.window = min(max(self.chunks, SEQ_WINDOW_MAX), self.window * 2)
        self.last_slot = last
        final = (file_size - 1) // chunk_size
        upto = min(last + self.window, final)
        if upto <= self.prefetched:
            return range(0)
        first = max(last + 1, self.prefetched + 1)
        if upto - first + 1 < PREFETCH_GROUP and first > last + 1 and upto < final:
            # the next slot is on its way already: wait until a whole group of new slots
            # can go in one call (else a steady reader would cost one call per chunk)
            return range(0)
        self.prefetched = upto
        return range(first, upto + 1)


def fetch_ranges(data: DataClient, ranges: list[tuple[bytes, int, int]]) -> list[bytes]:
    """Blocking: byte ranges (chunk_id, offset, length) of stored chunks, in order."""
    return list(data.get_chunks(ranges))


class ChunkReader:
    def __init__(self, data: DataClient, cache: ChunkCache, limiter: trio.CapacityLimiter,
                 readahead_chunks: int = 8) -> None:
        self.data = data
        self.cache = cache
        self.limiter = limiter
        self.readahead_chunks = readahead_chunks
        self.disk: DiskCache | None = None
        self.pages: PagePusher | None = None
        self.disk_hits = 0        # ranges served by the disk cache
        self._filling: dict[Any, _FillRun] = {}
        self.filled_chunks = 0    # chunks whole-file fills fetched
        self._inflight: dict[bytes, list[_Fetch]] = {}
        self.fetches = 0          # ranges fetched (for tests and stats)
        self.fetched_bytes = 0
        self.calls = 0            # GetChunks calls made for them
        # Small fetches (random reads) share calls when many are waiting: see _batched.
        self._queue: list[_Req] = []
        self._small_calls = 0
        self._slot_free = trio.Event()

    async def read(self, ref: Any, offset: int, length: int, whole: bool = False) -> bytes:
        if length <= 0:
            return b""
        stored = ref.length if ref.chunk_id else 0
        if offset >= stored:
            return bytes(length)
        avail = min(length, stored - offset)
        try:
            data = await self._get(ref.chunk_id, offset, avail, stored, whole)
        except NotFound as exc:
            # The id comes from the file's own chunk map: "no such chunk" is not a missing
            # file (ENOENT) but metadata naming a chunk the server lacks (EIO, named, logged)
            raise MissingChunk(f"chunk {ref.chunk_id.hex()} named by the file's chunk map is "
                               f"not stored on the server: {exc}") from None
        if avail < length:
            data = data + bytes(length - avail)
        return data

    async def _get(self, chunk_id: bytes, offset: int, length: int, stored: int,
                   whole: bool) -> bytes:
        hit = self.cache.get(chunk_id, offset, length)
        if hit is not None:
            return hit
        if self.pages is not None:
            # pages offered to the kernel that have not landed: the read beat its push
            hit = self.pages.queued(chunk_id, offset, length)
            if hit is not None:
                return hit
        end = offset + length
        for f in self._inflight.get(chunk_id, ()):
            if f.start <= offset and end <= f.end:
                await f.done.wait()
                if f.data is not None:
                    return f.data[offset - f.start:end - f.start]
                break  # that fetch failed: try ourselves, and report our own error
        start, stop = (0, stored) if whole else frame_align(offset, length, stored)
        data = await self._fetch(chunk_id, start, stop, whole=start == 0 and stop == stored)
        return data[offset - start:end - start]

    def _register(self, chunk_id: bytes, start: int, stop: int, whole: bool = False) -> _Fetch:
        f = _Fetch(start, stop, whole)
        self._inflight.setdefault(chunk_id, []).append(f)
        return f

    async def _fetch(self, chunk_id: bytes, start: int, stop: int,
                     f: _Fetch | None = None, keep: bool = True, to_disk: bool = True,
                     whole: bool = False) -> bytes:
        """keep=False: a fill's fetch, for the disk cache only (when there is one);
        to_disk=False: not for the disk cache either (a fill larger than its budget);
        whole: [start, stop) is the entire chunk."""
        if f is None:
            f = self._register(chunk_id, start, stop, whole)
        try:
            disk = self.disk
            if disk is not None and disk.has(chunk_id, start, stop):
                local = await trio.to_thread.run_sync(disk.read, chunk_id, start, stop,
                                                      limiter=self.limiter)
                if local is not None:
                    self.disk_hits += 1
                    self.cache.put(chunk_id, start, local)
                    f.data = local
                    return local
            rng = (chunk_id, start, stop - start)
            if stop - start <= BATCH_RANGE_MAX:
                data = await self._batched(rng)
            else:
                (data,) = await trio.to_thread.run_sync(fetch_ranges, self.data, [rng],
                                                        limiter=self.limiter)
                self.calls += 1
            return self._arrived(chunk_id, f, data, keep, to_disk)
        except BaseException as exc:
            f.error = exc
            raise
        finally:
            self._settle(chunk_id, f)

    def _arrived(self, chunk_id: bytes, f: _Fetch, data: bytes, keep: bool = True,
                 to_disk: bool = True) -> bytes:
        """A fetched range [f.start, f.end): checked, counted, cached, handed to f's waiters."""
        start, stop = f.start, f.end
        data = bytes(data)
        if len(data) != stop - start:
            raise OSError(5, f"chunk {chunk_id.hex()[:16]}: server sent {len(data)} bytes "
                             f"for a {stop - start}-byte range")
        self.fetches += 1
        self.fetched_bytes += len(data)
        disk = self.disk
        if keep or (disk is None and self.pages is None):
            # a fill with neither (its only other home is the page cache): the memory
            # cache keeps the reader's working set instead
            self.cache.put(chunk_id, start, data)
        if disk is not None and to_disk:
            disk.submit(chunk_id, start, data, whole=f.whole)
        f.data = data
        return data

    def _settle(self, chunk_id: bytes, f: _Fetch) -> None:
        lst = self._inflight.get(chunk_id)
        if lst is not None:
            lst.remove(f)
            if not lst:
                del self._inflight[chunk_id]
        f.done.set()

    async def _fetch_group(self, nursery: trio.Nursery, items: list[tuple[bytes, _Fetch]]
                           ) -> None:
        """Read-ahead: whole chunks not in the disk cache, fetched in ONE GetChunks call (the
        per-call cost, ~1 ms of CPU between the two ends, paid once per PREFETCH_GROUP
        chunks; the server reads the call's chunks in parallel). A hint: errors are left to
        the readers, who fetch again and report their own."""
        disk = self.disk
        remote: list[tuple[bytes, _Fetch]] = []
        for chunk_id, f in items:
            if disk is not None and disk.has(chunk_id, f.start, f.end):
                nursery.start_soon(self._quiet_fetch, chunk_id, f)   # a local read
            else:
                remote.append((chunk_id, f))
        if not remote:
            return
        try:
            datas = await trio.to_thread.run_sync(
                fetch_ranges, self.data, [(c, f.start, f.end - f.start) for c, f in remote],
                limiter=self.limiter)
            self.calls += 1
            for (chunk_id, f), data in zip(remote, datas, strict=True):
                self._arrived(chunk_id, f, data)
        except BaseException as exc:   # noqa: BLE001 - handed to the waiting readers
            for _c, f in remote:
                if f.data is None:
                    f.error = exc
            if not isinstance(exc, Exception):
                raise
        finally:
            for chunk_id, f in remote:
                self._settle(chunk_id, f)

    async def _batched(self, rng: tuple[bytes, int, int]) -> bytes:
        """Fetch a small range. While fewer than SMALL_CALLS_MAX small calls are out, it goes
        at once, alone (no added latency for one reader); beyond that, ranges queue and the
        next free slot takes everything queued as ONE call: with 16 random readers, the
        per-call cost (gRPC setup, auth, a worker thread on each side) is paid once per batch
        instead of once per 4 KiB read."""
        req = _Req(rng)
        self._queue.append(req)
        while not req.done.is_set():
            if self._small_calls < SMALL_CALLS_MAX and self._queue:
                batch = self._queue[:BATCH_RANGES_MAX]
                del self._queue[:len(batch)]
                await self._call_batch(batch)
            else:
                await self._slot_free.wait()  # a call ended: ours may be done, or a slot free
        if req.error is not None:
            raise req.error
        assert req.data is not None
        return req.data

    async def _call_batch(self, batch: list[_Req]) -> None:
        self._small_calls += 1
        try:
            try:
                datas = await trio.to_thread.run_sync(
                    fetch_ranges, self.data, [r.rng for r in batch], limiter=self.limiter)
                self.calls += 1
                for r, d in zip(batch, datas, strict=True):
                    r.data = d
            except (ServerUnavailable, DeadlineExceeded) as exc:
                for r in batch:
                    r.error = exc
            except Exception as exc:  # noqa: BLE001 - handed to the waiting readers
                if len(batch) == 1:
                    batch[0].error = exc
                else:
                    # a missing or damaged chunk must fail only the reads of that chunk
                    for r in batch:
                        try:
                            (r.data,) = await trio.to_thread.run_sync(
                                fetch_ranges, self.data, [r.rng], limiter=self.limiter)
                            self.calls += 1
                        except Exception as one:  # noqa: BLE001
                            r.error = one
        finally:
            self._small_calls -= 1
            for r in batch:
                if r.data is None and r.error is None:  # cancelled before the answer
                    r.error = OSError(errno.EIO, "chunk read interrupted")
                r.done.set()
            ended, self._slot_free = self._slot_free, trio.Event()
            ended.set()

    def prefetch(self, nursery: trio.Nursery, refs: list[Any]) -> None:
        group: list[tuple[bytes, _Fetch]] = []
        for ref in refs:
            if not ref.chunk_id or ref.length <= 0:
                continue
            if self.cache.get(ref.chunk_id, 0, ref.length) is not None:
                self.cache.hits -= 1  # a probe, not a read
                continue
            if any(f.start == 0 and f.end >= ref.length
                   for f in self._inflight.get(ref.chunk_id, ())):
                continue
            group.append((ref.chunk_id, self._register(ref.chunk_id, 0, ref.length, True)))
            if len(group) >= PREFETCH_GROUP:
                nursery.start_soon(self._fetch_group, nursery, group)
                group = []
        if group:
            nursery.start_soon(self._fetch_group, nursery, group)

    def holds_in_memory(self, chunk_id: bytes, length: int) -> bool:
        """The whole chunk is in the memory cache or in flight: a read of it costs no I/O."""
        if self.cache.get(chunk_id, 0, length) is not None:
            self.cache.hits -= 1
            return True
        self.cache.misses -= 1
        return any(f.start == 0 and f.end >= length for f in self._inflight.get(chunk_id, ()))

    async def fetch_many(self, refs: list[Any], keep: bool) -> list[bytes | None]:
        """Whole chunks of `refs` for a directory prefetch (dir_prefetch.py): the ones the
        disk cache holds read from it, the others in ONE GetChunks call. They are registered
        in flight before this first awaits, so a read of one waits for this call instead of
        fetching it again; kept in the memory cache when `keep`, fetched ones queued for the
        disk cache. None in place of a chunk in memory or in flight already (not fetched
        again), of a disk entry evicted meanwhile, and of every chunk when the call fails (a
        hint: the reads fetch what they need and report their own errors; the error is
        raised after the reads waiting for the call were told)."""
        out: list[bytes | None] = [None] * len(refs)
        items: list[tuple[int, bytes, _Fetch]] = []
        local: list[tuple[int, bytes, _Fetch]] = []
        disk = self.disk
        for i, ref in enumerate(refs):
            if ref.chunk_id and ref.length > 0 and not self.holds_in_memory(ref.chunk_id,
                                                                            ref.length):
                on_disk = disk is not None and disk.has(ref.chunk_id, 0, ref.length)
                (local if on_disk else items).append(
                    (i, ref.chunk_id, self._register(ref.chunk_id, 0, ref.length, True)))
        if not items and not local:
            return out

        def load() -> tuple[list[bytes | None], list[bytes]]:
            # the disk entries first: they are what a waiting reader most likely wants
            # (a pass over a directory the page cache lost), and cost no call
            # (entries packed side by side, as a directory's samples are, in one pread each)
            found: list[bytes | None] = [None] * len(local)
            if disk is not None:
                found = disk.read_many([(c, 0, f.end) for _i, c, f in local])
            fetched = fetch_ranges(self.data, [(c, 0, f.end) for _i, c, f in items]) \
                if items else []
            return found, fetched

        try:
            found, datas = await trio.to_thread.run_sync(load, limiter=self.limiter)
            for (i, c, f), data in zip(local, found, strict=True):
                if data is not None:
                    self.disk_hits += 1
                    if keep:
                        self.cache.put(c, 0, data)
                    f.data = out[i] = data
            if items:
                self.calls += 1
            for (i, c, f), data in zip(items, datas, strict=True):
                out[i] = self._arrived(c, f, data, keep)
        except BaseException as exc:
            for _i, _c, f in items + local:
                if f.data is None:
                    f.error = exc
            raise
        finally:
            for _i, c, f in items + local:
                self._settle(c, f)
        return out

    def consumed(self, st: Any, slots: Iterable[int]) -> None:
        if st.size <= self.cache.capacity // 4:
            return      # small files: the memory cache is where a re-read finds them
        for idx in slots:
            ref = st.refs.get(idx)
            if ref is not None and ref.chunk_id:
                self.cache.discard(ref.chunk_id)

    def fill_budget(self) -> int:
        budget = self.disk.capacity // 2 if self.disk is not None else self.cache.capacity // 4
        if self.pages is not None and self.pages.enabled:
            budget = max(budget, self.pages.budget())
        return budget

    def fill(self, nursery: trio.Nursery, key: Any, refs: list[Any],
             target: Target | None = None) -> None:
        if key in self._filling or len(self._filling) >= FILL_FILES_MAX:
            return
        todo = [r for r in refs if r.chunk_id and r.length > 0]
        if todo:
            run = self._filling[key] = _FillRun(target)
            nursery.start_soon(self._fill, key, todo, run)

    def closed(self, key: Any) -> None:
        """The last handle of file `key` is gone: its fill pushes no more pages (nobody reads
        them) and one that was only for the page cache stops. Pushing on after fio's 10 s of
        random reads kept the mount busy for seconds, pushing the rest of a 1 GiB file while
        the next phase ran (`aifs bench`'s stat: 40k -> 20k files/s)."""
        run = self._filling.get(key)
        if run is not None:
            run.target = None
            if not run.to_disk:
                run.cancel.cancel()
            else:
                run.cancel.deadline = trio.current_time() + FILL_AFTER_CLOSE

    def opened(self, key: Any) -> None:
        run = self._filling.get(key)
        if run is not None and run.to_disk:
            run.cancel.deadline = math.inf

    # --- the page pusher's hooks for the FUSE operations (no-ops without one) ----------------
    def target(self, st: Any) -> Target | None:
        return None if self.pages is None else self.pages.target(st)

    def fits(self, size: int) -> bool:
        return self.pages is not None and self.pages.fits(size)

    async def fence(self, ino: int) -> None:
        if self.pages is not None:
            await self.pages.fence(ino)

    async def writer_open(self, ino: int, fh: int) -> None:
        if self.pages is not None:
            await self.pages.writer_open(ino, fh)

    def released(self, fh: int) -> None:
        if self.pages is not None:
            self.pages.released(fh)

    def push_read(self, t: Target, st: Any, offset: int, end: int) -> None:
        pages = self.pages
        if pages is None:
            return
        # a frame the kernel now holds whole leaves the memory cache (as a sequential reader's
        # consumed chunks do), except a small file's: a random reader of a large file would
        # otherwise fill the memory cache with frames the page cache has too, the mount's
        # peak RSS in the bench's random phases (BENCHMARKS "Full run of 2026-12-06, 14:22")
        large = st.size > self.cache.capacity // 4
        for idx, o, n in split_range(offset, end - offset, t.chunk_size):
            ref = st.refs.get(idx)
            if ref is None or o >= ref.length:
                continue
            fs, fe = frame_align(o, n, ref.length)
            if (fs, fe) == (o, o + n):
                # the kernel has asked for (and now holds) all of it
                if large:
                    self.cache.discard_segment(ref.chunk_id, fs, fe - fs)
                continue
            data = self.cache.get(ref.chunk_id, fs, fe - fs)
            if data is not None:
                self.cache.hits -= 1   # a probe, not a read
                if pages.offer_at(t, idx, fs, data, ref.chunk_id) and large:
                    self.cache.discard_segment(ref.chunk_id, fs, fe - fs)

    def _cached(self, ref: Any) -> bool:
        if self.disk is not None:
            return self.disk.has(ref.chunk_id, 0, ref.length)
        if self.cache.get(ref.chunk_id, 0, ref.length) is not None:
            self.cache.hits -= 1  # a probe, not a read
            return True
        return False

    async def _fill(self, key: Any, refs: list[Any], run: _FillRun) -> None:
        # a file past half the disk cache (filled for the page cache only) would evict the
        # disk cache's working set: it goes to the page cache alone
        disk = self.disk
        run.to_disk = disk is not None and sum(r.length for r in refs) <= disk.capacity // 2
        try:
            if not run.to_disk and run.target is None:
                return
            it = iter(refs)
            with run.cancel:
                async with trio.open_nursery() as workers:
                    for _ in range(FILL_PARALLEL):
                        workers.start_soon(self._fill_worker, it, run)
        finally:
            if self._filling.get(key) is run:
                del self._filling[key]

    async def _push_cached(self, ref: Any, t: Target) -> None:
        """Push a chunk the caches hold (memory first, then disk) into the page cache."""
        pages, disk = self.pages, self.disk
        if pages is None:
            return
        data = self.cache.get(ref.chunk_id, 0, ref.length)
        if data is not None:
            self.cache.hits -= 1   # a probe, not a read
        elif disk is not None and disk.has(ref.chunk_id, 0, ref.length):
            data = await trio.to_thread.run_sync(disk.read, ref.chunk_id, 0, ref.length,
                                                 limiter=self.limiter)
        if data is not None:
            pages.offer(t, ref.index, data, ref.chunk_id)

    async def _fill_worker(self, refs: Any, run: _FillRun) -> None:
        to_disk = run.to_disk
        disk = self.disk if to_disk else None
        for ref in refs:     # the workers share one iterator: each chunk is taken once
            target = run.target             # None once the file's last handle closed
            pages = self.pages if target is not None else None
            if pages is not None:
                # never outrun the pusher either: a dropped push is a wasted read
                while pages.pending_bytes > pages.max_pending // 2:
                    await trio.sleep(0.005)
            if self._cached(ref):
                if target is not None:
                    await self._push_cached(ref, target)
                continue
            if any(f.start == 0 and f.end >= ref.length
                   for f in self._inflight.get(ref.chunk_id, ())):
                continue
            # never outrun the disk writer: a dropped write is a wasted fetch
            while disk is not None and disk.pending_bytes > disk.max_pending // 2:
                await trio.sleep(0.005)
            try:
                data = await self._fetch(ref.chunk_id, 0, ref.length, keep=False,
                                         to_disk=to_disk, whole=True)
            except Exception:  # noqa: BLE001 - a hint: the reads fetch what they need
                return
            self.filled_chunks += 1
            target = run.target
            if self.pages is not None and target is not None:
                self.pages.offer(target, ref.index, data, ref.chunk_id)

    async def _quiet_fetch(self, chunk_id: bytes, f: _Fetch) -> None:
        try:
            await self._fetch(chunk_id, f.start, f.end, f)
        except Exception:  # noqa: BLE001 - read-ahead is a hint; the real read reports errors
            pass
