"""Keyed checksums (MACs) of the metadata rows that decide what a file's bytes are.

Interface:
    RowMac(secret=None)     MACs keyed from `secret`, the deployment's storage key (32 bytes; every
                            server of a deployment has it, the database never holds it). None is
                            UNKEYED (32 zero bytes): for tests and tools that open a database on
                            their own; it finds damage, not forgery.
    .inode(ino, mode, size, generation, symlink) -> bytes     16 bytes
    .slot(ino, idx, chunk_id, length) -> bytes                16 bytes
    .inode_ok(row, at, o=0) / .slot_ok(ino, idx, chunk_id, length, mac) -> bool
    corrupt(tree_id, ino, what, idx=None) -> CorruptMetadata  the error (DATA_LOSS, EIO at a
                            mount), logged at most a few times a minute
    seal_rows(conn, mac, param)  compute the MAC of every row that has none (the migration that
                            added the columns: rows written before it are trusted once)
    CONTEXT, MAC_LEN

What is covered, and why (docs/FORMAT.md "Metadata row MACs" has the bytes): an inode row's
ino, file type (S_IFMT: how its bytes are read), size, generation (the mount's page cache is
valid per generation) and symlink target; a chunk-map row's ino, index, chunk id and length.
Not the tree id: snapshots and branches copy rows into another tree inside the database (one
set-based INSERT ... SELECT), and the copies stay valid as they are. Permission bits, owners
and times are not covered (they do not decide the bytes; chmod writes no MAC).
"""

from __future__ import annotations

import logging
import stat
import struct
from collections.abc import Sequence
from typing import Any

import blake3

from aifs_core.errors import CorruptMetadata

CONTEXT = "aifs 2026 metadata row mac v1"   # blake3 derive_key context of the MAC key
MAC_LEN = 16
UNKEYED = bytes(32)
_S_IFMT = 0o170000   # stat.S_IFMT's mask

# tag, ino, S_IFMT(mode), size, generation, symlink length (-1: none); the target follows
_INODE = struct.Struct("<1sqqqqq")
# tag, ino, idx, length, chunk id length; the chunk id follows
_SLOT = struct.Struct("<1sqqqq")

log = logging.getLogger("aifs.server")


class RowMac:
    """See the module docstring."""

    def __init__(self, secret: bytes | None = None) -> None:
        secret = UNKEYED if secret is None else bytes(secret)
        if len(secret) != 32:
            raise ValueError(f"the row MAC secret must be 32 bytes, got {len(secret)}")
        key = blake3.blake3(secret, derive_key_context=CONTEXT).digest()
        self._proto = blake3.blake3(key=key)   # copied per row: no key setup per MAC

    def _mac(self, head: bytes, tail: bytes | None) -> bytes:
        h = self._proto.copy()
        h.update(head)
        if tail:
            h.update(tail)
        return h.digest(MAC_LEN)

    def inode(self, ino: int, mode: int, size: int, generation: int,
              symlink: bytes | None) -> bytes:
        target = None if symlink is None else bytes(symlink)
        return self._mac(_INODE.pack(b"I", ino, stat.S_IFMT(mode), size, generation,
                                     -1 if target is None else len(target)), target)

    def slot(self, ino: int, idx: int, chunk_id: bytes, length: int) -> bytes:
        cid = bytes(chunk_id)
        return self._mac(_SLOT.pack(b"S", ino, idx, length, len(cid)), cid)

    def inode_ok(self, r: Sequence[Any], at: int, o: int = 0) -> bool:
        """`r` holds ino, mode, ..., size (6), ... generation (11) from index `o`
        (sql.ATTR_COLUMNS) and the symlink and the MAC at `at`, `at` + 1. (`inode` inlined, and
        the offset rather than a slice of the row: every getattr, lookup and readdir entry
        passes here.)"""
        mac, link = r[at + 1], r[at]
        if mac is None:
            return False
        try:
            h = self._proto.copy()
            h.update(_INODE.pack(b"I", r[o], r[o + 1] & _S_IFMT, r[o + 6], r[o + 11],
                                 -1 if link is None else len(link)))
            if link:
                h.update(link)
            return h.digest(MAC_LEN) == mac
        except (struct.error, TypeError):   # a value no write could have stored
            return False

    def slot_ok(self, ino: int, idx: int, chunk_id: Any, length: Any, mac: Any) -> bool:
        if mac is None or chunk_id is None:
            return False
        try:
            return self.slot(ino, idx, chunk_id, length) == bytes(mac)
        except (struct.error, TypeError):
            return False


def corrupt(tree_id: int, ino: int, what: str, idx: int | None = None) -> CorruptMetadata:
    """The error for a row whose MAC does not match, logged (rate-limited)."""
    # the server's limiter, imported late: grpc_errors is the RPC layer, this module under it
    from aifs_server.grpc_errors import log_limited

    row = f"inode {ino}" if idx is None else f"chunk-map slot {idx} of inode {ino}"
    err = CorruptMetadata(
        f"metadata tree {tree_id}: the {row} fails its checksum ({what} altered at rest); "
        f"it is not served: run `aifs fsck` and restore the file from a snapshot or a backup")
    log_limited(logging.ERROR, "corrupt-metadata", "%s", err.message)
    return err


def seal_rows(conn: Any, mac: RowMac, param: str = "?") -> int:
    """Write the MAC of every inode and chunk-map row that has none; the number of rows.
    Run inside the migration's transaction, on its connection."""
    def q(sql: str) -> str:
        return sql.replace("?", param)

    n = 0
    rows = conn.execute("SELECT tree_id, ino, mode, size, generation, symlink FROM inodes "
                        "WHERE mac IS NULL").fetchall()
    cur = conn.cursor()
    cur.executemany(q("UPDATE inodes SET mac = ? WHERE tree_id = ? AND ino = ?"),
                    [(mac.inode(ino, mode, size, gen, link), tid, ino)
                     for tid, ino, mode, size, gen, link in rows])
    n += len(rows)
    rows = conn.execute("SELECT tree_id, ino, idx, chunk_id, length FROM chunk_maps "
                        "WHERE mac IS NULL").fetchall()
    cur.executemany(q("UPDATE chunk_maps SET mac = ? WHERE tree_id = ? AND ino = ? AND idx = ?"),
                    [(mac.slot(ino, idx, cid, length), tid, ino, idx)
                     for tid, ino, idx, cid, length in rows])
    return n + len(rows)
