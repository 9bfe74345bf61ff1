"""ReadDir with_maps (issue 9, batched cold opens) against a real server: each regular file's
entry carries its whole chunk map and, for a small file in slot 0, its bytes, within the
per-file and per-reply budgets; directories carry none; a token without `get` is refused."""

from __future__ import annotations

import os

import blake3
import grpc
import pytest

from aifs_core.errors import CorruptChunk
from aifs_core.types import ChunkRef
from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifs_server.auth import mint_token
from aifsfs.client import AIFSClient
from tests.helpers import ServerProc, call_md, error_info

MiB = 1 << 20


def _make(c: AIFSClient, parent: int, name: bytes, *pieces: bytes) -> int:
    """A file of these chunks (each at most 1 MiB), sent inline with its commit."""
    ino = c.create(parent, name).ino
    inline = [(blake3.blake3(p).digest(), p) for p in pieces]
    c.commit_file(ino, [ChunkRef(i, cid, len(p)) for i, (cid, p) in enumerate(inline)],
                  sum(map(len, pieces)), inline=inline)
    return ino


def test_readdir_with_maps_carries_maps_and_small_bytes(server_module: ServerProc) -> None:
    c = AIFSClient(server_module.address, token_file=server_module.token_file)
    try:
        d = c.mkdir(1, b"rdm").ino
        small = [bytes([i]) * (1000 + i) for i in range(5)]
        inos = [_make(c, d, b"s%d" % i, data) for i, data in enumerate(small)]
        big = _make(c, d, b"t-big", b"x" * MiB, b"y" * 10)             # two chunks
        sub = c.mkdir(d, b"u-sub").ino
        empty = c.create(d, b"v-empty").ino

        entries, eof, cs, maps = c.fs.readdir_maps(d, 0, 100, MiB, 3500)
        assert eof and cs == MiB
        assert [e.name for e in entries] == [b"s0", b"s1", b"s2", b"s3", b"s4", b"t-big",
                                             b"u-sub", b"v-empty"]
        assert sub not in maps and set(maps) == {*inos, big, empty}
        # bytes while the reply's total stays within 3500: s0, s1, s2 (3003), not s3 or s4
        assert [maps[i][1] for i in inos] == [*small[:3], b"", b""]
        for i, ino in enumerate(inos):
            refs, _ = maps[ino]
            assert len(refs) == 1 and refs[0].length == len(small[i])
        assert len(maps[big][0]) == 2 and maps[big][1] == b""          # not one slot
        assert maps[empty] == ([], b"")
        # a batch from the middle, bounded
        entries, eof, _, maps = c.fs.readdir_maps(d, entries[1].cookie, 2, 100, MiB)
        assert [e.name for e in entries] == [b"s2", b"s3"] and not eof
        assert maps[inos[2]][1] == b""                                  # over inline_max
    finally:
        c.close()


def test_readdir_with_maps_needs_get(server_module: ServerProc) -> None:
    key = (server_module.data_dir / "macaroon.key").read_bytes()
    ch = server_module.channel()
    try:
        stub = filesystem_pb2_grpc.FilesystemStub(ch)
        md = call_md(mint_token(key, "default", ["stat"], 600))
        stub.ReadDir(filesystem_pb2.ReadDirRequest(ino=1), metadata=md)   # a listing is fine
        with pytest.raises(grpc.RpcError) as ei:
            stub.ReadDir(filesystem_pb2.ReadDirRequest(ino=1, with_maps=True), metadata=md)
        code, _reason, msg = error_info(ei.value)
        assert code == grpc.StatusCode.PERMISSION_DENIED and "get" in msg, msg
    finally:
        ch.close()


def test_readdir_page_with_a_damaged_chunk(server: ServerProc) -> None:
    """ReadDir's hand-encoded reply (rpc_filesystem.encode_dir_entry): each file's bytes come
    with its own entry, byte for byte; a chunk damaged at rest is never inlined (its map still
    comes, so the read path reports it: CORRUPT_CHUNK naming the chunk) and does not stop the
    rest of the page, nor does it take the reply's budget from the files after it."""
    c = AIFSClient(server.address, token_file=server.token_file)
    try:
        d = c.mkdir(1, b"dmg").ino
        chunks = server.data_dir / "chunks"
        datas = [os.urandom(150_000 + i) for i in range(4)]
        inos = []
        for i, data in enumerate(datas):
            before = {p for p in chunks.rglob("*") if p.is_file()}
            inos.append(_make(c, d, b"f%d" % i, data))
            if i == 2:
                [stored] = {p for p in chunks.rglob("*") if p.is_file()} - before
                raw = bytearray(stored.read_bytes())
                raw[len(raw) // 2] ^= 1          # one bit in a frame's ciphertext
                stored.write_bytes(bytes(raw))
        entries, eof, _, maps = c.fs.readdir_maps(d, 0, 100, MiB, 4 * MiB)
        assert eof and [e.name for e in entries] == [b"f0", b"f1", b"f2", b"f3"]
        assert [e.attr.ino for e in entries] == inos
        assert [maps[i][1] for i in inos] == [datas[0], datas[1], b"", datas[3]]
        # a budget for three of them: the damaged one's share goes to the next (the page's
        # bytes are read ahead in parallel assuming each read succeeds; f3 is then read
        # when its turn shows it fits)
        fits = len(datas[0]) + len(datas[1]) + len(datas[3]) + 10
        _, _, _, maps = c.fs.readdir_maps(d, 0, 100, MiB, fits)
        assert [maps[i][1] for i in inos] == [datas[0], datas[1], b"", datas[3]]
        refs = maps[inos[2]][0]
        assert len(refs) == 1 and refs[0].length == len(datas[2])
        with pytest.raises(CorruptChunk) as ei:
            c.data.get_chunks([(refs[0].chunk_id, 0, 0)])
        assert refs[0].chunk_id.hex() in ei.value.message
    finally:
        c.close()


def test_readdir_maps_of_a_branch_not_copied_yet(server_module: ServerProc) -> None:
    """A branch made from a snapshot reads through a view of its source until its first write
    (issue 11): its page's maps, read in one query with the listing, are the source's."""
    c = AIFSClient(server_module.address, token_file=server_module.token_file)
    try:
        d = c.mkdir(1, b"rdm-branch").ino
        # 40 files, of which f1 and f3 have two chunks
        inos = [_make(c, d, b"f%d" % i, *((bytes([i]) * MiB, b"z" * 7) if i in (1, 3)
                                          else (bytes([i]) * 100,)))
                for i in range(40)]
        empty = c.create(d, b"g-empty").ino
        want = c.fs.readdir_maps(d, 0, 100, 1000, MiB)
        snap = c.versions.snapshot()
        c.versions.create_branch("rdm-b", snap["id"])
        c.branch = "rdm-b"
        entries, eof, _, maps = c.fs.readdir_maps(d, 0, 100, 1000, MiB)
        assert eof and [e.name for e in entries] == [e.name for e in want[0]]
        assert maps == want[3] and set(maps) == {*inos, empty}
        assert [len(maps[i][0]) for i in inos[:4]] == [1, 2, 1, 2]
        assert maps[inos[1]][1] == b""      # two chunks: no bytes inline
    finally:
        c.close()
