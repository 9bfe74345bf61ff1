"""A sequential reader's consumed chunks leave the mount's memory cache (ChunkReader.consumed,
ChunkCache.discard) in files larger than a quarter of the cache; small files keep theirs."""

from __future__ import annotations

from types import SimpleNamespace

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
