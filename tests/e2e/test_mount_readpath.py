"""The mount's read path over a real server: random reads at many offsets, a sequential read
of a file bigger than the chunk cache, concurrent readers of one file, and the kernel
read-ahead window the mount sets (the data is always compared with the source bytes)."""

from __future__ import annotations

import hashlib
import os
import random
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from aifsfs.fuse.mounter import READ_AHEAD_KB
from tests.e2e.conftest import Mount

MiB = 1 << 20


def _content(size: int, seed: int) -> bytes:
    """Random bytes with a compressible stretch (stored frames of both kinds)."""
    rng = random.Random(seed)
    text = b" ".join(rng.choice([b"alpha", b"beta", b"gamma", b"%d" % seed])
                     for _ in range(MiB // 4))[: MiB + 12345]
    body = rng.randbytes(size - len(text))
    return body[: size // 2] + text + body[size // 2:]


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
        os.fsync(f.fileno())


def _fresh_read_mount(mount_factory: Callable[..., Mount], name: str, data: bytes,
                      *extra: str) -> Path:
    """Write `data` through one mount, then return its path on a second, fresh mount (empty
    chunk cache and page cache), so the reads below go to the server."""
    writer = mount_factory()
    _write(writer.path / name, data)
    writer.unmount()
    return mount_factory(None, *extra).path / name


def test_random_reads_at_many_offsets_match(mount_factory: Callable[..., Mount]) -> None:
    data = _content(5 * MiB + 777, seed=1)
    path = _fresh_read_mount(mount_factory, "rand.bin", data)
    rng = random.Random(11)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        cases = [(0, 1), (MiB - 1, 2), (MiB - 4096, 8192), (len(data) - 1, 10),
                 (len(data), 4096), (3 * MiB - 100, MiB + 200)]
        cases += [(rng.randrange(len(data)), 4096) for _ in range(150)]
        cases += [(rng.randrange(len(data)), rng.randrange(1, 300_000)) for _ in range(50)]
        for off, n in cases:
            assert os.pread(fd, n, off) == data[off:off + n], (off, n)
    finally:
        os.close(fd)


def test_sequential_read_bigger_than_the_cache_matches(
        mount_factory: Callable[..., Mount]) -> None:
    data = _content(12 * MiB + 4321, seed=2)
    want = hashlib.sha256(data).hexdigest()
    # a 3 MiB chunk cache: read-ahead keeps evicting what was read
    path = _fresh_read_mount(mount_factory, "seq.bin", data, "--mem-cache-size", str(3 * MiB))
    for bufsize in (MiB, 128 * 1024 + 7):
        h = hashlib.sha256()
        with open(path, "rb", buffering=0) as f:
            buf = bytearray(bufsize)
            while n := f.readinto(buf):
                h.update(memoryview(buf)[:n])
        assert h.hexdigest() == want


def test_concurrent_readers_of_one_file(mount_factory: Callable[..., Mount]) -> None:
    data = _content(8 * MiB + 99, seed=3)
    path = _fresh_read_mount(mount_factory, "shared.bin", data)
    errors: list[str] = []

    def sequential() -> None:
        with open(path, "rb") as f:
            if f.read() != data:
                errors.append("sequential reader got different bytes")

    def scattered(seed: int) -> None:
        rng = random.Random(seed)
        with open(path, "rb", buffering=0) as f:
            for _ in range(60):
                off, n = rng.randrange(len(data)), rng.randrange(1, 200_000)
                f.seek(off)
                got = f.read(n)
                if got != data[off:off + n]:
                    errors.append(f"reader {seed}: bytes at {off}+{n} differ")
                    return

    threads = [threading.Thread(target=sequential) for _ in range(2)]
    threads += [threading.Thread(target=scattered, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a reader hung"
    assert errors == []


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can set a mount's read_ahead_kb")
def test_the_mount_raises_its_kernel_read_ahead_window(mount: Mount) -> None:
    st = os.stat(mount.path)
    path = Path(f"/sys/class/bdi/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/read_ahead_kb")
    # set by a task of the mount once the kernel's INIT is answered: poll briefly
    for _ in range(200):
        if path.read_text().strip() == str(READ_AHEAD_KB):
            break
        threading.Event().wait(0.05)
    assert path.read_text().strip() == str(READ_AHEAD_KB)
