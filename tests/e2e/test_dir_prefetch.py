"""Directory prefetch (aifsfs/fuse/dir_prefetch.py) over a real mount of a real server: a
directory whose maps the mount holds but whose bytes left its caches (here: the page cache
dropped with fadvise, a memory cache smaller than the directory) is fetched in batched
GetChunks calls once a pass over it shows, not one call per file; bytes exact; a file another
mount rewrote afterwards is read new (close-to-open); a prefetch never plans more than its
budget (half the disk cache). Calls are counted from the server's metrics.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount, stats_at_unmount
from tests.e2e.test_leases import _wait_leased, calls, lease_term  # noqa: F401 - fixture
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

N = 120
SIZE = 128 << 10          # one chunk each; the directory (15 MiB) is far past the memory cache


def _payload(i: int) -> bytes:
    return random.Random(i).randbytes(SIZE - i)        # distinct sizes and bytes


def _delta(sp: ServerProc, before: dict[str, int]) -> dict[str, int]:
    after = calls(sp)
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def _setup(sp: ServerProc, mount_factory: Callable[..., Mount], cache_dir: Path,
           cache_size: str) -> tuple[Mount, Mount, Path]:
    a = mount_factory(sp)
    (a.path / "ds").mkdir()
    for i in range(N):
        (a.path / "ds" / f"s{i:04d}.npy").write_bytes(_payload(i))
    b = mount_factory(sp, "--mem-cache-size", "2M", "--cache-dir", str(cache_dir),
                      "--cache-size", cache_size)
    f = b.path / "ready"
    f.write_bytes(b"ok")
    _wait_leased(b, f, sp)
    return a, b, b.path / "ds"


def _epoch(d: Path, seed: int) -> dict[str, bytes]:
    """A DataLoader-like pass: list, then read every file in a shuffled order, 4 threads."""
    names = sorted(p.name for p in d.glob("*.npy"))
    random.Random(seed).shuffle(names)
    with ThreadPoolExecutor(4) as pool:
        return dict(zip(names, pool.map(lambda n: (d / n).read_bytes(), names), strict=True))


def _drop_pages(d: Path) -> None:
    """Drop the kernel's pages of the directory's files (what memory pressure or a
    drop_caches does), leaving the mount's leases as they are."""
    for p in d.glob("*.npy"):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _check(got: dict[str, bytes], changed: dict[int, bytes] | None = None) -> None:
    assert len(got) == N
    for name, data in got.items():
        i = int(name[1:5])
        assert data == (changed or {}).get(i, _payload(i)), name


def _prefetch_stats(m: Mount) -> dict[str, int]:
    """Unmount (the mount logs its prefetch stats as it stops) and read them."""
    return stats_at_unmount(m, "directory prefetches")


def test_a_pass_over_a_directory_that_left_the_caches_is_prefetched_in_batches(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    a, b, d = _setup(metered, mount_factory, tmp_path / "cache", "256M")
    before = calls(metered)
    _check(_epoch(d, 1))               # the directory fill: maps leased, bytes pushed
    c = _delta(metered, before)
    # the fill's pages serve the reads: no prefetch fetches the directory a second time
    assert c.get("GetChunks", 0) <= 4, c
    _drop_pages(d)
    before = calls(metered)
    _check(_epoch(d, 2))
    c = _delta(metered, before)
    # without the prefetch: a GetChunks per file the 2 MiB memory cache does not hold (~100);
    # with it: the cold reads that start it, then 32 chunks a call
    assert c.get("GetChunks", 0) <= N // 6, c
    assert c.get("GetChunkMap", 0) + c.get("ReadDir", 0) <= 4, c
    # another mount rewrites some files after the prefetch: b reads the new bytes
    changed = {i: b"rewritten %d " % i * (1000 + i) for i in range(0, N, 9)}
    for i, data in changed.items():
        (a.path / "ds" / f"s{i:04d}.npy").write_bytes(data)
    _check(_epoch(d, 3), changed)
    stats = _prefetch_stats(b)
    assert stats["runs"] >= 1 and stats["chunks"] >= N // 2, stats


def test_a_prefetch_plans_no_more_than_half_the_disk_cache(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _a, b, d = _setup(metered, mount_factory, cache, "4M")      # budget: 2 MiB
    _check(_epoch(d, 1))
    _drop_pages(d)
    _check(_epoch(d, 2))
    on_disk = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    assert on_disk <= (4 << 20) + (64 << 10), on_disk       # + the stats file
    stats = _prefetch_stats(b)
    assert stats["runs"] >= 1, stats
    assert 0 < stats["largest_plan"] <= 2 << 20, stats


def test_a_pass_after_the_page_cache_dropped_is_served_from_the_disk_cache(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    """The fill queues its bytes for the disk cache; the next pass over the directory, its
    pages gone, costs no call: the prefetch reads the disk entries ahead of the readers."""
    from tests.e2e.test_disk_cache import _live_stats

    total = sum(len(_payload(i)) for i in range(N))
    _a, b, d = _setup(metered, mount_factory, tmp_path / "cache", "256M")
    _check(_epoch(d, 1))               # the directory fill, through ReadDir
    s1 = _live_stats(tmp_path / "cache",
                     lambda s: s["pending_bytes"] == 0 and s["written_bytes"] >= total)
    _drop_pages(d)
    before = calls(metered)
    _check(_epoch(d, 2))
    c = _delta(metered, before)
    assert c.get("GetChunks", 0) == 0 and c.get("ReadDir", 0) == 0, c
    # the bytes did come from the disk cache (but the few the 2 MiB memory cache still
    # held), and none was damaged
    s2 = _live_stats(tmp_path / "cache",
                     lambda s: s["hit_bytes"] - s1["hit_bytes"] >= total - (2 << 20))
    assert s2["corrupt"] == 0, s2
    stats = _prefetch_stats(b)
    assert stats["runs"] >= 1 and stats["chunks"] >= N // 2, stats
