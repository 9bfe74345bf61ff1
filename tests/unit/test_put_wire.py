"""PutChunks' hand-written wire codec (mount rpc.data.encode_put, server rpc_data.decode_put)
must agree byte for byte with protobuf's own PutChunkRequest encoding, both ways."""

from __future__ import annotations

import os

import pytest

from aifs_core.errors import InvalidArgument
from aifs_proto.v1 import data_pb2
from aifs_server.rpc_data import decode_put
from aifsfs.rpc.data import encode_put

CASES = [
    (b"", b"", data_pb2.IDENTITY, 0),
    (os.urandom(32), b"", data_pb2.IDENTITY, 0),
    (os.urandom(32), b"abc", data_pb2.IDENTITY, 3),
    (os.urandom(32), bytearray(os.urandom(1 << 20)), data_pb2.IDENTITY, 1 << 20),
    (os.urandom(32), memoryview(os.urandom(70_000)), data_pb2.ZSTD, 2**32 - 1),
    (os.urandom(32), os.urandom(127), data_pb2.ZSTD, 128),
]


@pytest.mark.parametrize("case", CASES)
def test_encode_matches_protobuf_and_decodes_back(case: tuple) -> None:  # type: ignore[type-arg]
    cid, data, encoding, raw_length = case
    wire = encode_put(cid, data, encoding, raw_length)
    want = data_pb2.PutChunkRequest(chunk_id=cid, data=bytes(data), encoding=encoding,
                                    raw_length=raw_length)
    assert wire == want.SerializeToString()
    got = data_pb2.PutChunkRequest.FromString(wire)
    assert got == want
    r = decode_put(wire)
    assert (r.chunk_id, bytes(r.data), r.encoding, r.raw_length) == (
        cid, bytes(data), encoding, raw_length)
    assert isinstance(r.data, memoryview)   # the payload is not copied


def test_decode_like_protobuf_on_unusual_messages() -> None:
    """Unknown fields skipped, the last of a repeated field kept, out-of-range varints
    truncated: what protobuf's parser makes of the same bytes."""
    cid = os.urandom(32)
    wire = encode_put(cid, b"first", data_pb2.IDENTITY, 5)
    extra = (b"\x48\x07" + b"\x52\x02zz" + b"\x59" + bytes(8) + b"\x65" + bytes(4)
             + b"\x12\x06second" + b"\x20" + b"\x87\x80\x80\x80\x10" + b"\x18\x05")
    for msg in (extra + wire, wire + extra):
        pb = data_pb2.PutChunkRequest.FromString(msg)
        r = decode_put(msg)
        assert (r.chunk_id, bytes(r.data), r.encoding, r.raw_length) == (
            pb.chunk_id, pb.data, pb.encoding, pb.raw_length)
    pb = data_pb2.PutChunkRequest.FromString(b"\x18" + b"\xff" * 9 + b"\x01")
    assert decode_put(b"\x18" + b"\xff" * 9 + b"\x01").encoding == pb.encoding == -1


def test_decode_refuses_truncation() -> None:
    wire = encode_put(os.urandom(32), b"abc", data_pb2.IDENTITY, 3)
    for bad in (wire[:-1], wire[:40], b"\x20\x80", b"\x0f"):
        with pytest.raises(InvalidArgument, match="malformed"):
            decode_put(bad)


@pytest.mark.parametrize("offset,path", [(0, "/dev/shm/aifs-rd-1-" + "a" * 32 + "/" + "b" * 32),
                                         (3 << 30, ""), (None, "x")])
def test_file_offset_and_inline_file_match_protobuf(offset: int | None, path: str) -> None:
    """A chunk in the call's file: no data, its offset (present even if 0) and the file's name
    (in the call's first message) encoded as protobuf does, and decoded back."""
    cid = os.urandom(32)
    wire = encode_put(cid, b"", data_pb2.IDENTITY, 1 << 20, offset, path)
    want = data_pb2.PutChunkRequest(chunk_id=cid, raw_length=1 << 20, inline_file=path)
    if offset is not None:
        want.file_offset = offset
    assert wire == want.SerializeToString()
    r = decode_put(wire)
    assert (r.chunk_id, bytes(r.data), r.raw_length, r.file_offset, r.inline_file) == (
        cid, b"", 1 << 20, -1 if offset is None else offset, path)
    # a message without them (an old client): in the message, no file
    old = decode_put(encode_put(cid, b"abc", data_pb2.IDENTITY, 3))
    assert (old.file_offset, old.inline_file) == (-1, "")
