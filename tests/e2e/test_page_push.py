"""Random reads over a real server and real mounts, with the mount pushing decrypted frames and
filled files into the kernel's page cache (aifsfs/fuse/page_push.py): 16 concurrent readers
get byte-exact data while the chunks come from the server, the page cache and the disk cache;
once a random reader's file is filled its pages are resident (mincore) and repeated random
reads cost no GetChunks call (counted from the server's Prometheus metrics); and a push never
undoes a write, a truncate or another mount's change."""

from __future__ import annotations

import ctypes
import mmap
import os
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount
from tests.e2e.test_disk_cache import get_chunks_calls
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

MiB = 1 << 20
SIZE = 24 * MiB + 4096 + 5        # a partial last chunk, and a partial last page


def _data(seed: str, size: int = SIZE) -> bytes:
    return random.Random(seed).randbytes(size)


def _put(mount_factory: Callable[..., Mount], sp: ServerProc, name: str, data: bytes) -> None:
    w = mount_factory(sp, "--cache-size", "0")
    (w.path / name).write_bytes(data)
    w.unmount()


def _reader(mount_factory: Callable[..., Mount], sp: ServerProc, tmp_path: Path) -> Mount:
    # 2 MiB of memory cache: most chunks must come from the disk cache or the page cache
    return mount_factory(sp, "--cache-dir", str(tmp_path / "dc"), "--cache-size", "256M",
                         "--mem-cache-size", "2M")


def _random_readers(path: Path, data: bytes, n_threads: int = 16, reads: int = 150,
                    seed: int = 0, sizes: tuple[int, ...] = (4096, 4096, 4096, 1, 9000, 70000)
                    ) -> None:
    """n_threads readers of random 4 KiB ranges (and a few odd sizes), each checked."""
    errors: list[str] = []

    def one(k: int) -> None:
        rng = random.Random(seed * 1000 + k)
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
            for _ in range(reads):
                off = rng.randrange(len(data))
                n = rng.choice(sizes)
                if os.pread(fd, n, off) != data[off:off + n]:
                    errors.append(f"reader {k}: bytes {off}+{n} differ")
                    return
        except OSError as exc:
            errors.append(f"reader {k}: {exc}")
        finally:
            os.close(fd)

    threads = [threading.Thread(target=one, args=(k,)) for k in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]


def _drop_pages(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def _resident_pages(path: Path) -> tuple[int, int]:
    """(pages of the file in the page cache, pages of the file), from mincore(2)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    pages = -(-size // mmap.PAGESIZE)
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            vec = (ctypes.c_ubyte * pages)()
            if libc.mincore(addr, size, vec) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
            return sum(b & 1 for b in vec), pages
        finally:
            libc.munmap(addr, size)
    finally:
        os.close(fd)


def _settled_calls(sp: ServerProc, quiet: float = 1.5, timeout: float = 120) -> int:
    """GetChunks calls once they stop growing (the background fill is done)."""
    deadline = time.monotonic() + timeout
    last, since = get_chunks_calls(sp), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = get_chunks_calls(sp)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError("GetChunks calls kept growing: the fill never finished")


def _wait_resident(path: Path, timeout: float = 60) -> None:
    """Until 90% of the file's pages are in the page cache (the kernel may reclaim a few
    under other load: the machine is shared)."""
    deadline = time.monotonic() + timeout
    got = (0, 1)
    while time.monotonic() < deadline:
        got = _resident_pages(path)
        if got[0] >= got[1] * 0.9:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {got[0]} of {got[1]} pages came into the page cache")


def test_sixteen_random_readers_exact_from_every_layer(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    data = _data("layers")
    _put(mount_factory, metered, "r.bin", data)
    m = _reader(mount_factory, metered, tmp_path)
    path = m.path / "r.bin"
    # held open throughout, as fio holds its file: a reopen with no handle left may drop the
    # kernel's pages on its own (seen ~1 in 3 runs about a second after the last close; not
    # the pushes' doing), which would make the residency below a race
    holder = os.open(path, os.O_RDONLY)
    try:
        # 1. cold: from the server (and the fill it starts, pushing into the page cache);
        # these reads touch at most 16 * 20 * 3 pages of 6146 themselves
        before = get_chunks_calls(metered)
        _random_readers(path, data, reads=20, seed=1, sizes=(4096, 1, 9000))
        assert get_chunks_calls(metered) > before
        _settled_calls(metered)
        _wait_resident(path)
        # 2. from the page cache the pushes filled: no call at all
        before = get_chunks_calls(metered)
        _random_readers(path, data, seed=2)
        # 3. page cache dropped, memory cache 2 MiB: from the disk cache, still no call
        _drop_pages(path)
        assert _resident_pages(path)[0] < _resident_pages(path)[1] // 2
        _random_readers(path, data, seed=3)
        assert get_chunks_calls(metered) == before
        # every byte, read in one pass, matches too
        assert path.read_bytes() == data
    finally:
        os.close(holder)


def test_a_write_or_truncate_during_the_fill_is_never_undone(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    # big enough that the fill (started by the 8th random read) is still running when the
    # writes come
    data = bytearray(_data("write", 64 * MiB + 5))
    _put(mount_factory, metered, "r.bin", bytes(data))
    m = _reader(mount_factory, metered, tmp_path)
    path = m.path / "r.bin"
    rng = random.Random(9)
    for round_ in range(3):
        _drop_pages(path)
        _random_readers(path, bytes(data), n_threads=1, reads=10, seed=10 + round_)
        # the fill is pushing old content now: overwrite pieces all over the file
        with open(path, "r+b") as f:
            for _ in range(8):
                off = rng.randrange(len(data) - 70000)
                new = rng.randbytes(rng.choice([4096, 70000]))
                f.seek(off)
                f.write(new)
                data[off:off + len(new)] = new
        _settled_calls(metered)
        assert path.read_bytes() == data, f"round {round_}: a push undid a write"
    # a truncate while pushing: the size stays, nothing old comes back past it
    _drop_pages(path)
    _random_readers(path, bytes(data), n_threads=1, reads=10, seed=20)
    os.truncate(path, 3 * MiB + 7)
    del data[3 * MiB + 7:]
    _settled_calls(metered)
    time.sleep(0.5)
    assert os.path.getsize(path) == len(data)
    assert path.read_bytes() == data


def test_another_mounts_change_is_seen_at_reopen(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    old, new = _data("old", 64 * MiB), _data("new", 64 * MiB)
    _put(mount_factory, metered, "r.bin", old)
    a = _reader(mount_factory, metered, tmp_path)
    b = mount_factory(metered, "--cache-size", "0")
    _random_readers(a.path / "r.bin", old, n_threads=1, reads=10, seed=30)
    (b.path / "r.bin").write_bytes(new)          # while a's fill may still push old pages
    _settled_calls(metered)
    assert (a.path / "r.bin").read_bytes() == new
    _random_readers(a.path / "r.bin", new, n_threads=4, reads=100, seed=31)


def test_a_fill_for_the_page_cache_stops_when_its_file_is_closed(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """A random reader starts a whole-file fill; once its last handle closes nobody reads the
    pages the fill would push, so a fill for the page cache alone (no disk cache) stops:
    continuing, it fetched and pushed the whole file while the next thing ran (`aifs bench`'s
    stat phase after fio: 40k -> 20k files/s). GetChunks calls counted by the server."""
    chunks = 96
    data = _data("closed", chunks * MiB)
    _put(mount_factory, metered, "c.bin", data)
    m = mount_factory(metered, "--cache-size", "0", "--mem-cache-size", "2M")
    path = m.path / "c.bin"
    before = get_chunks_calls(metered)
    rng = random.Random(5)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        for i in range(12):     # past RANDOM_READS: the fill starts
            off = rng.randrange(chunks) * MiB + rng.randrange(MiB - 4096)
            assert os.pread(fd, 4096, off) == data[off:off + 4096], i
    finally:
        os.close(fd)
    calls = _settled_calls(metered) - before
    # the reads' own (at most one each) and the fill's first few in flight at the close;
    # a fill that went on fetched every chunk (~96 calls more)
    assert 0 < calls < chunks // 2, calls


def _random_reads_then_close(m: Mount, name: str, data: bytes, seed: int) -> None:
    fd = os.open(m.path / name, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        rng = random.Random(seed)
        for i in range(12):     # past RANDOM_READS: the fill starts
            off = rng.randrange(len(data) - 4096)
            assert os.pread(fd, 4096, off) == data[off:off + 4096], i
    finally:
        os.close(fd)


@pytest.mark.parametrize("after_close", ["0", "60"])
def test_a_fill_for_the_disk_cache_stops_a_while_after_the_close(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, after_close: str) -> None:
    """A fill that also fills the disk cache goes on after the last close for
    FILL_AFTER_CLOSE seconds (AIFS_FILL_AFTER_CLOSE), then stops: with 0 it stops at the
    close (GetChunks counted: well under one a chunk), with 60 it fetches the rest of the
    file (one call or more a chunk, the reads' own included)."""
    chunks = 96
    data = _data("after-close", chunks * MiB)
    _put(mount_factory, metered, "a.bin", data)
    monkeypatch.setenv("AIFS_FILL_AFTER_CLOSE", after_close)
    m = _reader(mount_factory, metered, tmp_path)
    before = get_chunks_calls(metered)
    _random_reads_then_close(m, "a.bin", data, 7)
    calls = _settled_calls(metered) - before
    if after_close == "0":
        assert 0 < calls < chunks // 2, calls
    else:
        assert calls >= chunks - 12, calls     # every chunk, but the reads' whole frames
