"""Snapshots without a copy (docs/FORMAT.md §6.4) on every metadata engine: a snapshot is its
branch's tree at an epoch; rows the branch changes afterwards are kept in history for it, GC
keeps every chunk a snapshot reaches and frees what pruning leaves unreached, a deleted
branch's snapshots stay readable, and a snapshot copied by the schema before epochs still
reads and verifies next to new ones."""

from __future__ import annotations

import secrets
import threading

import blake3
import pytest

from aifs_core.types import ROOT_INO, SET_MODE, AssetRecord, ParentEdge, TreeRef
from aifs_server.metadata.pending import materialize
from aifs_server.metadata.posix import FROZEN_PREFIX, PosixMeta
from aifs_server.versions import Snapshot, Versions, compute_hashes
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)
from tests.unit.versions_fixtures import T, chunk, versions_fixture  # noqa: F401 (fixture)

ROWS = ("SELECT (SELECT COUNT(*) FROM inodes) + (SELECT COUNT(*) FROM dentries) + "
        "(SELECT COUNT(*) FROM xattrs) + (SELECT COUNT(*) FROM chunk_maps)")
HISTORY = ("SELECT (SELECT COUNT(*) FROM inodes_hist) + (SELECT COUNT(*) FROM dentries_hist) + "
           "(SELECT COUNT(*) FROM xattrs_hist) + (SELECT COUNT(*) FROM chunk_maps_hist)")
# chunks whose count is not the number of chunk-map rows, live or kept in history, naming them
# (or whose GC clock runs while referenced / stands while not)
WRONG_REFS = (
    "SELECT COUNT(*) FROM chunks c WHERE c.refcount <> (SELECT COUNT(*) FROM (SELECT chunk_id "
    "FROM chunk_maps UNION ALL SELECT chunk_id FROM chunk_maps_hist) m WHERE m.chunk_id = "
    "c.chunk_id) OR (c.refcount > 0) = (c.unreferenced_since_ns IS NOT NULL)")




def _files(m: PosixMeta, n: int) -> tuple[int, list[int]]:
    d = m.mkdir(T, ROOT_INO, b"d", 0o40755, 0, 0).ino
    out = []
    for i in range(n):
        f = m.create(T, d, f"f{i}".encode(), 0o100644, 0, 0, 0).ino
        m.commit_file(T, f, [chunk(m, f"data {i}".encode())], 6 + len(str(i)))
        out.append(f)
    return d, out


def _read(m: PosixMeta, tree: TreeRef, d: int) -> dict[bytes, tuple[int, int, bytes]]:
    """name -> (size, mode, first chunk id) of every entry of directory d."""
    ents, _ = m.readdir(tree, d, 0, 1000)
    out = {}
    for e in ents:
        _, refs = m.get_chunk_map(tree, e.attr.ino)
        out[e.name] = (e.attr.size, e.attr.mode, refs[0].chunk_id if refs else b"")
    return out


def test_a_snapshot_copies_no_row_and_keeps_what_the_branch_changes_later(
        harness: Harness, v: Versions) -> None:
    m = v.meta
    d, files = _files(m, 20)
    rows = harness.scalar(ROWS)
    s1 = v.create_snapshot("ns1", "main")
    assert harness.scalar(ROWS) == rows and harness.scalar(HISTORY) == 0   # O(1): no copy
    before = _read(m, T, d)
    assert _read(m, s1.tree, d) == before
    m.commit_file(T, files[0], [chunk(m, b"new")], 3)
    m.setattr(T, files[1], SET_MODE, mode=0o100600)
    m.unlink(T, d, b"f2", forget=True)
    m.rename(T, d, b"f3", ROOT_INO, b"moved")
    m.create(T, d, b"new", 0o100644, 0, 0, 0)
    m.setxattr(T, files[4], b"user.k", b"v")
    # one history row per row changed or removed (the new file and xattr leave none)
    assert 0 < harness.scalar(HISTORY) < 15
    assert _read(m, s1.tree, d) == before                    # the snapshot did not move
    assert m.listxattr(s1.tree, files[4]) == [] and m.listxattr(T, files[4]) == [b"user.k"]
    s2 = v.create_snapshot("ns1", "main")
    assert _read(m, s2.tree, d) == _read(m, T, d) != before
    assert v.verify("ns1", s1.id)[0] and v.verify("ns1", s2.id)[0]
    assert harness.scalar(WRONG_REFS) == 0
    # a chunk only the first snapshot reaches is referenced by its history row, not freed
    old = before[b"f0"][2]
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", old) == 1
    removed, _ = v.prune("ns1", keep_last=1)
    assert removed == [s1.id]
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", old) == 0
    assert harness.scalar(HISTORY) == 0 and harness.scalar(WRONG_REFS) == 0
    assert v.verify("ns1", s2.id)[0]


def test_prune_keeps_the_history_a_kept_snapshot_still_sees(harness: Harness,
                                                            v: Versions) -> None:
    m = v.meta
    d, files = _files(m, 3)
    s1 = v.create_snapshot("ns1", "main")
    v.create_tag("ns1", "keep", s1.id)                       # pinned: never pruned
    m.commit_file(T, files[0], [chunk(m, b"second")], 6)
    s2 = v.create_snapshot("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"third")], 5)
    s3 = v.create_snapshot("ns1", "main")
    first = _read(m, s1.tree, d)
    removed, _ = v.prune("ns1", keep_last=1)
    assert removed == [s2.id]
    assert _read(m, s1.tree, d) == first and v.verify("ns1", s1.id)[0]
    assert v.verify("ns1", s3.id)[0]
    second = blake3.blake3(b"second").digest()   # only s2 saw it
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", second) == 0
    assert harness.scalar(WRONG_REFS) == 0


def test_a_deleted_branchs_snapshots_stay_until_pruned(harness: Harness, v: Versions) -> None:
    m = v.meta
    _, files = _files(m, 3)
    v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "exp")
    exp = TreeRef("ns1", "exp")
    m.commit_file(exp, files[1], [chunk(m, b"exp's")], 50)
    older = v.create_snapshot("ns1", "exp")
    m.commit_file(exp, files[1], [chunk(m, b"exp's 2")], 60)
    s = v.create_snapshot("ns1", "exp")
    v.delete_branch("ns1", "exp")
    assert "exp" not in [b for b, _, _ in v.list_branches("ns1")]
    assert m.getattr(s.tree, files[1]).size == 60 and v.verify("ns1", s.id)[0]
    assert m.getattr(older.tree, files[1]).size == 50 and v.verify("ns1", older.id)[0]
    v.create_branch("ns1", "exp")                             # the name is free again
    assert m.getattr(TreeRef("ns1", "exp"), files[1]).size < 50
    v.delete_branch("ns1", "exp")
    removed, _ = v.prune("ns1", branch="exp", keep_last=1)
    assert removed == [older.id] and harness.scalar(WRONG_REFS) == 0
    assert m.getattr(s.tree, files[1]).size == 60 and v.verify("ns1", s.id)[0]
    # the last snapshot of the deleted branch takes the branch's kept tree with it (prune
    # keeps a branch's newest snapshot: dropped here as prune drops one)
    with m.store.write() as tx:
        v._drop_snapshot(tx, s, s.created_ns)
    assert v.list_snapshots("ns1", "exp") == []     # main and its snapshot's tree are left
    assert harness.scalar("SELECT COUNT(*) FROM trees") == 1 + len(v.list_snapshots("ns1"))
    for data in (b"exp's", b"exp's 2"):
        assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?",
                              blake3.blake3(data).digest()) == 0
    assert harness.scalar(WRONG_REFS) == 0


def _copied_snapshot(v: Versions) -> Snapshot:
    """A snapshot as the schema before epochs stored it: a copy of main's rows in a tree of
    its own, with the hashes of every node and chunk references of its own."""
    now = 1_700_000_000_000_000_000
    sid = secrets.token_hex(16)
    with v.meta.store.write() as tx:
        src = tx.get_tree("ns1", "main")
        assert src is not None
        dst = tx.insert_tree("ns1", FROZEN_PREFIX + sid, now)
        assert dst is not None
        tx.copy_tree_rows(src[0], dst)
        tx.add_tree_refs("ns1", dst, 1, now)
        hashes, _ = compute_hashes(tx.hash_inputs(dst))
        tx.put_node_hashes(dst, hashes.items())
        snap = Snapshot(sid, "ns1", dst, "main", (), now, "old", hashes[ROOT_INO], b"")
        sig = v._sk.sign(snap.statement())
        tx.insert_snapshot("ns1", (sid, dst, "main", "", now, "old", snap.root, sig))
        tx.append_log("ns1", "main", "snapshot", sid, now)
    return v.get("ns1", sid)


def test_snapshots_copied_before_epochs_read_verify_and_prune(harness: Harness,
                                                              v: Versions) -> None:
    m = v.meta
    d, files = _files(m, 5)
    old = _copied_snapshot(v)
    before = _read(m, T, d)
    m.setattr(T, files[0], SET_MODE, mode=0o100600)
    new = v.create_snapshot("ns1", "main")   # its head is the copy: hashed from the copy's
    assert 0 < v.last_rehashed < 5
    assert _read(m, old.tree, d) == before and v.verify("ns1", old.id)[0]
    assert v.verify("ns1", new.id)[0] and v.diff("ns1", old.id, new.id).changed == ["/d/f0"]
    v.create_tag("ns1", "t", new.id)
    removed, _ = v.prune("ns1", keep_last=1)
    assert removed == [old.id] and harness.scalar(WRONG_REFS) == 0
    assert harness.scalar("SELECT COUNT(*) FROM inodes WHERE tree_id = ?", old.tree_id) == 0


def test_prune_keeps_snapshots_a_lineage_cites(harness: Harness, v: Versions) -> None:
    """A snapshot an asset names as its parent (the data a model was trained on) is reachable:
    prune keeps it with its rows, as it keeps tagged ones."""
    m = v.meta
    d, files = _files(m, 3)
    cited = v.create_snapshot("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"later")], 5)
    dropped = v.create_snapshot("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"latest")], 6)
    v.create_snapshot("ns1", "main")
    m.put_asset("ns1", AssetRecord(asset_id="model", kind="blob", size=0, chunks=[],
                                   metadata_json="{}",
                                   parents=[ParentEdge(cited.uri, "train", "")]))
    before = _read(m, cited.tree, d)
    removed, kept = v.prune("ns1", keep_last=1, dry_run=True)
    assert removed == [dropped.id] and cited.id in kept
    removed, kept = v.prune("ns1", keep_last=1)
    assert removed == [dropped.id] and cited.id in kept
    assert _read(m, cited.tree, d) == before and v.verify("ns1", cited.id)[0]
    assert [a.asset_id for a in m.lineage("ns1", "model")] == [cited.uri]
    assert harness.scalar(WRONG_REFS) == 0


def test_snapshots_taken_while_files_are_created_each_hold_a_whole_state(
        harness: Harness, v: Versions) -> None:
    """Creates from two threads run while snapshots are taken (PostgreSQL: row locks and the
    snapshot's table lock, FORMAT.md §6.4): no call fails, and every snapshot verifies (no
    write landed half in one) and holds a prefix of each thread's files."""
    m = v.meta
    dirs = [m.mkdir(T, ROOT_INO, f"w{k}".encode(), 0o40755, 0, 0).ino for k in range(2)]
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        try:
            for i in range(60):
                m.create(T, dirs[k], f"f{i:03d}".encode(), 0o100644, 0, 0, 0)
        except BaseException as e:   # noqa: BLE001 (reported below)
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    snaps = [v.create_snapshot("ns1", "main") for _ in range(4)]
    for t in threads:
        t.join()
    snaps.append(v.create_snapshot("ns1", "main"))
    assert errors == []
    for s in snaps:
        assert v.verify("ns1", s.id)[0]
        for d in dirs:
            names = sorted(e.name for e in m.readdir(s.tree, d, 0, 1000)[0])
            assert names == [f"f{i:03d}".encode() for i in range(len(names))]
    assert [len(m.readdir(snaps[-1].tree, d, 0, 1000)[0]) for d in dirs] == [60, 60]


def _state(m: PosixMeta, tree: TreeRef) -> dict[bytes, tuple[object, ...]]:
    """path -> (attrs, chunk map, xattrs, link target) of every entry of the tree, listed in
    readdir (cookie) order per directory."""
    out: dict[bytes, tuple[object, ...]] = {}
    todo = [(b"", ROOT_INO)]
    while todo:
        path, ino = todo.pop()
        ents, _ = m.readdir(tree, ino, 0, 1000)
        out[path + b"/"] = tuple(e.name for e in ents)   # the order a listing sees
        for e in ents:
            a = e.attr
            p = path + b"/" + e.name
            kind = a.mode & 0o170000
            refs = m.get_chunk_map(tree, a.ino)[1] if kind == 0o100000 else []
            xs = {k: m.getxattr(tree, a.ino, k) for k in m.listxattr(tree, a.ino)}
            link = m.readlink(tree, a.ino) if kind == 0o120000 else b""
            out[p] = (a, [(r.index, r.chunk_id, r.length) for r in refs], xs, link)
            if kind == 0o040000:
                todo.append((p, a.ino))
    return out


# what the base (main) does after the snapshot: each must send a branch create to the view
_AFTER = {
    "chmod": lambda m, d, f: m.setattr(T, f[0], SET_MODE, mode=0o100600),
    "commit": lambda m, d, f: m.commit_file(T, f[1], [chunk(m, b"later")], 5),
    "create": lambda m, d, f: m.create(T, d, b"later", 0o100644, 0, 0, 0),
    "deep": lambda m, d, f: m.create(T, m.mkdir(T, m.mkdir(T, d, b"x", 0o40755, 0, 0).ino,
                                                b"y", 0o40755, 0, 0).ino, b"z", 0o100644, 0, 0, 0),
    "unlink": lambda m, d, f: m.unlink(T, d, b"f2", forget=True),
    "rename": lambda m, d, f: m.rename(T, d, b"f3", ROOT_INO, b"moved"),
    "link": lambda m, d, f: m.link(T, f[4], ROOT_INO, b"hard"),
    "setxattr": lambda m, d, f: m.setxattr(T, f[0], b"user.new", b"v"),
    "removexattr": lambda m, d, f: m.removexattr(T, f[5], b"user.k"),
}


def test_a_branch_is_its_snapshots_tree_whether_or_not_the_base_changed_since(
        harness: Harness, v: Versions) -> None:
    """A branch create copies a snapshot's view from its base's live rows when nothing of the
    base changed since the snapshot (copy_tree_rows' fast path), else through the view: either
    way the branch is the snapshot's tree (listings in order, attrs, chunk maps, xattrs,
    links; same root hash), and refcounts count every row."""
    m = v.meta
    d, files = _files(m, 8)
    m.setxattr(T, files[5], b"user.k", b"old")
    m.symlink(T, d, b"ln", b"f1", 0, 0)
    m.mkdir(T, d, b"sub", 0o40755, 0, 0)
    v.create_snapshot("ns1", "main")                 # an older epoch, so history has rows
    m.setattr(T, files[6], SET_MODE, mode=0o100640)
    s = v.create_snapshot("ns1", "main")
    want = _state(m, s.tree)
    tx = v.meta.store.single()
    base = tx.tree_base(s.tree_id)
    assert base is not None and not tx.changed_after(*base)
    v.create_branch("ns1", "fast", s.id)
    assert _state(m, TreeRef("ns1", "fast")) == want
    for i, (what, change) in enumerate(_AFTER.items()):
        change(m, d, files)
        assert tx.changed_after(*base), what
        v.create_branch("ns1", f"slow{i}", s.id)
        assert _state(m, TreeRef("ns1", f"slow{i}")) == want, what
    assert _state(m, T) != want
    assert harness.scalar(WRONG_REFS) == 0
    for b in ["fast", *(f"slow{i}" for i in range(len(_AFTER)))]:
        assert v.create_snapshot("ns1", b).root == s.root, b


def test_a_write_to_the_base_during_a_fast_copy_falls_back_to_the_view(
        harness: Harness, v: Versions, monkeypatch: pytest.MonkeyPatch) -> None:
    """PostgreSQL reads each statement at its own snapshot: a write to the base committed
    between the probe and the copy's reads sends the copy back through the view (seen here as
    a probe that says "unchanged" first, while the base has changed)."""
    m = v.meta
    d, files = _files(m, 4)
    s = v.create_snapshot("ns1", "main")
    want = _state(m, s.tree)
    m.commit_file(T, files[0], [chunk(m, b"later")], 5)
    m.create(T, d, b"later", 0o100644, 0, 0, 0)
    real = type(m.store.single()).changed_after
    calls: list[bool] = []

    def probe(self: object, tree_id: int, epoch: int) -> bool:
        calls.append(real(self, tree_id, epoch))  # type: ignore[arg-type]
        return calls[-1] if len(calls) > 1 else False

    monkeypatch.setattr(type(m.store.single()), "changed_after", probe)
    v.create_branch("ns1", "b", s.id)
    assert calls == []                  # created pending (pending.py): copied at its first change
    b = m.store.single().get_tree("ns1", "b")
    assert b is not None
    with m.store.write() as tx:
        assert materialize(tx, "ns1", b[0], s.created_ns)
    assert calls == [True, True]                     # the probe before the copy and after
    assert _state(m, TreeRef("ns1", "b")) == want
    assert harness.scalar(WRONG_REFS) == 0
