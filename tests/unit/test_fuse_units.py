"""Pure parts of the mount: chunk/frame arithmetic, the byte-bounded chunk cache, dirty-chunk
interval bookkeeping and overlays, the sequential-read detector, and the write buffer's
upload/commit logic against a small in-memory chunk server (a real object, not a mock: it
stores what it is given and answers from it)."""

from __future__ import annotations

import os
import random

import blake3
import pytest
import trio

from aifs_server.metadata.base import Attr, ChunkRef
from aifsfs.fuse.chunk_cache import ChunkCache, frame_align, slot_length, split_range
from aifsfs.fuse.readahead import ReadPattern
from aifsfs.fuse.write_buffer import DirtyChunk, FileState, WriteBuffers, store_chunk


def test_split_range() -> None:
    assert split_range(0, 0, 10) == []
    assert split_range(0, 10, 10) == [(0, 0, 10)]
    assert split_range(5, 10, 10) == [(0, 5, 5), (1, 0, 5)]
    assert split_range(25, 30, 10) == [(2, 5, 5), (3, 0, 10), (4, 0, 10), (5, 0, 5)]
    big = 5 << 30   # offsets past 4 GiB
    assert split_range(big + 3, 4, 1 << 20) == [(big >> 20, 3, 4)]


def test_frame_align_and_slot_length() -> None:
    F = 65536
    assert frame_align(0, 1, 1 << 20) == (0, F)
    assert frame_align(F - 1, 2, 1 << 20) == (0, 2 * F)
    assert frame_align(100, 10, 50_000) == (0, 50_000)       # clipped to the stored length
    assert frame_align(3 * F, 4096, 1 << 20) == (3 * F, 4 * F)
    assert slot_length(0, 0, 10) == 0
    assert slot_length(25, 2, 10) == 5
    assert slot_length(25, 1, 10) == 10
    assert slot_length(25, 3, 10) == 0


def test_cache_hits_slices_and_eviction() -> None:
    c = ChunkCache(100)
    c.put(b"a", 0, bytes(range(40)))
    assert c.get(b"a", 5, 10) == bytes(range(5, 15))
    assert c.get(b"a", 30, 20) is None                 # not covered
    c.put(b"a", 0, bytes(range(60)))                   # supersedes the smaller segment
    assert len(c) == 1 and c.used_bytes == 60
    c.put(b"b", 0, b"x" * 30)
    assert c.get(b"a", 0, 1) == b"\x00"                # a is now most recent
    c.put(b"c", 0, b"y" * 30)                          # 120 > 100: evicts LRU (b)
    assert c.get(b"b", 0, 1) is None
    assert c.get(b"a", 59, 1) == bytes([59])
    assert c.used_bytes <= 100
    c.put(b"huge", 0, b"z" * 101)                      # larger than the cache: not kept
    assert c.get(b"huge", 0, 1) is None
    c.put(b"a", 10, b"q" * 5)                          # covered by an existing segment
    assert c.get(b"a", 10, 5) == bytes(range(10, 15))


def test_dirty_chunk_intervals() -> None:
    d = DirtyChunk()
    d.write(10, b"abc")
    d.write(0, b"01")
    d.write(13, b"def")      # touches [10,13): merges
    assert d.intervals == [[0, 2], [10, 16]]
    assert not d.covers(16)
    d.write(2, b"x" * 8)
    assert d.intervals == [[0, 16]] and d.covers(16) and not d.covers(17)
    base = b"B" * 20
    assert d.overlay(base, 20) == b"01" + b"x" * 8 + b"abcdef" + b"BBBB"
    e = DirtyChunk()
    e.write(4, b"ZZ")
    assert e.overlay(b"", 8) == b"\0\0\0\0ZZ\0\0"            # no old content: zeros
    assert e.overlay(b"abcdefgh", 8) == b"abcdZZgh"
    assert e.overlay_range(b"cdef", 2) == b"cdZZ"
    assert e.overlay_range(b"gh", 6) == b"gh"
    e.truncate(5)
    assert e.intervals == [[4, 5]]


def test_dirty_chunk_random_model() -> None:
    rng = random.Random(5)
    size = 4096
    model = bytearray(b"o" * size)
    d = DirtyChunk()
    for _ in range(300):
        off = rng.randrange(size)
        n = rng.randrange(1, 300)
        n = min(n, size - off)
        data = os.urandom(n)
        d.write(off, data)
        model[off:off + n] = data
        iv = d.intervals
        assert all(iv[i][1] < iv[i + 1][0] for i in range(len(iv) - 1)), iv
    assert d.overlay(b"o" * size, size) == bytes(model)


def test_read_pattern() -> None:
    p = ReadPattern()
    assert p.observe(0, 4096)            # a read from the start counts as sequential
    assert p.observe(4096, 4096)
    assert not p.observe(1 << 20, 4096)  # a jump
    assert p.observe((1 << 20) + 4096, 4096)


class ChunkServer:
    """A tiny in-memory implementation of the calls the write buffer makes."""

    def __init__(self, cs: int) -> None:
        self.cs = cs
        self.chunks: dict[bytes, bytes] = {}
        self.puts = 0
        self.commits: list[tuple[list[ChunkRef], int, str]] = []
        self.fail = False

    def has_chunks(self, ids: list[bytes]) -> list[bool]:
        return [i in self.chunks for i in ids]

    def put_chunks(self, items: list[tuple[bytes, bytes]]) -> None:
        if self.fail:
            raise OSError(28, "No space left on device")
        for cid, data in items:
            assert blake3.blake3(data).digest() == cid
            self.chunks[cid] = bytes(data)
            self.puts += 1

    def commit_file(self, ino: int, refs: list[ChunkRef], size: int, truncated: bool = False,
                    mtime_ns: int = 0, asset_id: str = "") -> Attr:
        self.commits.append((list(refs), size, asset_id))
        return Attr(ino, 0o100644, 1, 0, 0, 0, size, 0, 0, 0, 0, len(self.commits))


def _state(cs: int, size: int = 0, refs: list[ChunkRef] | None = None) -> FileState:
    return FileState(2, cs, Attr(2, 0o100644, 1, 0, 0, 0, size, 0, 0, 0), refs or [])


def _file(server: ChunkServer, refs: list[ChunkRef], size: int) -> bytes:
    out = bytearray(size)
    for r in refs:
        data = server.chunks[r.chunk_id][:r.length]
        out[r.index * server.cs:r.index * server.cs + len(data)] = data
    return bytes(out[:size])


def test_store_chunk_holes_and_dedup() -> None:
    s = ChunkServer(16)
    assert store_chunk(s, 3, bytes(16)) == ChunkRef(3, b"", 0)
    r1 = store_chunk(s, 0, b"a" * 16)
    r2 = store_chunk(s, 5, b"a" * 16)
    assert r1.chunk_id == r2.chunk_id and s.puts == 1


def _run(fn: object) -> None:
    trio.run(fn)  # type: ignore[arg-type]


def test_sequential_write_uploads_behind_and_commits() -> None:
    cs = 64
    srv = ChunkServer(cs)

    async def main() -> None:
        async def read_base(ref: ChunkRef, n: int) -> bytes:
            raise AssertionError("sequential writes must not read old content")

        async with trio.open_nursery() as n:
            wb = WriteBuffers(srv, trio.CapacityLimiter(4), read_base, max_dirty_bytes=256)
            wb.start(n)
            st = _state(cs)
            data = os.urandom(10 * cs + 7)
            for i in range(0, len(data), 20):
                await wb.write(st, i, data[i:i + 20])
                assert wb.dirty_bytes + wb.inflight_bytes <= 256 + 20
            attr = await wb.flush(st)
            assert attr is not None and attr.size == len(data)
            refs = {r.index: r for c in srv.commits for r in c[0]}
            assert _file(srv, list(refs.values()), len(data)) == data
            assert srv.commits[-1][2] == blake3.blake3(data).hexdigest()  # whole-file id
            assert not st.is_dirty()
            assert await wb.flush(st) is None     # nothing more to commit
    _run(main)


def test_partial_write_merges_with_old_content() -> None:
    cs = 64
    srv = ChunkServer(cs)
    old = os.urandom(2 * cs)
    refs = [store_chunk(srv, 0, old[:cs]), store_chunk(srv, 1, old[cs:])]

    async def main() -> None:
        async def read_base(ref: ChunkRef, n: int) -> bytes:
            return srv.chunks[ref.chunk_id][:n]

        async with trio.open_nursery() as n:
            wb = WriteBuffers(srv, trio.CapacityLimiter(4), read_base)
            wb.start(n)
            st = _state(cs, 2 * cs, refs)
            await wb.write(st, 10, b"hello")
            await wb.write(st, 2 * cs, b"tail")     # extends the file
            await wb.flush(st)
            changed, size, asset = srv.commits[-1]
            assert sorted(r.index for r in changed) == [0, 2]   # slot 1 untouched
            assert size == 2 * cs + 4 and asset == ""           # not sequential from 0
            allrefs = {r.index: r for r in refs}
            allrefs.update({r.index: r for r in changed})
            expect = old[:10] + b"hello" + old[15:] + b"tail"
            assert _file(srv, list(allrefs.values()), size) == expect
    _run(main)


def test_failed_upload_keeps_data_and_reports() -> None:
    cs = 32
    srv = ChunkServer(cs)
    srv.fail = True

    async def main() -> None:
        async def read_base(ref: ChunkRef, n: int) -> bytes:
            return srv.chunks[ref.chunk_id][:n]

        async with trio.open_nursery() as n:
            wb = WriteBuffers(srv, trio.CapacityLimiter(4), read_base)
            wb.start(n)
            st = _state(cs)
            data = os.urandom(3 * cs)
            await wb.write(st, 0, data)
            with pytest.raises(OSError):
                await wb.flush(st)
            assert st.is_dirty()          # nothing lost
            srv.fail = False
            await wb.flush(st)
            refs = {r.index: r for c in srv.commits for r in c[0]}
            assert _file(srv, list(refs.values()), 3 * cs) == data
    _run(main)


def test_spill_when_memory_is_short() -> None:
    """Random partial writes over many slots: the buffer spills them (uploads partial slots,
    merged with old content) instead of growing past its bound."""
    cs = 64
    srv = ChunkServer(cs)
    old = os.urandom(20 * cs)
    refs = [store_chunk(srv, i, old[i * cs:(i + 1) * cs]) for i in range(20)]

    async def main() -> None:
        async def read_base(ref: ChunkRef, n: int) -> bytes:
            return srv.chunks[ref.chunk_id][:n]

        async with trio.open_nursery() as n:
            wb = WriteBuffers(srv, trio.CapacityLimiter(2), read_base, max_dirty_bytes=3 * cs)
            wb.start(n)
            st = _state(cs, 20 * cs, refs)
            model = bytearray(old)
            rng = random.Random(1)
            peak = 0
            for _ in range(200):
                off = rng.randrange(20 * cs - 8)
                buf = os.urandom(8)
                await wb.write(st, off, buf)
                model[off:off + 8] = buf
                peak = max(peak, wb.dirty_bytes + wb.inflight_bytes)
            assert peak <= 3 * cs + cs
            await wb.flush(st)
            allrefs = {r.index: r for r in refs}
            for c in srv.commits:
                allrefs.update({r.index: r for r in c[0]})
            assert _file(srv, list(allrefs.values()), 20 * cs) == bytes(model)
    _run(main)
