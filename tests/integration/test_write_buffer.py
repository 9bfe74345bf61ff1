"""The mount's write buffer (aifsfs.fuse.write_buffer) against a real server and a real client.

Every test runs WriteBuffers / store_chunk over a real `aifsfs.client.AIFSClient` talking gRPC
to a real `aifs server` subprocess, in a namespace formatted through the Admin call with 4 KiB
chunks (so files of a few dozen KiB span many slots). Files are created with the Filesystem
calls, so CommitFile works on real inodes, and content is checked by reading it back through
the server (GetChunkMap + GetChunks), never by looking inside the buffer's client.

Covered: sequential writes upload behind the writer, never read old content, stay within the
dirty+inflight bound and commit the whole-file BLAKE3; partial writes merge with old content
and leave untouched slots alone; all-zero slots are holes; identical chunks are stored once;
random small writes spill under memory pressure; a full disk (a real tmpfs) surfaces as ENOSPC
from write and flush and loses nothing; a write refused there blocks every commit until it is
written again, and a file closed with it commits nothing (never a short file); chunks collected
by GC between upload and commit are uploaded again; a server that goes away and comes back
loses nothing.
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import blake3
import pytest
import trio

from aifs_core import errors as server_errors
from aifs_core.types import ROOT_INO, ChunkRef, TreeRef
from aifs_server.datadir import META_DB
from aifs_server.metadata.sqlite import SQLiteMetadata
from aifsfs.client import AIFSClient
from aifsfs.errors import ServerUnavailable, errno_for
from aifsfs.fuse.write_buffer import FileState, WriteBuffers, store_chunk
from tests.helpers import (
    ServerProc,
    make_data_dir,
    short_tmpdir,
    start_server,
    stop_server,
    tmpfs,
)

CS = 4096   # the smallest chunk size a namespace accepts: many slots in small files


# --- fixtures and helpers ---------------------------------------------------------------------

@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """One server for the module; also on loopback TCP, where store_chunk asks before sending."""
    data = make_data_dir(tmp_path_factory.mktemp("wb") / "data")
    sp = start_server(data, listen=["127.0.0.1:0"])
    try:
        yield sp
    finally:
        stop_server(sp)


def format_namespace(address: str, name: str) -> None:
    """Create namespace `name` with CS-byte chunks through the real Admin Format call."""
    with AIFSClient(address, namespace=name, timeout=30, retry_for=10) as admin:
        r = admin.format(namespace=name, chunk_size=CS)
    assert r["created"], r["message"]
    assert r["namespace"]["chunk_size"] == CS


@pytest.fixture
def client(srv: ServerProc) -> Iterator[AIFSClient]:
    """A client of a fresh namespace (so chunk counts start at zero), over the unix socket."""
    name = "wb-" + os.urandom(4).hex()
    format_namespace(srv.address, name)
    with AIFSClient(srv.address, token_file=srv.token_file, namespace=name, timeout=30,
                    retry_for=10) as c:
        yield c


def tcp_address(sp: ServerProc) -> str:
    return next(a for a in sp.addresses if not a.startswith("unix:"))


def new_file(client: AIFSClient) -> FileState:
    """A new empty regular file in the namespace's root, as the mount would hold it."""
    attr = client.create(ROOT_INO, os.urandom(6).hex().encode(), 0o100644, 0, 0)
    return FileState(attr.ino, CS, attr, [])


def open_file(client: AIFSClient, ino: int) -> FileState:
    """The mount's state for an existing file: its attributes and chunk map from the server."""
    attr, chunk_size, refs = client.get_chunk_map(ino)
    assert chunk_size == CS
    return FileState(ino, chunk_size, attr, refs)


def write_committed(client: AIFSClient, ino: int, data: bytes) -> list[ChunkRef]:
    """Store `data` as the file's committed content (the 'old content' of a test)."""
    refs = [store_chunk(client.data, i, data[i * CS:(i + 1) * CS])
            for i in range((len(data) + CS - 1) // CS)]
    attr = client.commit_file(ino, refs, len(data))
    assert attr.size == len(data)
    return refs


def read_back(client: AIFSClient, ino: int) -> bytes:
    """The file's committed content as the server serves it (holes read as zeros)."""
    attr, chunk_size, refs = client.get_chunk_map(ino)
    stored = [r for r in refs if r.chunk_id]
    out = bytearray(attr.size)
    for r, data in zip(stored, client.get_chunks([(r.chunk_id, 0, r.length) for r in stored]),
                       strict=True):
        assert len(data) == r.length
        out[r.index * chunk_size:r.index * chunk_size + len(data)] = data
    return bytes(out)


def stored_chunks(client: AIFSClient) -> int:
    """How many distinct chunks the server has recorded in the client's namespace."""
    ns = next(n for n in client.list_namespaces() if n["name"] == client.namespace)
    return int(ns["chunk_count"])


def committed_asset_id(data_dir: Path, namespace: str, ino: int) -> str:
    """The whole-file asset id the last CommitFile recorded for `ino` ("" = none was given and
    the server will hash the file itself when asked), read from the server's metadata DB."""
    meta = SQLiteMetadata(data_dir / META_DB)
    try:
        return meta.get_file_asset_id(TreeRef(namespace), ino)[0]
    finally:
        meta.close()


def server_read_base(client: AIFSClient) -> Callable[[ChunkRef, int], Awaitable[bytes]]:
    """The old content of a slot, fetched from the server (as the mount's reader does)."""
    async def read_base(ref: ChunkRef, n: int) -> bytes:
        ranges = [(ref.chunk_id, 0, min(n, ref.length))]
        return (await trio.to_thread.run_sync(client.get_chunks, ranges))[0]
    return read_base


def run(fn: Callable[[], Awaitable[None]]) -> None:
    trio.run(fn)


# --- store_chunk ------------------------------------------------------------------------------

def test_store_chunk_holes_and_dedup(srv: ServerProc, client: AIFSClient) -> None:
    hole = store_chunk(client.data, 3, bytes(CS))
    assert hole == ChunkRef(3, b"", 0)
    assert client.wire_stats.sent_raw_bytes == 0 and stored_chunks(client) == 0  # not stored
    r1 = store_chunk(client.data, 0, b"a" * CS)
    r2 = store_chunk(client.data, 5, b"a" * CS)
    assert r1.chunk_id == r2.chunk_id == blake3.blake3(b"a" * CS).digest()
    assert r1 == ChunkRef(0, r1.chunk_id, CS) and r2 == ChunkRef(5, r1.chunk_id, CS)
    assert stored_chunks(client) == 1          # stored once
    # Over TCP store_chunk asks HasChunks first: a chunk the server has is not sent again.
    with AIFSClient(tcp_address(srv), token_file=srv.token_file, namespace=client.namespace,
                    timeout=30, retry_for=10) as tcp:
        r3 = store_chunk(tcp.data, 7, b"a" * CS)
        assert r3 == ChunkRef(7, r1.chunk_id, CS)
        assert tcp.wire_stats.sent_raw_bytes == 0
        r4 = store_chunk(tcp.data, 1, b"b" * CS)
        assert tcp.wire_stats.sent_raw_bytes == CS
    assert stored_chunks(client) == 2
    assert client.get_chunks([(r4.chunk_id, 0, 0)]) == [b"b" * CS]


# --- WriteBuffers -----------------------------------------------------------------------------

def test_sequential_write_uploads_behind_and_commits(srv: ServerProc,
                                                     client: AIFSClient) -> None:
    limit = 4 * CS
    piece = 1000     # does not divide CS: writes straddle slot boundaries
    data = os.urandom(10 * CS + 7)
    st = new_file(client)

    async def main() -> None:
        async def read_base(ref: ChunkRef, n: int) -> bytes:
            raise AssertionError("sequential writes must not read old content")

        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data,
                              trio.CapacityLimiter(4), read_base, max_dirty_bytes=limit)
            wb.start(n)
            for i in range(0, len(data), piece):
                await wb.write(st, i, data[i:i + piece])
                assert wb.dirty_bytes + wb.inflight_bytes <= limit + piece
            attr = await wb.flush(st)
            assert attr is not None and attr.size == len(data)
            assert wb.uploads == 11 and wb.failures == 0    # each slot uploaded once
            assert not st.is_dirty()
            assert wb.dirty_bytes == wb.inflight_bytes == 0
            assert await wb.flush(st) is None     # nothing more to commit

    run(main)
    assert read_back(client, st.ino) == data
    whole = blake3.blake3(data).hexdigest()
    # the id flush sends is a claim the server does not store (issue 13): it hashes the file
    assert committed_asset_id(srv.data_dir, client.namespace, st.ino) == ""
    assert client.file_info(st.ino).asset_id == whole


def test_partial_write_merges_with_old_content(srv: ServerProc, client: AIFSClient) -> None:
    old = os.urandom(2 * CS)
    ino = new_file(client).ino
    old_refs = write_committed(client, ino, old)
    chunks_before = stored_chunks(client)
    st = open_file(client, ino)
    expect = old[:10] + b"hello" + old[15:] + b"tail"

    async def main() -> None:
        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data,
                              trio.CapacityLimiter(4), server_read_base(client))
            wb.start(n)
            await wb.write(st, 10, b"hello")
            await wb.write(st, 2 * CS, b"tail")     # extends the file
            attr = await wb.flush(st)
            assert attr is not None and attr.size == 2 * CS + 4
            assert wb.uploads == 2                 # slots 0 and 2; slot 1 untouched

    run(main)
    _attr, _cs, refs = client.get_chunk_map(ino)
    by_index = {r.index: r for r in refs if r.chunk_id}
    assert sorted(by_index) == [0, 1, 2]
    assert by_index[1] == old_refs[1]                   # slot 1 is still the old chunk
    assert by_index[0].chunk_id != old_refs[0].chunk_id
    assert by_index[2].length == 4
    assert stored_chunks(client) == chunks_before + 2
    assert read_back(client, ino) == expect
    # not written sequentially from 0: no whole-file id claimed, the server hashes it itself
    assert committed_asset_id(srv.data_dir, client.namespace, ino) == ""
    assert client.file_info(ino).asset_id == blake3.blake3(expect).hexdigest()


def test_zero_slots_commit_as_holes(client: AIFSClient) -> None:
    data = os.urandom(CS) + bytes(2 * CS) + os.urandom(CS // 2)
    st = new_file(client)

    async def main() -> None:
        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data,
                              trio.CapacityLimiter(4), server_read_base(client))
            wb.start(n)
            await wb.write(st, 0, data)
            await wb.flush(st)

    run(main)
    _attr, _cs, refs = client.get_chunk_map(st.ino)
    assert sorted(r.index for r in refs if r.chunk_id) == [0, 3]    # slots 1, 2 are holes
    assert stored_chunks(client) == 2
    assert read_back(client, st.ino) == data


def test_spill_when_memory_is_short(client: AIFSClient) -> None:
    """Random partial writes over many slots: the buffer spills them (uploads partial slots,
    merged with old content read from the server) instead of growing past its bound."""
    slots = 20
    old = os.urandom(slots * CS)
    ino = new_file(client).ino
    write_committed(client, ino, old)
    st = open_file(client, ino)
    model = bytearray(old)

    async def main() -> None:
        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data,
                              trio.CapacityLimiter(2), server_read_base(client),
                              max_dirty_bytes=3 * CS)
            wb.start(n)
            rng = random.Random(1)
            peak = 0
            for _ in range(200):
                off = rng.randrange(slots * CS - 8)
                buf = os.urandom(8)
                await wb.write(st, off, buf)
                model[off:off + 8] = buf
                peak = max(peak, wb.dirty_bytes + wb.inflight_bytes)
            assert peak <= 3 * CS + CS
            assert wb.uploads > 0          # it did spill: partial slots went to the server
            await wb.flush(st)
            assert wb.failures == 0

    run(main)
    assert read_back(client, ino) == bytes(model)


# --- failures: nothing written is lost ----------------------------------------------------------

def _fill(path: Path) -> None:
    """Write zeros into `path` until its filesystem is full (to the last byte)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def test_full_disk_surfaces_enospc_and_keeps_data(tmp_path: Path) -> None:
    """The server's chunk store on a small tmpfs, filled up: uploads fail with NoSpace, which
    write and flush report as ENOSPC; the bytes stay buffered; once space is freed the same
    buffer flushes everything."""
    data_dir = make_data_dir(tmp_path / "data")
    chunks_dir = data_dir / "chunks"
    with tmpfs(chunks_dir, "1m"):
        sp = start_server(data_dir)
        try:
            name = "wb"
            format_namespace(sp.address, name)
            with AIFSClient(sp.address, token_file=sp.token_file, namespace=name, timeout=30,
                            retry_for=2) as client:
                _full_disk_flow(client, chunks_dir / "filler")
        finally:
            stop_server(sp)


def _full_disk_flow(client: AIFSClient, filler: Path) -> None:
    st = new_file(client)
    st.handles = 1                           # open: its writer may still write again
    data = os.urandom(3 * CS + 100)
    more = os.urandom(CS)
    closed = new_file(client)                # a second file, closed after a refused write

    async def main() -> None:
        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data,
                              trio.CapacityLimiter(4), server_read_base(client))
            wb.start(n)
            _fill(filler)
            await wb.write(st, 0, data)      # 3 full slots: uploads start behind the writer
            with trio.fail_after(60):        # a hang guard, not a timing assertion
                while wb.failures == 0:
                    await trio.sleep(0.01)
            # The failed upload is reported by the next write, which accepts nothing.
            with pytest.raises(server_errors.NoSpace) as w_err:
                await wb.write(st, len(data), more)
            assert errno_for(w_err.value) == errno.ENOSPC
            assert "full" in str(w_err.value)              # says what happened
            # flush retries every slot, still fails, still keeps everything
            for _ in range(2):
                with pytest.raises(server_errors.NoSpace) as f_err:
                    await wb.flush(st)
                assert errno_for(f_err.value) == errno.ENOSPC
                assert st.is_dirty() and not st.uploading
                assert sorted(st.dirty) == [0, 1, 2, 3] and st.size == len(data)
                assert wb.dirty_bytes == len(data) and wb.inflight_bytes == 0
            assert stored_chunks(client) == 0
            assert client.getattr(st.ino).size == 0      # nothing committed

            # The second file: closed (no handle left) after one of its writes was refused.
            # Its commit would publish it without those bytes: it commits nothing at all.
            await wb.write(closed, 0, os.urandom(2 * CS))
            with trio.fail_after(60):
                while closed.error is None:
                    await trio.sleep(0.01)
            with pytest.raises(server_errors.NoSpace):
                await wb.write(closed, 2 * CS, os.urandom(CS))
            with pytest.raises(server_errors.NoSpace) as c_err:
                await wb.flush(closed)
            assert "dropped" in str(c_err.value) and errno_for(c_err.value) == errno.ENOSPC
            assert not closed.is_dirty()                 # no retry will commit part of it
            assert client.getattr(closed.ino).size == 0

            filler.unlink()                              # free the disk
            # `more` was refused: a commit now would make a short file (the bug: 3 of 4 MiB)
            with pytest.raises(server_errors.NoSpace) as r_err:
                await wb.flush(st)
            assert "refused" in str(r_err.value) and errno_for(r_err.value) == errno.ENOSPC
            assert client.getattr(st.ino).size == 0
            await wb.write(st, len(data), more)          # the writer writes it again
            attr = await wb.flush(st)
            assert attr is not None and attr.size == len(data) + len(more)
            assert not st.is_dirty() and wb.dirty_bytes == 0
            assert await wb.flush(closed) is None        # still nothing to commit there

    run(main)
    assert read_back(client, st.ino) == data + more
    assert client.file_info(st.ino).asset_id == blake3.blake3(data + more).hexdigest()
    assert client.getattr(closed.ino).size == 0


def _collect_uploads(client: AIFSClient, st: FileState) -> None:
    """Run the real GC with no grace: the slots uploaded for `st` but not committed go."""
    ids = [r.chunk_id for r in st.refs.values()]
    client.gc(grace_seconds=0)
    assert client.data.has_chunks(ids) == [False] * len(ids), "GC kept the uploads"


def test_chunks_collected_before_commit_are_uploaded_again(client: AIFSClient) -> None:
    """GC removes chunks uploaded but not yet committed; the commit is answered MISSING_CHUNK
    and the buffer uploads them again from the bytes it holds, then commits."""
    st = new_file(client)
    data = os.urandom(3 * CS)

    async def main() -> None:
        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data,
                              trio.CapacityLimiter(2), server_read_base(client))
            wb.start(n)
            await wb.write(st, 0, data)          # full slots: uploaded in the background
            with trio.fail_after(60):
                while wb.uploads < 3 or st.uploading:
                    await trio.sleep(0.01)
            assert wb.held_bytes == len(data)
            await trio.to_thread.run_sync(_collect_uploads, client, st)
            attr = await wb.flush(st)
            assert attr is not None and attr.size == len(data)
            assert wb.reuploads == 3 and wb.held_bytes == 0 and not st.is_dirty()

    run(main)
    assert read_back(client, st.ino) == data


def test_collected_chunks_not_held_commit_nothing(client: AIFSClient) -> None:
    """With no bytes held (max_held_bytes=0) a collected upload is data lost: the commit fails
    naming it, never commits the file without it, and a closed file drops its buffers."""
    st = new_file(client)
    st.handles = 1
    data = os.urandom(2 * CS)

    async def main() -> None:
        async with trio.open_nursery() as n:
            wb = WriteBuffers(client.fs, client.data, trio.CapacityLimiter(2),
                              server_read_base(client), max_held_bytes=0)
            wb.start(n)
            await wb.write(st, 0, data)
            with trio.fail_after(60):
                while wb.uploads < 2 or st.uploading:
                    await trio.sleep(0.01)
            await trio.to_thread.run_sync(_collect_uploads, client, st)
            with pytest.raises(server_errors.MissingChunk) as err:
                await wb.flush(st)
            assert "no longer holds" in str(err.value)
            st.handles = 0                          # closed
            with pytest.raises(server_errors.MissingChunk):
                await wb.flush(st)
            assert not st.is_dirty()                # dropped, not retried forever

    run(main)
    assert client.getattr(st.ino).size == 0


def test_server_down_then_back_loses_nothing(tmp_path: Path) -> None:
    """Flushes fail (EIO) while the server is stopped; a server restarted on the same data dir
    and socket takes the buffered bytes, including a slot that must merge with old content."""
    data_dir = make_data_dir(tmp_path / "data")
    sock_dir = short_tmpdir()
    address = f"unix:{sock_dir}/wb.sock"    # outlives the server processes
    sp: ServerProc | None = start_server(data_dir, listen=[address])
    first = os.urandom(2 * CS + 10)
    second = os.urandom(3 * CS)
    try:
        assert sp is not None
        format_namespace(address, "wb")
        with AIFSClient(address, namespace="wb", timeout=10, retry_for=1.0) as client:
            st = new_file(client)

            async def main() -> None:
                nonlocal sp
                async with trio.open_nursery() as n:
                    wb = WriteBuffers(client.fs, client.data,
                                      trio.CapacityLimiter(4), server_read_base(client))
                    wb.start(n)
                    await wb.write(st, 0, first)
                    assert await wb.flush(st) is not None
                    assert sp is not None
                    stop_server(sp)
                    sp = None
                    # slot 2 now needs its old 10 bytes (unreachable), slots 3-4 are full
                    await wb.write(st, len(first), second)
                    with pytest.raises(ServerUnavailable) as err:
                        await wb.flush(st)
                    assert errno_for(err.value) == errno.EIO
                    assert st.is_dirty() and sorted(st.dirty) == [2, 3, 4, 5]
                    assert wb.dirty_bytes == sum(d.nbytes for d in st.dirty.values())
                    sp = start_server(data_dir, listen=[address])
                    client.wait_ready(timeout=30)
                    attr = await wb.flush(st)
                    assert attr is not None and attr.size == len(first) + len(second)
                    assert not st.is_dirty()

            run(main)
            assert read_back(client, st.ino) == first + second
            assert client.file_info(st.ino).asset_id == blake3.blake3(
                first + second).hexdigest()
    finally:
        if sp is not None:
            stop_server(sp)
        with contextlib.suppress(OSError):
            shutil.rmtree(sock_dir)
