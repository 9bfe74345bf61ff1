"""The FUSE operations (aifsfs.fuse.ops.AIFSOperations) run directly under trio, without a
kernel, on an in-memory server behind the client protocols (tests/unit/fake_server.py).

What the kernel would do is played by the test: it looks names up before opening them, sends
FORGET, and readdir's reply buffer is a list (pyfuse3.readdir_reply needs a kernel request).
Covered: create/write/read/release commit the bytes and the mount shows writes before the
commit; a partial overwrite reads as old bytes under new ones; read-ahead fetches ahead of a
sequential reader; an unlinked open file stays readable and is forgotten at its last close;
unlink with nothing open drops the inode in the same call; rename replaces and lists; getattr
after create is served from the reply; the per-inode table empties when the kernel forgets.
The real mounts of tests/e2e remain the proof with a kernel."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pyfuse3
import pytest
import trio

from aifs_core.types import ROOT_INO
from aifsfs.fuse.ops import AIFSOperations
from tests.unit.fake_server import FakeServer

CS = 4096
CTX: Any = SimpleNamespace(uid=1000, gid=1000, pid=1, umask=0o022)
Body = Callable[[AIFSOperations, FakeServer], Awaitable[None]]


def run(body: Body, **kw: Any) -> FakeServer:
    srv = FakeServer(chunk_size=CS)

    async def main() -> None:
        ops = AIFSOperations(srv, threads=4, **kw)
        async with trio.open_nursery() as nursery:
            ops.start(nursery)
            await body(ops, srv)
            await ops.shutdown()
            nursery.cancel_scope.cancel()
    trio.run(main)
    return srv


async def create(ops: AIFSOperations, name: bytes, parent: int = ROOT_INO) -> tuple[int, int]:
    fi, e = await ops.create(parent, name, stat.S_IFREG | 0o644, os.O_RDWR, CTX)
    return int(fi.fh), int(e.st_ino)


async def read_all(ops: AIFSOperations, fh: int, size: int, piece: int = 1000) -> bytes:
    out = b""
    while True:
        got = await ops.read(fh, len(out), piece)   # type: ignore[arg-type]
        if not got:
            return out
        out += got
        assert len(out) <= size


def test_create_write_read_release_commits() -> None:
    data = os.urandom(3 * CS + 100)

    async def body(ops: AIFSOperations, srv: FakeServer) -> None:
        fh, ino = await create(ops, b"f")
        assert await ops.write(fh, 0, data[:5000]) == 5000   # type: ignore[arg-type]
        assert await ops.write(fh, 5000, data[5000:]) == len(data) - 5000  # type: ignore[arg-type]
        # visible in this mount before any commit: size and bytes
        assert "commit_file" not in srv.calls
        assert (await ops.getattr(ino, CTX)).st_size == len(data)   # type: ignore[arg-type]
        assert await read_all(ops, fh, len(data)) == data
        await ops.release(fh)   # type: ignore[arg-type]
        assert srv.content(ino) == data and srv.inodes[ino].size == len(data)
        # the kernel forgets it: nothing of it is left in the mount's table
        await ops.forget([(ino, 1)])   # type: ignore[list-item]
        assert ops.inodes.get(ino) is None
        # a later open reads the committed bytes from the server's chunks
        e = await ops.lookup(ROOT_INO, b"f", CTX)   # type: ignore[arg-type]
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
        assert await read_all(ops, int(fi.fh), len(data), piece=CS) == data
        await ops.release(fi.fh)
    run(body, attr_timeout=0.0)   # no fresh attrs: the table holds only what the kernel does


def test_partial_overwrite_reads_new_over_old_and_reads_ahead() -> None:
    old = os.urandom(8 * CS)

    async def body(ops: AIFSOperations, srv: FakeServer) -> None:
        fh, ino = await create(ops, b"g")
        await ops.write(fh, 0, old)   # type: ignore[arg-type]
        await ops.release(fh)   # type: ignore[arg-type]
        fi = await ops.open(ino, os.O_RDWR, CTX)   # type: ignore[arg-type]
        await ops.write(fi.fh, CS + 10, b"NEW")
        want = old[:CS + 10] + b"NEW" + old[CS + 13:]
        assert await ops.read(fi.fh, CS, 20) == want[CS:CS + 20]   # random read, overlaid
        await trio.sleep(0)
        srv.calls.clear()
        assert await ops.read(fi.fh, 0, CS) == want[:CS]   # sequential: read-ahead starts
        for _ in range(20):      # let the background fetches land
            await trio.sleep(0.01)
        fetched = srv.calls.count("get_chunks")
        # the slot read, plus the slots ahead of it (slot 1 is dirty) in one grouped call
        assert fetched >= 2
        srv.calls.clear()
        assert await ops.read(fi.fh, 2 * CS, CS) == want[2 * CS:3 * CS]
        assert "get_chunks" not in srv.calls          # served by the read-ahead
        await ops.release(fi.fh)
        assert srv.content(ino) == want
    run(body, readahead_chunks=3)


def test_unlinked_open_file_stays_readable_until_last_close() -> None:
    async def body(ops: AIFSOperations, srv: FakeServer) -> None:
        fh, ino = await create(ops, b"u")
        await ops.write(fh, 0, b"still here")   # type: ignore[arg-type]
        await ops.flush(fh)   # type: ignore[arg-type]
        await ops.unlink(ROOT_INO, b"u", CTX)   # type: ignore[arg-type]
        assert ino in srv.inodes and srv.inodes[ino].nlink == 0   # kept: open here
        assert await ops.read(fh, 0, 100) == b"still here"   # type: ignore[arg-type]
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.lookup(ROOT_INO, b"u", CTX)   # type: ignore[arg-type]
        assert ei.value.errno == errno.ENOENT
        await ops.release(fh)   # type: ignore[arg-type]
        assert ino not in srv.inodes and srv.calls[-1] == "forget"
    run(body)


def test_unlink_with_nothing_open_forgets_in_the_same_call() -> None:
    async def body(ops: AIFSOperations, srv: FakeServer) -> None:
        fh, ino = await create(ops, b"gone")
        await ops.write(fh, 0, b"x" * 10)   # type: ignore[arg-type]
        await ops.release(fh)   # type: ignore[arg-type]
        srv.calls.clear()
        await ops.unlink(ROOT_INO, b"gone", CTX)   # type: ignore[arg-type]
        assert srv.calls == ["unlink"] and ino not in srv.inodes
        # the directory's attrs came back with the unlink: getattr needs no call
        a = await ops.getattr(ROOT_INO, CTX)   # type: ignore[arg-type]
        assert srv.calls == ["unlink"] and a.st_ino == ROOT_INO
    run(body)


async def listing(ops: AIFSOperations, ino: int, monkeypatch: pytest.MonkeyPatch
                  ) -> list[tuple[bytes, int, int]]:
    got: list[tuple[bytes, int, int]] = []

    def reply(token: Any, name: bytes, e: pyfuse3.EntryAttributes, off: int) -> bool:
        got.append((name, int(e.st_ino), off))
        return True
    monkeypatch.setattr(pyfuse3, "readdir_reply", reply)
    fh = await ops.opendir(ino, CTX)   # type: ignore[arg-type]
    await ops.readdir(fh, 0, None)   # type: ignore[arg-type]
    await ops.releasedir(fh)
    return got


def test_mkdir_rename_replace_and_readdir(monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(ops: AIFSOperations, srv: FakeServer) -> None:
        d = (await ops.mkdir(ROOT_INO, b"d", 0o755, CTX)).st_ino   # type: ignore[arg-type]
        fh_a, a = await create(ops, b"a", d)
        await ops.write(fh_a, 0, b"AAA")   # type: ignore[arg-type]
        await ops.release(fh_a)   # type: ignore[arg-type]
        fh_b, b = await create(ops, b"b", d)
        await ops.release(fh_b)   # type: ignore[arg-type]
        await ops.rename(d, b"a", d, b"b", 0, CTX)
        assert b not in srv.inodes          # replaced, and dropped (nothing was open)
        names = await listing(ops, d, monkeypatch)
        assert names == [(b".", d, 1), (b"..", ROOT_INO, 2), (b"b", a, names[2][2])]
        e = await ops.lookup(d, b"b", CTX)
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
        assert await ops.read(fi.fh, 0, 10) == b"AAA"
        await ops.release(fi.fh)
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.rmdir(ROOT_INO, b"d", CTX)   # type: ignore[arg-type]
        assert ei.value.errno == errno.ENOTEMPTY
        with pytest.raises(pyfuse3.FUSEError) as ei:
            await ops.lookup(ROOT_INO, b"n" * 256, CTX)   # type: ignore[arg-type]
        assert ei.value.errno == errno.ENAMETOOLONG
        # /.aifs is hidden from the root's listing but can be looked up
        root = await listing(ops, ROOT_INO, monkeypatch)
        assert [n for n, _, _ in root] == [b".", b"..", b"d"]
        assert (await ops.lookup(ROOT_INO, b".aifs", CTX)).st_mode & stat.S_IFDIR
    run(body)


def test_truncate_on_open_and_table_stays_bounded() -> None:
    async def body(ops: AIFSOperations, srv: FakeServer) -> None:
        inos = []
        for i in range(20):
            fh, ino = await create(ops, b"t%d" % i)
            await ops.write(fh, 0, b"z" * (CS + 1))   # type: ignore[arg-type]
            await ops.release(fh)   # type: ignore[arg-type]
            inos.append(ino)
        fi = await ops.open(inos[0], os.O_WRONLY | os.O_TRUNC, CTX)   # type: ignore[arg-type]
        assert not fi.keep_cache
        await ops.release(fi.fh)
        assert srv.inodes[inos[0]].size == 0 and srv.content(inos[0]) == b""
        await ops.forget([(ino, 1) for ino in inos])   # type: ignore[misc]
        assert all(ops.inodes.get(ino) is None for ino in inos)
    run(body, attr_timeout=0.0)
