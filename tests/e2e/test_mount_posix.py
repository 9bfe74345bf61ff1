"""POSIX behaviour of a real mount over a real server: data round trips, holes, truncation,
append, rename/unlink of open files, xattrs, statfs, long names, large directories, mmap,
close-to-open across two mounts and the synthetic /.aifs tree."""

from __future__ import annotations

import errno
import hashlib
import mmap
import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount

CS = 1 << 20  # the default namespace's chunk size


@pytest.fixture(scope="module")
def mount(module_mount: Mount) -> Mount:
    """One server and mount for the module's `mount` tests (each test uses names of its own
    in the root, none kills or damages the mount); the mount_factory tests get their own."""
    return module_mount


def _client(m: Mount) -> AIFSClient:
    return AIFSClient(m.server.address, token_file=m.server.token_file)


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def _random_file(path: Path, size: int, seed: int = 1) -> None:
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, 8 << 20)
            f.write(rng.integers(0, 256, n, dtype=np.uint8).tobytes())
            left -= n


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 3 * CS + 12345])
def test_cp_cmp_sizes(mount: Mount, tmp_path: Path, size: int) -> None:
    src = tmp_path / "src"
    _random_file(src, size, seed=size)
    dst = mount.path / f"f{size}"
    subprocess.run(["cp", str(src), str(dst)], check=True)
    assert dst.stat().st_size == size
    subprocess.run(["cmp", str(src), str(dst)], check=True)
    # and back out through a fresh open (reads the committed chunk map)
    out = tmp_path / "back"
    subprocess.run(["cp", str(dst), str(out)], check=True)
    assert _sha(out) == _sha(src)


def test_large_file_roundtrip(mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    """cp of a 256 MiB random file (256 chunks, 4x the mount's memory cache and 8x its dirty
    limit), compared through a second mount: the bytes cmp reads come from the server, not
    from the writing mount's page cache."""
    size = 256 << 20
    src = tmp_path / "big"
    _random_file(src, size, seed=7)
    writer, reader = mount_factory(), mount_factory()
    subprocess.run(["cp", str(src), str(writer.path / "big")], check=True)
    dst = reader.path / "big"
    assert dst.stat().st_size == size
    subprocess.run(["cmp", str(src), str(dst)], check=True)


def test_dd_seek_holes_not_stored(mount: Mount) -> None:
    p = mount.path / "sparse"
    # 1 MiB of data at 0 and 1 MiB at 20 MiB: 19 MiB hole in between.
    subprocess.run(["dd", "if=/dev/urandom", f"of={p}", "bs=1M", "count=1", "status=none"],
                   check=True)
    subprocess.run(["dd", "if=/dev/urandom", f"of={p}", "bs=1M", "count=1", "seek=20",
                    "conv=notrunc", "status=none"], check=True)
    st = p.stat()
    assert st.st_size == 21 * CS
    assert st.st_blocks * 512 <= 3 * CS, "the hole must not be stored"
    with open(p, "rb") as f:
        f.seek(5 * CS)
        assert f.read(CS) == bytes(CS)


def test_random_writes_match_model(mount: Mount) -> None:
    rng = np.random.default_rng(3)
    size = 5 * CS + 777
    model = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
    p = mount.path / "rw"
    p.write_bytes(model)
    with open(p, "r+b") as f:
        for _ in range(60):
            off = int(rng.integers(0, size + CS))
            n = int(rng.integers(1, 200_000))
            data = rng.integers(0, 256, n, dtype=np.uint8).tobytes()
            f.seek(off)
            f.write(data)
            if off > len(model):
                model.extend(bytes(off - len(model)))
            model[off:off + n] = data
            if rng.integers(0, 4) == 0:   # reads see the writes at once (same mount)
                f.flush()
                f.seek(off)
                assert f.read(n) == data
    assert p.read_bytes() == bytes(model)


def test_truncate_up_and_down(mount: Mount) -> None:
    p = mount.path / "t"
    data = os.urandom(3 * CS + 5)
    p.write_bytes(data)
    os.truncate(p, CS + 10)
    assert p.read_bytes() == data[:CS + 10]
    os.truncate(p, 4 * CS)
    got = p.read_bytes()
    assert len(got) == 4 * CS
    assert got[:CS + 10] == data[:CS + 10]
    assert got[CS + 10:] == bytes(4 * CS - CS - 10)
    with open(p, "r+b") as f:          # ftruncate on an open, dirty file
        f.write(b"x" * 100)
        f.truncate(50)
    assert p.read_bytes() == b"x" * 50
    with open(p, "wb"):                # O_TRUNC
        pass
    assert p.stat().st_size == 0


def test_append(mount: Mount) -> None:
    p = mount.path / "log"
    for i in range(20):
        with open(p, "ab") as f:
            f.write(f"line {i}\n".encode() * 1000)
    assert p.read_bytes() == b"".join(f"line {i}\n".encode() * 1000 for i in range(20))
    fd = os.open(p, os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, b"tail")
    finally:
        os.close(fd)
    assert p.read_bytes().endswith(b"line 19\ntail")


def test_rename_over_open_file(mount: Mount) -> None:
    a, b = mount.path / "a", mount.path / "b"
    a.write_bytes(b"new content")
    old = os.urandom(2 * CS + 3)
    b.write_bytes(old)
    with open(b, "rb") as f:
        os.rename(a, b)
        assert not a.exists()
        assert b.read_bytes() == b"new content"
        assert f.read() == old        # the replaced file stays readable while open


def test_unlink_while_open(mount: Mount) -> None:
    p = mount.path / "gone"
    data = os.urandom(CS + 99)
    p.write_bytes(data)
    f = open(p, "rb")
    try:
        os.unlink(p)
        assert not p.exists()
        assert f.read() == data
    finally:
        f.close()
    assert not p.exists()
    assert "gone" not in os.listdir(mount.path)


def test_dirs_and_errors(mount: Mount) -> None:
    d = mount.path / "d"
    d.mkdir()
    (d / "x").write_bytes(b"1")
    with pytest.raises(OSError) as ei:
        os.rmdir(d)
    assert ei.value.errno == errno.ENOTEMPTY
    with pytest.raises(FileExistsError):
        d.mkdir()
    with pytest.raises(FileNotFoundError):
        (mount.path / "nope").read_bytes()
    long = "n" * 256
    for fn in (lambda: (mount.path / long).write_bytes(b""),
               lambda: (mount.path / long).mkdir(),
               lambda: os.stat(mount.path / long)):
        with pytest.raises(OSError) as ei:
            fn()
        assert ei.value.errno == errno.ENAMETOOLONG
    ok = "n" * 255
    (mount.path / ok).write_bytes(b"fits")
    assert (mount.path / ok).read_bytes() == b"fits"
    (d / "x").unlink()
    os.rmdir(d)
    assert not d.exists()


def test_links_modes_times(mount: Mount) -> None:
    p = mount.path / "f"
    p.write_bytes(b"abc")
    os.chmod(p, 0o640)
    os.utime(p, ns=(1_000_000_000_123, 2_000_000_000_456))
    st = p.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 2_000_000_000_456
    os.symlink("f", mount.path / "s")
    assert os.readlink(mount.path / "s") == "f"
    assert (mount.path / "s").read_bytes() == b"abc"
    os.link(p, mount.path / "h")
    assert p.stat().st_nlink == 2
    p.unlink()
    assert (mount.path / "h").read_bytes() == b"abc"


def test_xattrs(mount: Mount) -> None:
    p = mount.path / "x"
    p.write_bytes(b"hello")
    os.setxattr(p, "user.color", b"blue")
    assert os.getxattr(p, "user.color") == b"blue"
    names = os.listxattr(p)
    assert "user.color" in names
    for n in ("user.aifs.asset_id", "user.aifs.uri", "user.aifs.kind",
              "user.aifs.stored_bytes", "user.aifs.logical_bytes"):
        assert n in names
    import blake3
    aid = os.getxattr(p, "user.aifs.asset_id").decode()
    assert aid == blake3.blake3(b"hello").hexdigest()
    assert os.getxattr(p, "user.aifs.uri").decode().endswith(aid)
    assert os.getxattr(p, "user.aifs.kind") == b"blob"
    assert os.getxattr(p, "user.aifs.logical_bytes") == b"5"
    assert int(os.getxattr(p, "user.aifs.stored_bytes")) > 0
    with pytest.raises(OSError) as ei:
        os.setxattr(p, "user.aifs.kind", b"tensor")
    assert ei.value.errno == errno.EPERM
    os.removexattr(p, "user.color")
    with pytest.raises(OSError) as ei:
        os.getxattr(p, "user.color")
    assert ei.value.errno == errno.ENODATA
    # the asset id follows the content
    with open(p, "ab") as f:
        f.write(b" world")
    assert os.getxattr(p, "user.aifs.asset_id").decode() == \
        blake3.blake3(b"hello world").hexdigest()


def test_df(mount: Mount) -> None:
    out = subprocess.run(["df", "-P", str(mount.path)], check=True, capture_output=True,
                         text=True).stdout
    assert "aifs" in out.splitlines()[1]
    s = os.statvfs(mount.path)
    assert s.f_blocks > 0 and s.f_namemax == 255


def test_large_directory_pages(mount: Mount) -> None:
    """5,000 entries need five ReadDir pages of 1,000: all listed once, with attributes."""
    n = 5000
    with _client(mount) as c:        # create them on the server: the listing is under test
        d = c.mkdir(1, b"many")
        for i in range(n):
            c.create(d.ino, f"e{i:05d}".encode())
    names = os.listdir(mount.path / "many")
    assert len(names) == n and len(set(names)) == n
    assert sorted(names) == [f"e{i:05d}" for i in range(n)]
    with os.scandir(mount.path / "many") as it:
        assert sum(1 for e in it if e.is_file(follow_symlinks=False)) == n
    os.unlink(mount.path / "many" / "e00042")
    assert len(os.listdir(mount.path / "many")) == n - 1


def test_memmap_shared_write(mount: Mount) -> None:
    p = mount.path / "arr.npy"
    a = np.arange(3 * CS // 8, dtype=np.float64)
    np.save(p, a)
    assert np.array_equal(np.load(p), a)
    m = np.load(p, mmap_mode="r+")
    m[::1000] = -1.0
    m.flush()
    del m
    expect = a.copy()
    expect[::1000] = -1.0
    assert np.array_equal(np.load(p), expect)
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[-8:] = b"ABCDEFGH"
    assert p.read_bytes()[-8:] == b"ABCDEFGH"


def test_fsync_is_durable_on_server(mount: Mount) -> None:
    p = mount.path / "durable"
    data = os.urandom(CS + 1)
    with open(p, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
        with _client(mount) as c:   # committed, seen by a separate client before close
            a = c.lookup(1, b"durable")
            assert a.size == len(data)
            _, cs, chunks = c.get_chunk_map(a.ino)
            got = b"".join(c.get_chunks([(r.chunk_id, 0, r.length) for r in chunks]))
            assert got == data


def test_two_mounts_close_to_open(mount_factory: Callable[..., Mount]) -> None:
    m1 = mount_factory()
    m2 = mount_factory()
    p1, p2 = m1.path / "shared", m2.path / "shared"
    p1.write_bytes(b"version 1")
    assert p2.read_bytes() == b"version 1"
    big = os.urandom(2 * CS)
    with open(p1, "wb") as f:
        f.write(big)
    with open(p2, "rb") as f:    # opened after the close in m1: new content
        assert f.read() == big
    with open(p2, "r+b") as f:
        f.seek(CS)
        f.write(b"from m2")
    expect = big[:CS] + b"from m2" + big[CS + 7:]
    assert p1.read_bytes() == expect
    assert p2.read_bytes() == expect
    # replace by rename (how editors and trainers save): m2's cached entry must not win
    (m1.path / "shared.tmp").write_bytes(b"replaced")
    os.replace(m1.path / "shared.tmp", p1)
    assert p2.read_bytes() == b"replaced"
    with open(p2, "rb") as f:
        assert os.fstat(f.fileno()).st_size == len(b"replaced")


def test_synthetic_assets(mount: Mount) -> None:
    data = os.urandom(3 * CS + 1000)
    with _client(mount) as c:
        aid = c.put_asset(data)
    p = mount.path / ".aifs" / "assets" / aid
    assert p.stat().st_size == len(data)
    assert p.read_bytes() == data
    with open(p, "rb") as f:
        f.seek(CS + 5)
        assert f.read(4096) == data[CS + 5:CS + 5 + 4096]
    with pytest.raises(OSError):
        open(p, "r+b")
    assert ".aifs" not in os.listdir(mount.path)
    assert aid in os.listdir(mount.path / ".aifs" / "assets")
