"""DiskCache (aifsfs/fuse/disk_cache.py) on a real directory: round trips of whole chunks and
frames, LRU within the size, torn / altered / swapped entries never served, nothing readable
by a second cache (the key is per instance), dead mounts' directories swept, `aifs cache`
helpers (scan, clear_dir) against a live cache."""

from __future__ import annotations

import errno
import os
import random
import shutil
from pathlib import Path

import pytest

from aifsfs.fuse.chunk_cache import FRAME_SIZE
from aifsfs.fuse.disk_cache import PACK_ENTRY_MAX, SLOT, DiskCache, clear_dir, scan

MiB = 1 << 20


@pytest.fixture
def cache(tmp_path: Path):  # type: ignore[no-untyped-def]
    c = DiskCache(str(tmp_path / "dc"), 8 * MiB).open()
    try:
        yield c
    finally:
        c.close()


def _chunk(seed: int, n: int = MiB + 1234) -> bytes:
    return random.Random(seed).randbytes(n)


def _files(c: DiskCache) -> list[Path]:
    return [p for p in c.dir.glob("*/*") if p.is_file()]


def test_whole_chunk_and_frames_round_trip(cache: DiskCache) -> None:
    data = _chunk(1)
    cache.submit(b"A" * 32, 0, data)
    assert cache.flush(10)
    assert cache.has(b"A" * 32, 0, len(data))
    assert cache.read(b"A" * 32, 0, len(data)) == data
    # a range inside: only its frames are read
    assert cache.read(b"A" * 32, 70_000, 70_000 + 4096) == data[70_000:74_096]
    assert cache.read(b"A" * 32, len(data) - 10, len(data)) == data[-10:]
    # frames of another chunk, filled piece by piece (random reads)
    other = _chunk(2)
    cache.submit(b"B" * 32, 3 * FRAME_SIZE, other[3 * FRAME_SIZE:5 * FRAME_SIZE])
    assert cache.flush(10)
    assert cache.has(b"B" * 32, 3 * FRAME_SIZE, 5 * FRAME_SIZE)
    assert not cache.has(b"B" * 32, 0, FRAME_SIZE)
    assert cache.read(b"B" * 32, 0, FRAME_SIZE) is None
    assert cache.read(b"B" * 32, 4 * FRAME_SIZE + 5, 4 * FRAME_SIZE + 99) == \
        other[4 * FRAME_SIZE + 5:4 * FRAME_SIZE + 99]
    s = cache.stats()
    assert s["entries"] == 2 and s["hits"] == 4 and s["misses"] == 1 and s["corrupt"] == 0


def test_nothing_on_disk_is_plaintext_or_names_the_chunk(cache: DiskCache) -> None:
    data = b"secret-bytes-" * 10000
    cid = bytes.fromhex("ab" * 32)
    cache.submit(cid, 0, data)
    assert cache.flush(10)
    (f,) = _files(cache)
    raw = f.read_bytes()
    assert b"secret-bytes-" not in raw
    assert "ab" * 8 not in f.name


def test_lru_eviction_keeps_within_the_size(tmp_path: Path) -> None:
    c = DiskCache(str(tmp_path / "dc"), 3 * (16 * SLOT)).open()   # three 1 MiB chunks
    try:
        chunks = {bytes([i]) * 32: _chunk(i, MiB) for i in range(5)}
        for i, (cid, d) in enumerate(chunks.items()):
            c.submit(cid, 0, d)
            assert c.flush(10)
            if i == 2:
                assert c.read(bytes([0]) * 32, 0, 10) is not None  # 0 is now recent
        assert c.used_bytes <= c.capacity
        assert len(_files(c)) == 3
        kept = [cid for cid in chunks if c.has(cid, 0, MiB)]
        assert kept == [bytes([0]) * 32, bytes([3]) * 32, bytes([4]) * 32]
        assert c.stats()["evicted"] == 2
    finally:
        c.close()


@pytest.mark.parametrize("damage", ["flip", "truncate", "zero-slot", "swap"])
def test_a_damaged_entry_is_dropped_never_served(cache: DiskCache, damage: str) -> None:
    a, b = _chunk(3), _chunk(4)
    cache.submit(b"A" * 32, 0, a)
    cache.submit(b"B" * 32, 0, b)
    assert cache.flush(10)
    fa, fb = (cache.dir / e.name[:2] / e.name
              for e in (cache._index[b"A" * 32], cache._index[b"B" * 32]))
    raw = bytearray(fa.read_bytes())
    if damage == "flip":
        raw[SLOT * 2 + 100] ^= 1
    elif damage == "truncate":
        raw = raw[: SLOT * 2 + 5]
    elif damage == "zero-slot":   # what a torn write leaves: a hole
        raw[SLOT * 2:SLOT * 3] = bytes(SLOT)
    else:                         # another chunk's frames under this name
        raw = bytearray(fb.read_bytes())
    fa.write_bytes(bytes(raw))
    cid = b"A" * 32
    assert cache.read(cid, 0, len(a)) is None
    assert not cache.has(cid, 0, FRAME_SIZE)      # dropped: the next read refetches
    assert not fa.exists()
    assert cache.stats()["corrupt"] == 1
    assert cache.read(b"B" * 32, 0, len(b)) == b   # the other entry is fine


def test_a_second_cache_on_the_same_root_starts_cold_and_sweeps_the_dead(tmp_path: Path) -> None:
    root = str(tmp_path / "dc")
    first = DiskCache(root, 8 * MiB).open()
    first.submit(b"A" * 32, 0, _chunk(5))
    assert first.flush(10)
    dead_dir = first.dir
    # a crash: the process dies with its files on disk; its flock goes with it
    assert first._thread is not None
    first._queue.put(None)
    first._thread.join(10)
    os.close(first._lock_fd)
    first._lock_fd = -1
    second = DiskCache(root, 8 * MiB).open()
    try:
        assert not dead_dir.exists()
        assert not second.has(b"A" * 32, 0, 10)
        assert second.read(b"A" * 32, 0, 10) is None
    finally:
        second.close()


def test_scan_and_clear_a_live_cache(cache: DiskCache) -> None:
    cache.submit(b"A" * 32, 0, _chunk(6))
    assert cache.flush(10)
    dead = cache.root / "m-deadbeef0000"
    dead.mkdir()
    (dead / "x").write_bytes(b"1" * 5000)
    rows = {Path(r["dir"]).name: r for r in scan(str(cache.root))}
    assert rows[cache.dir.name]["live"] and rows[cache.dir.name]["files"] == 1
    assert not rows["m-deadbeef0000"]["live"]
    removed, live = clear_dir(str(cache.root))
    assert (removed, live) == (1, 1)
    assert not dead.exists()
    assert not cache.has(b"A" * 32, 0, 10) and _files(cache) == []
    assert cache.used_bytes == 0


def test_writes_beyond_the_pending_bound_are_dropped(tmp_path: Path) -> None:
    c = DiskCache(str(tmp_path / "dc"), 64 * MiB, max_pending=MiB).open()
    try:
        for i in range(20):
            c.submit(bytes([i]) * 32, 0, _chunk(i, MiB))
        assert c.flush(10)
        s = c.stats()
        assert s["dropped"] > 0 and s["entries"] + s["dropped"] == 20
    finally:
        c.close()


def test_a_big_chunk_is_written_in_several_vectored_writes(tmp_path: Path) -> None:
    c = DiskCache(str(tmp_path / "dc"), 64 * MiB, max_pending=64 * MiB).open()
    try:
        data = _chunk(9, 20 * MiB + 3)          # 321 frames: more iovecs than one call takes
        c.submit(b"Z" * 32, 0, data)
        assert c.flush(20)
        assert c.read(b"Z" * 32, 0, len(data)) == data
    finally:
        c.close()


@pytest.mark.parametrize("direct", [True, False])
def test_direct_and_buffered_writes_same_slots(tmp_path: Path, direct: bool) -> None:
    """Entries are written and read with O_DIRECT where the file system takes it (tmp_path
    is on a disk here) and buffered where it does not: the same slots either way, whole chunks,
    a lone short last frame and frames added later to an entry."""
    root = tmp_path / "dc"
    c = DiskCache(str(root), 64 * MiB).open()
    if not direct:
        c._direct = c._direct_reads = False     # as after a file system refused O_DIRECT
    try:
        data = _chunk(7, 3 * MiB + 5)      # more frames than one write takes, a short last
        c.submit(b"D" * 32, 0, data)
        tail = len(data) - len(data) % FRAME_SIZE
        c.submit(b"E" * 32, tail, data[tail:])
        c.submit(b"E" * 32, FRAME_SIZE, data[FRAME_SIZE:2 * FRAME_SIZE])
        assert c.flush(10)
        assert c.read(b"D" * 32, 0, len(data)) == data
        assert c.read(b"E" * 32, tail, len(data)) == data[tail:]
        assert c.read(b"E" * 32, FRAME_SIZE + 3, 2 * FRAME_SIZE) == \
            data[FRAME_SIZE + 3:2 * FRAME_SIZE]
        s = c.stats()
        assert s["errors"] == 0 and s["corrupt"] == 0
        # fully written slots: the whole file is slot-sized (padding included)
        frames = len(range(0, len(data), FRAME_SIZE))
        assert sorted(p.stat().st_size for p in _files(c)) == [frames * SLOT] * 2
        assert c._direct is direct or not hasattr(os, "O_DIRECT")
    finally:
        c.close()
        shutil.rmtree(root, ignore_errors=True)


def test_a_file_system_refusing_direct_reads_is_read_buffered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """O_DIRECT refused at open (EINVAL, as some file systems do) or at the read (our
    alignment): the read is served buffered, and later reads no longer ask for it."""
    c = DiskCache(str(tmp_path / "dc"), 64 * MiB).open()
    try:
        data = _chunk(8, 2 * MiB)
        c.submit(b"R" * 32, 0, data)
        assert c.flush(10)
        real_open, refused = os.open, []

        def no_direct(path: str, flags: int, *a: int) -> int:
            if flags & getattr(os, "O_DIRECT", 0) and not flags & os.O_WRONLY:
                refused.append(path)
                raise OSError(errno.EINVAL, "no O_DIRECT here")
            return real_open(path, flags, *a)

        monkeypatch.setattr(os, "open", no_direct)
        c._direct_reads = True
        assert c.read(b"R" * 32, 0, len(data)) == data
        assert c.read(b"R" * 32, MiB + 7, MiB + 4096) == data[MiB + 7:MiB + 4096]
        assert len(refused) == (1 if hasattr(os, "O_DIRECT") else 0) and not c._direct_reads
        s = c.stats()
        assert s["corrupt"] == 0 and s["hits"] == 2
    finally:
        monkeypatch.undo()
        c.close()


def _packs(c: DiskCache) -> list[Path]:
    return sorted((c.dir / "packs").glob("*"), key=lambda p: int(p.name))


def test_small_whole_chunks_share_packs_not_files(cache: DiskCache) -> None:
    """Whole chunks up to PACK_ENTRY_MAX go into pack files (no file each), read back exact
    in any range; a chunk filled frame by frame or a bigger one still gets its own file."""
    sizes = [1, 4096, FRAME_SIZE - 1, FRAME_SIZE, FRAME_SIZE + 1, 150_000, PACK_ENTRY_MAX]
    chunks = {bytes([i]) * 32: _chunk(100 + i, n) for i, n in enumerate(sizes * 3)}
    for cid, d in chunks.items():
        cache.submit(cid, 0, d, whole=True)
    cache.submit(b"F" * 32, 0, _chunk(9, PACK_ENTRY_MAX + 1), whole=True)   # too big to pack
    cache.submit(b"G" * 32, FRAME_SIZE, _chunk(8, FRAME_SIZE))     # not whole
    assert cache.flush(10)
    packs = _packs(cache)
    # ~4.9 MiB of slots in packs of 2.1 MiB (a sixteenth of this small cache, at least two
    # entries of PACK_ENTRY_MAX): a few packs, no file each
    assert 1 < len(packs) <= 3 and cache.stats()["packs"] == len(packs)
    assert len([p for p in _files(cache) if p.parent.name != "packs"]) == 2
    for cid, d in chunks.items():
        assert cache.has(cid, 0, len(d))
        assert cache.read(cid, 0, len(d)) == d
        assert cache.read(cid, len(d) // 2, len(d)) == d[len(d) // 2:]
    raw = b"".join(p.read_bytes() for p in packs)
    assert all(d[:64] not in raw for d in chunks.values() if len(d) >= 64)   # sealed
    s = cache.stats()
    assert s["corrupt"] == 0 and s["entries"] == len(chunks) + 2
    # the packs' bytes, whole, and each own file's slots
    assert cache.used_bytes == sum(p.stat().st_size for p in packs) + sum(
        e.nbytes for e in cache._index.values())


def test_packs_are_evicted_whole_oldest_first(tmp_path: Path) -> None:
    c = DiskCache(str(tmp_path / "dc"), 256 * SLOT).open()
    try:
        per_pack = c._pack_bytes // (2 * SLOT)              # two-frame entries a pack takes
        held = c.capacity // c._pack_bytes * per_pack        # about what the capacity holds
        ids = [i.to_bytes(4, "big") * 8 for i in range(held + 4 * per_pack)]
        for cid in ids:
            c.submit(cid, 0, _chunk(int.from_bytes(cid[:4], "big"), FRAME_SIZE + 7),
                     whole=True)
            assert c.flush(10)
        assert c.used_bytes <= c.capacity
        assert c.used_bytes == sum(p.stat().st_size for p in _packs(c))
        kept = [cid for cid in ids if c.has(cid, 0, FRAME_SIZE + 7)]
        # whole packs went, the oldest first: what is left is the newest, in one run
        assert kept == ids[len(ids) - len(kept):] and len(kept) % per_pack == 0
        assert 0 < len(kept) < len(ids) and c.stats()["evicted"] == len(ids) - len(kept)
        assert int(_packs(c)[0].name) > 1                   # pack 1 is gone
        assert c.read(ids[-1], 0, FRAME_SIZE + 7) == _chunk(len(ids) - 1, FRAME_SIZE + 7)
    finally:
        c.close()


def test_a_damaged_packed_entry_is_dropped_alone(cache: DiskCache) -> None:
    chunks = {bytes([i]) * 32: _chunk(200 + i, 2 * FRAME_SIZE + i) for i in range(3)}
    for cid, d in chunks.items():
        cache.submit(cid, 0, d, whole=True)
    assert cache.flush(10)
    (pack,) = _packs(cache)
    victim = bytes([1]) * 32
    with open(pack, "r+b") as f:                 # a flipped bit in the middle entry's slot
        at = cache._index[victim].base * SLOT + 40
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 1]))
    assert cache.read(victim, 0, 10) is None
    assert not cache.has(victim, 0, 10) and cache.stats()["corrupt"] == 1
    for cid, d in chunks.items():
        if cid != victim:
            assert cache.read(cid, 0, len(d)) == d
    cache.clear()
    assert cache.used_bytes == 0 and _packs(cache) == [] and cache.stats()["packs"] == 0
    cache.submit(victim, 0, chunks[victim], whole=True)          # a new pack after a clear
    assert cache.flush(10)
    assert cache.read(victim, 0, len(chunks[victim])) == chunks[victim]


def test_read_many_reads_neighbours_in_a_pack_together(cache: DiskCache,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Whole entries back to back in a pack come from one pread per run (counted), exact;
    ranges that are not whole entries, absent ones and a damaged one are read() as before."""
    chunks = {bytes([i]) * 32: _chunk(300 + i, FRAME_SIZE * 2 + 1000 * i) for i in range(8)}
    for cid, d in chunks.items():
        cache.submit(cid, 0, d, whole=True)
    assert cache.flush(10)
    preads: list[int] = []
    real = cache._pread

    def counted(path: str, view: memoryview, offset: int) -> int:
        preads.append(len(view))
        return real(path, view, offset)

    monkeypatch.setattr(cache, "_pread", counted)
    ids = list(chunks)
    asked = [(cid, 0, len(chunks[cid])) for cid in ids[:5]] + [
        (b"Q" * 32, 0, 10),                        # absent
        (ids[6], 5, 70_000),                       # part of an entry
        (ids[7], 0, len(chunks[ids[7]]))]
    got = cache.read_many(asked)
    assert got[:5] == [chunks[cid] for cid in ids[:5]]
    assert got[5] is None and got[6] == chunks[ids[6]][5:70_000]
    assert got[7] == chunks[ids[7]]
    # the first 5 entries (2 + 4 x 3 slots, under the 16 of a run): one pread; the part and
    # the last entry (not next to the fifth) one each
    assert sorted(preads) == [2 * SLOT, 3 * SLOT, 14 * SLOT], preads
    # a damaged entry in the middle of a run: dropped, counted, its neighbours still served
    (pack,) = _packs(cache)
    with open(pack, "r+b") as f:
        at = cache._index[ids[2]].base * SLOT + 40
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 1]))
    got = cache.read_many([(cid, 0, len(chunks[cid])) for cid in ids[:4]])
    assert got[2] is None and [got[k] for k in (0, 1, 3)] == [chunks[ids[k]] for k in (0, 1, 3)]
    assert cache.stats()["corrupt"] == 1 and not cache.has(ids[2], 0, 10)
