"""The mount's round-trip savers keep POSIX and close-to-open semantics: security xattrs
answered locally, directory attributes from the replies of our own changes, removal that drops
inodes in the same call, small files committed inline with their CommitFile and opened with
their bytes inline (see aifsfs/fuse/ops.py)."""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable

import pytest

from aifsfs.client import AIFSClient
from aifsfs.errors import RemoteError
from tests.e2e.conftest import Mount

CS = 1 << 20


def _client(m: Mount) -> AIFSClient:
    return AIFSClient(m.server.address, token_file=m.server.token_file)


def _gone_on_server(c: AIFSClient, ino: int) -> bool:
    try:
        c.getattr(ino)
    except RemoteError as exc:
        return "NOT_FOUND" in str(exc.code)
    return False


def _eventually(cond: Callable[[], bool], what: str) -> None:
    # FUSE sends RELEASE after close(2) returns: wait for its effect (a hang guard, not timing)
    deadline = time.monotonic() + 20
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"never happened: {what}")
        time.sleep(0.02)


def test_security_xattrs_are_answered_locally(mount: Mount) -> None:
    p = mount.path / "caps"
    p.write_bytes(b"x")
    for name in ("security.capability", "security.selinux", "system.posix_acl_access"):
        with pytest.raises(OSError) as err:
            os.getxattr(p, name)
        assert err.value.errno == errno.ENODATA
    with pytest.raises(OSError) as err:
        os.setxattr(p, "security.test", b"v")
    assert err.value.errno == errno.EOPNOTSUPP
    os.setxattr(p, "user.kept", b"yes")             # ordinary xattrs still reach the server
    assert os.getxattr(p, "user.kept") == b"yes"
    with open(p, "r+b") as f:                       # writes (which ask security.capability)
        f.write(b"y" * 5000)
    assert p.read_bytes() == b"y" * 5000
    with _client(mount) as c:
        ino = c.lookup(1, b"caps").ino
        assert c.listxattr(ino) == [b"user.kept"]


def test_directory_attrs_after_our_changes_match_the_server(mount: Mount) -> None:
    d = mount.path / "d"
    d.mkdir()
    with _client(mount) as c:
        dino = c.lookup(1, b"d").ino

        def same() -> None:
            st, a = os.stat(d), c.getattr(dino)
            assert (st.st_nlink, st.st_mtime_ns, st.st_ctime_ns) == (
                a.nlink, a.mtime_ns, a.ctime_ns)

        (d / "f").write_bytes(b"1")
        same()
        (d / "sub").mkdir()
        same()
        assert os.stat(d).st_nlink == 3
        os.symlink("f", d / "ln")
        same()
        os.link(d / "f", d / "hard")
        same()
        os.unlink(d / "hard")
        same()
        os.rename(d / "f", d / "g")
        same()
        os.rmdir(d / "sub")
        same()
        assert os.stat(d).st_nlink == 2
        # a renamed directory's own ctime changes: not served from what we kept of it
        os.rename(d, mount.path / "e")
        e = c.lookup(1, b"e")
        assert e.ino == dino and os.stat(mount.path / "e").st_ctime_ns == e.ctime_ns
        os.setxattr(mount.path / "e", "user.a", b"1")
        assert os.stat(mount.path / "e").st_ctime_ns == c.getattr(dino).ctime_ns


def test_removed_inodes_are_dropped_on_the_server(mount: Mount) -> None:
    root = mount.path
    with _client(mount) as c:
        # nothing open in the mount: the Unlink drops the inode itself
        (root / "a").write_bytes(b"a" * 100)
        ino = c.lookup(1, b"a").ino
        os.unlink(root / "a")
        assert _gone_on_server(c, ino)
        # another file open: Unlink keeps it, the mount's Forget drops it
        (root / "b").write_bytes(b"b")
        (root / "held").write_bytes(b"h")
        ino = c.lookup(1, b"b").ino
        with open(root / "held", "rb"):
            os.unlink(root / "b")
            assert _gone_on_server(c, ino)
        # the unlinked file itself open: readable, kept until its last close
        data = os.urandom(3000)
        (root / "c").write_bytes(data)
        ino = c.lookup(1, b"c").ino
        f = open(root / "c", "rb")
        try:
            os.unlink(root / "c")
            assert c.getattr(ino).nlink == 0
            assert f.read() == data
        finally:
            f.close()
        _eventually(lambda: _gone_on_server(c, ino), "unlinked inode dropped after close")
        # rename over a file: the replaced inode goes too
        (root / "x").write_bytes(b"new")
        (root / "y").write_bytes(b"old")
        old = c.lookup(1, b"y").ino
        os.rename(root / "x", root / "y")
        assert (root / "y").read_bytes() == b"new"
        assert _gone_on_server(c, old)
        # rmdir with nothing open
        (root / "dd").mkdir()
        dino = c.lookup(1, b"dd").ino
        os.rmdir(root / "dd")
        assert _gone_on_server(c, dino)


@pytest.mark.parametrize("size", [1, 4096, 147 * 1024, CS - 1, CS, CS + 1])
def test_small_files_round_trip_between_mounts(mount_factory: Callable[..., Mount],
                                               size: int) -> None:
    m1, m2 = mount_factory(), mount_factory()
    p1, p2 = m1.path / "s", m2.path / "s"
    v1 = os.urandom(size)
    p1.write_bytes(v1)                     # committed inline with its CommitFile
    assert p2.read_bytes() == v1           # opened with its bytes inline (when small)
    with _client(m1) as c:                 # what the server holds, byte for byte
        a, cs, refs = c.get_chunk_map(c.lookup(1, b"s").ino)
        assert a.size == size
        pieces = dict(zip([r.index for r in refs],
                          c.get_chunks([(r.chunk_id, 0, r.length) for r in refs]),
                          strict=True))
        # a slot with no chunk is a hole (an all-zero slot is stored as one): zeros
        got = b"".join(pieces.get(i, b"").ljust(min(cs, size - i * cs), b"\0")
                       for i in range(-(-size // cs)))
        assert got == v1
    v2 = os.urandom(size)
    with open(p2, "rb") as held:           # m2 keeps a handle (and its page cache) meanwhile
        assert held.read() == v1
        p1.write_bytes(v2)
    assert p2.read_bytes() == v2           # close-to-open: the new content, not the cache
    v3 = os.urandom(size)
    with open(p2, "r+b") as f:
        f.write(v3)
        f.flush()
        os.fsync(f.fileno())               # durable before close, inline or not
        with _client(m1) as c:
            a, _cs, refs = c.get_chunk_map(c.lookup(1, b"s").ino)
            assert b"".join(c.get_chunks([(r.chunk_id, 0, r.length) for r in refs])) == v3
    assert p1.read_bytes() == v3
    assert p1.read_bytes() == v3           # a second open in m1 (page cache kept) agrees


def test_rewrite_while_reading_in_one_mount(mount: Mount) -> None:
    """A small file read through another handle of the same mount while it is rewritten and
    closed (committed inline), many times: writes are visible at once, before and after."""
    p = mount.path / "busy"
    p.write_bytes(b"0" * 8192)
    reader = os.open(p, os.O_RDONLY)
    try:
        for i in range(1, 30):
            body = bytes([48 + i % 10]) * 8192
            w = os.open(p, os.O_RDWR)
            try:
                assert os.pwrite(w, body, 0) == len(body)
                assert os.pread(reader, 10000, 0) == body
            finally:
                os.close(w)
            os.posix_fadvise(reader, 0, 0, os.POSIX_FADV_DONTNEED)
            assert os.pread(reader, 10000, 0) == body
    finally:
        os.close(reader)
