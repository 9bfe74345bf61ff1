"""GetChunks' hand-written wire codec (server rpc_data.encode_piece, mount rpc.data.decode_piece)
must agree byte for byte with protobuf's own ChunkPiece encoding, both ways."""

from __future__ import annotations

import os

import pytest

from aifs_proto.v1 import data_pb2
from aifs_server.rpc_data import encode_piece
from aifsfs.errors import RemoteError
from aifsfs.rpc.data import decode_piece

CASES = [
    (0, 0, 0, data_pb2.IDENTITY, []),
    (3, 65536, 1 << 20, data_pb2.ZSTD, [b"ab", memoryview(b"xyz")]),
    (300, 2**32 - 1, 5, data_pb2.IDENTITY, [os.urandom(200)]),
    (1, 127, 128, data_pb2.ZSTD, [os.urandom(70_000), os.urandom(3)]),
]


@pytest.mark.parametrize("case", CASES)
def test_encode_matches_protobuf_and_decodes_back(case: tuple) -> None:  # type: ignore[type-arg]
    index, offset, raw_length, encoding, parts = case
    payload = b"".join(bytes(p) for p in parts)
    wire = encode_piece(index, offset, raw_length, encoding, parts)
    assert wire == data_pb2.ChunkPiece(range_index=index, offset=offset, raw_length=raw_length,
                                       encoding=encoding, data=payload).SerializeToString()
    p = decode_piece(wire)
    assert (p.range_index, p.offset, p.raw_length, p.encoding, bytes(p.data)) == (
        index, offset, raw_length, encoding, payload)


def test_decode_skips_unknown_fields_and_refuses_truncation() -> None:
    wire = encode_piece(2, 10, 3, data_pb2.IDENTITY, [b"abc"])
    # field 9 (varint), field 10 (length-delimited), field 11 (fixed64), field 12 (fixed32)
    extra = b"\x48\x07" + b"\x52\x02zz" + b"\x59" + bytes(8) + b"\x65" + bytes(4)
    p = decode_piece(extra + wire)
    assert (p.range_index, p.offset, bytes(p.data)) == (2, 10, b"abc")
    with pytest.raises(RemoteError, match="malformed"):
        decode_piece(wire[:-1])
    with pytest.raises(RemoteError, match="malformed"):
        decode_piece(b"\x08\x80")


@pytest.mark.parametrize("at", [0, 1, 1 << 20, 2**40])
def test_a_piece_in_the_inline_file_carries_its_offset_not_its_bytes(at: int) -> None:
    wire = encode_piece(2, 65536, 4096, data_pb2.IDENTITY, [], at)
    m = data_pb2.ChunkPiece.FromString(wire)
    assert m.HasField("file_offset") and m.file_offset == at and not m.data
    assert wire == data_pb2.ChunkPiece(range_index=2, offset=65536, raw_length=4096,
                                       encoding=data_pb2.IDENTITY,
                                       file_offset=at).SerializeToString()
    p = decode_piece(wire)
    assert (p.range_index, p.offset, p.raw_length, p.file_offset, bytes(p.data)) == (
        2, 65536, 4096, at, b"")
    assert decode_piece(encode_piece(2, 0, 3, data_pb2.IDENTITY, [b"abc"])).file_offset == -1
