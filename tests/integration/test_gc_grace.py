"""`aifs gc --grace 0` means a grace of 0, not the default hour (issue 13); an unset grace (an
old client) still means the server's default. Over a real server and the real `aifs` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import blake3

from aifs_proto.v1 import admin_pb2, admin_pb2_grpc, data_pb2, data_pb2_grpc
from tests.helpers import ServerProc, call_md

AIFS = str(Path(sys.executable).with_name("aifs"))


def _unreferenced_chunk(server: ServerProc) -> bytes:
    """A chunk uploaded and never committed: unreferenced from now on."""
    data = os.urandom(4096)
    cid = blake3.blake3(data).digest()
    with server.channel() as ch:
        data_pb2_grpc.DataStub(ch).PutChunks(
            iter([data_pb2.PutChunkRequest(chunk_id=cid, data=data)]),
            metadata=call_md(server.token), timeout=10)
    return cid


def _has(server: ServerProc, cid: bytes) -> bool:
    with server.channel() as ch:
        return bool(data_pb2_grpc.DataStub(ch).HasChunks(
            data_pb2.HasChunksRequest(chunk_ids=[cid]), metadata=call_md(server.token),
            timeout=10).present[0])


def test_an_explicit_zero_grace_is_zero_and_unset_is_the_default(server: ServerProc) -> None:
    cid = _unreferenced_chunk(server)
    md = call_md(server.token)
    with server.channel() as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        # an old client leaves the field unset: the default hour protects the chunk
        r = admin.GC(admin_pb2.GCRequest(), metadata=md, timeout=30)
        assert r.chunks_deleted == 0 and _has(server, cid)
        r = admin.GC(admin_pb2.GCRequest(grace_seconds=0, dry_run=True), metadata=md,
                     timeout=30)
        assert r.chunks_deleted == 1 and _has(server, cid)
        r = admin.GC(admin_pb2.GCRequest(grace_seconds=0), metadata=md, timeout=30)
        assert r.chunks_deleted == 1 and r.bytes_freed > 0
    assert not _has(server, cid)


def _at(server: ServerProc) -> list[str]:
    return ["--server", server.address, "--token-file", server.token_file]


def test_aifs_gc_grace_0_frees_now(server: ServerProc) -> None:
    cid = _unreferenced_chunk(server)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIFS_")}
    p = subprocess.run([AIFS, "gc", *_at(server)], capture_output=True,
                       env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith(b"deleted 0 chunks"), p
    p = subprocess.run([AIFS, "gc", "--grace", "0", *_at(server)],
                       capture_output=True, env=env, timeout=60)
    assert p.returncode == 0 and p.stdout.startswith(b"deleted 1 chunks"), p
    assert not _has(server, cid)
    p = subprocess.run([AIFS, "gc", "--grace", "-1", *_at(server)],
                       capture_output=True, env=env, timeout=60)
    assert p.returncode == 2 and b"outside 0.." in p.stderr, p
