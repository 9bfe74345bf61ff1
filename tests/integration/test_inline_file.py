"""ReadDir's inline bytes through a file under /dev/shm (server/inline_file.py,
aifsfs/rpc/inline_file.py) against a real server: a unix-socket client gets the bytes mapped
from the file, byte for byte, with nothing left behind; the server writes only into an empty
regular file of the expected name that it owns, never through a link, never for a TCP peer,
and then puts the bytes in the reply as before."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from aifs_core.types import ChunkRef
from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifsfs.client import AIFSClient
from aifsfs.errors import IncompleteRead
from aifsfs.rpc import data as rpc_data
from aifsfs.rpc import inline_file
from tests.helpers import (
    ServerProc,
    call_md,
    make_data_dir,
    open_channel,
    start_server,
    stop_server,
)
from tests.integration.test_inline_put import (  # noqa: F401 - an autouse fixture: the
    _no_kept_call_files,  # files each test counts in /dev/shm are its own
)
from tests.integration.test_snapshot_open import metric

MiB = 1 << 20
pytestmark = pytest.mark.skipif(not inline_file.available(["unix:x"]), reason="no /dev/shm")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    data = make_data_dir(tmp_path_factory.mktemp("inline") / "data")
    s = start_server(data, listen=["127.0.0.1:0"])
    try:
        yield s
    finally:
        stop_server(s)


def _dir_of(c: AIFSClient, sizes: list[int]) -> tuple[int, list[bytes]]:
    d = c.mkdir(1, secrets.token_hex(4).encode()).ino
    datas = [os.urandom(n) for n in sizes]
    for i, data in enumerate(datas):
        ino = c.create(d, b"f%03d" % i).ino
        cid = blake3.blake3(data).digest()
        c.commit_file(ino, [ChunkRef(0, cid, len(data))], len(data), inline=[(cid, data)])
    return d, datas



def _ours() -> list[str]:
    return inline_file.files_of(os.getpid())


def test_unix_client_gets_the_bytes_through_the_file(srv: ServerProc) -> None:
    with AIFSClient(srv.address, token_file=srv.token_file) as c:
        d, datas = _dir_of(c, [150_000, 70_000, 1, 150_001])
        entries, eof, _, maps = c.fs.readdir_maps(d, 0, 100, MiB, 4 * MiB)
        assert eof and len(entries) == 4
        got = [maps[e.attr.ino][1] for e in entries]
        # mapped from the file (memoryviews), not copied out of the reply (bytes)
        assert all(isinstance(g, memoryview) for g in got), [type(g) for g in got]
        assert [bytes(g) for g in got] == datas
        assert _ours() == []                      # the name is gone once the call returns
        # a budget smaller than the page: the rest come without bytes, as before
        _, _, _, maps = c.fs.readdir_maps(d, 0, 100, MiB, 230_000)
        assert [bytes(maps[e.attr.ino][1]) for e in entries] == [*datas[:3], b""]


def test_tcp_client_gets_the_bytes_in_the_reply(srv: ServerProc) -> None:
    tcp = next(a for a in srv.addresses if not a.startswith("unix:"))
    with AIFSClient(tcp, token=srv.token) as c:
        d, datas = _dir_of(c, [150_000, 20_000])
        entries, _, _, maps = c.fs.readdir_maps(d, 0, 100, MiB, 4 * MiB)
        got = [maps[e.attr.ino][1] for e in entries]
        assert got == datas and all(isinstance(g, bytes) for g in got)
        # and a TCP peer naming a proper file gets nothing written into it
        ch = open_channel(tcp)
        path = Path(f"{inline_file.SHM}/{inline_file.PREFIX}{os.getpid()}-{secrets.token_hex(16)}")
        path.touch(mode=0o600)
        try:
            r = filesystem_pb2_grpc.FilesystemStub(ch).ReadDir(filesystem_pb2.ReadDirRequest(
                ino=d, with_maps=True, inline_max=MiB, inline_total=4 * MiB,
                inline_file=str(path)), metadata=call_md(srv.token))
            assert [bytes(e.map.inline_data) for e in r.entries] == datas
            assert not any(e.map.HasField("inline_offset") for e in r.entries)
            assert path.stat().st_size == 0
        finally:
            path.unlink()
            ch.close()


def _raw_readdir(srv: ServerProc, d: int, path: str) -> filesystem_pb2.ReadDirReply:
    ch = srv.channel()
    try:
        return filesystem_pb2_grpc.FilesystemStub(ch).ReadDir(filesystem_pb2.ReadDirRequest(
            ino=d, with_maps=True, inline_max=MiB, inline_total=4 * MiB, inline_file=path),
            metadata=call_md(srv.token))
    finally:
        ch.close()


def test_server_writes_only_into_a_proper_file(srv: ServerProc, tmp_path: Path) -> None:
    with AIFSClient(srv.address, token_file=srv.token_file) as c:
        d, datas = _dir_of(c, [100_000, 5_000])

    def name() -> Path:
        return Path(f"{inline_file.private_dir()}/{secrets.token_hex(16)}")

    def inline(r: filesystem_pb2.ReadDirReply) -> list[bytes]:
        assert not any(e.map.HasField("inline_offset") for e in r.entries)
        return [bytes(e.map.inline_data) for e in r.entries]

    # the proper case: an empty file of ours, named as the client names them
    good = name()
    good.touch(mode=0o600)
    try:
        r = _raw_readdir(srv, d, str(good))
        offs = [e.map.inline_offset for e in r.entries]
        assert all(e.map.HasField("inline_offset") and not e.map.inline_data
                   for e in r.entries)
        raw = good.read_bytes()
        assert [raw[o:o + len(x)] for o, x in zip(offs, datas, strict=True)] == datas
    finally:
        good.unlink()
    # a name the client would not make: refused (bytes in the reply), file untouched
    other = tmp_path / "x"
    other.touch()
    assert inline(_raw_readdir(srv, d, str(other))) == datas and other.stat().st_size == 0
    # a file that is not empty: left as it was
    full = name()
    full.write_bytes(b"keep me")
    try:
        assert inline(_raw_readdir(srv, d, str(full))) == datas
        assert full.read_bytes() == b"keep me"
    finally:
        full.unlink()
    # a link to another file: never written through
    target = tmp_path / "target"
    target.write_bytes(b"")
    link = name()
    link.symlink_to(target)
    try:
        assert inline(_raw_readdir(srv, d, str(link))) == datas
        assert target.read_bytes() == b""
    finally:
        link.unlink()
    # a second hard link of an empty file: refused too
    first = name()
    first.touch(mode=0o600)
    second = name()
    os.link(first, second)
    try:
        assert inline(_raw_readdir(srv, d, str(second))) == datas
        assert first.stat().st_size == 0
    finally:
        first.unlink()
        second.unlink()
    # gone (the client's call already ended): the reply carries the bytes
    assert inline(_raw_readdir(srv, d, str(name()))) == datas


def test_sweep_removes_files_of_dead_processes() -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    left = Path(f"{inline_file.SHM}/{inline_file.PREFIX}{dead}-{secrets.token_hex(16)}")
    left.mkdir(mode=0o700)
    (left / secrets.token_hex(16)).write_bytes(b"x" * 100)     # a call in flight when it died
    mine = inline_file.InlineFile()
    try:
        inline_file.sweep()
        assert not left.exists()
        assert os.path.exists(mine.path)          # a live process's file stays
    finally:
        mine.close()
        if left.exists():
            shutil.rmtree(left)
    assert not os.path.exists(mine.path)


def _out_file(sp: ServerProc) -> float:
    return metric(sp, "aifs_data_bytes_total", 'direction="out_file"')


def test_get_chunks_raw_pieces_come_through_the_file(metered: ServerProc) -> None:
    """GetChunks: raw (incompressible) pieces of a unix client's call are written into its
    file (counted as out_file), compressed frames still travel in the messages, ranges are
    exact; the file is kept for the next call (written over from offset 0, whatever it held)
    and none is left once the kept files are closed; a TCP client gets every byte in the
    messages."""
    rand = os.urandom(3 * MiB + 12_345)
    text = b"".join(b"line %d of some text\n" % i for i in range(60_000))[:MiB]
    with AIFSClient(metered.address, token_file=metered.token_file) as c:
        refs = []
        for data in [rand[i:i + MiB] for i in range(0, len(rand), MiB)] + [text]:
            cid = blake3.blake3(data).digest()
            c.data.put_chunks([(cid, data)])
            refs.append((cid, len(data)))
        rpc_data._call_files.close()    # the puts' kept file: what is left below is gets'
        wanted = [(cid, 0, 0) for cid, _ in refs] + [(refs[1][0], 70_000, 200_000),
                                                      (refs[4][0], 5, 100)]
        before = _out_file(metered)
        kept: list[list[str]] = []
        for zstd in (False, True):
            got = c.data.get_chunks(wanted, accept_zstd=zstd)
            assert got[:3] == [rand[:MiB], rand[MiB:2 * MiB], rand[2 * MiB:3 * MiB]]
            assert got[3] == rand[3 * MiB:] and got[4] == text
            assert got[5] == rand[MiB + 70_000:MiB + 270_000] and got[6] == text[5:105]
            assert all(type(g) is bytes for g in got)
            kept.append(_ours())
        # one file, kept after the first call and written over by the second (which placed
        # fewer bytes than the file held: the reply's offsets are what counts)
        assert len(kept[0]) == 1 and kept[1] == kept[0], kept
        placed = _out_file(metered) - before
        random_bytes = len(rand) + 200_000
        # both calls' random bytes through the file; the text as zstd frames (in the
        # messages) when zstd was accepted, through the file when not
        assert placed == 2 * random_bytes + len(text) + 100, placed
        # a small call into the same big file, then the kept files closed: nothing left
        assert c.data.get_chunks([(refs[4][0], 10, 20)], accept_zstd=False) == [text[10:30]]
        assert _ours() == kept[0]
        rpc_data._call_files.close()
        assert _ours() == []
        # a call that fails after the server wrote into its file (the second range is past
        # its chunk's end): the file is not kept, whatever the server may still do with it
        with pytest.raises(IncompleteRead):
            c.data.get_chunks([(refs[0][0], 0, 0), (refs[0][0], 2 * MiB, 10)],
                              accept_zstd=False)
        assert _ours() == []
    tcp_ok = False
    with AIFSClient(metered.address, token_file=metered.token_file) as c:
        c.data._inline_files = False          # as a TCP client: no file asked for
        before = _out_file(metered)
        assert c.data.get_chunks(wanted[:1], accept_zstd=False) == [rand[:MiB]]
        tcp_ok = _out_file(metered) == before
    assert tcp_ok


def test_no_file_can_be_made_then_the_bytes_come_in_the_messages(
        srv: ServerProc, monkeypatch: pytest.MonkeyPatch) -> None:
    """/dev/shm full or gone, out of descriptors: the call carries its bytes as before."""
    with AIFSClient(srv.address, token_file=srv.token_file) as c:
        d, datas = _dir_of(c, [150_000, 3_000])
        monkeypatch.setattr(inline_file, "SHM", "/nonexistent-aifs-shm")
        entries, _, _, maps = c.fs.readdir_maps(d, 0, 100, MiB, 4 * MiB)
        got = [maps[e.attr.ino][1] for e in entries]
        assert got == datas and all(type(g) is bytes for g in got)
        refs = [(bytes(maps[e.attr.ino][0][0].chunk_id), 0, 0) for e in entries]
        assert c.data.get_chunks(refs, accept_zstd=False) == datas
