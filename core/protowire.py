"""Protobuf wire format, the little the hand-encoded data messages need (GetChunks pieces,
PutChunks requests: rpc_data.py on the server, rpc/data.py on the mount).

Interface:
    varint(n) -> bytes                  an unsigned varint (n >= 0)
    fields(buf) -> iterator of (field number, value)
        value: an int for a varint field, a memoryview into `buf` (no copy) for a
        length-delimited one; fixed32/fixed64 fields are skipped, as are unknown fields by
        the callers. A truncated or malformed message raises ValueError.

Why by hand: a 1 MiB payload built into a protobuf message and serialized is copied twice
more than joining it behind a few header bytes, and parsed back with FromString + `.data`
twice more than taking a view (DECISIONS.md, "GetChunks in hand-encoded messages").
"""

from __future__ import annotations

from collections.abc import Iterator


def varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def fields(buf: bytes | memoryview) -> Iterator[tuple[int, int | memoryview]]:
    view = memoryview(buf)
    pos, end = 0, len(view)

    def read_varint() -> int:
        nonlocal pos
        shift = value = 0
        while True:
            if pos >= end or shift > 63:
                raise ValueError("truncated varint")
            b = view[pos]
            pos += 1
            value |= (b & 0x7F) << shift
            if b < 0x80:
                return value
            shift += 7

    while pos < end:
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            yield number, read_varint()
        elif wire == 2:
            n = read_varint()
            if pos + n > end:
                raise ValueError("truncated field")
            yield number, view[pos:pos + n]
            pos += n
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError(f"wire type {wire}")
    if pos != end:
        raise ValueError("truncated field")
