"""ReadDir's page encoding (rpc_filesystem.encode_entries: the entries of a plain listing
as one message built from the Attrs' own fields) against the per-entry encoding it replaced
(a DirEntry message with attr_to_pb, serialized and framed by encode_dir_entry): the same
bytes, parsed by the generated classes to the same fields, for regular files, directories,
symlinks, devices, zero and extreme values; and attr_fields / attr_from_pb against the
proto's Attr field by field."""

from __future__ import annotations

import stat

import pytest

from aifs_core.types import Attr, DirEntry
from aifs_core.wire import attr_fields, attr_from_pb, attr_to_pb
from aifs_proto.v1 import common_pb2, filesystem_pb2
from aifs_server.rpc_filesystem import encode_dir_entry, encode_entries

U32, U64, I64 = (1 << 32) - 1, (1 << 64) - 1, (1 << 63) - 1
NOW = 1_796_543_210_123_456_789


def _attr(ino: int, mode: int, **kw: int) -> Attr:
    base = dict(nlink=1, uid=1000, gid=1000, rdev=0, size=4096, atime_ns=NOW, mtime_ns=NOW,
                ctime_ns=NOW + 1, blocks=8, generation=1)
    base.update(kw)
    return Attr(ino=ino, mode=mode, **base)


ENTRIES = [
    DirEntry(b"file.bin", _attr(2, stat.S_IFREG | 0o644), 1),
    DirEntry(b"dir", _attr(3, stat.S_IFDIR | 0o2755, nlink=2, size=0, blocks=0), 2),
    DirEntry(b"link", _attr(4, stat.S_IFLNK | 0o777, size=11, blocks=0, generation=0), 7),
    DirEntry(b"dev", _attr(5, stat.S_IFCHR | 0o600, rdev=(8 << 8) | 1, size=0), 9),
    DirEntry(b"fifo", _attr(6, stat.S_IFIFO | 0o600, uid=0, gid=0, size=0, blocks=0), 10),
    # every field zero but the inode (proto3 leaves zeros out), then the extremes of each
    # field's type, negative times (before 1970) among them
    DirEntry(b"z", Attr(7, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), 11),
    DirEntry(b"\xff\x00odd \xe2\x98\x83" + b"n" * 240, _attr(
        U64, stat.S_IFREG | 0o7777, nlink=U32, uid=U32, gid=U32, rdev=U64, size=U64,
        atime_ns=-I64 - 1, mtime_ns=I64, ctime_ns=-1, blocks=U64, generation=U64), U64),
    DirEntry(b"big-ino", _attr(1 << 40, stat.S_IFREG | 0o600, size=(1 << 35) + 3), 1 << 33),
]


def _old_bytes(entries: list[DirEntry]) -> bytes:
    """What ReadDir sent before encode_entries: one DirEntry message per entry."""
    parts: list[bytes | bytearray] = []
    for e in entries:
        pe = filesystem_pb2.DirEntry(name=e.name, cookie=e.cookie)
        pe.attr.CopyFrom(attr_to_pb(e.attr))
        parts.extend(encode_dir_entry(pe.SerializeToString(), b""))
    return b"".join(parts)


def test_page_encoding_is_the_old_bytes_and_parses_field_by_field() -> None:
    new = encode_entries(ENTRIES)
    assert new == _old_bytes(ENTRIES)
    tail = filesystem_pb2.ReadDirReply(eof=True).SerializeToString()
    r = filesystem_pb2.ReadDirReply.FromString(new + tail)
    assert r.eof and len(r.entries) == len(ENTRIES)
    for pe, e in zip(r.entries, ENTRIES, strict=True):
        assert pe.name == e.name and pe.cookie == e.cookie and not pe.HasField("map")
        for f in common_pb2.Attr.DESCRIPTOR.fields:
            assert getattr(pe.attr, f.name) == getattr(e.attr, f.name), f.name
        assert attr_from_pb(pe.attr) == e.attr


@pytest.mark.parametrize("n", [0, 1, 1000])
def test_page_encoding_of_a_page(n: int) -> None:
    """A page as the server lists it: any length, one entry after another, in order."""
    entries = [DirEntry(b"f%06d" % i, _attr(100 + i, stat.S_IFREG | 0o644, mtime_ns=NOW + i),
                        i + 1) for i in range(n)]
    new = encode_entries(entries)
    assert new == _old_bytes(entries)
    parsed = filesystem_pb2.ReadDirReply.FromString(new).entries
    assert [DirEntry(p.name, attr_from_pb(p.attr), p.cookie) for p in parsed] == entries


def test_page_encoding_next_to_an_entry_with_inline_bytes() -> None:
    """A reply mixing the page encoding with encode_dir_entry's entries (a map and its
    inline bytes as a second map): a parser merges and keeps them in order."""
    with_map = filesystem_pb2.DirEntry(name=b"small", cookie=5, attr=attr_to_pb(ENTRIES[0].attr))
    with_map.map.SetInParent()
    with_map.map.chunks.add(index=0, chunk_id=b"c" * 32, length=3)
    raw = (encode_entries(ENTRIES[:2]) + b"".join(encode_dir_entry(
        with_map.SerializeToString(), b"abc")) + encode_entries(ENTRIES[2:3]))
    r = filesystem_pb2.ReadDirReply.FromString(raw)
    assert [e.name for e in r.entries] == [b"file.bin", b"dir", b"small", b"link"]
    m = r.entries[2].map
    assert m.inline_data == b"abc" and [c.length for c in m.chunks] == [3]
    assert not r.entries[3].HasField("map")


def test_attr_fields_are_the_proto_fields() -> None:
    a = ENTRIES[6].attr
    assert list(attr_fields(a)) == [f.name for f in common_pb2.Attr.DESCRIPTOR.fields]
    assert common_pb2.Attr(**attr_fields(a)) == attr_to_pb(a)
    assert attr_from_pb(attr_to_pb(a)) == a
