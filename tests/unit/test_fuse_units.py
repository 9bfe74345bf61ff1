"""Pure parts of the mount: chunk/frame arithmetic, the byte-bounded chunk cache, dirty-chunk
interval bookkeeping and overlays (against a bytearray model), and the sequential-read detector.

The write buffer's upload/commit logic (WriteBuffers, FileState, store_chunk) talks to a server,
so it is tested against a real one in tests/integration/test_write_buffer.py."""

from __future__ import annotations

import os
import random

from aifsfs.fuse.chunk_cache import ChunkCache, frame_align, slot_length, split_range
from aifsfs.fuse.readahead import RANDOM_READS, SEQ_RESUME_BYTES, ReadPattern, ReadWindow
from aifsfs.fuse.write_buffer import DirtyChunk


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


def test_a_random_readers_neighbouring_misses_start_no_read_ahead() -> None:
    w = ReadWindow(4)
    offsets = [(i * 7919 % 1000) << 20 for i in range(1, RANDOM_READS + 1)]
    for off in offsets:
        assert not w.observe(off, 4096)
    assert w.wants_fill(1 << 30, 2 << 30)       # shown random access
    # misses side by side (the page cache holds the rest of the file): still random
    base = 500 << 20
    assert not w.observe(base, 4096)
    for k in range(1, 4):
        assert not w.observe(base + k * 4096, 4096), k
    # a jump, then a real sequential run in the kernel's read-ahead requests: sequential again
    # once it covered SEQ_RESUME_BYTES, and from then on judged as a fresh handle
    assert not w.observe(900 << 20, 4096)
    pos, step = (900 << 20) + 4096, 128 << 10
    got = []
    while pos < (900 << 20) + 4096 + 2 * SEQ_RESUME_BYTES:
        got.append(w.observe(pos, step))
        pos += step
    first = got.index(True)
    assert first == SEQ_RESUME_BYTES // step - 1 and all(got[first:]), got
    assert w.random_reads == 0


def test_slots_a_sequential_reader_went_past_are_each_passed_once() -> None:
    cs, size = 1 << 20, (10 << 20) + 100          # 11 slots, the last one 100 bytes
    w = ReadWindow(4)
    assert list(w.passed(0, 512 << 10, cs, size)) == []          # inside slot 0
    assert list(w.passed(512 << 10, cs, cs, size)) == [0]        # slot 0 read to its end
    # the kernel held slots 1-3 (read ahead, never asked for): going past them passes them
    assert list(w.passed(4 * cs, 5 * cs + 4096, cs, size)) == [1, 2, 3, 4]
    assert list(w.passed(5 * cs + 4096, 6 * cs, cs, size)) == [5]
    assert list(w.passed(10 * cs, size, cs, size)) == [6, 7, 8, 9, 10]   # the short last slot
    assert list(w.passed(0, cs, cs, size)) == [0]     # a reader back at the start: again


def test_a_fresh_handle_is_sequential_from_its_second_read() -> None:
    w = ReadWindow(4)
    assert w.observe(0, 131072) and w.observe(131072, 131072)
    assert not w.observe(1 << 30, 4096)
    assert w.observe((1 << 30) + 4096, 4096)    # fewer than RANDOM_READS random reads yet
