"""The Merkle encoding of versions (docs/FORMAT.md §6), shared by the server and the mount.

Interface:
    content_hash(size, slots) -> 32 bytes    slots: (index, chunk id, length) in index order
    node_hash(mode, uid, gid, size, body, xattrs) -> 32 bytes
        body: file -> its content hash; directory -> dir_body(entries); symlink -> the target;
        other -> rdev as int. xattrs: {name: value}
    dir_body(entries) -> bytes               entries: (name, child node hash), any order
    node_type(mode) -> 1 file, 2 dir, 3 symlink, 4 other
    statement(snap_id, namespace, branch, created_ns, root, parents, message) -> bytes
    snap_uri(namespace, snap_id_hex) / parse_snap_uri(uri) -> (namespace, id hex, path)

Both sides build the bytes here so the server's hashes and the mount's re-computation cannot
drift apart; the tests check them against the tables of FORMAT.md.
"""

from __future__ import annotations

import stat
import struct
from collections.abc import Iterable, Mapping

from blake3 import blake3

NODE_MAGIC = b"AIFSNODE"
FILE_MAGIC = b"AIFSFILE"
SNAP_MAGIC = b"AIFSSNAP"
VERSION = 1
SNAP_SCHEME = "aifs-snap://"


def node_type(mode: int) -> int:
    if stat.S_ISREG(mode):
        return 1
    if stat.S_ISDIR(mode):
        return 2
    if stat.S_ISLNK(mode):
        return 3
    return 4


def content_hash(size: int, slots: Iterable[tuple[int, bytes, int]]) -> bytes:
    rows = list(slots)
    h = blake3(FILE_MAGIC + struct.pack("<BQI", VERSION, size, len(rows)))
    for idx, cid, length in rows:
        h.update(struct.pack("<Q", idx) + bytes(cid) + struct.pack("<I", length))
    return h.digest()


def dir_body(entries: Iterable[tuple[bytes, bytes]]) -> bytes:
    rows = sorted(entries)
    out = [struct.pack("<I", len(rows))]
    for name, child in rows:
        out.append(struct.pack("<H", len(name)) + name + child)
    return b"".join(out)


def node_hash(mode: int, uid: int, gid: int, size: int, body: bytes | int,
              xattrs: Mapping[bytes, bytes] | None = None) -> bytes:
    t = node_type(mode)
    if t == 2:
        size = 0
    h = blake3(NODE_MAGIC + struct.pack("<BBIIIQ", VERSION, t, mode & 0xFFFFFFFF,
                                        uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, size))
    if t == 4:
        h.update(struct.pack("<Q", int(body) & 0xFFFFFFFFFFFFFFFF))
    elif t == 3:
        target = bytes(body) if not isinstance(body, int) else b""
        h.update(struct.pack("<I", len(target)) + target)
    else:
        assert not isinstance(body, int)
        h.update(bytes(body))
    xs = sorted((xattrs or {}).items())
    h.update(struct.pack("<I", len(xs)))
    for name, value in xs:
        h.update(struct.pack("<H", len(name)) + name + struct.pack("<I", len(value)) + value)
    return h.digest()


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
