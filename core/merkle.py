"""The Merkle encoding of versions (docs/FORMAT.md §6), shared by the server and the mount.

Interface:
    content_hash(size, slots) -> 32 bytes    slots: (index, chunk id, length) in index order
    node_hash(mode, uid, gid, size, body, xattrs) -> 32 bytes
    file_node_hash(mode, uid, gid, size, slots, xattrs) -> 32 bytes   a regular file's: the same
        as node_hash(..., content_hash(size, slots), xattrs), in one pass (a snapshot hashes
        every file of a tree the first time)
        body: file -> its content hash; directory -> dir_body(entries); symlink -> the target;
        other -> rdev as int. xattrs: {name: value}
    dir_body(entries) -> bytes               entries: (name, child node hash), any order
    dir_pieces(entries) -> [bytes]           each entry's bytes of dir_body, in name order;
    dir_body_of(pieces) -> bytes             dir_body from them (kept between hashings:
    dir_entry(name, child) / entry_name(piece)   server/listing_cache.py splices them)
    node_type(mode) -> 1 file, 2 dir, 3 symlink, 4 other
    statement(snap_id, namespace, branch, created_ns, root, parents, message) -> bytes
    snap_uri(namespace, snap_id_hex) / parse_snap_uri(uri) -> (namespace, id hex, path)

Both sides build the bytes here so the server's hashes and the mount's re-computation cannot
drift apart; the tests check them against the tables of FORMAT.md.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterable, Mapping, Sequence

from blake3 import blake3

NODE_MAGIC = b"AIFSNODE"
FILE_MAGIC = b"AIFSFILE"
SNAP_MAGIC = b"AIFSSNAP"
VERSION = 1
SNAP_SCHEME = "aifs-snap://"


_TYPES = {stat.S_IFREG: 1, stat.S_IFDIR: 2, stat.S_IFLNK: 3}
# precompiled, and each hash takes its bytes in one call: a snapshot hashes every node of a tree
_FILE_HEAD, _NODE_HEAD = struct.Struct("<BQI"), struct.Struct("<BBIIIQ")
_Q, _I, _H = struct.Struct("<Q"), struct.Struct("<I"), struct.Struct("<H")
_SLOT = struct.Struct("<Q32sI")
_NO_XATTRS = _I.pack(0)


def node_type(mode: int) -> int:
    return _TYPES.get(stat.S_IFMT(mode), 4)


def content_hash(size: int, slots: Iterable[tuple[int, bytes, int]]) -> bytes:
    rows = list(slots)
    parts = [FILE_MAGIC, _FILE_HEAD.pack(VERSION, size, len(rows))]
    for idx, cid, length in rows:
        parts += (_Q.pack(idx), bytes(cid), _I.pack(length))
    return blake3(b"".join(parts)).digest()


def file_node_hash(mode: int, uid: int, gid: int, size: int,
                   slots: Iterable[tuple[int, bytes, int]],
                   xattrs: Mapping[bytes, bytes] | None = None) -> bytes:
    rows = list(slots)
    if xattrs or any(len(cid) != 32 for _, cid, _ in rows):
        return node_hash(mode, uid, gid, size, content_hash(size, rows), xattrs)
    content = blake3(b"".join([FILE_MAGIC, _FILE_HEAD.pack(VERSION, size, len(rows)),
                               *[_SLOT.pack(i, cid, n) for i, cid, n in rows]])).digest()
    return blake3(b"".join([NODE_MAGIC, _NODE_HEAD.pack(VERSION, 1, mode & 0xFFFFFFFF,
                                                        uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, size),
                            content, _NO_XATTRS])).digest()


def dir_body(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    return dir_body_of(dir_pieces(entries))


def dir_pieces(entries: Iterable[tuple[bytes, bytes]]) -> list[bytes]:
    h = _H.pack   # one bytes per entry: a directory of 100k entries in ~30 ms, was ~40
    return [h(len(name)) + name + child for name, child in sorted(entries)]


def dir_body_of(pieces: Sequence[bytes]) -> bytes:
    return b"".join([_I.pack(len(pieces)), *pieces])


def dir_entry(name: bytes, child: bytes) -> bytes:
    return _H.pack(len(name)) + name + child


def entry_name(piece: bytes) -> bytes:
    """The name in a dir_entry's bytes (a child's node hash is 32 bytes)."""
    return piece[2:-32]


def node_hash(mode: int, uid: int, gid: int, size: int, body: bytes | int,
              xattrs: Mapping[bytes, bytes] | None = None) -> bytes:
    t = node_type(mode)
    parts = [NODE_MAGIC, _NODE_HEAD.pack(VERSION, t, mode & 0xFFFFFFFF, uid & 0xFFFFFFFF,
                                         gid & 0xFFFFFFFF, 0 if t == 2 else size)]
    if t == 4:
        parts.append(_Q.pack(int(body) & 0xFFFFFFFFFFFFFFFF))
    elif t == 3:
        target = bytes(body) if not isinstance(body, int) else b""
        parts += (_I.pack(len(target)), target)
    else:
        assert not isinstance(body, int)
        parts.append(bytes(body))
    if xattrs:
        xs = sorted(xattrs.items())
        parts.append(_I.pack(len(xs)))
        for name, value in xs:
            parts += (_H.pack(len(name)), name, _I.pack(len(value)), value)
    else:
        parts.append(_NO_XATTRS)
    return blake3(b"".join(parts)).digest()


def _s16(text: str) -> bytes:
    raw = text.encode()
    return struct.pack("<H", len(raw)) + raw


def statement(snap_id: bytes, namespace: str, branch: str, created_ns: int, root: bytes,
              parents: list[bytes], message: str) -> bytes:
    msg = message.encode()
    return b"".join([
        SNAP_MAGIC, struct.pack("<B", VERSION), snap_id, _s16(namespace), _s16(branch),
        struct.pack("<q", created_ns), root, struct.pack("<B", len(parents)), *parents,
        struct.pack("<I", len(msg)), msg])


def snap_uri(namespace: str, snap_id: str, path: str = "") -> str:
    return f"{SNAP_SCHEME}{namespace}/{snap_id}" + (("/" + path.lstrip("/")) if path else "")


def parse_snap_uri(uri: str) -> tuple[str, str, str]:
    """(namespace, snapshot id hex, path inside the tree, "" for the root)."""
    if not uri.startswith(SNAP_SCHEME):
        raise ValueError(f"not an {SNAP_SCHEME} URI: {uri!r}")
    parts = uri[len(SNAP_SCHEME):].split("/", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise ValueError(f"bad snapshot URI {uri!r}: expected {SNAP_SCHEME}NS/ID[/path]")
    return parts[0], parts[1], parts[2] if len(parts) > 2 else ""
