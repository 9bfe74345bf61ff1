"""Message size per method, and no memory spent on refused calls (issue 13), over a real
server process on a real socket.

Before: every method took 65 MiB messages, and a call refused for its token had its body read
and parsed anyway (48 concurrent 60 MiB calls without a token: server RSS 694 MiB -> 2.8 GiB).
"""

from __future__ import annotations

import os
import threading

import grpc
import pytest

from aifs_proto.v1 import data_pb2, data_pb2_grpc, filesystem_pb2, filesystem_pb2_grpc
from tests.helpers import ServerProc, call_md, open_channel, peak_rss_kib

MiB = 1 << 20


def _lookup_raw(sp: ServerProc, name_bytes: int, token: str | None) -> grpc.StatusCode:
    blob = filesystem_pb2.LookupRequest(parent=1, name=b"x" * name_bytes).SerializeToString()
    with open_channel(sp.address) as ch:
        call = ch.unary_unary("/aifs.v1.Filesystem/Lookup", request_serializer=None,
                              response_deserializer=None)
        try:
            call(blob, metadata=call_md(token), timeout=60)
        except grpc.RpcError as e:
            return e.code()
    return grpc.StatusCode.OK


def _healthy(sp: ServerProc) -> None:
    with open_channel(sp.address) as ch:
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        r = fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(sp.token),
                       timeout=30)
        assert r.attr.ino == 1


def test_an_oversized_metadata_call_is_refused_and_the_server_stays_healthy(
        server: ServerProc) -> None:
    assert _lookup_raw(server, 2 * MiB, server.token) == grpc.StatusCode.RESOURCE_EXHAUSTED
    # just under the metadata limit: parsed, and refused by its own rules (name too long)
    assert _lookup_raw(server, 64 << 10, server.token) == grpc.StatusCode.INVALID_ARGUMENT
    _healthy(server)
    assert "Traceback" not in server.log()


def test_data_calls_keep_their_size(server: ServerProc) -> None:
    # 60,000 ids (~2 MiB) to HasChunks, 1 MiB chunks to PutChunks: over the metadata limit,
    # within theirs
    with open_channel(server.address) as ch:
        data = data_pb2_grpc.DataStub(ch)
        r = data.HasChunks(data_pb2.HasChunksRequest(chunk_ids=[os.urandom(32)] * 60_000),
                           metadata=call_md(server.token), timeout=60)
        assert len(r.present) == 60_000 and not any(r.present)
        import blake3

        chunk = os.urandom(MiB)
        cid = blake3.blake3(chunk).digest()
        put = data.PutChunks(iter([data_pb2.PutChunkRequest(chunk_id=cid, data=chunk)]),
                             metadata=call_md(server.token), timeout=60)
        assert put.stored == 1


def test_refused_calls_do_not_read_their_bodies(server: ServerProc) -> None:
    """16 concurrent 40 MiB calls without a token: each is UNAUTHENTICATED, and the server's
    peak memory grows by far less than one of them would cost if bodies were read (before the
    fix: ~2 copies of each body, 16 x 80 MiB)."""
    if not os.path.exists(f"/proc/{server.pid}/status"):
        pytest.skip("needs /proc")
    _healthy(server)
    before = peak_rss_kib(server.pid)
    codes: list[grpc.StatusCode] = []

    def attack() -> None:
        codes.append(_lookup_raw(server, 40 * MiB, None))

    threads = [threading.Thread(target=attack) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [grpc.StatusCode.UNAUTHENTICATED] * 16
    grown_mib = (peak_rss_kib(server.pid) - before) / 1024
    assert grown_mib < 16 * 40 / 4, f"server peak RSS grew {grown_mib:.0f} MiB"
    _healthy(server)
