"""Branches created in O(1) and copied on their first change (metadata/pending.py, FORMAT.md
§6.4 "Branches") on every metadata engine: creating one copies no row (counted in the
database), it reads as the snapshot it came from, the first change copies it once (main and the
snapshot untouched), branch from branch stays one view deep, deleting or resetting a pending
branch leaves refcounts and the base's history right, the base's rows a pending branch reads
outlive prunes and the deletion of the base branch, and two engines on one database (two
servers) agree on when the branch got rows of its own."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import blake3
import pytest

from aifs_core.types import ROOT_INO, SET_MODE, TreeRef
from aifs_server import delegated_inos
from aifs_server.metadata import pending
from aifs_server.metadata.posix import FROZEN_PREFIX, PosixMeta
from aifs_server.metadata.sql_views import SNAPSHOT_PREFIX
from aifs_server.versions import Versions
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)
from tests.unit.test_versions_epochs import WRONG_REFS, _state
from tests.unit.versions_fixtures import T, chunk, versions_fixture  # noqa: F401 (fixture)

B = TreeRef("ns1", "b")


def _rows(h: Harness, tree_id: int) -> int:
    """Rows the tree has of its own (a view's are its base's)."""
    return int(sum(h.scalar(f"SELECT COUNT(*) FROM {t} WHERE tree_id = ?", tree_id)
                   for t in ("inodes", "dentries", "xattrs", "chunk_maps")))


def _tid(m: PosixMeta, tree: TreeRef) -> int:
    got = m.store.single().get_tree(tree.namespace, tree.branch)
    assert got is not None
    return int(got[0])


def _base(m: PosixMeta, tree: TreeRef) -> tuple[int, int] | None:
    with m.store.write() as tx:          # read as a change would: the row, not a cache
        return tx.lock_tree(_tid(m, tree))


def _tree(m: PosixMeta) -> tuple[int, list[int]]:
    """main: a directory of files with one chunk each, an xattr, a symlink, a subdirectory."""
    d = m.mkdir(T, ROOT_INO, b"d", 0o40755, 0, 0).ino
    files = []
    for i in range(12):
        f = m.create(T, d, f"f{i}".encode(), 0o100644, 0, 0, 0).ino
        m.commit_file(T, f, [chunk(m, f"data {i}".encode())], 6 + len(str(i)))
        files.append(f)
    m.setxattr(T, files[3], b"user.k", b"v")
    m.symlink(T, d, b"ln", b"f1", 0, 0)
    m.mkdir(T, d, b"sub", 0o40755, 0, 0)
    return d, files


def test_the_prefixes_agree() -> None:
    assert SNAPSHOT_PREFIX == FROZEN_PREFIX and pending.KEPT_PREFIX.startswith(FROZEN_PREFIX)


def test_a_branch_copies_no_row_until_its_first_change(harness: Harness, v: Versions) -> None:
    m = v.meta
    d, files = _tree(m)
    s = v.create_snapshot("ns1", "main")
    main_rows, all_rows = _rows(harness, _tid(m, T)), harness.scalar(
        "SELECT COUNT(*) FROM inodes")
    v.create_branch("ns1", "b", s.id)
    bid = _tid(m, B)
    assert _rows(harness, bid) == 0 and harness.scalar("SELECT COUNT(*) FROM inodes") == all_rows
    assert _base(m, B) == m.store.single().tree_base(s.tree_id)   # the snapshot's view itself
    want = _state(m, s.tree)
    assert _state(m, B) == want                                   # reads as the snapshot
    assert m.tree_stats(B).files == m.tree_stats(s.tree).files
    m.forget(B, files[0])                                         # no row of its own written
    delegated_inos.ensure_table(m.store)          # as the Filesystem service does
    given = m.take_inos(B, 4)
    assert _rows(harness, bid) == 0 and _base(m, B) is not None
    m.setattr(B, files[0], SET_MODE, mode=0o100600)               # the first change
    assert _base(m, B) is None and _rows(harness, bid) == main_rows
    got = _state(m, B)
    assert got[b"/d/f0"][0].mode == 0o100600                       # type: ignore[attr-defined]
    assert {k: x for k, x in got.items() if k != b"/d/f0"} == {
        k: x for k, x in want.items() if k != b"/d/f0"}
    assert _state(m, T) == want and _state(m, s.tree) == want     # main and the snapshot
    assert v.verify("ns1", s.id)[0]
    assert given > max(files) and m.create(B, d, b"new", 0o100644, 0, 0, 0).ino >= given + 4
    assert harness.scalar(WRONG_REFS) == 0
    b1 = v.create_snapshot("ns1", "b")
    assert v.verify("ns1", b1.id)[0] and v.diff("ns1", s.id, b1.id).changed == ["/d/f0"]


def test_a_snapshot_of_a_pending_branch_copies_it_first(harness: Harness, v: Versions) -> None:
    m = v.meta
    _tree(m)
    s = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "b", s.id)
    bs = v.create_snapshot("ns1", "b")
    assert _base(m, B) is None and bs.root == s.root and v.verify("ns1", bs.id)[0]
    assert _state(m, bs.tree) == _state(m, s.tree) == _state(m, B)
    assert harness.scalar(WRONG_REFS) == 0


def test_branch_from_branch_stays_one_view_deep(harness: Harness, v: Versions) -> None:
    """From a live branch without snapshots: the branch frozen at its epoch (no copy); the new
    branch reads that epoch while the source goes on changing. From a pending branch: its
    base (flattened), whether it has a head snapshot or not."""
    m = v.meta
    d, files = _tree(m)
    live = TreeRef("ns1", "live")
    v.create_branch("ns1", "live")            # main has no snapshot: frozen, live pending
    assert _base(m, live) == (_tid(m, T), 1) and _rows(harness, _tid(m, live)) == 0
    m.create(live, d, b"only-live", 0o100644, 0, 0, 0)   # rows of its own, still no snapshot
    before = _state(m, live)
    e = TreeRef("ns1", "e")
    v.create_branch("ns1", "e", "live")
    assert _base(m, e) == (_tid(m, live), 1) and _rows(harness, _tid(m, e)) == 0
    assert _state(m, e) == before
    m.commit_file(live, files[1], [chunk(m, b"live later")], 10)       # kept in history for e
    m.unlink(live, d, b"only-live", forget=True)
    assert _state(m, e) == before != _state(m, live)
    v.create_branch("ns1", "f", "e")                     # e is pending: f reads live's epoch
    assert _base(m, TreeRef("ns1", "f")) == _base(m, e)
    m.create(e, d, b"only-e", 0o100644, 0, 0, 0)
    assert b"/d/only-e" in _state(m, e) and b"/d/only-live" in _state(m, e)
    assert _state(m, TreeRef("ns1", "f")) == before
    s = v.create_snapshot("ns1", "main")                 # main's first: a full pass
    v.create_branch("ns1", "b", s.id)
    v.create_branch("ns1", "c", "b")                     # b's head is s: c is s's view too
    assert _base(m, TreeRef("ns1", "c")) == _base(m, B) == m.store.single().tree_base(
        s.tree_id)
    assert harness.scalar(WRONG_REFS) == 0
    for b in ("main", "live", "e", "f"):
        assert v.verify("ns1", v.create_snapshot("ns1", b).id)[0], b


def test_a_live_branch_with_hashes_is_its_head_or_frozen_with_its_hashes(
        harness: Harness, v: Versions) -> None:
    """main has node hashes (a snapshot): unchanged since, a branch of its live tree reads
    that snapshot's view; changed since, main is frozen at its epoch as a snapshot freezes it
    and its hashes are stored at that epoch (versions.hash_epoch: every epoch of a hashed tree
    ends with its hashes, so main's next snapshot still rehashes only what changed)."""
    m = v.meta
    _, files = _tree(m)
    head = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "same")
    assert _base(m, TreeRef("ns1", "same")) == m.store.single().tree_base(head.tree_id)
    assert _state(m, TreeRef("ns1", "same")) == _state(m, T)
    m.setattr(T, files[2], SET_MODE, mode=0o100640)
    epoch = harness.scalar("SELECT epoch FROM trees WHERE tree_id = ?", _tid(m, T))
    v.create_branch("ns1", "b")
    assert _base(m, B) == (_tid(m, T), epoch) and _state(m, B) == _state(m, T)
    assert harness.scalar("SELECT epoch FROM trees WHERE tree_id = ?", _tid(m, T)) == epoch + 1
    s = v.create_snapshot("ns1", "main")
    assert v.last_rehashed == 0 and v.verify("ns1", s.id)[0]   # hashed at the freeze
    m.setattr(T, files[1], SET_MODE, mode=0o100600)
    s = v.create_snapshot("ns1", "main")
    assert 0 < v.last_rehashed and v.verify("ns1", s.id)[0]
    m.create(B, ROOT_INO, b"only-b", 0o100644, 0, 0, 0)   # b materializes from main's epoch
    assert b"/only-b" in _state(m, B) and v.verify("ns1", v.create_snapshot("ns1", "b").id)[0]
    assert harness.scalar(WRONG_REFS) == 0


def test_deleting_a_pending_branch_leaves_nothing(harness: Harness, v: Versions) -> None:
    m = v.meta
    _tree(m)
    s = v.create_snapshot("ns1", "main")
    trees, refs = harness.scalar("SELECT COUNT(*) FROM trees"), harness.scalar(
        "SELECT SUM(refcount) FROM chunks")
    v.create_branch("ns1", "b", s.id)
    v.delete_branch("ns1", "b")
    assert harness.scalar("SELECT COUNT(*) FROM trees") == trees
    assert harness.scalar("SELECT SUM(refcount) FROM chunks") == refs
    assert v.branch_log("ns1", "main") and "b" not in [b for b, _, _ in v.list_branches("ns1")]
    v.create_branch("ns1", "b", s.id)                   # the name is free again
    assert _state(m, B) == _state(m, s.tree)
    assert harness.scalar(WRONG_REFS) == 0


def test_reset_of_a_pending_branch_points_it_at_the_new_view(harness: Harness,
                                                            v: Versions) -> None:
    m = v.meta
    _, files = _tree(m)
    s1 = v.create_snapshot("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"second")], 6)
    s2 = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "b", s1.id)
    delegated_inos.ensure_table(m.store)
    m.take_inos(B, 1000)                       # numbers given out while pending stay given
    next_ino = harness.scalar("SELECT next_ino FROM trees WHERE tree_id = ?", _tid(m, B))
    v.reset_branch("ns1", "b", s2.id)
    assert _base(m, B) == m.store.single().tree_base(s2.tree_id)
    assert _rows(harness, _tid(m, B)) == 0 and _state(m, B) == _state(m, s2.tree)
    assert harness.scalar("SELECT next_ino FROM trees WHERE tree_id = ?", _tid(m, B)) == next_ino
    m.setattr(B, files[1], SET_MODE, mode=0o100600)
    assert m.get_chunk_map(B, files[0])[1][0].chunk_id == blake3.blake3(b"second").digest()
    assert m.create(B, ROOT_INO, b"x", 0o100644, 0, 0, 0).ino >= next_ino
    assert harness.scalar(WRONG_REFS) == 0


@pytest.mark.parametrize("last", ["first change", "delete"])
def test_what_a_pending_branch_reads_outlives_prune_and_its_base_branch(
        harness: Harness, v: Versions, last: str) -> None:
    """A pending branch of a live branch without snapshots holds that branch's rows at its
    epoch as a snapshot does: prunes of the source's later snapshots keep them (chunk
    references included), deleting the source keeps its tree (nameless, read-only), and the
    kept tree goes with its last reader: the pending branch's first change, or its delete."""
    m = v.meta
    src = TreeRef("ns1", "src")
    v.create_branch("ns1", "src", "")                 # main has no snapshot: src is pending
    m.create(src, ROOT_INO, b"keep", 0o100644, 0, 0, 0)    # ... and now has rows of its own
    d = m.mkdir(src, ROOT_INO, b"d", 0o40755, 0, 0).ino
    f = m.create(src, d, b"f", 0o100644, 0, 0, 0).ino
    old = chunk(m, b"only the branch reads this")
    m.commit_file(src, f, [old], old.length)
    v.create_branch("ns1", "b", "src")                 # src: no snapshot, so frozen, no copy
    want = _state(m, B)
    m.commit_file(src, f, [chunk(m, b"src moved on")], 12)
    m.unlink(src, ROOT_INO, b"keep", forget=True)
    for _ in range(2):
        v.create_snapshot("ns1", "src")
    v.prune("ns1", keep_last=1)
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", old.chunk_id) == 1
    assert _state(m, B) == want
    v.delete_branch("ns1", "src")                      # its snapshot and b read it: kept
    kept = pending.kept_name(_base(m, B)[0])           # type: ignore[index]
    assert m.store.single().get_tree("ns1", kept) is not None and _state(m, B) == want
    for s in v.list_snapshots("ns1", "src"):
        with m.store.write() as tx:                   # as prune drops one (a head is kept)
            v._drop_snapshot(tx, s, s.created_ns)
    assert m.store.single().get_tree("ns1", kept) is not None and _state(m, B) == want
    if last == "delete":
        v.delete_branch("ns1", "b")
        assert m.store.single().get_tree("ns1", kept) is None
        assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?",
                              old.chunk_id) == 0
        assert harness.scalar("SELECT COUNT(*) FROM trees") == 1      # main alone
    else:
        m.create(B, ROOT_INO, b"mine", 0o100644, 0, 0, 0)   # b's rows: the last reader's
        assert m.store.single().get_tree("ns1", kept) is None
        assert m.get_chunk_map(B, f)[1][0].chunk_id == old.chunk_id
        assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?",
                              old.chunk_id) == 1
    assert harness.scalar(WRONG_REFS) == 0


def _content(m: PosixMeta, tree: TreeRef) -> dict[bytes, object]:
    """_state without inode numbers, times and listing order (a merge makes new inodes)."""
    out: dict[bytes, object] = {}
    for p, x in _state(m, tree).items():
        if p.endswith(b"/"):
            out[p] = sorted(x)   # type: ignore[type-var]
        else:
            a, *rest = x
            out[p] = (a.mode, a.size, *rest)   # type: ignore[attr-defined]
    return out


def test_merges_into_and_from_a_pending_branch(harness: Harness, v: Versions) -> None:
    """Merging into a pending branch copies it (its snapshot first) and applies the changes;
    merging an untouched pending branch into main changes nothing."""
    m = v.meta
    d, files = _tree(m)
    s = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "b", s.id)
    v.create_branch("ns1", "c", s.id)
    m.create(T, d, b"on-main", 0o100644, 0, 0, 0)
    m.commit_file(T, files[2], [chunk(m, b"main's")], 6)
    r = v.merge("ns1", "main", "b")
    assert r.merged and sorted(r.applied) == ["/d/f2", "/d/on-main"]
    assert _base(m, B) is None and _content(m, B) == _content(m, T)
    assert v.verify("ns1", r.snapshot)[0]
    main_before = _state(m, T)
    r = v.merge("ns1", "c", "main")
    assert r.merged and r.applied == [] and _state(m, T) == main_before
    assert harness.scalar(WRONG_REFS) == 0


@pytest.fixture
def two(harness: Harness, v: Versions) -> Iterator[tuple[Versions, PosixMeta]]:
    """`v` and a second engine on the same database (a second server)."""
    other = harness.open()
    assert isinstance(other, PosixMeta)
    try:
        yield v, other
    finally:
        other.close()


def test_two_engines_agree_on_when_a_branch_got_its_rows(
        harness: Harness, two: tuple[Versions, PosixMeta]) -> None:
    """Engine 2 reads the pending branch, engine 1 changes it (copies it), engine 2 then
    reads the change and writes into the branch's own rows; concurrent first changes from
    both copy it once."""
    v, m2 = two
    m = v.meta
    d, files = _tree(m)
    s = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "b", s.id)
    assert _state(m2, B) == _state(m, s.tree)
    m.setattr(B, files[0], SET_MODE, mode=0o100600)
    assert m2.getattr(B, files[0]).mode == 0o100600           # not the view any more
    m2.setattr(B, files[1], SET_MODE, mode=0o100600)
    assert m.getattr(B, files[1]).mode == 0o100600
    assert _rows(harness, _tid(m, B)) == _rows(harness, _tid(m, T))

    v.create_branch("ns1", "c", s.id)
    c = TreeRef("ns1", "c")
    assert _state(m2, c) == _state(m, s.tree)
    errors: list[BaseException] = []

    def first_change(meta: PosixMeta, k: int) -> None:
        try:
            meta.create(c, d, f"from{k}".encode(), 0o100644, 0, 0, 0)
        except BaseException as e:   # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=first_change, args=(x, k))
               for k, x in enumerate((m, m2))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert _rows(harness, _tid(m, c)) == _rows(harness, _tid(m, T)) + 4   # 2 inodes, 2 names
    names = {e.name for e in m2.readdir(c, d, 0, 1000)[0]}
    assert {b"from0", b"from1", b"f0"} <= names
    assert harness.scalar(WRONG_REFS) == 0


def test_a_read_transaction_keeps_the_view_it_began_with(
        harness: Harness, two: tuple[Versions, PosixMeta]) -> None:
    """A read transaction that saw the branch pending keeps reading the view (its snapshot),
    even after the branch got rows and the engine cached that (PostgreSQL: every engine's
    transactions share that cache)."""
    v, m2 = two
    m = v.meta
    d, files = _tree(m)
    s = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "b", s.id)
    bid = _tid(m, B)
    seen: list[object] = []

    def other_call() -> None:   # another thread of this engine (PostgreSQL: shared caches)
        m.getattr(B, files[0])
        seen.append(m.store.single().tree_base(bid))

    with m.store.read() as tx:
        assert tx.inode(bid, files[0]) is not None            # the view, in this snapshot
        m2.create(B, d, b"later", 0o100644, 0, 0, 0)          # another server copies it
        t = threading.Thread(target=other_call)
        t.start()
        t.join()
        assert seen == [None]                                 # cached: rows of its own
        names = {e.name for e in tx.list_dir(bid, d, 0, 1000)}
    assert b"f0" in names and b"later" not in names
    assert b"later" in {e.name for e in m.readdir(B, d, 0, 1000)[0]}
