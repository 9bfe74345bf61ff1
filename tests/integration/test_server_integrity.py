"""What the server publishes about content is what it verified (issue 13), over a real server.

- A file's asset id (GetFileInfo, the xattr, aifs:// URIs) is never the client's claim.
- A chunk a file names but the store lost reads as MISSING_CHUNK naming the chunk and the store
  (EIO at a mount), logged once, never NOT_FOUND (ENOENT: the file exists).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest

from aifs_proto.v1 import common_pb2, data_pb2, data_pb2_grpc, filesystem_pb2, filesystem_pb2_grpc
from tests.helpers import ServerProc, call_md, error_info
from tests.stored_chunks import StoredChunk, stored_chunks

Md = tuple[tuple[str, str], ...]
CHUNK = 1 << 20   # the data dir's default chunk size
WRONG = "ab" * 32


@pytest.fixture(scope="module")
def ch(server_module: ServerProc) -> Iterator[grpc.Channel]:
    with server_module.channel() as c:
        yield c


def _create(fs: filesystem_pb2_grpc.FilesystemStub, md: Md, name: bytes) -> int:
    return int(fs.Create(filesystem_pb2.CreateRequest(parent=1, name=name, mode=0o100644),
                         metadata=md, timeout=10).attr.ino)


def _info(fs: filesystem_pb2_grpc.FilesystemStub, md: Md, ino: int) -> str:
    return str(fs.GetFileInfo(filesystem_pb2.InodeRequest(ino=ino), metadata=md,
                              timeout=30).asset_id)


def _put(ch: grpc.Channel, md: Md, chunks: list[bytes]) -> list[bytes]:
    ids = [blake3.blake3(c).digest() for c in chunks]
    data_pb2_grpc.DataStub(ch).PutChunks(
        iter([data_pb2.PutChunkRequest(chunk_id=i, data=c) for i, c in zip(ids, chunks,
                                                                            strict=True)]),
        metadata=md, timeout=30)
    return ids


def test_a_small_inline_commit_claiming_a_wrong_id_gets_the_true_one(
        server_module: ServerProc, ch: grpc.Channel) -> None:
    fs, md = filesystem_pb2_grpc.FilesystemStub(ch), call_md(server_module.token)
    data = b"small file, sent inline with its commit"
    cid = blake3.blake3(data).digest()
    ino = _create(fs, md, b"inline-liar")
    fs.CommitFile(filesystem_pb2.CommitFileRequest(
        ino=ino, size=len(data), truncated=True, asset_id=WRONG,
        chunks=[common_pb2.ChunkRef(index=0, chunk_id=cid, length=len(data))],
        inline_chunks=[filesystem_pb2.InlineChunk(chunk_id=cid, data=data)]),
        metadata=md, timeout=10)
    reply = fs.GetFileInfo(filesystem_pb2.InodeRequest(ino=ino), metadata=md, timeout=30)
    assert reply.asset_id == blake3.blake3(data).hexdigest()
    assert reply.uri == f"aifs://default/{blake3.blake3(data).hexdigest()}"
    # truncated to nothing with a claim: the empty content's id
    fs.CommitFile(filesystem_pb2.CommitFileRequest(ino=ino, size=0, truncated=True,
                                                   asset_id=WRONG), metadata=md, timeout=10)
    assert _info(fs, md, ino) == blake3.blake3(b"").hexdigest()


def test_a_multi_chunk_commit_claiming_a_wrong_id_gets_the_true_one(
        server_module: ServerProc, ch: grpc.Channel) -> None:
    fs, md = filesystem_pb2_grpc.FilesystemStub(ch), call_md(server_module.token)
    parts = [os.urandom(CHUNK), os.urandom(1000)]
    ids = _put(ch, md, parts)
    ino = _create(fs, md, b"multi-liar")
    fs.CommitFile(filesystem_pb2.CommitFileRequest(
        ino=ino, size=CHUNK + 1000, truncated=True, asset_id=WRONG,
        chunks=[common_pb2.ChunkRef(index=i, chunk_id=c, length=len(p))
                for i, (c, p) in enumerate(zip(ids, parts, strict=True))]),
        metadata=md, timeout=10)
    assert _info(fs, md, ino) == blake3.blake3(b"".join(parts)).hexdigest()
    # a later partial (non-truncating) rewrite of slot 1 with a claim: still the true id
    tail = os.urandom(1000)
    [tail_id] = _put(ch, md, [tail])
    fs.CommitFile(filesystem_pb2.CommitFileRequest(
        ino=ino, size=CHUNK + 1000, asset_id=WRONG,
        chunks=[common_pb2.ChunkRef(index=1, chunk_id=tail_id, length=1000)]),
        metadata=md, timeout=10)
    assert _info(fs, md, ino) == blake3.blake3(parts[0] + tail).hexdigest()


def _chunk_files(data_dir: Path) -> set[StoredChunk]:
    return stored_chunks(data_dir / "chunks")


def test_a_chunk_lost_from_the_store_is_missing_chunk_not_not_found(server: ServerProc
                                                                    ) -> None:
    md = call_md(server.token)
    data = os.urandom(5000)
    with server.channel() as ch:
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        before = _chunk_files(server.data_dir)
        [cid] = _put(ch, md, [data])
        ino = _create(fs, md, b"lost")
        fs.CommitFile(filesystem_pb2.CommitFileRequest(
            ino=ino, size=len(data), truncated=True,
            chunks=[common_pb2.ChunkRef(index=0, chunk_id=cid, length=len(data))]),
            metadata=md, timeout=10)
        [stored] = _chunk_files(server.data_dir) - before
        stored.unlink()   # the data is lost at rest; the file and its record remain

        data_stub = data_pb2_grpc.DataStub(ch)
        for encodings in ([], ["zstd"]):
            for _ in range(3):   # read repeatedly: logged once all the same
                with pytest.raises(grpc.RpcError) as ei:
                    list(data_stub.GetChunks(data_pb2.GetChunksRequest(
                        ranges=[data_pb2.ChunkRange(chunk_id=cid)],
                        accept_encodings=encodings), metadata=md, timeout=10))
                code, reason, msg = error_info(ei.value)
                assert code != grpc.StatusCode.NOT_FOUND
                assert reason == "MISSING_CHUNK"
                assert cid.hex() in msg and "chunk store" in msg
                assert f"file://{server.data_dir / 'chunks'}" in msg
        # the file itself is still there
        fs.GetAttr(filesystem_pb2.InodeRequest(ino=ino), metadata=md, timeout=10)
        # a chunk the namespace never recorded stays NOT_FOUND (no "is it stored?" oracle)
        with pytest.raises(grpc.RpcError) as ei:
            list(data_stub.GetChunks(data_pb2.GetChunksRequest(
                ranges=[data_pb2.ChunkRange(chunk_id=b"\1" * 32)]), metadata=md, timeout=10))
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
    warnings = [line for line in server.log().splitlines()
                if "WARNING" in line and cid.hex() in line]
    assert len(warnings) == 1, server.log()
