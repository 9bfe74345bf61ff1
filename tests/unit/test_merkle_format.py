"""aifs_core.merkle against docs/FORMAT.md §6 written out field by field here (an independent
reading of the tables), for every node type, xattrs, holes, and the snapshot statement: the
server's hashes and the mount's recomputation must never drift from the documented bytes."""

from __future__ import annotations

import stat
import struct

from blake3 import blake3

from aifs_core import merkle


def _h(*parts: bytes) -> bytes:
    return blake3(b"".join(parts)).digest()


def _xattrs(xs: dict[bytes, bytes]) -> bytes:
    out = struct.pack("<I", len(xs))
    for name in sorted(xs):
        out += struct.pack("<H", len(name)) + name + struct.pack("<I", len(xs[name])) + xs[name]
    return out


def _node(type_: int, mode: int, uid: int, gid: int, size: int, body: bytes,
          xs: dict[bytes, bytes]) -> bytes:
    head = (b"AIFSNODE" + bytes([1, type_]) + struct.pack("<I", mode) + struct.pack("<I", uid)
            + struct.pack("<I", gid) + struct.pack("<Q", size))
    return _h(head, body, _xattrs(xs))


def test_content_hash_is_the_documented_bytes() -> None:
    a, b = bytes(range(32)), bytes(range(32, 64))
    slots = [(0, a, 1 << 20), (3, b, 17)]          # a hole at 1 and 2
    want = _h(b"AIFSFILE", bytes([1]), struct.pack("<Q", 3 * (1 << 20) + 17),
              struct.pack("<I", 2), struct.pack("<Q", 0), a, struct.pack("<I", 1 << 20),
              struct.pack("<Q", 3), b, struct.pack("<I", 17))
    assert merkle.content_hash(3 * (1 << 20) + 17, slots) == want
    assert merkle.content_hash(0, []) == _h(b"AIFSFILE", bytes([1]), struct.pack("<QI", 0, 0))


def test_node_hash_of_each_type_is_the_documented_bytes() -> None:
    content = merkle.content_hash(5, [(0, bytes(32), 5)])
    xs = {b"user.b": b"2", b"user.a": b"", b"security.x": bytes(300)}
    f = stat.S_IFREG | 0o644
    assert merkle.node_hash(f, 1000, 100, 5, content, xs) == _node(1, f, 1000, 100, 5, content,
                                                                   xs)
    assert merkle.node_hash(f, 0, 0, 5, content) == _node(1, f, 0, 0, 5, content, {})
    d = stat.S_IFDIR | 0o755
    entries = [(b"zeta", bytes([1]) * 32), (b"a", bytes([2]) * 32), (b"\xff", bytes(32))]
    body = struct.pack("<I", 3) + b"".join(struct.pack("<H", len(n)) + n + h
                                           for n, h in sorted(entries))
    assert merkle.dir_body(entries) == body
    assert merkle.node_hash(d, 0, 0, 4096, body) == _node(2, d, 0, 0, 0, body, {})  # size 0
    lnk = stat.S_IFLNK | 0o777
    assert merkle.node_hash(lnk, 1, 2, 9, b"../target") == _node(
        3, lnk, 1, 2, 9, struct.pack("<I", 9) + b"../target", {})
    fifo = stat.S_IFIFO | 0o600
    assert merkle.node_hash(fifo, 0, 0, 0, 0) == _node(4, fifo, 0, 0, 0, struct.pack("<Q", 0),
                                                       {})
    dev = stat.S_IFCHR | 0o600
    assert merkle.node_hash(dev, 0, 0, 0, (1 << 8) | 3, {b"user.k": b"v"}) == _node(
        4, dev, 0, 0, 0, struct.pack("<Q", (1 << 8) | 3), {b"user.k": b"v"})


def test_file_node_hash_is_node_hash_of_the_content_hash() -> None:
    # the one-pass form a snapshot uses for every file: the documented bytes, every case
    a, b = bytes(range(32)), bytes(range(32, 64))
    f = stat.S_IFREG | 0o4755
    for size, slots, xs in [(3 * (1 << 20) + 17, [(0, a, 1 << 20), (3, b, 17)], {}),
                            (0, [], {}), (1 << 40, [], {}),            # empty; all holes
                            (5, [(0, a, 5)], {b"user.k": b"v", b"user.a": b""}),
                            (5, [(0, b"short id", 5)], {})]:           # not 32 bytes: as stored
        content = _h(b"AIFSFILE", bytes([1]), struct.pack("<QI", size, len(slots)),
                     *[struct.pack("<Q", i) + cid + struct.pack("<I", n)
                       for i, cid, n in slots])
        want = _node(1, f, 1000, 100, size, content, xs)
        assert merkle.file_node_hash(f, 1000, 100, size, slots, xs) == want
        assert merkle.node_hash(f, 1000, 100, size, merkle.content_hash(size, slots), xs) == want


def test_statement_is_the_documented_bytes() -> None:
    sid, p1, p2, root = bytes([7]) * 16, bytes([8]) * 16, bytes([9]) * 16, bytes([5]) * 32
    got = merkle.statement(sid, "ns", "main", -3, root, [p1, p2], "msg é")
    msg = "msg é".encode()
    assert got == (b"AIFSSNAP" + bytes([1]) + sid + struct.pack("<H", 2) + b"ns"
                   + struct.pack("<H", 4) + b"main" + struct.pack("<q", -3) + root + bytes([2])
                   + p1 + p2 + struct.pack("<I", len(msg)) + msg)
