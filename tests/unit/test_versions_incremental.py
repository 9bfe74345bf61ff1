"""Incremental snapshot hashing (FORMAT.md §6.4) on every metadata engine: after each kind of
change a snapshot recomputes only the changed nodes and their ancestors, and what it stores
equals a full recomputation node for node (verify recomputes every hash from the rows)."""

from __future__ import annotations

import stat
from collections.abc import Callable

import pytest

from aifs_core.types import ROOT_INO, SET_MODE, SET_UID, TreeRef
from aifs_server.metadata.posix import PosixMeta
from aifs_server.versions import Versions, compute_hashes
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)
from tests.unit.versions_fixtures import T, chunk, versions_fixture  # noqa: F401 (fixture)


def _tree(m: PosixMeta) -> dict[str, int]:
    """/a/{f1..f3}, /a/sub/g, /b/h (h hard-linked as /a/hl), /s -> a (symlink)."""
    ino: dict[str, int] = {}
    ino["a"] = m.mkdir(T, ROOT_INO, b"a", 0o40755, 0, 0).ino
    ino["b"] = m.mkdir(T, ROOT_INO, b"b", 0o40755, 0, 0).ino
    ino["sub"] = m.mkdir(T, ino["a"], b"sub", 0o40755, 0, 0).ino
    for i in range(1, 4):
        ino[f"f{i}"] = m.create(T, ino["a"], f"f{i}".encode(), 0o100644, 0, 0, 0).ino
    ino["g"] = m.create(T, ino["sub"], b"g", 0o100644, 0, 0, 0).ino
    ino["h"] = m.create(T, ino["b"], b"h", 0o100644, 0, 0, 0).ino
    m.link(T, ino["h"], ino["a"], b"hl")
    m.symlink(T, ROOT_INO, b"s", b"a", 0, 0)
    m.commit_file(T, ino["f1"], [chunk(m, b"one")], 3)
    return ino


CHANGES: dict[str, Callable[[PosixMeta, dict[str, int]], None]] = {
    "content": lambda m, i: m.commit_file(T, i["g"], [chunk(m, b"new g")], 5),
    "truncate": lambda m, i: m.commit_file(T, i["f1"], [], 0, truncated=True),
    "chmod a dir": lambda m, i: m.setattr(T, i["sub"], SET_MODE, mode=0o40700),
    "chown a file": lambda m, i: m.setattr(T, i["f2"], SET_UID, uid=7),
    "xattr": lambda m, i: m.setxattr(T, i["f3"], b"user.k", b"v"),
    "hard link's content": lambda m, i: m.commit_file(T, i["h"], [chunk(m, b"hh")], 2),
    "rename across dirs": lambda m, i: m.rename(T, i["a"], b"f2", i["b"], b"f2moved"),
    "move a dir": lambda m, i: m.rename(T, i["a"], b"sub", i["b"], b"sub"),
    "unlink": lambda m, i: m.unlink(T, i["a"], b"f3", forget=True),
    "new file": lambda m, i: m.create(T, i["sub"], b"n", 0o100600, 0, 0, 0) and None,
    "new subtree": lambda m, i: m.create(
        T, m.mkdir(T, m.mkdir(T, i["b"], b"n1", 0o40755, 0, 0).ino, b"n2", 0o40755, 0, 0).ino,
        b"f", 0o100644, 0, 0, 0) and None,
    "rmdir": lambda m, i: (m.unlink(T, i["sub"], b"g", forget=True),
                           m.rmdir(T, i["a"], b"sub", forget=True)) and None,
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_incremental_hashes_equal_a_full_pass(v: Versions, change: str) -> None:
    m = v.meta
    ino = _tree(m)
    first = v.create_snapshot("ns1", "main")
    assert v.last_rehashed == -1  # no head yet: the whole tree
    CHANGES[change](m, ino)
    snap = v.create_snapshot("ns1", "main")
    assert 0 < v.last_rehashed < 10  # the changed nodes and their ancestors, not all 11
    ok, problems, checked = v.verify("ns1", snap.id)
    assert ok, problems
    with m.store.read() as tx:
        fresh, _ = compute_hashes(tx.hash_inputs(snap.tree_id))
        stored = tx.node_hashes(snap.tree_id)
    assert stored == fresh and checked == len(fresh)
    assert snap.root == fresh[ROOT_INO] != first.root
    assert v.verify("ns1", first.id)[0]   # the first one still reads its epoch's rows


def test_a_change_undone_before_the_snapshot_hashes_equal(v: Versions) -> None:
    """A row added and removed between two snapshots leaves its node marked (FORMAT.md §6.4):
    rehashed, and found unchanged."""
    ino = _tree(v.meta)
    a = v.create_snapshot("ns1", "main")
    v.meta.setxattr(T, ino["f3"], b"user.k", b"v")
    v.meta.removexattr(T, ino["f3"], b"user.k")
    b = v.create_snapshot("ns1", "main")
    assert 0 < v.last_rehashed < 10 and a.root == b.root
    assert v.verify("ns1", b.id)[0] and v.verify("ns1", a.id)[0]


def test_no_change_reuses_every_hash(v: Versions) -> None:
    _tree(v.meta)
    a = v.create_snapshot("ns1", "main")
    b = v.create_snapshot("ns1", "main")
    assert v.last_rehashed == 0 and a.root == b.root
    assert v.verify("ns1", b.id)[0]


def test_branch_snapshot_hashes_from_the_snapshot_it_was_made_of(v: Versions) -> None:
    m = v.meta
    ino = _tree(m)
    base = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "exp", base.id)
    bt = TreeRef("ns1", "exp")
    m.setattr(bt, ino["f2"], SET_MODE, mode=stat.S_IFREG | 0o600)
    snap = v.create_snapshot("ns1", "exp")
    assert 0 < v.last_rehashed < 10
    assert v.verify("ns1", snap.id)[0]


def test_refcounts_follow_every_tree_a_version_step_adds_or_drops(harness: Harness,
                                                                  v: Versions) -> None:
    """Snapshots, branches, resets, deletes and prune change refcounts in one statement per
    tree (FORMAT.md §6.4): each chunk's count stays the number of slots naming it in all trees
    (live or kept in history for a snapshot),
    and the GC clock runs exactly when it is 0."""
    wrong = ("SELECT COUNT(*) FROM chunks c WHERE c.namespace = 'ns1' AND (c.refcount <> "
             "(SELECT COUNT(*) FROM (SELECT tree_id, chunk_id FROM chunk_maps UNION ALL SELECT "
             "tree_id, chunk_id FROM chunk_maps_hist) m JOIN trees t ON t.tree_id = m.tree_id "
             "WHERE "
             "t.namespace = 'ns1' AND m.chunk_id = c.chunk_id) OR (c.refcount > 0) = "
             "(c.unreferenced_since_ns IS NOT NULL))")
    m = v.meta
    ino = _tree(m)
    one = chunk(m, b"one").chunk_id
    steps: list[Callable[[], object]] = [
        lambda: v.create_snapshot("ns1", "main"),
        lambda: m.commit_file(T, ino["f1"], [], 0, truncated=True),   # "one": the snapshot's
        lambda: v.create_snapshot("ns1", "main"),
        lambda: v.create_branch("ns1", "exp", v.list_snapshots("ns1")[0].id),
        lambda: v.reset_branch("ns1", "exp", v.list_snapshots("ns1")[1].id),
        lambda: v.create_branch("ns1", "exp2", v.list_snapshots("ns1")[0].id),
        lambda: v.delete_branch("ns1", "exp2"),
        lambda: v.prune("ns1", keep_last=1),
    ]
    for i, step in enumerate(steps):
        step()
        assert harness.scalar(wrong) == 0, f"after step {i}"
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", one) == 0
