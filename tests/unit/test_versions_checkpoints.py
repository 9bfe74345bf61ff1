"""Hash checkpoints (docs/FORMAT.md §6.4 "Hash checkpoints", server/hash_keeper.py) on every
metadata engine: a branch's node hashes stored in the background between snapshots, so that a
snapshot rehashes only what changed since the last checkpoint, and never a stale hash.

The property: after any sequence of changes of any kind (every write path of the POSIX rules,
branches frozen from the live tree, resets, prunes), interleaved with checkpoints and
snapshots in any order, the hashes a checkpoint leaves equal a recomputation of the live tree
from its rows, and every snapshot's stored hashes and signed root equal a recomputation from
the snapshot's rows (what `verify` does): a hypothesis search over random sequences, plus the
cases named below. The same with every directory's listing kept between passes
(server/listing_cache.py, its threshold at one entry) and the changes made, checkpointed and
snapshotted through two engines (two servers) on one database."""

from __future__ import annotations

import itertools
import os
import stat
from collections.abc import Iterator
from typing import Any

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aifs_core import merkle
from aifs_core.errors import AIFSError
from aifs_core.types import (
    RENAME_EXCHANGE,
    ROOT_INO,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_SIZE,
    SET_UID,
    ChunkRef,
    Namespace,
    TreeRef,
)
from aifs_server import delegated_inos
from aifs_server.hash_keeper import HashKeeper
from aifs_server.listing_cache import Listing, ListingCache
from aifs_server.metadata.posix import PosixMeta
from aifs_server.versions import Snapshot, Versions, compute_hashes
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)
from tests.unit.test_versions_epochs import HISTORY, WRONG_REFS
from tests.unit.versions_fixtures import T, chunk, versions_fixture  # noqa: F401 (fixture)

EXAMPLES = int(os.environ.get("AIFS_HYPOTHESIS_EXAMPLES", "25"))
# WRONG_REFS for the chunks of one namespace (the examples share a database)
NS_WRONG_REFS = (
    "SELECT COUNT(*) FROM chunks c WHERE c.namespace = ? AND (c.refcount <> (SELECT COUNT(*) "
    "FROM (SELECT m.chunk_id FROM chunk_maps m JOIN trees t ON t.tree_id = m.tree_id WHERE "
    "t.namespace = ? UNION ALL SELECT m.chunk_id FROM chunk_maps_hist m JOIN trees t ON "
    "t.tree_id = m.tree_id WHERE t.namespace = ?) x WHERE x.chunk_id = c.chunk_id) OR "
    "(c.refcount > 0) = (c.unreferenced_since_ns IS NOT NULL))")
_fresh = itertools.count()


def recomputed(m: PosixMeta, tree_id: int) -> dict[int, bytes]:
    """Every node hash of tree `tree_id` (a live tree or a snapshot's view) recomputed from
    its stored rows, as verify does."""
    with m.store.read() as tx:
        return compute_hashes(tx.hash_inputs(tree_id), with_paths=False)[0]


def tree_id(m: PosixMeta, tree: TreeRef) -> int:
    got = m.store.single().get_tree(tree.namespace, tree.branch)
    assert got is not None
    return int(got[0])


def assert_current(m: PosixMeta, tree: TreeRef) -> None:
    """The tree's stored hashes (those a snapshot now starts from) are exactly its rows'."""
    tid = tree_id(m, tree)
    with m.store.read() as tx:
        stored = tx.current_hashes(tid)
        fresh = compute_hashes(tx.hash_inputs(tid), with_paths=False)[0]
    assert stored == fresh


def assert_snapshot_exact(v: Versions, s: Snapshot) -> None:
    fresh = recomputed(v.meta, s.tree_id)
    assert s.root == fresh[ROOT_INO]
    with v.meta.store.read() as tx:
        assert tx.node_hashes(s.tree_id) == fresh
    ok, problems, _ = v.verify(s.namespace, s.id)
    assert ok, problems


class World:
    """One namespace's main branch under random changes (the tree is read back to pick
    targets, so any state the rules allow can follow)."""

    def __init__(self, v: Versions, ns: str, other: Versions | None = None) -> None:
        self.v, self.m, self.ns = v, v.meta, ns
        # a second server on the same database: changes and epoch ends through either
        self.vs = [v] if other is None else [v, other]
        self.m.create_namespace(Namespace(ns, 1 << 20, 3, "key-1"))
        self.main = TreeRef(ns, "main")
        self.m.ensure_tree(self.main)
        delegated_inos.ensure_table(self.m.store)     # as the Filesystem service does
        self.snaps: list[Snapshot] = []
        self.orphans: list[int] = []
        self.branches = 0

    def chunk(self, data: bytes, index: int = 0) -> ChunkRef:
        cid = blake3.blake3(data).digest()
        self.m.record_chunk(self.ns, cid, len(data), len(data) + 40)
        return ChunkRef(index, cid, len(data))

    def walk(self, tree: TreeRef) -> tuple[list[int], list[tuple[int, bytes, int, int]]]:
        """(directories, entries (parent, name, ino, mode)) reachable from the root."""
        dirs, ents, todo = [ROOT_INO], [], [ROOT_INO]
        while todo:
            d = todo.pop()
            for e in self.m.readdir(tree, d, 0, 10_000)[0]:
                ents.append((d, e.name, e.attr.ino, e.attr.mode))
                if stat.S_ISDIR(e.attr.mode):
                    dirs.append(e.attr.ino)
                    todo.append(e.attr.ino)
        return dirs, ents

    def step(self, data: st.DataObject, tree: TreeRef) -> str:
        draw = data.draw
        m = self.m if len(self.vs) == 1 else draw(st.sampled_from(self.vs)).meta
        dirs, ents = self.walk(tree)
        files = [e for e in ents if stat.S_ISREG(e[3])]
        name = draw(st.sampled_from([b"a", b"b", b"c", b"dd", b"e\xff", b"f.txt"]))
        d = draw(st.sampled_from(dirs))
        op = draw(st.sampled_from(OPS))

        def pick(xs: list[Any]) -> Any:
            return draw(st.sampled_from(xs))
        if op in ("content", "truncate", "size", "link", "create_at") and not files:
            op = "create"
        if op in ("chmod", "chown", "chgrp", "utimes", "xattr", "rmxattr", "rename", "unlink",
                  "exchange") and not ents:
            op = "mkdir"
        if op == "create":
            m.create(tree, d, name, draw(st.sampled_from([0o100644, 0o100600])), 0, 0, 0)
        elif op == "mkdir":
            m.mkdir(tree, d, name, 0o40755, 0, 0)
        elif op == "symlink":
            m.symlink(tree, d, name, draw(st.sampled_from([b"a", b"../x", b"t" * 40])), 0, 0)
        elif op == "fifo":
            m.create(tree, d, name, stat.S_IFIFO | 0o644, 0, 0, 0)
        elif op == "content":
            f = pick(files)[2]
            n = draw(st.integers(1, 3))
            refs = [self.chunk(draw(st.sampled_from([b"x", b"yy", b"zzz", b"w" * 9])) +
                               bytes([i]), i) for i in range(n)]
            m.commit_file(tree, f, refs, sum(r.length for r in refs),
                          truncated=draw(st.booleans()))
        elif op == "truncate":
            m.commit_file(tree, pick(files)[2], [], draw(st.integers(0, 3)), truncated=True)
        elif op == "size":
            m.setattr(tree, pick(files)[2], SET_SIZE, size=draw(st.integers(0, 20)))
        elif op == "chmod":
            e = pick(ents)
            if not stat.S_ISLNK(e[3]):
                m.setattr(tree, e[2], SET_MODE, mode=draw(st.sampled_from([0o600, 0o755, 0o4711])))
        elif op == "chown":
            m.setattr(tree, pick(ents)[2], SET_UID, uid=draw(st.integers(0, 3)))
        elif op == "chgrp":
            m.setattr(tree, pick(ents)[2], SET_GID, gid=draw(st.integers(0, 3)))
        elif op == "utimes":   # not hashed: changes rows, not hashes
            m.setattr(tree, pick(ents)[2], SET_MTIME, mtime_ns=draw(st.integers(0, 10**18)))
        elif op == "xattr":
            m.setxattr(tree, pick(ents)[2], draw(st.sampled_from([b"user.k", b"user.l"])),
                       draw(st.sampled_from([b"", b"v", b"value 2"])))
        elif op == "rmxattr":
            m.removexattr(tree, pick(ents)[2], draw(st.sampled_from([b"user.k", b"user.l"])))
        elif op == "rename":
            e = pick(ents)
            m.rename(tree, e[0], e[1], d, name, forget=True)
        elif op == "exchange":
            e = pick(ents)
            m.rename(tree, e[0], e[1], d, name, RENAME_EXCHANGE)
        elif op == "link":
            m.link(tree, pick(files)[2], d, name)
        elif op == "unlink":
            e = pick(ents)
            keep_open = draw(st.booleans()) and not stat.S_ISDIR(e[3])
            if stat.S_ISDIR(e[3]):
                m.rmdir(tree, e[0], e[1], forget=True)
            else:
                m.unlink(tree, e[0], e[1], forget=not keep_open)
                if keep_open:
                    self.orphans.append(e[2])
        elif op == "orphan":   # a write to an open unlinked file, then its last close
            if self.orphans:
                ino = self.orphans.pop()
                m.commit_file(tree, ino, [self.chunk(b"orphan")], 6)
                m.forget(tree, ino)
        elif op == "create_at":   # the mount's batched create (delegated inode numbers)
            ino = m.take_inos(tree, 1)
            m.create_at(tree, d, name, ino, 0o644, 0, 0,
                        attrs={"fields": SET_UID, "uid": 5},
                        commit={"changed": [self.chunk(b"batched")], "size": 7})
        elif op == "unlink_many":
            same = [e for e in ents if e[0] == d and not stat.S_ISDIR(e[3])]
            m.unlink_many(tree, d, [(e[1], e[2]) for e in same[:2]], forget=True)
        return op

    def control(self, data: st.DataObject) -> str:
        """Checkpoints, snapshots and the other epoch ends, each checked."""
        v = self.v if len(self.vs) == 1 else data.draw(st.sampled_from(self.vs))
        ns = self.ns
        what = data.draw(st.sampled_from(["checkpoint", "checkpoint", "snapshot", "keeper",
                                          "branch", "reset", "prune", "none"]))
        if what == "checkpoint":
            v.checkpoint(ns, "main")
            assert_current(self.m, self.main)
        elif what == "keeper":
            HashKeeper(v).run_pass()
            assert_current(self.m, self.main)
        elif what == "snapshot":
            s = v.create_snapshot(ns, "main")
            self.snaps.append(s)
            assert_snapshot_exact(v, s)
        elif what == "branch":   # frozen from the live tree: hashed at its epoch
            self.branches += 1
            b = f"b{self.branches}"
            v.create_branch(ns, b)
            bt = TreeRef(ns, b)
            if data.draw(st.booleans()):
                try:
                    self.step(data, bt)
                except AIFSError:
                    pass
                assert_snapshot_exact(v, v.create_snapshot(ns, b))
            if self.m.store.single().tree_base(tree_id(self.m, bt)) is None:
                v.checkpoint(ns, b)
                assert_current(self.m, bt)
        elif what == "reset" and self.snaps:
            v.reset_branch(ns, "main", data.draw(st.sampled_from(self.snaps)).id)
            self.orphans.clear()
        elif what == "prune" and len(self.snaps) > 1:
            removed, _ = v.prune(ns, keep_last=1)
            self.snaps = [s for s in self.snaps if s.id not in removed]
        return what


OPS = ["create", "create", "mkdir", "mkdir", "symlink", "fifo", "content", "content",
       "truncate", "size", "chmod", "chown", "chgrp", "utimes", "xattr", "rmxattr", "rename",
       "rename", "exchange", "link", "unlink", "unlink", "orphan", "create_at", "unlink_many"]


@pytest.fixture(name="servers")
def servers_fixture(request: pytest.FixtureRequest, harness: Harness, v: Versions
                    ) -> Iterator[tuple[Versions, Versions | None]]:
    """(v, None), or two servers on the fixture's database: v's engine and a second one, each
    Versions with a listing cache of its own that keeps every directory (threshold 1), one
    signing key (as servers sharing a database)."""
    if request.param == "one":
        yield v, None
        return
    key = Ed25519PrivateKey.generate()
    m2 = harness.open()
    assert isinstance(m2, PosixMeta)
    try:
        yield (Versions(v.meta, key, listings=ListingCache(min_entries=1)),
               Versions(m2, key, listings=ListingCache(min_entries=1)))
    finally:
        m2.close()


@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("servers", ["one", "two kept listings"], indirect=True)
def test_random_changes_checkpoints_and_snapshots_hash_exactly(
        harness: Harness, servers: tuple[Versions, Versions | None],
        data: st.DataObject) -> None:
    v = servers[0]
    w = World(v, f"h{next(_fresh)}", servers[1])
    done: list[str] = []
    for _ in range(data.draw(st.integers(1, 40))):
        if data.draw(st.integers(0, 3)) == 0:
            done.append(w.control(data))
        else:
            try:
                done.append(w.step(data, w.main))
            except AIFSError as e:   # the rules refused it (exists, not empty, a loop...)
                done.append(f"refused: {e}")
        assert harness.scalar(NS_WRONG_REFS, w.ns, w.ns, w.ns) == 0, done
    v.checkpoint(w.ns, "main")
    assert_current(v.meta, w.main)
    s = v.create_snapshot(w.ns, "main")
    assert v.last_rehashed == 0   # the checkpoint left it nothing
    assert_snapshot_exact(v, s)
    for old in w.snaps:             # earlier snapshots still read their own epochs
        assert_snapshot_exact(v, old)
    assert harness.scalar(NS_WRONG_REFS, w.ns, w.ns, w.ns) == 0


# --- the cases by name ---------------------------------------------------------------------

def _tree(m: PosixMeta, n: int = 5) -> tuple[int, list[int]]:
    d = m.mkdir(T, ROOT_INO, b"d", 0o40755, 0, 0).ino
    return d, [m.create(T, d, f"f{i}".encode(), 0o100644, 0, 0, 0).ino for i in range(n)]


def test_a_snapshot_after_a_checkpoint_rehashes_only_what_changed_since(v: Versions) -> None:
    m = v.meta
    d, files = _tree(m, 50)
    assert v.checkpoint("ns1", "main") == -1          # its first: the whole tree
    assert v.checkpoint("ns1", "main") is None        # current: nothing to do, no new epoch
    m.setattr(T, files[3], SET_MODE, mode=0o600)
    m.create(T, d, b"new", 0o100644, 0, 0, 0)
    s = v.create_snapshot("ns1", "main")
    assert v.last_rehashed == 4   # the file, the new one, its directory, the root
    assert_snapshot_exact(v, s)
    m.commit_file(T, files[4], [chunk(m, b"content")], 7)
    assert v.checkpoint("ns1", "main") == 3
    s2 = v.create_snapshot("ns1", "main")
    assert v.last_rehashed == 0 and s2.root != s.root
    assert_snapshot_exact(v, s2)
    assert_snapshot_exact(v, s)


def test_a_pending_branch_is_left_to_its_first_write(v: Versions) -> None:
    m = v.meta
    _tree(m)
    s = v.create_snapshot("ns1", "main")
    v.create_branch("ns1", "p", s.id)
    keeper = HashKeeper(v)
    keeper.run_pass()
    assert v.checkpoint("ns1", "p") is None and m.store.single().tree_base(
        tree_id(m, TreeRef("ns1", "p"))) is not None   # still pending: nothing copied
    m.create(TreeRef("ns1", "p"), ROOT_INO, b"x", 0o100644, 0, 0, 0)   # copied: its own rows
    assert keeper.run_pass()[0] == 1   # p's first checkpoint (from its head snapshot's hashes)
    assert_current(m, TreeRef("ns1", "p"))
    assert_snapshot_exact(v, v.create_snapshot("ns1", "p"))


def test_a_checkpoint_drops_the_history_only_it_would_have_read(harness: Harness,
                                                                v: Versions) -> None:
    """An epoch that ends without a view keeps no history row and no chunk reference past
    its checkpoint; one a snapshot still sees stays."""
    m = v.meta
    _, files = _tree(m, 3)
    m.commit_file(T, files[0], [chunk(m, b"old")], 3)
    v.checkpoint("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"new")], 3, truncated=True)   # old's row: history
    old = blake3.blake3(b"old").digest()
    assert harness.scalar(HISTORY) > 0
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", old) == 1
    v.checkpoint("ns1", "main")
    assert harness.scalar(HISTORY) == 0
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?", old) == 0
    s = v.create_snapshot("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"newer")], 5, truncated=True)
    v.checkpoint("ns1", "main")                       # s sees the replaced row: kept
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?",
                          blake3.blake3(b"new").digest()) == 1
    assert_snapshot_exact(v, s)
    assert harness.scalar(WRONG_REFS) == 0


def test_a_prune_keeps_the_changes_not_hashed_yet(harness: Harness, v: Versions) -> None:
    """History rows dying at the tree's current epoch are the changes its next hashing reads.
    Found by the random test: the epoch before ended in a checkpoint (no view), the snapshot
    before that is pruned, and gc_history saw no view of the row that recorded a change since:
    dropped, the next snapshot kept the old hash of the changed node (a stale signed root)."""
    m = v.meta
    s1 = v.create_snapshot("ns1", "main")
    a = m.mkdir(T, ROOT_INO, b"a", 0o40755, 0, 0).ino
    v.create_snapshot("ns1", "main")
    m.setattr(T, a, SET_MODE, mode=0o600)
    v.checkpoint("ns1", "main")
    m.setxattr(T, a, b"user.k", b"")     # marks a: its row of before, in history
    f = m.create(T, a, b"f", 0o100644, 0, 0, 0).ino
    m.commit_file(T, f, [chunk(m, b"kept")], 4)
    v.checkpoint("ns1", "main")
    m.commit_file(T, f, [chunk(m, b"other")], 5, truncated=True)   # "kept" held in history
    assert v.prune("ns1", keep_last=1)[0] == [s1.id]
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?",
                          blake3.blake3(b"kept").digest()) == 1
    s = v.create_snapshot("ns1", "main")
    assert v.last_rehashed > 0
    assert_snapshot_exact(v, s)
    assert harness.scalar("SELECT refcount FROM chunks WHERE chunk_id = ?",
                          blake3.blake3(b"kept").digest()) == 0   # released with its epoch
    assert harness.scalar(WRONG_REFS) == 0


def test_a_pass_may_take_the_space_reserve_only_when_it_frees_chunks(v: Versions) -> None:
    """epoch_frees_chunks: what lets the keeper's checkpoint take the data dir's space reserve
    on a full disk (hash_keeper.py): only history rows of chunk maps no view sees."""
    m = v.meta
    _, files = _tree(m, 2)
    tx, tid = m.store.single(), tree_id(m, T)
    m.commit_file(T, files[0], [chunk(m, b"one")], 3)
    v.checkpoint("ns1", "main")
    m.create(T, ROOT_INO, b"new", 0o100644, 0, 0, 0)
    assert not tx.epoch_frees_chunks(tid)            # new files: nothing to free
    m.commit_file(T, files[0], [chunk(m, b"two")], 3, truncated=True)
    assert tx.epoch_frees_chunks(tid)                # "one" held by history alone
    v.checkpoint("ns1", "main")
    assert not tx.epoch_frees_chunks(tid)
    v.create_snapshot("ns1", "main")
    m.commit_file(T, files[0], [chunk(m, b"three")], 5, truncated=True)
    assert not tx.epoch_frees_chunks(tid)            # the snapshot sees "two"


def test_a_large_tree_without_hashes_is_left_to_its_first_snapshot(v: Versions) -> None:
    """The keeper does not hash a tree that is already large whole in the background (a tree
    written before the server ran): its first snapshot does, and the passes go on from there."""
    m = v.meta
    _, files = _tree(m, 20)
    keeper = HashKeeper(v, first_max=10)
    assert keeper.run_pass() == (0, 0) and not m.store.single().has_hashes(tree_id(m, T))
    v.create_snapshot("ns1", "main")
    m.setattr(T, files[0], SET_MODE, mode=0o600)
    assert keeper.run_pass() == (1, 3)
    assert_current(m, T)


def test_keeper_waits_in_proportion_to_its_work_up_to_max_wait(v: Versions) -> None:
    k = HashKeeper(v, interval=0.25, duty=0.1, max_wait=1.0, quiet=0.2)
    assert k.next_wait(0.001) == 0.25 and k.next_wait(0.05) == pytest.approx(0.45)
    assert k.next_wait(0.15) == 1.0                # mostly changes: at most max_wait
    assert k.next_wait(0.5) == pytest.approx(4.5)  # mostly a large listing: a tenth
    with pytest.raises(ValueError):
        HashKeeper(v, duty=0)
    v.meta.last_change = 100.0                     # writes going on at 100 s
    assert not k.due(100.1, 99.9, 0.25)            # too soon after the last pass
    assert not k.due(100.1, 99.5, 0.25)            # due, but the writes have not paused
    assert k.due(100.1, 99.0, 0.25)                # a second of writes since: due anyway
    assert k.due(100.3, 99.9, 0.25)                # paused for 0.3 s: due


# --- listings kept between passes (server/listing_cache.py) ---------------------------------

def _kept(v: Versions, min_entries: int = 1, max_bytes: int = 1 << 30) -> Versions:
    return Versions(v.meta, Ed25519PrivateKey.generate(),
                    listings=ListingCache(max_bytes=max_bytes, min_entries=min_entries))


def test_a_kept_listing_follows_every_change_of_its_directory(v: Versions) -> None:
    """Each change kind in a directory whose listing is kept, then a checkpoint: the listing
    is spliced (counted), never reread, and the hashes equal a recomputation."""
    kv = _kept(v, min_entries=4)
    m, cache = kv.meta, kv.listings
    d, files = _tree(m, 6)
    e = m.mkdir(T, ROOT_INO, b"e", 0o40755, 0, 0).ino
    other = m.create(T, e, b"out", 0o100644, 0, 0, 0).ino
    assert kv.checkpoint("ns1", "main") == -1       # the first pass: the whole tree
    assert cache.made == 1 and cache.dirs(tree_id(m, T)) == [d]   # e and / are too small
    steps = [
        ("create", lambda: m.create(T, d, b"new", 0o100644, 0, 0, 0)),
        ("unlink", lambda: m.unlink(T, d, b"f0", forget=True)),
        ("rename within", lambda: m.rename(T, d, b"f1", d, b"f1-renamed", forget=True)),
        ("rename out of", lambda: m.rename(T, d, b"f2", e, b"f2", forget=True)),
        ("rename into", lambda: m.rename(T, e, b"out", d, b"in", forget=True)),
        ("replace a name by another inode",
         lambda: m.rename(T, d, b"new", d, b"f3", forget=True)),
        ("chmod a child", lambda: m.setattr(T, files[4], SET_MODE, mode=0o600)),
        ("a child's content", lambda: m.commit_file(T, files[5], [chunk(m, b"data")], 4)),
        ("a child's xattr", lambda: m.setxattr(T, other, b"user.k", b"v")),
        ("hard link", lambda: m.link(T, files[5], d, b"again")),
        ("exchange", lambda: m.rename(T, d, b"again", d, b"in", RENAME_EXCHANGE)),
        ("a subdirectory", lambda: m.mkdir(T, d, b"sub", 0o40755, 0, 0)),
        ("the directory's own mode", lambda: m.setattr(T, d, SET_MODE, mode=0o700)),
    ]
    for what, change in steps:
        before = cache.spliced
        change()
        assert kv.checkpoint("ns1", "main") not in (None, -1), what
        assert cache.spliced == before + 1, what
        assert_current(m, T)
    sub = m.lookup(T, d, b"sub").ino
    for i in range(5):   # the subdirectory grows past the threshold: kept too
        m.create(T, sub, f"s{i}".encode(), 0o100644, 0, 0, 0)
    kv.checkpoint("ns1", "main")
    assert cache.dirs(tree_id(m, T)) == sorted([d, sub])
    m.setattr(T, m.lookup(T, sub, b"s1").ino, SET_MODE, mode=0o600)   # both spliced
    before = cache.spliced
    kv.checkpoint("ns1", "main")
    assert cache.spliced == before + 2
    assert_current(m, T)
    for name in [b"s0", b"s1", b"s2", b"s3", b"s4"]:
        m.unlink(T, sub, name, forget=True)
    m.rmdir(T, d, b"sub", forget=True)     # a kept directory removed: its listing goes
    kv.checkpoint("ns1", "main")
    assert cache.dirs(tree_id(m, T)) == [d]
    assert_current(m, T)
    s = kv.create_snapshot("ns1", "main")
    assert kv.last_rehashed == 0
    assert_snapshot_exact(kv, s)


def test_many_changes_in_one_pass_splice_exactly(v: Versions) -> None:
    """Creates, removals and children changed, many of each in one pass."""
    kv = _kept(v)
    m, cache = kv.meta, kv.listings
    d, files = _tree(m, 40)
    kv.checkpoint("ns1", "main")
    for i in range(40, 150):
        m.create(T, d, f"g{i}".encode(), 0o100644, 0, 0, 0)
    for f in files[::3]:
        m.setattr(T, f, SET_MODE, mode=0o600)
    for i in range(0, 40, 2):
        m.unlink(T, d, f"f{i}".encode(), forget=True)
    before = cache.spliced
    kv.checkpoint("ns1", "main")
    assert cache.spliced == before + 2   # d and the root
    assert_current(m, T)


@settings(max_examples=EXAMPLES * 4, deadline=None)
@given(base=st.sets(st.binary(min_size=1, max_size=4), max_size=80),
       gone=st.sets(st.binary(min_size=1, max_size=4), max_size=80),
       kids=st.dictionaries(st.binary(min_size=1, max_size=4), st.binary(min_size=32,
                                                                           max_size=32),
                            max_size=80))
def test_a_spliced_listing_is_the_body_of_its_entries(base: set[bytes], gone: set[bytes],
                                                      kids: dict[bytes, bytes]) -> None:
    """A splice (names removed, added, replaced: the same name in both) gives merkle.dir_body
    of the entries that result."""
    entries = {n: blake3.blake3(n).digest() for n in base}
    got = Listing(merkle.dir_pieces(entries.items()))
    got.splice(gone, sorted(kids.items()))
    for n in gone:
        entries.pop(n, None)
    entries.update(kids)
    assert merkle.dir_body_of(got.pieces) == merkle.dir_body(entries.items())
    assert got.bytes == sum(len(p) + 41 for p in got.pieces)


def test_a_listing_is_used_only_after_this_server_hashed_the_epoch_before(
        harness: Harness, v: Versions) -> None:
    """Two servers on one database: writes through the other are folded in (the listing is
    spliced from the rows); after the other hashed an epoch, this one's listings are not
    used (made anew), and a listing whose directory's stored hash is not the one it gave is
    dropped even when its epoch looks right."""
    key = Ed25519PrivateKey.generate()
    m2 = harness.open()
    assert isinstance(m2, PosixMeta)
    try:
        v1 = Versions(v.meta, key, listings=ListingCache(min_entries=4))
        v2 = Versions(m2, key, listings=ListingCache(min_entries=4))
        m1, c1 = v1.meta, v1.listings
        d, files = _tree(m1, 6)
        tid = tree_id(m1, T)
        v1.checkpoint("ns1", "main")
        assert c1.dirs(tid) == [d]
        m2.create(T, d, b"through-2", 0o100644, 0, 0, 0)
        m2.setattr(T, files[0], SET_MODE, mode=0o600)
        v1.checkpoint("ns1", "main")
        assert c1.spliced == 1
        assert_current(m1, T)
        m1.create(T, d, b"y", 0o100644, 0, 0, 0)
        assert v2.checkpoint("ns1", "main") is not None     # server 2 hashes that epoch
        m1.setattr(T, files[1], SET_MODE, mode=0o600)
        v1.checkpoint("ns1", "main")
        assert c1.spliced == 1 and c1.made == 2              # not used: read whole again
        assert_current(m1, T)
        # the second check: an epoch that matches, a listing that does not (a test's forgery)
        m2.create(T, d, b"z", 0o100644, 0, 0, 0)
        m2.unlink(T, d, b"f3", forget=True)   # its history row goes with server 2's pass
        assert v2.checkpoint("ns1", "main") is not None
        c1._trees[tid].epoch += 1   # noqa: SLF001 (claims it hashed the epoch server 2 did)
        m1.unlink(T, d, b"y", forget=True)
        v1.checkpoint("ns1", "main")
        assert c1.spliced == 1 and c1.made == 3
        assert_current(m1, T)
        s = v2.create_snapshot("ns1", "main")
        assert_snapshot_exact(v1, s)
    finally:
        m2.close()


def test_the_listings_kept_stay_within_their_bound(v: Versions) -> None:
    """Over max_bytes, the directories hashed longest ago go first; what is evicted is read
    whole at its next change, as exactly."""
    m = v.meta
    dirs = []
    for k in range(3):
        d = m.mkdir(T, ROOT_INO, f"d{k}".encode(), 0o40755, 0, 0).ino
        dirs.append((d, [m.create(T, d, f"f{i:03d}".encode(), 0o100644, 0, 0, 0).ino
                         for i in range(50)]))
    one = Listing(merkle.dir_pieces((f"f{i:03d}".encode(), b"\0" * 32) for i in range(50)))
    kv = _kept(v, min_entries=10, max_bytes=2 * one.bytes + one.bytes // 2)   # two of them
    cache, tid = kv.listings, tree_id(m, T)
    kv.checkpoint("ns1", "main")
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    m.setattr(T, dirs[0][1][0], SET_MODE, mode=0o600)
    kv.checkpoint("ns1", "main")            # d0 read whole (or spliced), then the latest
    assert dirs[0][0] in cache.dirs(tid) and len(cache) == 2
    m.setattr(T, dirs[1][1][0], SET_MODE, mode=0o600)
    kv.checkpoint("ns1", "main")
    assert cache.dirs(tid) == sorted([dirs[0][0], dirs[1][0]])
    assert cache.bytes <= cache.max_bytes
    assert_current(m, T)
    for _, files in dirs:
        m.setattr(T, files[1], SET_MODE, mode=0o600)
    kv.checkpoint("ns1", "main")
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert_current(m, T)
    off = _kept(v, min_entries=1, max_bytes=0)      # AIFS_LISTING_CACHE_MB=0: none kept
    m.setattr(T, dirs[2][1][2], SET_MODE, mode=0o600)
    off.checkpoint("ns1", "main")
    assert len(off.listings) == 0 and off.listings.made == 0
    assert_current(m, T)
