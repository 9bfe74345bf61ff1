"""Admin service over a real server: Format, Introspect, Fsck, GC, and corrupt chunks."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import blake3
import grpc
import pytest

from aifs_proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    assets_pb2,
    assets_pb2_grpc,
    common_pb2,
    data_pb2,
    data_pb2_grpc,
    filesystem_pb2,
    filesystem_pb2_grpc,
)
from tests.helpers import ServerProc, call_md, error_info, put_asset_requests

MiB = 1 << 20


def _put(ch: grpc.Channel, token: str, data: bytes) -> assets_pb2.AssetInfo:
    return assets_pb2_grpc.AssetsStub(ch).PutAsset(
        put_asset_requests(data), metadata=call_md(token), timeout=60)


def _chunk_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "chunks").rglob("*") if p.is_file()
                  and not p.name.startswith("."))


def test_format_is_idempotent_with_dry_run(server: ServerProc) -> None:
    md = call_md(server.token)
    with server.channel() as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        dry = admin.Format(admin_pb2.FormatRequest(namespace="ml", chunk_size=4 * MiB,
                                                   dry_run=True), metadata=md)
        assert not dry.created and "dry run" in dry.message
        assert "ml" not in {n.name for n in admin.ListNamespaces(common_pb2.Empty(),
                                                                 metadata=md).namespaces}
        made = admin.Format(admin_pb2.FormatRequest(namespace="ml", chunk_size=4 * MiB,
                                                    zstd_level=3), metadata=md)
        assert made.created and made.namespace.chunk_size == 4 * MiB
        again = admin.Format(admin_pb2.FormatRequest(namespace="ml"), metadata=md)
        assert not again.created and "already exists" in again.message
        with pytest.raises(grpc.RpcError) as ei:
            admin.Format(admin_pb2.FormatRequest(namespace="bad/name"), metadata=md)
        assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the new namespace's tree is usable, with its chunk size
        ml = call_md(server.token, "ml")
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        ino = fs.Create(filesystem_pb2.CreateRequest(parent=1, name=b"a"), metadata=ml).attr.ino
        cmap = fs.GetChunkMap(filesystem_pb2.ChunkMapRequest(ino=ino), metadata=ml)
        assert cmap.chunk_size == 4 * MiB
        # an unknown namespace is NOT_FOUND with advice
        with pytest.raises(grpc.RpcError) as ei:
            fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(server.token, "zz"))
        code, _, msg = error_info(ei.value)
        assert code == grpc.StatusCode.NOT_FOUND and "aifs format" in msg


def test_introspect_has_no_secrets(server: ServerProc) -> None:
    with server.channel() as ch:
        _put(ch, server.token, b"introspect me " * 1000)
        r = admin_pb2_grpc.AdminStub(ch).Introspect(common_pb2.Empty(),
                                                    metadata=call_md(server.token))
    assert r.version and {"zstd-wire", "frames", "macaroons", "keyed-chunk-names"} <= \
        set(r.features)
    cfg = json.loads(r.config_json)
    assert cfg["chunk_size"] == MiB
    for name in ("macaroon.key", "storage.key", "signing.key", "keyring.json"):
        secret = (server.data_dir / name).read_bytes()
        assert secret.hex() not in r.config_json
    ns = {n.name: n for n in r.namespaces}["default"]
    assert ns.logical_bytes >= 14000 and 0 < ns.stored_bytes < ns.logical_bytes


def test_fsck_and_corrupt_or_missing_chunks(server: ServerProc) -> None:
    md = call_md(server.token)
    with server.channel() as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        before = set(_chunk_files(server.data_dir))
        data = os.urandom(MiB) + os.urandom(MiB)
        info = _put(ch, server.token, data)
        new = sorted(set(_chunk_files(server.data_dir)) - before)
        assert len(new) == 2
        ok = admin.Fsck(admin_pb2.FsckRequest(read_data=True), metadata=md)
        assert ok.ok and ok.chunks_checked >= 2, list(ok.problems)

        ids = [blake3.blake3(data[:MiB]).digest(), blake3.blake3(data[MiB:]).digest()]
        # corrupt one stored chunk: a read is DATA_LOSS naming a chunk, never wrong bytes
        victim = new[0]
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
        data_stub = data_pb2_grpc.DataStub(ch)
        lost = []
        for cid in ids:
            try:
                list(data_stub.GetChunks(data_pb2.GetChunksRequest(
                    ranges=[data_pb2.ChunkRange(chunk_id=cid)]), metadata=md))
            except grpc.RpcError as e:
                code, reason, msg = error_info(e)
                assert code == grpc.StatusCode.DATA_LOSS and reason == "CORRUPT_CHUNK"
                assert cid.hex() in msg
                lost.append(cid)
        assert len(lost) == 1
        bad = admin.Fsck(admin_pb2.FsckRequest(read_data=True), metadata=md)
        assert not bad.ok and any(lost[0].hex() in p for p in bad.problems)
        v = assets_pb2_grpc.AssetsStub(ch).VerifyAsset(
            assets_pb2.AssetRequest(asset_id=info.asset_id), metadata=md)
        assert not v.ok
        # a missing chunk file is reported without reading data
        new[1].unlink()
        missing = admin.Fsck(admin_pb2.FsckRequest(read_data=False), metadata=md)
        assert any("missing" in p for p in missing.problems)


def test_gc_collects_unreferenced_chunks_and_orphans_after_grace(server: ServerProc) -> None:
    md = call_md(server.token)
    with server.channel() as ch:
        admin = admin_pb2_grpc.AdminStub(ch)
        assets = assets_pb2_grpc.AssetsStub(ch)
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        keep = _put(ch, server.token, os.urandom(MiB))
        drop = _put(ch, server.token, os.urandom(MiB + 1))
        assets.DeleteAsset(assets_pb2.AssetRequest(asset_id=drop.asset_id), metadata=md)
        ino = fs.Create(filesystem_pb2.CreateRequest(parent=1, name=b"open"), metadata=md
                        ).attr.ino
        fs.Unlink(filesystem_pb2.NameRequest(parent=1, name=b"open"), metadata=md)
        # within the default grace (1 h) nothing goes
        r = admin.GC(admin_pb2.GCRequest(), metadata=md)
        assert r.chunks_deleted == 0 and r.orphans_deleted == 0
        time.sleep(1.2)  # let the 1-second grace pass (not a timing assertion)
        dry = admin.GC(admin_pb2.GCRequest(dry_run=True, grace_seconds=1), metadata=md)
        assert dry.chunks_deleted == 2 and dry.orphans_deleted == 1
        r = admin.GC(admin_pb2.GCRequest(grace_seconds=1), metadata=md)
        assert r.chunks_deleted == 2 and r.bytes_freed > MiB and r.orphans_deleted == 1
        with pytest.raises(grpc.RpcError) as ei:
            fs.GetAttr(filesystem_pb2.InodeRequest(ino=ino), metadata=md)
        assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        got = b"".join(x.data for x in assets.GetAsset(
            assets_pb2.GetAssetRequest(asset_id=keep.asset_id), metadata=md)
            if x.WhichOneof("part") == "data")
        assert blake3.blake3(got).hexdigest() == keep.asset_id
        assert admin.Fsck(admin_pb2.FsckRequest(read_data=True), metadata=md).ok
