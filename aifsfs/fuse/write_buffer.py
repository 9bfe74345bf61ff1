"""Per-inode write buffers with bounded memory and uploads behind the writer.

Interface:
    DirtyChunk()                    bytes written into one chunk slot since its last upload
        .write(pos, data)           copy `data` in at `pos` (grows lazily, gaps are zeros)
        .intervals                  merged, sorted [start, end) written ranges
        .covers(n) -> bool          [0, n) fully written (no old content needed)
        .overlay(base, n) -> bytes  the slot's new n bytes: `base` (old content) under the writes
        .nbytes                     memory held
    FileState(ino, chunk_size, attr, refs)   what the mount knows of one open/dirty file:
        .size, .refs {index: ChunkRef} (server map + uploaded-but-uncommitted slots), .dirty,
        .inflight (snapshots being uploaded, readable meanwhile), .handles, .generation
        .is_dirty()                 anything not yet committed
        await .read_slot(idx, offset, n, whole, read_ref) -> bytes
                                    what a reader sees of slot `idx`: the stored chunk (through
                                    `read_ref(ref, offset, n, whole)`), under the bytes being
                                    uploaded, under the bytes written here
        .clean_refs(slots) -> [ChunkRef]   the slots' stored chunks with nothing newer buffered
                                    (what read-ahead may fetch)
        .reload(attr, chunk_size, refs)    a clean state takes a fresh chunk map (after a
                                    truncate)
    WriteBuffers(fs, data, limiter, read_base, max_dirty_bytes=64 MiB, inline_max=0)
                                    fs: FsClient (CommitFile), data: DataClient (chunks);
                                    full slots upload through .putter, a PutBatcher (several
                                    chunks per PutChunks call when uploads queue up)
        .start(nursery)                         where background uploads run
        await .write(st, offset, data)          buffer; full slots upload in the background;
                                                waits while the mount holds too much dirty data
        await .flush(st, durable=False, ready=None) -> Attr | None
                                                upload what is left, CommitFile the changed slots
                                                (durable for fsync; await ready(ino, commit)
                                                before the call: --writeback queues it)
                                                (+ size; the server computes the file's
                                                asset id itself, it trusts no claim)
                                                slots of at most `inline_max` bytes still dirty
                                                at flush travel inside the CommitFile (no
                                                PutChunks round trip: a small file's close is
                                                one call)
        .dirty_bytes, .inflight_bytes, .held_bytes, .reuploads

Why it is shaped this way:
- A slot written from its start to its end needs no old content, so sequential writes never
  read-modify-write; a partly written slot is merged with its old chunk only when uploaded.
- Uploaded-but-uncommitted slots are kept as ChunkRefs (the chunk is on the server, named by
  nothing yet): that is how dirty data "spills" when memory is short. If the mount dies, GC
  collects those chunks; nothing committed refers to them.
- All-zero slots are not stored: they commit as holes.
- An inline slot stays in `.inflight` (readable) and `.uploading` (no newer upload of it can
  overtake) until its commit returns: its chunk exists on the server only from then on.
- A failed upload (server down, ENOSPC) puts the bytes back as dirty data, so a later flush can
  retry; the error is reported by the next write/flush/fsync.
- A commit is all of the file's data or nothing: a write the mount refused (the error of a
  failed upload, reported to that write) leaves a hole in what the writer meant the file to be,
  so no commit happens until those bytes are written again (or truncated away). If the file is
  closed with such a hole (nobody can fill it any more), its buffered data is dropped with an
  error logged: the file keeps its last committed content, never a short or holed version.
- The bytes of uploaded-but-uncommitted slots are kept (up to `max_held_bytes`, oldest dropped
  first) until their commit: a commit answered MISSING_CHUNK (GC removed a chunk nothing
  referenced yet) uploads them again and commits again, instead of failing forever. A missing
  chunk whose bytes are no longer held is data lost: treated as a refused write (above).
"""

from __future__ import annotations

import copy
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import blake3
import trio

from aifs_core.errors import MissingChunk
from aifs_core.types import Attr, ChunkRef
from aifsfs.fuse.chunk_cache import slot_length
from aifsfs.protocols import DataClient, FsClient

# (ref, offset, length, whole) -> bytes of a stored chunk slot: ChunkReader.read
ReadRef = Callable[[ChunkRef, int, int, bool], Awaitable[bytes]]

log = logging.getLogger("aifsfs.write")

DEFAULT_MAX_DIRTY = 64 << 20
INLINE_TOTAL_MAX = 8 << 20     # inline bytes per CommitFile (the server takes up to 16 MiB)


class DirtyChunk:
    __slots__ = ("data", "intervals")

    def __init__(self) -> None:
        # bytes when one write filled it from the start (kept as given: no copy), else a
        # bytearray the writes are copied into
        self.data: bytes | bytearray = bytearray()
        self.intervals: list[list[int]] = []

    @property
    def nbytes(self) -> int:
        return len(self.data)

    def _mutable(self) -> bytearray:
        if isinstance(self.data, bytes):
            self.data = bytearray(self.data)
        return self.data

    def write(self, pos: int, buf: bytes | bytearray | memoryview) -> None:
        n = len(buf)
        if n == 0:
            return
        if pos == 0 and not self.data and type(buf) is bytes:
            self.data = buf   # a 1 MiB write of a sequential writer: the FUSE buffer itself
            self._add(0, n)
            return
        data = self._mutable()
        cur = len(data)
        if pos > cur:
            data.extend(bytes(pos - cur))
        data[pos:pos + n] = buf
        self._add(pos, pos + n)

    def _add(self, s: int, e: int) -> None:
        iv = self.intervals
        if not iv or iv[-1][1] < s:          # fast path: appending past everything
            iv.append([s, e])
            return
        if iv[-1][0] <= s:                    # touches/overlaps the last one (sequential)
            iv[-1][1] = max(iv[-1][1], e)
            return
        out: list[list[int]] = []
        placed = False
        for a, b in iv:
            if b < s:
                out.append([a, b])
            elif e < a:
                if not placed:
                    out.append([s, e])
                    placed = True
                out.append([a, b])
            else:
                s, e = min(s, a), max(e, b)
        if not placed:
            out.append([s, e])
        out.sort()
        self.intervals = out

    def covers(self, n: int) -> bool:
        return n == 0 or (len(self.intervals) == 1 and self.intervals[0][0] == 0
                          and self.intervals[0][1] >= n)

    def overlay(self, base: bytes, n: int) -> bytes:
        """The slot's new first n bytes: `base` with the written intervals on top."""
        if self.covers(n):
            if type(self.data) is bytes and len(self.data) == n:
                return self.data                      # the writer's own buffer: no copy
            out = bytes(memoryview(self.data)[:n])   # one copy (a bytearray slice is another)
            return out if len(out) == n else out + bytes(n - len(out))
        buf = bytearray(base[:n])
        if len(buf) < n:
            buf.extend(bytes(n - len(buf)))
        for a, b in self.intervals:
            if a >= n:
                break
            b = min(b, n)
            buf[a:b] = self.data[a:b]
        return bytes(buf)

    def overlay_range(self, base: bytes, offset: int) -> bytes:
        """`base` holds slot bytes [offset, offset+len(base)); put the written bytes on top."""
        end = offset + len(base)
        buf: bytearray | None = None
        for a, b in self.intervals:
            if b <= offset or a >= end:
                continue
            if buf is None:
                buf = bytearray(base)
            s, e = max(a, offset), min(b, end)
            buf[s - offset:e - offset] = self.data[s:e]
        return base if buf is None else bytes(buf)

    def truncate(self, n: int) -> None:
        """Forget everything written at or past slot offset n."""
        del self._mutable()[n:]
        iv = [[a, min(b, n)] for a, b in self.intervals if a < n]
        self.intervals = iv


class FileState:
    """The mount's view of one regular file while it is open or has uncommitted data."""

    def __init__(self, ino: int, chunk_size: int, attr: Attr, refs: list[ChunkRef]) -> None:
        self.ino = ino
        self.chunk_size = chunk_size
        self.attr = attr
        self.size = attr.size
        self.generation = attr.generation
        self.refs: dict[int, ChunkRef] = {r.index: r for r in refs if r.chunk_id}
        self.dirty: dict[int, DirtyChunk] = {}
        self.inflight: dict[int, bytes] = {}
        self.uploading: dict[int, trio.Event] = {}
        self.changed: dict[int, int] = {}      # slot -> version; committed when unchanged since
        self.version = 0
        # slot -> writes so far. A read that awaited the server compares it before and after:
        # a write (even one uploaded and committed meanwhile) makes it read the slot again.
        self.slot_writes: dict[int, int] = {}
        self.meta_dirty = False                # size or content changed since the last commit
        self.error: BaseException | None = None
        # byte ranges [start, end) of writes the mount refused, and the first refusal's error:
        # while any is left, committing would publish a file missing them
        self.refused: list[tuple[int, int]] = []
        self.refused_error: BaseException | None = None
        # slot -> (ref, bytes) of uploaded slots not yet committed: re-sent if the chunk is
        # collected before the commit
        self.held: dict[int, tuple[ChunkRef, bytes]] = {}
        self.handles = 0
        # LeaseCache.held_mark() when this state was last read under a lease of ours (None:
        # not leased): while a handle is open, another open reuses the state only if the
        # mark still holds, since only a lease makes the server recall us before a change
        self.lease_mark: int | None = None
        # created by this mount (ops.create): trusted while DirOps.made(ino) holds instead
        self.made_here = False
        self.unlinked = False
        self.commit_lock = trio.Lock()
        self.mtime_ns = 0

    def is_dirty(self) -> bool:
        return bool(self.dirty or self.uploading or self.changed or self.meta_dirty)

    def refuse(self, start: int, end: int, err: BaseException) -> None:
        """Bytes [start, end) the writer meant to write did not reach this buffer."""
        if end > start:
            self.refused.append((start, end))
            if self.refused_error is None:
                self.refused_error = err

    def rewritten(self, start: int, end: int) -> None:
        """Bytes [start, end) were written (buffered): they fill refused ranges."""
        if not self.refused:
            return
        out: list[tuple[int, int]] = []
        for a, b in self.refused:
            if b <= start or a >= end:
                out.append((a, b))
                continue
            if a < start:
                out.append((a, start))
            if b > end:
                out.append((end, b))
        self.refused = out
        if not out:
            self.refused_error = None

    def mark_changed(self, idx: int) -> None:
        self.version += 1
        self.changed[idx] = self.version

    def reload(self, attr: Attr, chunk_size: int, refs: list[ChunkRef]) -> None:
        """Take the server's chunk map of a clean file (after a truncate)."""
        self.attr, self.size, self.generation = attr, attr.size, attr.generation
        self.rewritten(attr.size, 1 << 64)       # refused bytes past a truncate do not matter
        self.refs = {r.index: r for r in refs if r.chunk_id}
        self.chunk_size = chunk_size or self.chunk_size

    def clean_refs(self, slots: Iterable[int]) -> list[ChunkRef]:
        """Stored chunks of `slots` that no buffered write or upload supersedes."""
        return [self.refs[i] for i in slots
                if i in self.refs and i not in self.dirty and i not in self.inflight]

    async def read_slot(self, idx: int, off: int, n: int, whole: bool,
                        read_ref: ReadRef) -> bytes:
        """Bytes [off, off+n) of slot `idx` as this mount shows them: writes are visible at
        once, whether still buffered, being uploaded or stored."""
        # A write to this slot while we awaited the server may have been uploaded and left the
        # dirty map already, so neither overlay below would show it: read the slot again.
        # (Returning the stale bytes would let the kernel cache them as clean and write them
        # back with the next partial page write.) Bounded: a slot rewritten without pause
        # gets the newest overlay we saw.
        for _attempt in range(8):
            seen = self.slot_writes.get(idx, 0)
            base = await self._read_slot_once(idx, off, n, whole, read_ref)
            if self.slot_writes.get(idx, 0) == seen:
                break
        return base

    async def _read_slot_once(self, idx: int, off: int, n: int, whole: bool,
                              read_ref: ReadRef) -> bytes:
        dc = self.dirty.get(idx)
        if dc is not None:
            for a, b in dc.intervals:
                if a <= off and off + n <= b:        # all of it is freshly written
                    return bytes(dc.data[off:off + n])
        inflight = self.inflight.get(idx)
        if inflight is not None:
            base = inflight[off:off + n]
            if len(base) < n:
                base += bytes(n - len(base))
        else:
            ref = self.refs.get(idx)
            base = (await read_ref(ref, off, n, whole)) if ref is not None else bytes(n)
        # Writes that landed (or were handed to an upload) while we waited go on top.
        if dc is not None:
            base = dc.overlay_range(base, off)
        now = self.dirty.get(idx)
        if now is not None and now is not dc:
            base = now.overlay_range(base, off)
        return base


def _is_zero(data: bytes) -> bool:
    # bytes(n) is calloc'ed zero pages and == is a memcmp: ~50 us a MiB, with no cache to grow;
    # a slot of data almost always has a non-zero first or last byte (~22 us -> 0.2 us)
    if data[:1] != b"\0" or data[-1:] != b"\0":
        return False
    return data == bytes(len(data))


def chunk_ref(idx: int, data: bytes) -> ChunkRef:
    """The slot's ref by content: BLAKE3 id and length; an all-zero slot is a hole."""
    if not data or _is_zero(data):
        return ChunkRef(idx, b"", 0)
    return ChunkRef(idx, blake3.blake3(data).digest(), len(data))


class _Staged:
    """An inline slot taken out of the dirty map, waiting for its commit."""

    __slots__ = ("idx", "ref", "data", "event", "prev")

    def __init__(self, idx: int, ref: ChunkRef, data: bytes, event: trio.Event,
                 prev: ChunkRef | None) -> None:
        self.idx, self.ref, self.data, self.event, self.prev = idx, ref, data, event, prev


def put_new(chunks: DataClient, items: list[tuple[bytes, bytes]]) -> None:
    """Blocking: upload whole chunks (id, bytes) in one PutChunks call. Over a network, ask
    first (dedup saves the transfer); over a local unix socket the extra round trip costs more
    than sending: the server deduplicates on put anyway."""
    if not chunks.address.startswith("unix:"):
        items = [it for it, there in zip(items, chunks.has_chunks([c for c, _ in items]),
                                         strict=True) if not there]
    if items:
        chunks.put_chunks(items)


def store_chunk(chunks: DataClient, idx: int, data: bytes) -> ChunkRef:
    """Blocking: hash, dedup-check and upload one slot's bytes; an all-zero slot is a hole."""
    ref = chunk_ref(idx, data)
    if ref.chunk_id:
        put_new(chunks, [(ref.chunk_id, data)])
    return ref


# Uploads share PutChunks calls (PutBatcher): calls out at once, and chunks per call (the
# server stores a call's chunks as one durable batch of up to 8: sealed in parallel, one
# directory fsync per directory). A 1 MiB-block writer, 256 MiB, 4 runs each on a shared
# 2-core machine: one call per chunk (up to 32 out) ~300 CPU ticks of mount + server, median
# 76 MiB/s; 3 calls of up to 8: ~253 ticks, 79 MiB/s (the wall times were noise-bound).
PUT_CALLS_MAX = 3
PUT_BATCH_CHUNKS = 8
PUT_BATCH_BYTES = 16 << 20


class _Put:
    __slots__ = ("cid", "data", "done", "error")

    def __init__(self, cid: bytes, data: bytes) -> None:
        self.cid, self.data = cid, data
        self.done = trio.Event()
        self.error: BaseException | None = None


class PutBatcher:
    """Whole-chunk uploads of the mount, several per PutChunks call.

    An upload goes out at once while fewer than `calls_max` calls are out; past that, uploads
    queue and the next call to end takes everything queued (up to PUT_BATCH_CHUNKS chunks or
    PUT_BATCH_BYTES) as one call. `await put(cid, data)` returns once the chunk is durable
    on the server (the call's reply), or raises the call's error."""

    def __init__(self, data: DataClient, limiter: trio.CapacityLimiter,
                 calls_max: int = PUT_CALLS_MAX) -> None:
        self.data, self.limiter, self.calls_max = data, limiter, calls_max
        self._queue: list[_Put] = []
        self._calls = 0
        self._ended = trio.Event()
        self.calls = 0           # PutChunks calls made (for tests and stats)

    async def put(self, cid: bytes, data: bytes) -> None:
        req = _Put(cid, data)
        self._queue.append(req)
        while not req.done.is_set():
            if self._calls < self.calls_max and self._queue:
                await self._send(self._take())
            else:
                await self._ended.wait()
        if req.error is not None:
            raise req.error

    def _take(self) -> list[_Put]:
        batch: list[_Put] = []
        size = 0
        while self._queue and len(batch) < PUT_BATCH_CHUNKS and (
                not batch or size + len(self._queue[0].data) <= PUT_BATCH_BYTES):
            req = self._queue.pop(0)
            batch.append(req)
            size += len(req.data)
        return batch

    async def _send(self, batch: list[_Put]) -> None:
        self._calls += 1
        try:
            # one id once per call (two slots with the same bytes)
            items = list({r.cid: r.data for r in batch}.items())
            await trio.to_thread.run_sync(put_new, self.data, items, limiter=self.limiter)
            self.calls += 1
        except Exception as exc:  # noqa: BLE001 - handed to every upload of the batch
            for r in batch:
                r.error = exc
        except BaseException:
            for r in batch:      # cancelled: the others' uploads did not happen either
                r.error = OSError(errno.EIO, "chunk upload interrupted")
            raise
        finally:
            self._calls -= 1
            for r in batch:
                r.done.set()
            ended, self._ended = self._ended, trio.Event()
            ended.set()


class WriteBuffers:
    def __init__(self, fs: FsClient, data: DataClient, limiter: trio.CapacityLimiter,
                 read_base: Callable[[ChunkRef, int], Awaitable[bytes]],
                 max_dirty_bytes: int = DEFAULT_MAX_DIRTY, inline_max: int = 0,
                 max_held_bytes: int | None = None) -> None:
        self.fs = fs
        self.data = data
        self.inline_max = inline_max
        self.limiter = limiter
        self.read_base = read_base          # (ref, n) -> first n bytes of the stored chunk
        self.max_dirty_bytes = max_dirty_bytes
        self.dirty_bytes = 0
        self.inflight_bytes = 0
        # uploaded-but-uncommitted bytes kept for a re-upload: half the dirty bound by default
        self.max_held_bytes = max_dirty_bytes // 2 if max_held_bytes is None else max_held_bytes
        self.held_bytes = 0
        self._held: dict[tuple[int, int], FileState] = {}   # (ino, slot) in age order
        self.reuploads = 0
        self._nursery: trio.Nursery | None = None
        self.putter = PutBatcher(data, limiter)
        self._progress = trio.Event()
        self._states: dict[int, FileState] = {}   # states with dirty chunks (for spilling)
        self.uploads = 0
        self.failures = 0
        self.last_error: BaseException | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def _kick(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    # --- writing ------------------------------------------------------------------------------
    async def write(self, st: FileState, offset: int, buf: bytes) -> None:
        n = len(buf)
        if st.error is not None:
            err, st.error = st.error, None
            st.refuse(offset, offset + n, err)   # these bytes are not buffered
            raise err
        cs = st.chunk_size
        if n == 0:
            return
        st.rewritten(offset, offset + n)
        mv = memoryview(buf)
        end = offset + n
        if end > st.size:
            st.size = end
        st.meta_dirty = True
        st.mtime_ns = time.time_ns()
        pos = offset
        while pos < end:
            idx = pos // cs
            in_off = pos - idx * cs
            take = min(cs - in_off, end - pos)
            dc = st.dirty.get(idx)
            if dc is None:
                dc = st.dirty[idx] = DirtyChunk()
            st.slot_writes[idx] = st.slot_writes.get(idx, 0) + 1
            before = dc.nbytes
            dc.write(in_off, buf if take == n else mv[pos - offset:pos - offset + take])
            self.dirty_bytes += dc.nbytes - before
            if dc.covers(cs):
                self._start_upload(st, idx)
            pos += take
        self._states[st.ino] = st
        if self.dirty_bytes + self.inflight_bytes > self.max_dirty_bytes:
            await self._reclaim(st)

    async def _reclaim(self, st: FileState) -> None:
        """Wait until dirty + uploading bytes are under the limit, spilling partial slots."""
        failures = self.failures
        while self.dirty_bytes + self.inflight_bytes > self.max_dirty_bytes:
            if self.failures != failures and self.last_error is not None:
                # uploads are failing (server down, full): say so. The one error object is
                # raised to every waiting writer: start its traceback afresh each time, or a
                # long outage grows it without bound.
                raise self.last_error.with_traceback(None)
            if self.inflight_bytes < self.max_dirty_bytes // 2 and self.dirty_bytes > 0:
                victim = self._pick_victim()
                if victim is not None:
                    self._start_upload(*victim)
            if st.error is not None:
                err, st.error = st.error, None
                raise err
            await self._progress.wait()

    def _pick_victim(self) -> tuple[FileState, int] | None:
        best: tuple[int, FileState, int] | None = None
        for s in list(self._states.values()):
            if not s.dirty:
                self._states.pop(s.ino, None)
                continue
            for idx, dc in s.dirty.items():
                if idx in s.uploading:
                    continue
                if best is None or dc.nbytes > best[0]:
                    best = (dc.nbytes, s, idx)
        return None if best is None else (best[1], best[2])

    def _start_upload(self, st: FileState, idx: int) -> None:
        assert self._nursery is not None, "WriteBuffers.start(nursery) was not called"
        self._nursery.start_soon(self._upload_bg, st, idx)

    async def _upload_bg(self, st: FileState, idx: int) -> None:
        try:
            await self.upload_slot(st, idx)
        except Exception as exc:  # noqa: BLE001 - kept and reported by the next write/flush
            st.error = exc
            self.failures += 1
            self.last_error = exc

    # --- uploading ----------------------------------------------------------------------------
    async def _claim_slot(self, st: FileState, idx: int) -> tuple[trio.Event, bytes] | None:
        """Move slot `idx`'s dirty bytes (merged with its old content when only partly
        written) into st.inflight; None when nothing is dirty there. The caller then owns
        st.uploading[idx] (the returned event) and must release it.

        The slot stays in st.dirty (readers overlay it, writers add to it) while the old
        content is fetched; it leaves st.dirty and enters st.inflight with no await in
        between, so a reader always finds the newest bytes in one of the two."""
        while idx in st.uploading:           # one upload per slot at a time, in order
            await st.uploading[idx].wait()
        if idx not in st.dirty:
            return None
        ev = st.uploading[idx] = trio.Event()
        try:
            n = slot_length(st.size, idx, st.chunk_size)
            base = b""
            if not st.dirty[idx].covers(n):
                old = st.refs.get(idx)
                if old is not None:
                    base = await self.read_base(old, n)
            popped = st.dirty.pop(idx, None)
            if popped is not None:
                self.dirty_bytes -= popped.nbytes
                # the file may have grown while we waited
                data = popped.overlay(base, slot_length(st.size, idx, st.chunk_size))
                st.inflight[idx] = data
                self.inflight_bytes += len(data)
                return ev, data
        except BaseException:
            self._release_slot(st, idx, ev)
            raise
        self._release_slot(st, idx, ev)     # truncated away while we waited: nothing to send
        return None

    def _release_slot(self, st: FileState, idx: int, ev: trio.Event) -> None:
        if st.uploading.get(idx) is ev:
            del st.uploading[idx]
        ev.set()
        self._kick()

    def _restore_dirty(self, st: FileState, idx: int, data: bytes) -> None:
        """A slot's bytes that did not reach the server become dirty again, under any newer
        writes, so nothing is lost."""
        back = DirtyChunk()
        back.write(0, data)
        newer = st.dirty.get(idx)
        if newer is not None:
            for a, b in newer.intervals:
                back.write(a, newer.data[a:b])
            self.dirty_bytes -= newer.nbytes
        st.dirty[idx] = back
        self.dirty_bytes += back.nbytes
        self._states[st.ino] = st

    async def upload_slot(self, st: FileState, idx: int) -> None:
        claimed = await self._claim_slot(st, idx)
        if claimed is None:
            return
        ev, data = claimed
        try:
            ref = await trio.to_thread.run_sync(chunk_ref, idx, data, limiter=self.limiter)
            if ref.chunk_id:
                await self.putter.put(ref.chunk_id, data)
            self.uploads += 1
            if ref.chunk_id:
                st.refs[idx] = ref
                self._hold(st, idx, ref, data)
            else:
                st.refs.pop(idx, None)
                self._unhold(st, idx)
            st.mark_changed(idx)
        except BaseException:
            self._restore_dirty(st, idx, data)
            raise
        finally:
            if st.inflight.get(idx) is data:
                del st.inflight[idx]
            self.inflight_bytes -= len(data)
            self._release_slot(st, idx, ev)

    # --- held bytes of uploaded, uncommitted slots ------------------------------------------
    def _hold(self, st: FileState, idx: int, ref: ChunkRef, data: bytes) -> None:
        self._unhold(st, idx)
        if len(data) > self.max_held_bytes:
            return
        st.held[idx] = (ref, data)
        self._held[(st.ino, idx)] = st
        self.held_bytes += len(data)
        while self.held_bytes > self.max_held_bytes and self._held:
            (ino, i), owner = next(iter(self._held.items()))
            self._unhold(owner, i)

    def _unhold(self, st: FileState, idx: int) -> None:
        got = st.held.pop(idx, None)
        if got is not None:
            self.held_bytes -= len(got[1])
        self._held.pop((st.ino, idx), None)

    def _commit_blocking(self, st: FileState, commit: tuple[Any, dict[str, Any]],
                         held: dict[bytes, bytes]) -> Attr:
        """CommitFile (`commit`: its arguments after the inode, see flush); answered
        MISSING_CHUNK (a chunk collected before its commit), upload the missing chunks again
        from `held` (chunk id -> bytes) and commit again."""
        (refs, size), kw = commit
        inline_ids = {cid for cid, _ in kw["inline"]}
        for attempt in range(3):
            try:
                return self.fs.commit_file(st.ino, refs, size, **kw)
            except MissingChunk:
                if attempt == 2:
                    raise
                ids = list(dict.fromkeys(r.chunk_id for r in refs
                                         if r.chunk_id and r.chunk_id not in inline_ids))
                missing = [cid for cid, ok in zip(ids, self.data.has_chunks(ids), strict=True)
                           if not ok]
                lost = [cid for cid in missing if cid not in held]
                if lost:
                    gone = MissingChunk(
                        f"inode {st.ino}: uploaded chunk(s) {', '.join(c.hex() for c in lost)} "
                        f"were removed from the server before their commit and this mount no "
                        f"longer holds their bytes: nothing committed")
                    gone.lost_ids = set(lost)  # type: ignore[attr-defined]
                    raise gone from None
                log.warning("inode %d: %d uploaded chunk(s) were collected before the commit; "
                            "uploading them again", st.ino, len(missing))
                self.data.put_chunks([(cid, held[cid]) for cid in missing])
                self.reuploads += len(missing)
        raise AssertionError("unreachable")

    def _refused_error(self, st: FileState) -> BaseException | None:
        """The error to give instead of committing a file some writes never reached."""
        if not st.refused:
            return None
        a, b = st.refused[0]
        base = st.refused_error
        what = (f"inode {st.ino}: {sum(e - s for s, e in st.refused)} bytes written from "
                f"offset {a} were refused ({base}); ")
        if st.handles > 0:
            what += "nothing is committed until they are written again"
        else:
            what += ("the file was closed without them: its buffered data is dropped and it "
                     "keeps its last committed content")
        err: BaseException
        if isinstance(base, Exception) and hasattr(base, "message"):
            err = copy.copy(base)
            err.message = what  # type: ignore[attr-defined]
            err.args = (what,)
        else:
            err = OSError(what)
        return err.with_traceback(None)

    async def flush(self, st: FileState, durable: bool = False,
                    ready: Callable[[int, tuple[Any, dict[str, Any]]],
                                    Awaitable[Attr | None]] | None = None
                    ) -> Attr | None:
        """Upload every dirty slot and commit; returns the committed attributes (None if clean).
        durable (fsync): the commit is on the server's stable storage when this returns.
        await ready(ino, commit): once the CommitFile's arguments are made, before it is sent
        (commit: its arguments after the inode; --writeback queues it there); attributes it
        returns are the commit's, sent by someone else (no call of ours then)."""
        async with st.commit_lock:
            refused = self._refused_error(st)
            if refused is not None:
                # uploads still running would put their bytes back after a drop
                while st.uploading:
                    await next(iter(st.uploading.values())).wait()
                st.error = None        # a later failure of the same outage says less
                if st.handles <= 0:    # closed: nobody can fill the hole any more
                    log.error("%s", refused)
                    self.drop(st)
                raise refused
            if st.error is not None:
                err, st.error = st.error, None
                raise err
            errors: list[BaseException] = []

            async def one(idx: int) -> None:
                try:
                    await self.upload_slot(st, idx)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

            staged: dict[int, _Staged] = {}

            async def stage(idx: int) -> None:
                try:
                    await self._stage_inline(st, idx, staged)
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)

            budget = INLINE_TOTAL_MAX
            async with trio.open_nursery() as nursery:
                for idx in list(st.dirty):
                    n = slot_length(st.size, idx, st.chunk_size)
                    if 0 < n <= min(self.inline_max, budget) and idx not in st.uploading:
                        budget -= n
                        nursery.start_soon(stage, idx)
                    else:
                        nursery.start_soon(one, idx)
            try:
                while any(i not in staged for i in st.uploading):
                    await next(ev for i, ev in st.uploading.items() if i not in staged).wait()
                if st.error is not None:
                    err, st.error = st.error, None
                    errors.append(err)
                if errors:
                    raise errors[0]
                for sg in staged.values():
                    if sg.ref.chunk_id:
                        st.refs[sg.idx] = sg.ref
                    else:
                        st.refs.pop(sg.idx, None)
                    st.mark_changed(sg.idx)
                if not st.changed and not st.meta_dirty:
                    return None
                changed = dict(st.changed)
                refs = [st.refs.get(i) or ChunkRef(i, b"", 0) for i in sorted(changed)]
                inline = [(sg.ref.chunk_id, sg.data) for sg in staged.values()
                          if sg.ref.chunk_id]
                size = st.size
                held = {ref.chunk_id: data for ref, data in st.held.values()}
                commit = ((refs, size), dict(truncated=False, mtime_ns=st.mtime_ns,
                                             durable=durable, inline=inline))
                try:
                    got = None if ready is None else await ready(st.ino, commit)
                    attr: Attr = got if got is not None else await trio.to_thread.run_sync(
                        self._commit_blocking, st, commit, held, limiter=self.limiter)
                except MissingChunk as exc:
                    # data lost for good: as if those writes had been refused (all or nothing)
                    lost_ids: set[bytes] = getattr(exc, "lost_ids", set())
                    for r in refs:
                        if r.chunk_id in lost_ids:
                            start = r.index * st.chunk_size
                            st.refuse(start, start + r.length, exc)
                    raise
            except BaseException:
                for sg in staged.values():
                    self._unstage(st, sg, failed=True)
                raise
            for sg in staged.values():
                self._unstage(st, sg, failed=False)
                self.uploads += 1
            for r in refs:
                h = st.held.get(r.index)
                if h is not None and h[0] == r:
                    self._unhold(st, r.index)   # committed: the server keeps it now
            for i, v in changed.items():
                if st.changed.get(i) == v:
                    del st.changed[i]
            if not st.dirty and not st.changed and st.size == size:
                st.meta_dirty = False
            st.attr = attr
            st.generation = attr.generation
            if not st.dirty:
                self._states.pop(st.ino, None)
            return attr

    async def _stage_inline(self, st: FileState, idx: int, staged: dict[int, _Staged]) -> None:
        """Take slot `idx` out of the dirty map for an inline commit: the bytes go with the
        CommitFile and stay readable (in st.inflight) until it returns."""
        claimed = await self._claim_slot(st, idx)
        if claimed is None:
            return
        ev, data = claimed
        # hashing a slot of at most inline_max bytes takes well under a millisecond
        staged[idx] = _Staged(idx, chunk_ref(idx, data), data, ev, st.refs.get(idx))

    def _unstage(self, st: FileState, sg: _Staged, failed: bool) -> None:
        """After the commit: release the slot; if it failed, its bytes become dirty again
        (under any newer writes) and the slot's previous ref is restored."""
        if failed:
            if sg.prev is not None:
                st.refs[sg.idx] = sg.prev
            else:
                st.refs.pop(sg.idx, None)
            self._restore_dirty(st, sg.idx, sg.data)
        if st.inflight.get(sg.idx) is sg.data:
            del st.inflight[sg.idx]
        self.inflight_bytes -= len(sg.data)
        self._release_slot(st, sg.idx, sg.event)

    def drop(self, st: FileState) -> None:
        """Forget a state's buffers (its inode is gone)."""
        for dc in st.dirty.values():
            self.dirty_bytes -= dc.nbytes
        st.dirty.clear()
        st.changed.clear()
        for idx in list(st.held):
            self._unhold(st, idx)
        st.refused.clear()
        st.refused_error = None
        st.meta_dirty = False
        self._states.pop(st.ino, None)
        self._kick()
