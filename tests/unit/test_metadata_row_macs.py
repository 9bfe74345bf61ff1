"""Conformance suite, row MACs (every engine in metadata_engines.ENGINES; issue 13): the rows that
decide a file's bytes carry a keyed checksum (server/metadata/row_mac.py) that every read of
them checks. A row altered at rest is CorruptMetadata (DATA_LOSS: EIO at a mount), never served;
fsck's row check names the file and the row; what the MAC does not cover (times, owners,
permission bits) may change; snapshot copies stay valid; a database written before the
columns existed is sealed once at its first open; another key fails every row."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifs_core.errors import CorruptMetadata
from aifs_core.types import ROOT_INO, SET_MODE, SET_SIZE, SET_UID, ChunkRef, Namespace, TreeRef
from aifs_server.maintenance import check_rows
from aifs_server.metadata.posix import PosixMeta
from aifs_server.metadata.row_mac import RowMac
from aifs_server.versions import Versions
from tests.unit.metadata_engines import Harness, SQLiteHarness, harness_fixture  # noqa: F401

T = TreeRef("ns1")
KEY = os.urandom(32)
CS = 1 << 20


@pytest.fixture
def md(harness: Harness) -> Iterator[PosixMeta]:
    m = harness.open(KEY)
    assert isinstance(m, PosixMeta)
    m.create_namespace(Namespace("ns1", CS, 3, "key-1"))
    m.ensure_tree(T)
    yield m
    m.close()


def _chunk(m: PosixMeta, index: int, data: bytes) -> ChunkRef:
    cid = blake3.blake3(data).digest()
    m.record_chunk("ns1", cid, len(data), len(data) + 40)
    return ChunkRef(index, cid, len(data))


def _file(m: PosixMeta, name: bytes, parent: int = ROOT_INO) -> int:
    """A 3-slot file (the last slot short) named `name`."""
    ino = m.create(T, parent, name, 0o100644, 0, 0).ino
    refs = [_chunk(m, i, bytes([i + 1]) * (CS if i < 2 else 1000) + name) for i in range(3)]
    refs[2] = ChunkRef(2, refs[2].chunk_id, 1000)
    m.commit_file(T, ino, [ChunkRef(r.index, r.chunk_id, min(r.length, CS)) for r in refs],
                  2 * CS + 1000)
    return ino


# (what is altered, SQL on the row: ?1 = ino) -- one bit or one value of each protected field
ALTERATIONS: dict[str, str] = {
    "size": "UPDATE inodes SET size = size + 131072 WHERE ino = ?",
    "generation": "UPDATE inodes SET generation = generation + 1 WHERE ino = ?",
    "file type": "UPDATE inodes SET mode = 16877 WHERE ino = ?",          # S_IFDIR | 0755
    "mac lost": "UPDATE inodes SET mac = NULL WHERE ino = ?",
    "chunk id": "UPDATE chunk_maps SET chunk_id = (SELECT chunk_id FROM chunk_maps c WHERE "
                "c.ino = chunk_maps.ino AND c.idx = 0) WHERE ino = ? AND idx = 1",
    "slot length": "UPDATE chunk_maps SET length = length - 8 WHERE ino = ? AND idx = 2",
    "slot index": "UPDATE chunk_maps SET idx = 5 WHERE ino = ? AND idx = 1",
}
INODE_ROW = {"size", "generation", "file type", "mac lost"}


@pytest.mark.parametrize("what", sorted(ALTERATIONS))
def test_an_altered_row_is_refused_and_fsck_names_it(harness: Harness, md: PosixMeta,
                                                      what: str) -> None:
    d = md.mkdir(T, ROOT_INO, b"dir", 0o755, 0, 0).ino
    ino = _file(md, b"victim", d)
    other = _file(md, b"other", d)
    assert harness.execute(ALTERATIONS[what], ino) == 1
    reads: list[Callable[[], object]] = [lambda: md.get_chunk_map(T, ino)]
    if what in INODE_ROW:
        reads += [lambda: md.getattr(T, ino), lambda: md.lookup(T, d, b"victim"),
                  lambda: md.readdir(T, d, 0, 100),
                  lambda: md.setattr(T, ino, SET_SIZE, size=1)]
    else:
        # a commit over the slots (it reads the old ones for their refcounts)
        reads.append(lambda: md.commit_file(T, ino, [_chunk(md, i, b"x") for i in (1, 2, 5)],
                                            5 * CS + 1))
        if what != "slot index":   # a truncate into the damaged slot (it keeps its chunk id);
            # a truncate that drops a damaged slot is a repair, not a read
            cut = CS + 10 if what == "chunk id" else 2 * CS + 10
            reads.append(lambda: md.setattr(T, ino, SET_SIZE, size=cut))
    for read in reads:
        with pytest.raises(CorruptMetadata, match=f"inode {ino} fails its checksum"):
            read()
    # the rest of the tree reads as before
    assert md.get_chunk_map(T, other)[0].size == 2 * CS + 1000
    problems: list[str] = []
    assert check_rows(md, "ns1", problems)
    assert len(problems) == 1, problems
    assert f"main:/dir/victim (inode {ino})" in problems[0]
    slot = {"slot index": 5, "chunk id": 1, "slot length": 2}.get(what)
    assert ("inode row" if slot is None else f"chunk-map slot {slot}") in problems[0], problems
    # the way out: removing the name (unlink reads no checked row) drops the damaged rows
    if what == "file type":   # it now reads as a directory, and goes as one
        md.rmdir(T, d, b"victim", forget=True)
    else:
        md.unlink(T, d, b"victim", forget=True)
    # and no chunk lost a reference it still has (a damaged slot's chunk id is not released)
    assert harness.scalar("SELECT MIN(refcount) FROM chunks") >= 0
    refs = md.get_chunk_map(T, other)[1]
    assert all(harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", r.chunk_id)
               >= 1 for r in refs)
    problems.clear()
    assert check_rows(md, "ns1", problems) and problems == []


def test_what_the_mac_does_not_cover_may_change(harness: Harness, md: PosixMeta) -> None:
    ino = _file(md, b"f")
    for sql in ("UPDATE inodes SET mtime_ns = 5, uid = 7, nlink = 3 WHERE ino = ?",
                "UPDATE inodes SET mode = 33261 WHERE ino = ?"):   # 0100755: permission bits
        assert harness.execute(sql, ino) == 1
    a, refs = md.get_chunk_map(T, ino)
    assert (a.mtime_ns, a.uid, a.mode, len(refs)) == (5, 7, 0o100755, 3)


def test_every_write_keeps_the_rows_valid(harness: Harness, md: PosixMeta) -> None:
    """Writes of size, generation and slots (commit, truncate in a slot and past it, chmod,
    rename, link, symlink) each leave rows that check; fsck finds nothing."""
    ino = _file(md, b"f")
    md.setattr(T, ino, SET_SIZE, size=CS + 10)       # cut slot 2, shorten slot 1
    md.setattr(T, ino, SET_MODE | SET_UID, mode=0o600, uid=3)
    md.commit_file(T, ino, [_chunk(md, 3, b"tail")], 3 * CS + 4)
    md.link(T, ino, ROOT_INO, b"g")
    md.rename(T, ROOT_INO, b"g", ROOT_INO, b"h")
    s = md.symlink(T, ROOT_INO, b"s", b"f", 0, 0)
    a, refs = md.get_chunk_map(T, ino)
    assert a.size == 3 * CS + 4 and [(r.index, r.length) for r in refs] == [
        (0, CS), (1, 10), (3, 4)]
    assert md.readlink(T, s.ino) == b"f" and md.getattr(T, s.ino).size == 1
    problems: list[str] = []
    assert check_rows(md, "ns1", problems) and problems == []


def test_snapshot_copies_stay_valid_and_are_checked(harness: Harness, md: PosixMeta) -> None:
    """copy_tree_rows copies rows into another tree in one statement: the MACs go with them
    (they do not cover the tree id), and the copy is checked like the original."""
    ino = _file(md, b"f")
    v = Versions(md, Ed25519PrivateKey.generate())
    snap = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "exp", snap.id)
    exp = TreeRef("ns1", "exp")
    md.mkdir(exp, ROOT_INO, b"own", 0o40755, 0, 0)   # its first change copies the rows in
    assert md.get_chunk_map(exp, ino)[0].size == 2 * CS + 1000
    tid = harness.scalar("SELECT tree_id FROM trees WHERE branch = 'exp'")
    assert harness.execute("UPDATE inodes SET size = 1 WHERE tree_id = ? AND ino = ?",
                           tid, ino) == 1
    with pytest.raises(CorruptMetadata):
        md.getattr(exp, ino)
    assert md.getattr(T, ino).size == 2 * CS + 1000          # the branch's own row is intact
    assert md.getattr(snap.tree, ino).size == 2 * CS + 1000
    problems: list[str] = []
    check_rows(md, "ns1", problems)
    assert len(problems) == 1 and f"exp:/f (inode {ino})" in problems[0]


def test_history_rows_keep_their_macs_and_are_checked(harness: Harness, md: PosixMeta) -> None:
    """A snapshot reads the branch's rows at its epoch (FORMAT.md §6.4): a row changed after it
    is kept in history with its MAC (which does not cover the tree id or the epochs), served
    to the snapshot and checked like a live row; fsck scans it."""
    ino = _file(md, b"f")
    snap = Versions(md, Ed25519PrivateKey.generate()).create_snapshot("ns1", "main")
    md.commit_file(T, ino, [], 7, truncated=True)             # main moves on: history rows
    assert md.getattr(snap.tree, ino).size == 2 * CS + 1000 and md.getattr(T, ino).size == 7
    assert md.get_chunk_map(snap.tree, ino)[0].size == 2 * CS + 1000
    assert harness.execute("UPDATE inodes_hist SET size = 1 WHERE ino = ?", ino) == 1
    with pytest.raises(CorruptMetadata):
        md.getattr(snap.tree, ino)
    assert md.getattr(T, ino).size == 7                        # the live row is intact
    problems: list[str] = []
    check_rows(md, "ns1", problems)
    assert len(problems) == 1 and f"{snap.tree.branch}:/f (inode {ino})" in problems[0]


def test_another_key_fails_every_row(harness: Harness, md: PosixMeta) -> None:
    ino = _file(md, b"f")
    md.close()
    other = harness.open(os.urandom(32))
    try:
        with pytest.raises(CorruptMetadata):
            other.getattr(T, ino)
        with pytest.raises(CorruptMetadata):
            other.getattr(T, ROOT_INO)
    finally:
        other.close()
    again = harness.open(KEY)
    try:
        assert again.getattr(T, ino).size == 2 * CS + 1000
    finally:
        again.close()


def test_rows_written_before_the_macs_are_sealed_at_the_first_open(harness: Harness,
                                                                   md: PosixMeta) -> None:
    """A database of the schema before row MACs (the columns dropped, the version put back)
    gets them computed by the migration at its next open: trusted once, then checked."""
    ino = _file(md, b"f")
    md.close()
    if isinstance(harness, SQLiteHarness):   # that schema had no history triggers (v4)
        for table in ("inodes", "chunk_maps"):
            harness.execute(f"DROP TRIGGER {table}_keep_u")
            harness.execute(f"DROP TRIGGER {table}_keep_d")
    for table in ("inodes", "chunk_maps"):
        harness.execute(f"ALTER TABLE {table} DROP COLUMN mac")
    if isinstance(harness, SQLiteHarness):
        harness.execute("PRAGMA user_version = 2")
    else:
        harness.execute("UPDATE aifs_schema SET version = 3")
    m = harness.open(KEY)
    try:
        assert harness.scalar("SELECT COUNT(*) FROM inodes WHERE mac IS NULL") == 0
        assert harness.scalar("SELECT COUNT(*) FROM chunk_maps WHERE mac IS NULL") == 0
        a, refs = m.get_chunk_map(T, ino)
        assert a.size == 2 * CS + 1000 and len(refs) == 3
        assert stat.S_ISREG(a.mode)
        harness.execute("UPDATE inodes SET size = 5 WHERE ino = ?", ino)
        with pytest.raises(CorruptMetadata):
            m.getattr(T, ino)
    finally:
        m.close()


def test_the_mac_is_the_one_format_md_describes() -> None:
    """docs/FORMAT.md §7 written out field by field (independent of row_mac.py's structs)."""
    def i64(v: int) -> bytes:
        return v.to_bytes(8, "little", signed=True)

    secret = bytes(range(32))
    k = blake3.blake3(secret, derive_key_context="aifs 2026 metadata row mac v1").digest()
    cid = bytes(range(100, 132))
    cases = [
        (RowMac(secret).inode(7, 0o120777, 3, 2, b"abc"),
         b"I" + i64(7) + i64(0o120000) + i64(3) + i64(2) + i64(3) + b"abc"),
        (RowMac(secret).inode(7, 0o100644, 10, 0, None),
         b"I" + i64(7) + i64(0o100000) + i64(10) + i64(0) + i64(-1)),
        (RowMac(secret).slot(7, 4, cid, 1000),
         b"S" + i64(7) + i64(4) + i64(1000) + i64(32) + cid),
    ]
    for got, message in cases:
        assert len(message) in (41, 44, 65)
        assert got == blake3.blake3(message, key=k).digest()[:16]
    unkeyed = blake3.blake3(bytes(32), derive_key_context="aifs 2026 metadata row mac v1")
    assert RowMac().slot(7, 4, cid, 1000) == blake3.blake3(
        cases[2][1], key=unkeyed.digest()).digest()[:16]
