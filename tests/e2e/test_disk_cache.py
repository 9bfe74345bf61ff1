"""The mount's local disk cache over a real server and real mounts: epoch 2 of a data set, with
the page cache dropped and an in-memory chunk cache far smaller than the data, costs no
GetChunks call (counted from the server's Prometheus metrics); a damaged cache file is dropped
and refetched, never served; a restarted mount starts cold (its key is gone) and removes what
a killed mount left; `aifs cache stats|clear` on a live mount."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from aifsfs.fuse.disk_cache import SLOT, scan
from tests.e2e.conftest import Mount
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

MiB = 1 << 20
FILES = {f"d/part-{i}.bin": 3 * MiB + 1000 * i for i in range(5)} | {"d/big.bin": 6 * MiB + 77}
TOTAL = sum(FILES.values())


def get_chunks_calls(sp: ServerProc) -> int:
    url = sp.ready_line.split("metrics on ", 1)[1].rstrip(")")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return int(sum(float(line.split()[-1]) for line in text.splitlines()
                   if line.startswith("aifs_rpc_total{") and 'method="GetChunks"' in line))


def _data(name: str, size: int) -> bytes:
    return random.Random(name).randbytes(size)


def _populate(mount_factory: Callable[..., Mount], sp: ServerProc) -> None:
    w = mount_factory(sp, "--cache-size", "0")
    (w.path / "d").mkdir()
    for name, size in FILES.items():
        with open(w.path / name, "wb") as f:
            f.write(_data(name, size))
    w.unmount()


def _reader(mount_factory: Callable[..., Mount], sp: ServerProc, cache_dir: Path) -> Mount:
    # 2 MiB of memory cache for 21 MiB of data: epoch 2 cannot come from there
    return mount_factory(sp, "--cache-dir", str(cache_dir), "--cache-size", "256M",
                         "--mem-cache-size", "2M")


def _epoch(m: Mount) -> None:
    for name, size in FILES.items():
        with open(m.path / name, "rb") as f:
            got = f.read()
        assert len(got) == size and hashlib.sha256(got).digest() == \
            hashlib.sha256(_data(name, size)).digest(), name


def _drop_page_cache(m: Mount) -> None:
    # These files' clean pages only, not the machine's (drop_caches): a global drop reached
    # the test running on the other worker (test_dir_prefetch's first epoch then found its
    # pushed pages gone and prefetched the directory a second time)
    for name in FILES:
        fd = os.open(m.path / name, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _live_stats(cache_dir: Path, settled: Callable[[dict[str, Any]], bool],
                timeout: float = 20.0) -> dict[str, Any]:
    """The live mount's published counters, once `settled` holds (published every 0.5 s)."""
    deadline = time.monotonic() + timeout
    s: dict[str, Any] = {}
    while time.monotonic() < deadline:
        live = [r for r in scan(str(cache_dir)) if r["live"]]
        if live and live[0]["stats"]:
            s = live[0]["stats"]
            if settled(s):
                return s
        time.sleep(0.1)
    raise AssertionError(f"disk cache stats did not settle: {s}")


def _written(s: dict[str, Any]) -> bool:
    return s["pending_bytes"] == 0 and s["written_bytes"] >= TOTAL


def test_epoch_two_costs_no_get_chunks_call(metered: ServerProc, mount_factory: Callable[..., Mount],
                                            tmp_path: Path) -> None:
    _populate(mount_factory, metered)
    m = _reader(mount_factory, metered, tmp_path / "dc")
    before = get_chunks_calls(metered)
    _epoch(m)
    assert get_chunks_calls(metered) > before        # epoch 1 went to the server
    s1 = _live_stats(tmp_path / "dc", _written)
    _drop_page_cache(m)
    before = get_chunks_calls(metered)
    _epoch(m)
    assert get_chunks_calls(metered) == before
    # ... and the reads did reach the mount: served by the disk cache, all of the data
    s2 = _live_stats(tmp_path / "dc", lambda s: s["hit_bytes"] - s1["hit_bytes"] >= TOTAL)
    assert s2["corrupt"] == 0


def test_a_damaged_cache_file_is_refetched_never_served(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    _populate(mount_factory, metered)
    m = _reader(mount_factory, metered, tmp_path / "dc")
    _epoch(m)
    _live_stats(tmp_path / "dc", _written)
    files = sorted(p for p in (tmp_path / "dc").glob("m-*/*/*") if p.is_file())
    assert files
    # Chunks are files of their own or runs of slots in packs (a whole 1 MiB chunk: 16 slots
    # from a multiple of 16 in a pack of such chunks). Slots are SLOT bytes apart, a sealed
    # frame then zero padding (which holds nothing to serve): the damage goes into sealed
    # bytes (header 16 bytes, ciphertext, tag), one frame in every run of 16 slots, so each
    # chunk cached gets one; and every third file loses its last slot too (a torn tail).
    damaged = 0
    for k, p in enumerate(files):
        slots = p.stat().st_size // SLOT
        with open(p, "r+b") as f:
            for first in range(0, slots, 16):
                f.seek((first + min(7, slots - 1 - first)) * SLOT + 20)
                b = f.read(1)
                f.seek(-1, os.SEEK_CUR)
                f.write(bytes([b[0] ^ 0x40]))
                damaged += 1
        if k % 3 == 0:
            os.truncate(p, (slots - 1) * SLOT + 16)
    assert damaged >= TOTAL // MiB
    _drop_page_cache(m)
    before = get_chunks_calls(metered)
    _epoch(m)                                            # the right bytes, from the server
    assert get_chunks_calls(metered) > before
    # at least half the damaged chunks were caught as corrupt (fails after 20 s otherwise); the
    # counters are published every 0.5 s, so this waits for the whole epoch's instead of
    # reading the first count published (which could be from mid-epoch)
    _live_stats(tmp_path / "dc", lambda s: s["corrupt"] >= damaged // 2)


def test_a_restarted_mount_starts_cold(metered: ServerProc, mount_factory: Callable[..., Mount],
                                       tmp_path: Path) -> None:
    dc = tmp_path / "dc"
    _populate(mount_factory, metered)
    m = _reader(mount_factory, metered, dc)
    _epoch(m)
    _live_stats(dc, _written)
    m.unmount()
    assert list(dc.glob("m-*")) == []                   # a clean unmount removes its entries
    m = _reader(mount_factory, metered, dc)
    _epoch(m)
    _live_stats(dc, _written)
    (left,) = dc.glob("m-*")
    m.proc.send_signal(signal.SIGKILL)                   # a crash leaves its files behind
    m.proc.wait(10)
    m.unmount()
    assert any(p.is_file() for p in left.glob("*/*"))
    m = _reader(mount_factory, metered, dc)
    assert not left.exists()                             # swept: nobody can read them
    before = get_chunks_calls(metered)
    _epoch(m)
    assert get_chunks_calls(metered) - before >= TOTAL // MiB


def test_aifs_cache_stats_and_clear(metered: ServerProc, mount_factory: Callable[..., Mount],
                                    tmp_path: Path) -> None:
    dc = tmp_path / "dc"
    _populate(mount_factory, metered)
    m = _reader(mount_factory, metered, dc)
    _epoch(m)
    _live_stats(dc, _written)
    aifs = [sys.executable, "-m", "aifs_cli.main", "cache"]
    out = subprocess.run([*aifs, "stats", "--cache-dir", str(dc)], capture_output=True,
                         text=True, check=True).stdout
    assert "1 mount cache(s)" in out and "live (pid" in out and "hit ratio" in out
    out = subprocess.run([*aifs, "clear", "--cache-dir", str(dc)], capture_output=True,
                         text=True, check=True).stdout
    assert "cleared 1 live one(s)" in out
    assert not any(p.is_file() for p in dc.glob("m-*/*/*"))
    _drop_page_cache(m)
    before = get_chunks_calls(metered)
    _epoch(m)
    assert get_chunks_calls(metered) - before >= TOTAL // MiB


def test_a_random_reader_soon_reads_only_from_the_cache(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    size = 24 * MiB + 5
    data = _data("random", size)
    w = mount_factory(metered, "--cache-size", "0")
    (w.path / "r.bin").write_bytes(data)
    w.unmount()
    m = _reader(mount_factory, metered, tmp_path / "dc")
    rng = random.Random(7)
    fd = os.open(m.path / "r.bin", os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        before = get_chunks_calls(metered)
        for _ in range(20):   # enough random reads to start the background fill
            off = rng.randrange(size)
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        # the whole file lands in the disk cache behind the reader, in whole chunks
        _live_stats(tmp_path / "dc", lambda s: s["pending_bytes"] == 0
                    and s["written_bytes"] >= size, timeout=60)
        fill_calls = get_chunks_calls(metered) - before
        assert fill_calls <= 20 + (size // MiB + 1) * 2
        before = get_chunks_calls(metered)
        for _ in range(500):
            off = rng.randrange(size)
            assert os.pread(fd, 4096, off) == data[off:off + 4096]
        assert get_chunks_calls(metered) == before
    finally:
        os.close(fd)
