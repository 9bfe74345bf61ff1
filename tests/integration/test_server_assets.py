"""Assets service over a real server: round trips, cut streams, garbage input, load, memory."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest

from aifs_proto.v1 import assets_pb2, assets_pb2_grpc, common_pb2, filesystem_pb2_grpc
from tests.helpers import ServerProc, call_md, error_info, peak_rss_kib, wait_healthy

MiB = 1 << 20


def _put(stub: assets_pb2_grpc.AssetsStub, md: object, pieces: Iterator[bytes] | list[bytes],
         kind: str = "blob", metadata: dict[str, object] | None = None,
         parents: list[str] | None = None) -> assets_pb2.AssetInfo:
    def reqs() -> Iterator[assets_pb2.PutAssetRequest]:
        yield assets_pb2.PutAssetRequest(header=assets_pb2.AssetHeader(
            kind=kind, metadata_json=json.dumps(metadata or {}),
            parents=[common_pb2.ParentEdge(parent_id=p, transform="t") for p in parents or []]))
        n = 0
        for p in pieces:
            yield assets_pb2.PutAssetRequest(data=p)
            n += len(p)
        yield assets_pb2.PutAssetRequest(end=assets_pb2.AssetEnd(size=n))
    return stub.PutAsset(reqs(), metadata=md, timeout=120)


def _get(stub: assets_pb2_grpc.AssetsStub, md: object, asset_id: str
         ) -> tuple[assets_pb2.AssetInfo, str, int]:
    """(info, blake3 hex of the content, size) streamed without holding it."""
    h = blake3.blake3()
    info = None
    n = 0
    for r in stub.GetAsset(assets_pb2.GetAssetRequest(asset_id=asset_id), metadata=md,
                           timeout=120):
        if r.WhichOneof("part") == "info":
            info = r.info
        else:
            assert len(r.data) <= MiB
            h.update(r.data)
            n += len(r.data)
    assert info is not None
    return info, h.hexdigest(), n


def _list_ids(stub: assets_pb2_grpc.AssetsStub, md: object) -> set[str]:
    return {a.asset_id for a in stub.ListAssets(assets_pb2.ListAssetsRequest(limit=1000),
                                                metadata=md).assets}


def test_asset_round_trip_lineage_verify_delete(server_module: ServerProc) -> None:
    md = call_md(server_module.token)
    with server_module.channel() as ch:
        stub = assets_pb2_grpc.AssetsStub(ch)
        parent = b"parent bytes " * 1000
        p = _put(stub, md, [parent], metadata={"name": "p"})
        assert p.asset_id == blake3.blake3(parent).hexdigest()
        assert p.uri == f"aifs://default/{p.asset_id}" and p.size == len(parent)
        child_data = os.urandom(2 * MiB + 7)
        c = _put(stub, md, [child_data[:1000], child_data[1000:]], parents=[p.asset_id])
        info, digest, n = _get(stub, md, c.asset_id)
        assert digest == c.asset_id and n == len(child_data) and info.chunk_count == 3
        lin = stub.GetLineage(assets_pb2.AssetRequest(asset_id=c.asset_id), metadata=md)
        assert [a.asset_id for a in lin.ancestors] == [p.asset_id]
        v = stub.VerifyAsset(assets_pb2.AssetRequest(asset_id=c.asset_id), metadata=md)
        assert v.ok, v.detail
        assert {p.asset_id, c.asset_id} <= _list_ids(stub, md)
        # an uncommitted parent is refused with its reason
        with pytest.raises(grpc.RpcError) as ei:
            _put(stub, md, [b"orphan"], parents=["ab" * 32])
        code, reason, _ = error_info(ei.value)
        assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "PARENT_NOT_COMMITTED"
        stub.DeleteAsset(assets_pb2.AssetRequest(asset_id=c.asset_id), metadata=md)
        with pytest.raises(grpc.RpcError) as ei:
            _get(stub, md, c.asset_id)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        # a stream without a header first is INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as ei:
            stub.PutAsset(iter([assets_pb2.PutAssetRequest(data=b"x")]), metadata=md)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("tail", ["none", "short count", "long count", "data after end"])
def test_put_stream_without_a_matching_end_stores_nothing(server_module: ServerProc,
                                                          tail: str) -> None:
    """Only the end message with the right byte count stores an asset: a stream that just
    ends (what a server cut at shutdown can look like to the handler) stores nothing."""
    md = call_md(server_module.token)
    data = os.urandom(MiB + 5)
    msgs = [assets_pb2.PutAssetRequest(header=assets_pb2.AssetHeader(kind="blob")),
            assets_pb2.PutAssetRequest(data=data[:MiB]),
            assets_pb2.PutAssetRequest(data=data[MiB:])]
    end = {"short count": len(data) - 1, "long count": len(data) + 1,
           "data after end": len(data)}.get(tail)
    if end is not None:
        msgs.append(assets_pb2.PutAssetRequest(end=assets_pb2.AssetEnd(size=end)))
    if tail == "data after end":
        msgs.append(assets_pb2.PutAssetRequest(data=b"late"))
    with server_module.channel() as ch:
        stub = assets_pb2_grpc.AssetsStub(ch)
        before = _list_ids(stub, md)
        with pytest.raises(grpc.RpcError) as ei:
            stub.PutAsset(iter(msgs), metadata=md, timeout=60)
        code, _reason, message = error_info(ei.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, message)
        assert "nothing was stored" in message
        assert _list_ids(stub, md) == before
        # the same bytes with the right end are stored under their BLAKE3
        assert _put(stub, md, [data]).asset_id == blake3.blake3(data).hexdigest()


def test_cut_put_stream_commits_nothing(server_module: ServerProc) -> None:
    md = call_md(server_module.token)
    with server_module.channel() as ch:
        stub = assets_pb2_grpc.AssetsStub(ch)
        before = _list_ids(stub, md)
        sent = threading.Event()
        never = threading.Event()

        def reqs() -> Iterator[assets_pb2.PutAssetRequest]:
            yield assets_pb2.PutAssetRequest(header=assets_pb2.AssetHeader(kind="blob"))
            for _ in range(3):  # three whole chunks reach the server
                yield assets_pb2.PutAssetRequest(data=os.urandom(MiB))
            sent.set()
            never.wait(30)  # the client "hangs", then goes away

        fut = stub.PutAsset.future(reqs(), metadata=md)
        assert sent.wait(30)
        fut.cancel()
        never.set()
        with pytest.raises(grpc.FutureCancelledError):
            fut.result()
    # a new connection: nothing partial is visible, and the server still serves
    wait_healthy(server_module.address)
    with server_module.channel() as ch:
        stub = assets_pb2_grpc.AssetsStub(ch)
        assert _list_ids(stub, md) == before
        ok = _put(stub, md, [b"after the cut"])
        assert _list_ids(stub, md) == before | {ok.asset_id}
    # the cut is routine, not an internal error
    assert "internal error" not in server_module.log()


def test_garbage_protobuf_bytes_get_a_clean_error(server_module: ServerProc) -> None:
    md = call_md(server_module.token)
    with server_module.channel() as ch:
        for method in ("/aifs.v1.Filesystem/GetAttr", "/aifs.v1.Assets/ListAssets",
                       "/aifs.v1.Data/HasChunks"):
            raw = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
            with pytest.raises(grpc.RpcError) as ei:
                raw(b"\xff\xff\xff\xff\x0f garbage \x00\x01", metadata=md, timeout=10)
            assert ei.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                       grpc.StatusCode.INTERNAL), method
        # still serving
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        from aifs_proto.v1 import filesystem_pb2
        assert fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=md).attr.ino == 1


def test_sixteen_concurrent_clients(server_module: ServerProc) -> None:
    md = call_md(server_module.token)
    errors: list[str] = []
    counts = [0] * 16
    deadline = time.monotonic() + 4.0

    def worker(i: int) -> None:
        rnd = random.Random(i)
        try:
            with server_module.channel() as ch:
                stub = assets_pb2_grpc.AssetsStub(ch)
                while time.monotonic() < deadline:
                    size = rnd.choice([100, 64 * 1024, 300_000, MiB + 17])
                    data = rnd.randbytes(size)
                    info = _put(stub, md, [data[:size // 2], data[size // 2:]])
                    if info.asset_id != blake3.blake3(data).hexdigest():
                        errors.append(f"client {i}: wrong id")
                    _, digest, n = _get(stub, md, info.asset_id)
                    if digest != info.asset_id or n != size:
                        errors.append(f"client {i}: content does not verify")
                    counts[i] += 1
        except Exception as e:  # collected: the assertion below names it
            errors.append(f"client {i}: {type(e).__name__}: {e}")

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors[:5]
    assert all(c >= 1 for c in counts), counts


def test_512mib_asset_bounded_server_memory(server: ServerProc,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    md = call_md(server.token)
    base = os.urandom(MiB)
    n_pieces = 512
    h = blake3.blake3()

    def pieces() -> Iterator[bytes]:
        for i in range(n_pieces):
            piece = i.to_bytes(8, "little") + base[8:]  # distinct chunks, no dedup
            h.update(piece)
            yield piece

    rss0 = peak_rss_kib(server.pid)
    with server.channel() as ch:
        stub = assets_pb2_grpc.AssetsStub(ch)
        info = _put(stub, md, pieces())
        assert info.asset_id == h.hexdigest() and info.size == n_pieces * MiB
        _, digest, n = _get(stub, md, info.asset_id)
        assert digest == info.asset_id and n == n_pieces * MiB
    peak = peak_rss_kib(server.pid)
    with capsys.disabled():
        print(f"\n[rss] 512 MiB asset up+down: server VmHWM {peak // 1024} MiB "
              f"(before: {rss0 // 1024} MiB)")
    assert peak < 400 * 1024, f"server peak RSS {peak} KiB for a 512 MiB asset"
    assert Path(server.data_dir).exists()
