"""Chunk reads for the mount: cache, in-flight de-duplication, frame-sized random reads and
sequential read-ahead.

Interface:
    ChunkReader(client, cache, limiter, readahead_chunks=8)
        await .read(ref, offset, length, whole=False) -> bytes
            bytes [offset, offset+length) of the chunk slot `ref` (a base.ChunkRef); bytes past
            ref.length (and a ref with no chunk id, a hole) read as zeros. `whole` fetches the
            whole stored chunk (sequential access), else only the 64 KiB frames the range covers.
        .prefetch(nursery, refs)   start whole-chunk fetches of `refs` in the background (they
            land in the cache; errors are dropped: the reader will fetch again and report).
    ReadPattern()                  per-handle sequential detector: .observe(offset, length) -> bool

Every gRPC call leaves the trio thread with `trio.to_thread.run_sync(..., limiter=limiter)`, so
many readers (DataLoader workers, parallel cp) overlap. Two readers wanting the same range share
one fetch (the second awaits the first's event).
"""

from __future__ import annotations

from typing import Any

import trio

from aifsfs.fuse.chunk_cache import ChunkCache, frame_align


class _Fetch:
    __slots__ = ("start", "end", "done", "data", "error")

    def __init__(self, start: int, end: int) -> None:
        self.start = start
        self.end = end
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


def fetch_ranges(client: Any, ranges: list[tuple[bytes, int, int]]) -> list[bytes]:
    """Blocking: byte ranges (chunk_id, offset, length) of stored chunks, in order."""
    return list(client.get_chunks(ranges))


class ChunkReader:
    def __init__(self, client: Any, cache: ChunkCache, limiter: trio.CapacityLimiter,
                 readahead_chunks: int = 8) -> None:
        self.client = client
        self.cache = cache
        self.limiter = limiter
        self.readahead_chunks = readahead_chunks
        self._inflight: dict[bytes, list[_Fetch]] = {}
        self.fetches = 0          # calls made (for tests and stats)
        self.fetched_bytes = 0

    async def read(self, ref: Any, offset: int, length: int, whole: bool = False) -> bytes:
        if length <= 0:
            return b""
        stored = ref.length if ref.chunk_id else 0
        if offset >= stored:
            return bytes(length)
        avail = min(length, stored - offset)
        data = await self._get(ref.chunk_id, offset, avail, stored, whole)
        if avail < length:
            data = data + bytes(length - avail)
        return data

    async def _get(self, chunk_id: bytes, offset: int, length: int, stored: int,
                   whole: bool) -> bytes:
        hit = self.cache.get(chunk_id, offset, length)
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
        data = await self._fetch(chunk_id, start, stop)
        return data[offset - start:end - start]

    def _register(self, chunk_id: bytes, start: int, stop: int) -> _Fetch:
        f = _Fetch(start, stop)
        self._inflight.setdefault(chunk_id, []).append(f)
        return f

    async def _fetch(self, chunk_id: bytes, start: int, stop: int,
                     f: _Fetch | None = None) -> bytes:
        if f is None:
            f = self._register(chunk_id, start, stop)
        try:
            (data,) = await trio.to_thread.run_sync(
                fetch_ranges, self.client, [(chunk_id, start, stop - start)],
                limiter=self.limiter)
            data = bytes(data)
            if len(data) != stop - start:
                raise OSError(5, f"chunk {chunk_id.hex()[:16]}: server sent {len(data)} bytes "
                                 f"for a {stop - start}-byte range")
            self.fetches += 1
            self.fetched_bytes += len(data)
            self.cache.put(chunk_id, start, data)
            f.data = data
            return data
        except BaseException as exc:
            f.error = exc
            raise
        finally:
            lst = self._inflight.get(chunk_id)
            if lst is not None:
                lst.remove(f)
                if not lst:
                    del self._inflight[chunk_id]
            f.done.set()

    def prefetch(self, nursery: trio.Nursery, refs: list[Any]) -> None:
        for ref in refs:
            if not ref.chunk_id or ref.length <= 0:
                continue
            if self.cache.get(ref.chunk_id, 0, ref.length) is not None:
                self.cache.hits -= 1  # a probe, not a read
                continue
            if any(f.start == 0 and f.end >= ref.length
                   for f in self._inflight.get(ref.chunk_id, ())):
                continue
            f = self._register(ref.chunk_id, 0, ref.length)
            nursery.start_soon(self._quiet_fetch, ref.chunk_id, f)

    async def _quiet_fetch(self, chunk_id: bytes, f: _Fetch) -> None:
        try:
            await self._fetch(chunk_id, f.start, f.end, f)
        except Exception:  # noqa: BLE001 - read-ahead is a hint; the real read reports errors
            pass
