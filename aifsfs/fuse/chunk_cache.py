"""Bounded cache of decrypted chunk bytes, and the chunk/frame arithmetic of the mount.

Interface:
    FRAME_SIZE                      64 KiB: the server's frame, the unit of a random read
    split_range(offset, length, chunk_size) -> list[(index, offset_in_chunk, length)]
                                    the chunk slots a byte range of a file covers
    frame_align(offset, length, limit, frame=FRAME_SIZE) -> (start, end)
                                    the frame-aligned range covering [offset, offset+length),
                                    clipped to `limit` (the slot's stored length)
    slot_length(size, index, chunk_size) -> int
                                    bytes of slot `index` that lie inside a file of `size`
    ChunkCache(capacity_bytes)      LRU by bytes of (chunk_id, start) -> bytes segments
        .get(chunk_id, offset, length) -> bytes | None   a hit when one segment covers it all
        .put(chunk_id, start, data)                      insert; evicts least recently used
        .discard(chunk_id)                               drop every segment of a chunk
        .discard_segment(chunk_id, start, length)        drop the segment that starts at
                                                         `start` if it is `length` long
        .used_bytes, .capacity, .hits, .misses

Chunks are content-addressed and immutable, so an entry never goes stale: nothing here is ever
invalidated, only evicted. Segments of one chunk are few (a whole chunk from read-ahead, or the
64 KiB-aligned pieces random reads fetched), so a hit test scans the chunk's segments linearly.
Not thread-safe: the mount uses it from the trio thread only.
"""

from __future__ import annotations

from collections import OrderedDict

FRAME_SIZE = 65536


def split_range(offset: int, length: int, chunk_size: int) -> list[tuple[int, int, int]]:
    """Cut [offset, offset+length) at chunk boundaries: (slot index, offset in slot, length)."""
    out: list[tuple[int, int, int]] = []
    end = offset + length
    pos = offset
    while pos < end:
        idx = pos // chunk_size
        in_off = pos - idx * chunk_size
        n = min(chunk_size - in_off, end - pos)
        out.append((idx, in_off, n))
        pos += n
    return out


def frame_align(offset: int, length: int, limit: int, frame: int = FRAME_SIZE) -> tuple[int, int]:
    """Frame-aligned [start, end) covering [offset, offset+length), end clipped to `limit`."""
    start = (offset // frame) * frame
    end = -(-(offset + length) // frame) * frame
    return start, max(start, min(end, limit))


def slot_length(size: int, index: int, chunk_size: int) -> int:
    """How many bytes of slot `index` lie inside a file of `size` bytes (0..chunk_size)."""
    return max(0, min(chunk_size, size - index * chunk_size))


class ChunkCache:
    """LRU cache of chunk byte segments, bounded by the bytes it holds."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = max(0, capacity_bytes)
        self.used_bytes = 0
        self.hits = 0
        self.misses = 0
        self._lru: OrderedDict[tuple[bytes, int], bytes] = OrderedDict()
        self._segments: dict[bytes, dict[int, int]] = {}  # chunk id -> {start: length}

    def __len__(self) -> int:
        return len(self._lru)

    def get(self, chunk_id: bytes, offset: int, length: int) -> bytes | None:
        segs = self._segments.get(chunk_id)
        if segs:
            end = offset + length
            for start, n in segs.items():
                if start <= offset and end <= start + n:
                    key = (chunk_id, start)
                    self._lru.move_to_end(key)
                    data = self._lru[key]
                    self.hits += 1
                    if start == offset and n == length:
                        return data
                    return data[offset - start:end - start]
        self.misses += 1
        return None

    def put(self, chunk_id: bytes, start: int, data: bytes) -> None:
        n = len(data)
        if n == 0 or n > self.capacity:
            return
        segs = self._segments.setdefault(chunk_id, {})
        # A segment already covering this one makes it redundant; segments this one covers go.
        for s, ln in list(segs.items()):
            if s <= start and start + n <= s + ln:
                self._lru.move_to_end((chunk_id, s))
                return
            if start <= s and s + ln <= start + n:
                self._drop(chunk_id, s)
        segs = self._segments.setdefault(chunk_id, {})
        segs[start] = n
        if type(data) is not bytes:
            # a slice of something larger (ReadDir's mapped inline file) would keep all of it
            # alive for as long as the entry lives, unaccounted: keep its own bytes
            data = bytes(data)
        self._lru[(chunk_id, start)] = data
        self.used_bytes += n
        while self.used_bytes > self.capacity and self._lru:
            (cid, s), _ = next(iter(self._lru.items()))
            self._drop(cid, s)

    def _drop(self, chunk_id: bytes, start: int) -> None:
        data = self._lru.pop((chunk_id, start), None)
        if data is None:
            return
        self.used_bytes -= len(data)
        segs = self._segments.get(chunk_id)
        if segs is not None:
            segs.pop(start, None)
            if not segs:
                del self._segments[chunk_id]

    def discard(self, chunk_id: bytes) -> None:
        for start in list(self._segments.get(chunk_id, ())):
            self._drop(chunk_id, start)

    def discard_segment(self, chunk_id: bytes, start: int, length: int) -> None:
        data = self._lru.get((chunk_id, start))
        if data is not None and len(data) == length:
            self._drop(chunk_id, start)

    def clear(self) -> None:
        self._lru.clear()
        self._segments.clear()
        self.used_bytes = 0
