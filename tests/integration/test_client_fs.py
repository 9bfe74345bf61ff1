"""Filesystem and data calls of the SDK against a real server, with errno mapping."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import blake3
import pytest

from aifs_core import errors as server_errors
from aifs_core.types import RENAME_NOREPLACE, ROOT_INO, SET_MODE, SET_SIZE, XATTR_CREATE, ChunkRef
from aifsfs.client import AIFSClient
from aifsfs.errors import errno_for, xattr_errno_for
from tests.helpers import ServerProc, make_data_dir, start_server, stop_server


def tcp_address(sp: ServerProc) -> str:
    return next(a for a in sp.addresses if not a.startswith("unix:"))


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    data = make_data_dir(tmp_path_factory.mktemp("fs") / "data")
    s = start_server(data, listen=["127.0.0.1:0"])
    try:
        yield s
    finally:
        stop_server(s)


@pytest.fixture
def c(srv: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(srv.address, timeout=30, retry_for=10) as client:
        yield client


@pytest.fixture
def d(c: AIFSClient) -> int:
    """A fresh directory per test, so tests do not see each other's names."""
    return c.mkdir(ROOT_INO, os.urandom(6).hex().encode(), 0o755).ino


def errno_of(fn: object, *args: object, xattr: bool = False) -> int:
    assert callable(fn)
    try:
        fn(*args)
    except server_errors.AIFSError as e:
        return xattr_errno_for(e) if xattr else errno_for(e)
    raise AssertionError(f"{fn} did not fail")


def test_namespace_ops_and_errno(c: AIFSClient, d: int) -> None:
    sub = c.mkdir(d, b"sub", 0o750, os.getuid(), os.getgid())
    assert stat.S_ISDIR(sub.mode) and stat.S_IMODE(sub.mode) == 0o750
    f = c.create(d, b"file", stat.S_IFREG | 0o640)
    assert stat.S_ISREG(f.mode) and f.size == 0
    assert c.lookup(d, b"file").ino == f.ino
    assert c.getattr(f.ino).ino == f.ino

    assert errno_of(c.lookup, d, b"missing") == errno.ENOENT
    assert errno_of(c.create, d, b"file", 0o100644) == errno.EEXIST
    assert errno_of(c.mkdir, d, b"x" * 256, 0o755) == errno.ENAMETOOLONG
    c.create(sub.ino, b"inner", 0o100644)
    assert errno_of(c.rmdir, d, b"sub") == errno.ENOTEMPTY
    assert errno_of(c.rmdir, d, b"file") == errno.ENOTDIR
    assert errno_of(c.unlink, d, b"sub") == errno.EISDIR
    assert errno_of(c.lookup, f.ino, b"x") == errno.ENOTDIR
    assert errno_of(c.getattr, 10**12) == errno.ENOENT

    # rename: plain, then NOREPLACE onto an existing name
    c.rename(d, b"file", d, b"renamed")
    assert errno_of(c.lookup, d, b"file") == errno.ENOENT
    c.create(d, b"other", 0o100644)
    assert errno_of(c.rename, d, b"renamed", d, b"other", RENAME_NOREPLACE) == errno.EEXIST

    c.unlink(sub.ino, b"inner")
    c.rmdir(d, b"sub")
    assert errno_of(c.lookup, d, b"sub") == errno.ENOENT


def test_readdir_pages(c: AIFSClient, d: int) -> None:
    names = {f"f{i:03d}".encode() for i in range(25)}
    for n in names:
        c.create(d, n, 0o100644)
    seen: list[bytes] = []
    cookie, eof = 0, False
    while not eof:
        entries, eof = c.readdir(d, cookie, 7)
        assert len(entries) <= 7
        seen += [e.name for e in entries]
        if entries:
            cookie = entries[-1].cookie
        assert all(e.attr.ino for e in entries)
    assert set(seen) - {b".", b".."} == names


def test_symlink_link_xattr_setattr_statfs(c: AIFSClient, d: int) -> None:
    s = c.symlink(d, b"ln", b"../target/path")
    assert stat.S_ISLNK(s.mode)
    assert c.readlink(s.ino) == b"../target/path"

    f = c.create(d, b"f", 0o100644)
    linked = c.link(f.ino, d, b"hard")
    assert linked.ino == f.ino and linked.nlink == 2

    c.setxattr(f.ino, b"user.color", b"blue")
    assert c.getxattr(f.ino, b"user.color") == b"blue"
    assert b"user.color" in c.listxattr(f.ino)
    assert errno_of(c.setxattr, f.ino, b"user.color", b"red", XATTR_CREATE,
                    xattr=True) == errno.EEXIST
    c.removexattr(f.ino, b"user.color")
    assert errno_of(c.getxattr, f.ino, b"user.color", xattr=True) == errno.ENODATA

    a = c.setattr(f.ino, SET_MODE | SET_SIZE, mode=0o600, size=10_000)
    assert stat.S_IMODE(a.mode) == 0o600 and a.size == 10_000

    st = c.statfs()
    assert st.block_size > 0 and st.name_max == 255


def test_chunks_commit_and_read_back(c: AIFSClient, d: int) -> None:
    f = c.create(d, b"data.bin", 0o100644)
    _, chunk_size, chunks = c.get_chunk_map(f.ino)
    assert chunks == [] and chunk_size > 0
    piece0 = os.urandom(chunk_size)
    piece1 = b"tail " * 1000
    ids = [blake3.blake3(p).digest() for p in (piece0, piece1)]
    assert c.has_chunks(ids) == [False, False]
    res = c.put_chunks([(ids[0], piece0), (ids[1], piece1)])
    assert res.stored == 2 and res.raw_bytes == len(piece0) + len(piece1)
    assert c.has_chunks(ids) == [True, True]
    assert c.put_chunks(iter([(ids[1], piece1)])).deduplicated == 1  # a one-shot iterator

    size = chunk_size + len(piece1)
    attr = c.commit_file(f.ino, [ChunkRef(0, ids[0], chunk_size),
                                 ChunkRef(1, ids[1], len(piece1))], size)
    assert attr.size == size
    got_attr, _, cmap = c.get_chunk_map(f.ino)
    assert got_attr.size == size
    assert [(r.index, r.chunk_id, r.length) for r in cmap] == [
        (0, ids[0], chunk_size), (1, ids[1], len(piece1))]
    assert c.get_chunks([(ids[0], 100, 4096), (ids[1], 0, 0), (ids[0], 0, 1)]) == [
        piece0[100:4196], piece1, piece0[:1]]
    info = c.file_info(f.ino)
    assert info.logical_bytes == size

    # a commit naming a chunk that was never uploaded is refused with the server's reason
    with pytest.raises(server_errors.MissingChunk):
        c.commit_file(f.ino, [ChunkRef(2, b"\x01" * 32, 10)], size + 10)

    # unlink while "open", then forget: the inode goes away
    c.unlink(d, b"data.bin")
    c.forget(f.ino)
    assert errno_of(c.getattr, f.ino) == errno.ENOENT


def test_get_chunks_zstd_and_identity_agree(c: AIFSClient) -> None:
    text = b"".join(b"row %08d: the quick brown fox jumps over the lazy dog\n" % i
                    for i in range(20_000))[:1 << 20]
    rnd = os.urandom(300_000)
    ids = [blake3.blake3(p).digest() for p in (text, rnd)]
    c.put_chunks([(ids[0], text), (ids[1], rnd)])
    ranges = [(ids[0], 0, 0), (ids[0], 65_000, 200_000), (ids[0], 1, 1),
              (ids[1], 12_345, 100_000), (ids[0], len(text) - 10, 10)]
    expect = [text, text[65_000:265_000], text[1:2], rnd[12_345:112_345], text[-10:]]

    c.wire_stats.reset()
    assert c.get_chunks(ranges, accept_zstd=False) == expect
    identity = c.wire_stats.snapshot()
    c.wire_stats.reset()
    assert c.get_chunks(ranges, accept_zstd=True) == expect
    zstd = c.wire_stats.snapshot()
    assert identity["zstd_pieces"] == 0 and zstd["zstd_pieces"] > 0
    # compressible text travels compressed: fewer payload bytes on the wire
    assert zstd["received_bytes"] < identity["received_bytes"] // 2

    with pytest.raises(server_errors.NotFound):
        c.get_chunks([(b"\x02" * 32, 0, 10)])


def test_put_chunks_zstd_upload(srv: ServerProc) -> None:
    with AIFSClient(tcp_address(srv), token=srv.token, compress_uploads=True) as c:
        data = b"compressible " * 50_000
        cid = blake3.blake3(data).digest()
        res = c.put_chunks([(cid, data)])
        assert res.sent_bytes < res.raw_bytes // 4
        assert c.get_chunks([(cid, 0, 0)]) == [data]


def test_many_threads_share_one_client(c: AIFSClient) -> None:
    blobs = [os.urandom(50_000) + bytes([i]) * 80_000 for i in range(8)]
    ids = [blake3.blake3(b).digest() for b in blobs]
    c.put_chunks(list(zip(ids, blobs, strict=True)))

    def work(i: int) -> int:
        for k in range(10):
            off = (i * 997 + k * 12_345) % 120_000
            want = blobs[i][off:off + 8192]
            got = c.get_chunks([(ids[i], off, len(want))], accept_zstd=bool(k % 2))
            assert got == [want]
        aid = c.put_asset(blobs[i][:1000] + str(i).encode())
        assert c.get_asset(aid)["data"] == blobs[i][:1000] + str(i).encode()
        return i

    with ThreadPoolExecutor(max_workers=8) as ex:
        assert sorted(ex.map(work, range(8))) == list(range(8))
