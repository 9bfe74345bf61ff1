"""Hostile numbers and tokens get a clear error, never INTERNAL or a traceback (issue 13).

Every RPC of every AIFS service (found from the proto descriptors, so a new RPC is covered
without editing this file) is called with each uint64 field it carries, nested ones included,
set to 2**64 - 1; the server must answer INVALID_ARGUMENT, stay healthy, and log no traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from pymacaroons import Macaroon

from aifs_proto.v1 import admin_pb2, assets_pb2, data_pb2, filesystem_pb2
from tests.helpers import ServerProc, call_md, error_info, wait_healthy

U64_MAX = (1 << 64) - 1
_U64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)


def _methods() -> Iterator[MethodDescriptor]:
    for mod in (filesystem_pb2, data_pb2, assets_pb2, admin_pb2):
        for svc in mod.DESCRIPTOR.services_by_name.values():
            yield from svc.methods


def _has_u64(desc: Descriptor, seen: frozenset[str] = frozenset()) -> bool:
    for f in desc.fields:
        if f.type in _U64:
            return True
        if (f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type.full_name not in seen
                and not f.message_type.GetOptions().map_entry
                and _has_u64(f.message_type, seen | {desc.full_name})):
            return True
    return False


def _fill_u64(msg: Any, value: int) -> None:
    """Set every uint64 field of `msg` (and of one element of each nested message) to value."""
    for f in msg.DESCRIPTOR.fields:
        repeated = f.is_repeated
        if f.type in _U64:
            if repeated:
                getattr(msg, f.name).append(value)
            else:
                setattr(msg, f.name, value)
        elif (f.type == FieldDescriptor.TYPE_MESSAGE and _has_u64(f.message_type)
              and not f.message_type.GetOptions().map_entry):
            if repeated:
                _fill_u64(getattr(msg, f.name).add(), value)
            else:
                _fill_u64(getattr(msg, f.name), value)


CASES = [m for m in _methods() if _has_u64(m.input_type)]


def _call(channel: grpc.Channel, m: MethodDescriptor, request: Any, md: Any) -> None:
    path = f"/{m.containing_service.full_name}/{m.name}"
    out_cls = message_factory.GetMessageClass(m.output_type)
    ser, de = type(request).SerializeToString, out_cls.FromString
    if m.client_streaming and m.server_streaming:
        for _ in channel.stream_stream(path, ser, de)(iter([request]), metadata=md, timeout=10):
            pass
    elif m.client_streaming:
        channel.stream_unary(path, ser, de)(iter([request]), metadata=md, timeout=10)
    elif m.server_streaming:
        for _ in channel.unary_stream(path, ser, de)(request, metadata=md, timeout=10):
            pass
    else:
        channel.unary_unary(path, ser, de)(request, metadata=md, timeout=10)


def test_there_are_rpcs_with_uint64_fields() -> None:
    names = {m.name for m in CASES}
    assert {"Lookup", "GetAttr", "ReadDir", "CommitFile", "GetChunkMap", "PutAsset"} <= names


@pytest.mark.parametrize("method", CASES, ids=lambda m: m.name)
def test_out_of_range_uint64_is_invalid_argument(server_module: ServerProc,
                                                 method: MethodDescriptor) -> None:
    request = message_factory.GetMessageClass(method.input_type)()
    _fill_u64(request, U64_MAX)
    with server_module.channel() as ch:
        with pytest.raises(grpc.RpcError) as err:
            _call(ch, method, request, call_md(server_module.token))
        code, reason, message = error_info(err.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, reason, message)
        assert "out of range" in message and "Traceback" not in message
    wait_healthy(server_module.address, 10)
    log = server_module.log()
    assert "OverflowError" not in log and "Traceback" not in log


def test_in_range_numbers_still_reach_the_handler(server_module: ServerProc) -> None:
    # 2**63 - 1 is a valid number for the check; the engine says the inode is not there
    with server_module.channel() as ch:
        stub = ch.unary_unary("/aifs.v1.Filesystem/GetAttr",
                              filesystem_pb2.InodeRequest.SerializeToString,
                              filesystem_pb2.AttrReply.FromString)
        with pytest.raises(grpc.RpcError) as err:
            stub(filesystem_pb2.InodeRequest(ino=(1 << 63) - 1),
                 metadata=call_md(server_module.token), timeout=10)
        assert error_info(err.value)[0] == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("expires", ["-99999999999999999999", "99999999999999999999", "-1",
                                     "1e9", "9" * 5000])
def test_hostile_expiry_caveat_is_unauthenticated(server_module: ServerProc,
                                                  expires: str) -> None:
    # The holder of a valid token may add caveats; a nonsense expiry must be refused cleanly
    # (it used to raise inside the interceptor: UNKNOWN)
    m = Macaroon.deserialize(server_module.token)
    m.add_first_party_caveat(f"expires = {expires}")
    with server_module.channel() as ch:
        stub = ch.unary_unary("/aifs.v1.Filesystem/GetAttr",
                              filesystem_pb2.InodeRequest.SerializeToString,
                              filesystem_pb2.AttrReply.FromString)
        with pytest.raises(grpc.RpcError) as err:
            stub(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(m.serialize()),
                 timeout=10)
        code, _reason, message = error_info(err.value)
        assert code == grpc.StatusCode.UNAUTHENTICATED, (code, message)
        assert "expiry" in message
    wait_healthy(server_module.address, 10)


def test_deeply_nested_asset_metadata_is_invalid_argument(server_module: ServerProc) -> None:
    depth = 100_000
    header = assets_pb2.PutAssetRequest(
        header=assets_pb2.AssetHeader(kind="blob", metadata_json="[" * depth + "]" * depth))
    data = assets_pb2.PutAssetRequest(data=b"x")
    end = assets_pb2.PutAssetRequest(end=assets_pb2.AssetEnd(size=1))
    with server_module.channel() as ch:
        stub = ch.stream_unary("/aifs.v1.Assets/PutAsset",
                               assets_pb2.PutAssetRequest.SerializeToString,
                               assets_pb2.AssetInfo.FromString)
        # the call's own 30 s deadline is the hang guard: a server that churned on the
        # nesting past it answers DEADLINE_EXCEEDED, which fails the code check below
        with pytest.raises(grpc.RpcError) as err:
            stub(iter([header, data, end]), metadata=call_md(server_module.token), timeout=30)
        code, _reason, message = error_info(err.value)
        assert code == grpc.StatusCode.INVALID_ARGUMENT, (code, message)
        assert "nested too deeply" in message or "JSON" in message
    assert "RecursionError" not in server_module.log()
