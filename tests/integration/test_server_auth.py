"""Macaroon checks on every RPC family, over a real server process and unix socket."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from concurrent import futures
from typing import Any

import blake3
import grpc
import pytest
from pymacaroons import Macaroon

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
    versioning_pb2,
    versioning_pb2_grpc,
)
from aifs_server.auth import AuthInterceptor, mint_token
from tests.helpers import (
    ServerProc,
    call_md,
    error_info,
    open_channel,
    put_asset_requests,
    short_tmpdir,
)

Call = Callable[[grpc.Channel, tuple[tuple[str, str], ...]], Any]

FAMILIES: dict[str, Call] = {
    "fs": lambda ch, md: filesystem_pb2_grpc.FilesystemStub(ch).GetAttr(
        filesystem_pb2.InodeRequest(ino=1), metadata=md, timeout=10),
    "data": lambda ch, md: data_pb2_grpc.DataStub(ch).HasChunks(
        data_pb2.HasChunksRequest(chunk_ids=[b"\0" * 32]), metadata=md, timeout=10),
    "data-stream": lambda ch, md: list(data_pb2_grpc.DataStub(ch).GetChunks(
        data_pb2.GetChunksRequest(), metadata=md, timeout=10)),
    "assets": lambda ch, md: assets_pb2_grpc.AssetsStub(ch).ListAssets(
        assets_pb2.ListAssetsRequest(), metadata=md, timeout=10),
    "assets-put": lambda ch, md: assets_pb2_grpc.AssetsStub(ch).PutAsset(
        put_asset_requests(b"hello"), metadata=md, timeout=10),
    "admin": lambda ch, md: admin_pb2_grpc.AdminStub(ch).Introspect(
        common_pb2.Empty(), metadata=md, timeout=10),
    # a snapshot's file is read (client.open) with SigningKey, GetSnapshot, ListTree, then the
    # Filesystem and Data calls above
    "versions-key": lambda ch, md: versioning_pb2_grpc.VersioningStub(ch).SigningKey(
        common_pb2.Empty(), metadata=md, timeout=10),
    "versions-list": lambda ch, md: versioning_pb2_grpc.VersioningStub(ch).ListTags(
        common_pb2.Empty(), metadata=md, timeout=10),
    "versions-snap": lambda ch, md: versioning_pb2_grpc.VersioningStub(ch).CreateSnapshot(
        versioning_pb2.CreateSnapshotRequest(), metadata=md, timeout=10),
}
# verbs the calls above need, and one verb none of them needs
NEEDED = {"fs": "stat", "data": "put", "data-stream": "get", "assets": "list",
          "assets-put": "put", "admin": "admin", "versions-key": "get",
          "versions-list": "list", "versions-snap": "snapshot"}


@pytest.fixture(scope="module")
def root_key(server_module: ServerProc) -> bytes:
    return (server_module.data_dir / "macaroon.key").read_bytes()


@pytest.fixture(scope="module")
def ch(server_module: ServerProc, root_key: bytes) -> Iterator[grpc.Channel]:
    c = server_module.channel()
    admin_pb2_grpc.AdminStub(c).Format(admin_pb2.FormatRequest(namespace="nsb"),
                                       metadata=call_md(server_module.token))
    yield c
    c.close()


def _fails(call: Call, ch: grpc.Channel, md: Any) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.RpcError) as ei:
        call(ch, md)
    return error_info(ei.value)


def _tampered(token: str) -> str:
    m = Macaroon.deserialize(token)
    m.caveats[0].caveat_id = "namespace = *"   # widen the namespace, keep the signature
    s = m.serialize()
    return s if isinstance(s, str) else s.decode()


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_token_cases(family: str, ch: grpc.Channel, root_key: bytes) -> None:
    call = FAMILIES[family]
    ok = mint_token(root_key, "default", [NEEDED[family]], 600)
    call(ch, call_md(ok))  # the right token works

    bad = {
        "none": call_md(None),
        "garbage": call_md("not-a-macaroon!!"),
        "tampered": call_md(_tampered(mint_token(root_key, "nsb", "all", 600)), "default"),
        "other server": call_md(mint_token(os.urandom(32), "default", "all", 600)),
        "not bearer": (("authorization", f"Basic {ok}"),),
    }
    for what, md in bad.items():
        code, reason, msg = _fails(call, ch, md)
        assert code == grpc.StatusCode.UNAUTHENTICATED, what
        assert reason == "UNAUTHENTICATED", what
        assert "token" in msg, what

    code, reason, msg = _fails(call, ch, call_md(mint_token(root_key, "default", "all", -5)))
    assert code == grpc.StatusCode.UNAUTHENTICATED and reason == "TOKEN_EXPIRED"
    assert "expired at" in msg and "aifs token create" in msg

    wrong_verb = "delete" if NEEDED[family] != "delete" else "get"
    code, reason, msg = _fails(call, ch, call_md(mint_token(root_key, "default",
                                                            [wrong_verb], 600)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and reason == "PERMISSION_DENIED"
    assert f"does not allow {NEEDED[family]} on namespace default" in msg

    # a token for namespace A (default) cannot act on namespace B (nsb)
    code, reason, msg = _fails(call, ch, call_md(mint_token(root_key, "default", "all", 600),
                                                 "nsb"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "namespace nsb" in msg
    # ... while a token for B can
    call(ch, call_md(mint_token(root_key, "nsb", "all", 600), "nsb"))


def test_content_hash_needs_get_not_stat(server_module: ServerProc, ch: grpc.Channel,
                                         root_key: bytes) -> None:
    # GetFileInfo's hash confirms a guessed content: a stat-only token must not learn it
    fs = filesystem_pb2_grpc.FilesystemStub(ch)
    ino = fs.Create(filesystem_pb2.CreateRequest(parent=1, name=b"guess-me", mode=0o100600),
                    metadata=call_md(server_module.token), timeout=10).attr.ino
    req = filesystem_pb2.InodeRequest(ino=ino)
    code, _reason, msg = _fails(lambda c, md: fs.GetFileInfo(req, metadata=md, timeout=10), ch,
                                call_md(mint_token(root_key, "default", ["stat"], 600)))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "does not allow get" in msg
    info = fs.GetFileInfo(req, metadata=call_md(mint_token(root_key, "default", ["get"], 600)),
                          timeout=10)
    assert info.asset_id == blake3.blake3(b"").hexdigest()
    # the attributes themselves stay `stat`
    fs.GetAttr(req, metadata=call_md(mint_token(root_key, "default", ["stat"], 600)), timeout=10)


def test_attenuated_token_is_the_intersection(ch: grpc.Channel, root_key: bytes) -> None:
    m = Macaroon.deserialize(mint_token(root_key, "*", "all", 600))
    m.add_first_party_caveat("namespace = nsb")
    m.add_first_party_caveat("methods = stat")
    tok = m.serialize()
    FAMILIES["fs"](ch, call_md(tok, "nsb"))
    code, _, _ = _fails(FAMILIES["fs"], ch, call_md(tok, "default"))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _, _ = _fails(FAMILIES["assets"], ch, call_md(tok, "nsb"))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_admin_lists_only_the_tokens_namespaces(ch: grpc.Channel, root_key: bytes) -> None:
    admin = admin_pb2_grpc.AdminStub(ch)
    every = admin.ListNamespaces(common_pb2.Empty(),
                                 metadata=call_md(mint_token(root_key, "*", "list", 600)))
    assert {"default", "nsb"} <= {n.name for n in every.namespaces}
    only_b = admin.ListNamespaces(common_pb2.Empty(),
                                  metadata=call_md(mint_token(root_key, "nsb", "list", 600),
                                                   "nsb"))
    assert [n.name for n in only_b.namespaces] == ["nsb"]
    # Format of another namespace than the token's is refused even with admin
    with pytest.raises(grpc.RpcError) as ei:
        admin.Format(admin_pb2.FormatRequest(namespace="nsc"),
                     metadata=call_md(mint_token(root_key, "nsb", "admin", 600), "nsb"))
    assert ei.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_unlisted_method_is_denied_fail_closed() -> None:
    """An RPC with no entry in the verb table is refused even with an all-powerful token."""
    key = os.urandom(32)
    tmp = short_tmpdir()
    server = grpc.server(futures.ThreadPoolExecutor(2), interceptors=[AuthInterceptor(key)])
    try:
        handler = grpc.unary_unary_rpc_method_handler(
            lambda req, ctx: b"secret", request_deserializer=None, response_serializer=None)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("aifs.v1.Data", {"Unlisted": handler}),))
        server.add_insecure_port(f"unix:{tmp}/s.sock")
        server.start()
        with open_channel(f"unix:{tmp}/s.sock") as c:
            call = c.unary_unary("/aifs.v1.Data/Unlisted")
            with pytest.raises(grpc.RpcError) as ei:
                call(b"", metadata=call_md(mint_token(key, "*", "all", 60)), timeout=10)
            code, reason, msg = error_info(ei.value)
            assert code == grpc.StatusCode.PERMISSION_DENIED and "no access rule" in msg
            assert reason == "PERMISSION_DENIED"
    finally:
        server.stop(None)
        shutil.rmtree(tmp, ignore_errors=True)


def test_mint_token_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown method verb"):
        mint_token(b"k" * 32, "default", ["fly"], 60)
    with pytest.raises(ValueError, match="namespace"):
        mint_token(b"k" * 32, "a,b", "all", 60)
