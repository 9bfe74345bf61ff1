"""Versions.list_tree of a snapshot's directory (what the mount's view lists with one ListTree)
on every metadata engine: read in one pass over the directory (sql_views._v_children), it
equals the per-entry reads it replaced, across more than one IN-batch of entries and with
rows changed after the snapshot (history rows), and a history row altered at rest is refused
as a getattr of it is."""

from __future__ import annotations

import stat

import pytest

from aifs_core import merkle
from aifs_core.errors import CorruptMetadata
from aifs_core.types import ROOT_INO, SET_MODE, SET_UID, TreeRef
from aifs_server.metadata.posix import PosixMeta
from aifs_server.versions import Snapshot, TreeEntry, Versions
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)
from tests.unit.test_versions_epochs import _copied_snapshot
from tests.unit.versions_fixtures import T, chunk, versions_fixture  # noqa: F401 (fixture)

N = 1100   # more than two batches of 500 (sql_views._IN_BATCH) of entries


def _names(m: PosixMeta, tree: TreeRef, d: int) -> list[bytes]:
    names, cookie = [], 0
    while True:
        ents, eof = m.readdir(tree, d, cookie, 400)
        names += [e.name for e in ents]
        if eof or not ents:
            return names
        cookie = ents[-1].cookie


def _per_entry(v: Versions, snap: Snapshot, d: int) -> list[TreeEntry]:
    """What list_tree returns, read entry by entry through the POSIX rules."""
    m, tree = v.meta, snap.tree
    out = []
    for name in sorted(_names(m, tree, d)):
        a = m.lookup(tree, d, name)
        a = m.getattr(tree, a.ino)
        slots = ([(r.index, r.chunk_id, r.length) for r in m.get_chunk_map(tree, a.ino)[1]]
                 if stat.S_ISREG(a.mode) else [])
        node_hash = m.store.single().node_hash(snap.tree_id, a.ino)
        out.append(TreeEntry(
            name, a, node_hash or b"",
            m.readlink(tree, a.ino) if stat.S_ISLNK(a.mode) else b"",
            {x: m.getxattr(tree, a.ino, x) for x in m.listxattr(tree, a.ino)},
            merkle.content_hash(a.size, slots) if stat.S_ISREG(a.mode) else b"", slots))
    return out


def _tree(v: Versions) -> tuple[int, list[int]]:
    m = v.meta
    d = m.mkdir(T, ROOT_INO, b"big", 0o40755, 0, 0).ino
    files = [m.create(T, d, f"f{i:05d}".encode(), 0o100644, 0, 0, 0).ino for i in range(N)]
    for i in range(0, N, 97):
        m.commit_file(T, files[i], [chunk(m, f"data {i}".encode())], 6 + len(str(i)))
        m.setxattr(T, files[i], b"user.k", f"v{i}".encode())
    m.setxattr(T, d, b"user.dir", b"x")
    m.mkdir(T, d, b"sub", 0o40700, 0, 0)
    m.symlink(T, d, b"link", b"f00001", 0, 0)
    return d, files


def test_list_tree_equals_the_per_entry_reads_with_rows_changed_after_the_snapshot(
        v: Versions) -> None:
    m = v.meta
    d, files = _tree(v)
    snap = v.create_snapshot("ns1", "main")
    before = v.list_tree("ns1", snap.id, d)
    # after the snapshot: inode rows, xattrs, chunk maps and names change (history rows)
    for f in files[::7]:
        m.setattr(T, f, SET_MODE | SET_UID, mode=0o100600, uid=7)
    m.setxattr(T, files[0], b"user.k", b"changed")
    m.removexattr(T, files[97], b"user.k")
    m.setxattr(T, files[3], b"user.new", b"n")
    m.commit_file(T, files[194], [chunk(m, b"other data")], 10)
    m.unlink(T, d, b"f00005")
    m.rename(T, d, b"f00006", d, b"renamed")
    m.create(T, d, b"new", 0o100644, 0, 0, 0)
    m.setxattr(T, d, b"user.dir", b"y")

    attr, own, xattrs, entries = v.list_tree("ns1", snap.id, d)
    assert entries == _per_entry(v, snap, d) == before[3]
    assert (attr, own, xattrs) == before[:3]
    assert (attr, xattrs) == (m.getattr(snap.tree, d), {b"user.dir": b"x"})
    assert own == m.store.single().node_hash(snap.tree_id, d)
    by_name = {e.name: e for e in entries}
    assert len(entries) == N + 2 and b"f00005" in by_name and b"renamed" not in by_name
    assert by_name[b"f00007"].attr.mode == 0o100644 and by_name[b"f00000"].xattrs == {
        b"user.k": b"v0"}
    assert by_name[b"f00194"].chunks and by_name[b"f00194"].chunks[0][2] == len(b"data 194")
    assert by_name[b"link"].symlink == b"f00001" and all(e.hash for e in entries)
    # the live tree moved on
    live = m.lookup(T, d, b"f00007")
    assert live.mode == 0o100600


def test_a_history_row_altered_at_rest_is_refused_by_list_tree(
        harness: Harness, v: Versions) -> None:
    m = v.meta
    d, files = _tree(v)
    snap = v.create_snapshot("ns1", "main")
    m.setattr(T, files[600], SET_MODE, mode=0o100600)   # its snapshot row goes to history
    assert harness.execute("UPDATE inodes_hist SET size = 12345 WHERE ino = ?", files[600]) == 1
    with pytest.raises(CorruptMetadata, match=f"inode {files[600]} fails its checksum"):
        v.list_tree("ns1", snap.id, d)
    with pytest.raises(CorruptMetadata):
        m.getattr(snap.tree, files[600])


def test_list_tree_of_a_snapshot_copied_before_epochs_equals_the_per_entry_reads(
        v: Versions) -> None:
    # a tree with rows of its own (no view): dir_rows' plain join
    d, files = _tree(v)
    old = _copied_snapshot(v)
    v.meta.setattr(T, files[1], SET_MODE, mode=0o100600)
    _, own, _, entries = v.list_tree("ns1", old.id, d)
    assert v.meta.store.single().tree_base(old.tree_id) is None
    assert entries == _per_entry(v, old, d) and len(entries) == N + 2 and own
    assert {e.name: e for e in entries}[b"f00001"].attr.mode == 0o100644
