"""A sequential reader's consumed chunks leave the mount's memory cache (ChunkReader.consumed,
ChunkCache.discard) in files larger than a quarter of the cache; small files keep theirs. So do
a random reader's frames once pushed into the page cache (ChunkReader.push_read), unless the
push was dropped."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

import trio

from aifs_core.types import ChunkRef
from aifsfs.fuse.chunk_cache import ChunkCache
from aifsfs.fuse.readahead import ChunkReader

MiB = 1 << 20


def test_discard_drops_every_segment_of_a_chunk_only() -> None:
    c = ChunkCache(8 * MiB)
    c.put(b"a" * 32, 0, bytes(65536))
    c.put(b"a" * 32, 131072, bytes(65536))
    c.put(b"b" * 32, 0, bytes(MiB))
    c.discard(b"a" * 32)
    c.discard(b"c" * 32)              # not there: nothing happens
    assert c.get(b"a" * 32, 0, 10) is None and c.get(b"a" * 32, 131072, 10) is None
    assert c.get(b"b" * 32, 0, 10) == bytes(10)
    assert c.used_bytes == MiB and len(c) == 1


def test_consumed_only_in_files_larger_than_a_quarter_of_the_cache() -> None:
    cache = ChunkCache(8 * MiB)
    reader = ChunkReader(None, cache, trio.CapacityLimiter(1))  # type: ignore[arg-type]
    refs = {i: ChunkRef(i, bytes([i]) * 32, MiB) for i in range(4)}
    for r in refs.values():
        cache.put(r.chunk_id, 0, bytes(MiB))
    small = SimpleNamespace(size=2 * MiB, refs=refs)          # <= 8 MiB / 4: kept
    reader.consumed(small, [0, 1])
    assert cache.used_bytes == 4 * MiB
    big = SimpleNamespace(size=4 * MiB, refs=refs)            # > 2 MiB: consumed ones go
    reader.consumed(big, [0, 1, 9])                           # slot 9: no ref, ignored
    assert cache.used_bytes == 2 * MiB
    assert cache.get(refs[0].chunk_id, 0, 1) is None
    assert cache.get(refs[2].chunk_id, 0, 1) == b"\0"


def _pushing_reader(max_pending: int) -> tuple[ChunkReader, ChunkCache, Any, list[int]]:
    """A reader whose page pusher stores into a list (positions pushed), started."""
    from aifsfs.fuse.page_push import PagePusher

    cache = ChunkCache(8 * MiB)
    reader = ChunkReader(None, cache, trio.CapacityLimiter(1))  # type: ignore[arg-type]
    pushed: list[int] = []
    pages = PagePusher(store=lambda ino, pos, data: pushed.append(pos),
                       max_pending=max_pending).start()
    reader.pages = pages
    return reader, cache, pages, pushed


def test_a_random_readers_pushed_frames_leave_the_memory_cache_in_large_files_only() -> None:
    reader, cache, pages, pushed = _pushing_reader(32 * MiB)
    try:
        refs = {0: ChunkRef(0, b"c" * 32, MiB)}
        for size, kept in ((4 * MiB, False), (MiB, True)):     # > and <= 8 MiB / 4
            cache.put(refs[0].chunk_id, 65536, bytes(65536))    # the frame a 4 KiB read got
            st = SimpleNamespace(ino=7, size=size, refs=refs, chunk_size=MiB,
                                 is_dirty=lambda: False)
            t = pages.target(st)
            reader.push_read(t, st, 65536 + 4096, 65536 + 8192)
            deadline = time.monotonic() + 10
            while not pushed and time.monotonic() < deadline:
                time.sleep(0.01)
            assert pushed == [65536], pushed                   # the whole frame, once
            assert (cache.get(refs[0].chunk_id, 65536, 1) is not None) == kept, size
            pushed.clear()
    finally:
        pages.close()


def test_a_frame_whose_push_was_dropped_stays_in_the_memory_cache() -> None:
    reader, cache, pages, pushed = _pushing_reader(0)          # every offer dropped
    try:
        refs = {0: ChunkRef(0, b"d" * 32, MiB)}
        cache.put(refs[0].chunk_id, 0, bytes(65536))
        st = SimpleNamespace(ino=8, size=4 * MiB, refs=refs, chunk_size=MiB,
                             is_dirty=lambda: False)
        reader.push_read(pages.target(st), st, 4096, 8192)
        assert pages.counters["dropped"] == 1 and not pushed
        assert cache.get(refs[0].chunk_id, 0, 1) is not None
    finally:
        pages.close()
