"""Versions: signed Merkle snapshots, branches, tags, diff, merge and retention.

Interface:
    Versions(meta: PosixMeta, signing_key: Ed25519PrivateKey)
        create_snapshot(ns, branch, message="", extra_parent="") -> Snapshot
        resolve(ns, ref) -> Snapshot      ref: id, "tag:T", "branch:B" (its head), or a bare
                                          name (a tag, else a branch head); NotFound
        list_snapshots(ns, branch="") -> [Snapshot] (oldest first); tags_of(ns) -> {id: [tag]}
        verify(ns, ref, deadline) -> (ok, problems, nodes checked)
        prune(ns, keep_last, keep_daily, keep_within_s, dry_run, branch="", now_ns=None)
            -> (removed ids, kept ids)
        create_branch(ns, name, source="") / delete_branch / reset_branch(ns, name, ref) /
        list_branches(ns) -> [(name, head id, created_ns)] / branch_log(ns, name)
        create_tag(ns, name, ref) / list_tags(ns) / delete_tag(ns, name)
        diff(ns, a, b, deadline) -> Diff(added, removed, changed, visited)
        merge(ns, source, into, message, dry_run, deadline) -> MergeResult
        list_tree(ns, ref, ino) -> (dir Attr, stored hash, xattrs, [TreeEntry])
        checkpoint(ns, branch) -> nodes rehashed | None   the branch's hashes brought up to
                                          its rows (hash_keeper.py runs it in the background)
    hash_epoch(tx, ns, tree_id, epoch, head, deadline, listings) -> (root, rehashed)   every
                                          epoch's end; listings: listing_cache.Pass (large
                                          directories' listings kept between hashings)
    Snapshot.tree (TreeRef of its frozen tree), .uri, .statement()

The encoding and the storage layout are docs/FORMAT.md §6. A snapshot is the branch's tree at
an epoch (a tree "@snap:<id>" with no rows of its own, which posix.PosixMeta refuses to change,
plus one row): O(1) to take; the rows the branch changes afterwards are kept in history for it
(metadata/history_schema.py) and hold chunk references, so GC never frees a chunk a snapshot
(or a branch or tag, which name snapshots) reaches; pruning frees what pruned ones alone held.
Its hashes are computed from the tree's last stored ones for what changed since
(epoch_hashes); the server stores them in the background too (checkpoint: the same without a
snapshot), so a snapshot rehashes only what changed since the last checkpoint.
A branch is created pending (metadata/pending.py): it reads the view it was created from and
copies its rows on its first change. Snapshots copied by the schema before epochs read, verify
and prune as before.
A branch's head is the snapshot of its last log entry (create, snapshot, reset, merge).
Every walk checks the call's deadline.
"""

from __future__ import annotations

import datetime
import re
import secrets
import stat
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from aifs_core import merkle
from aifs_core.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from aifs_core.types import ROOT_INO, SET_GID, SET_MODE, SET_UID, Attr, ChunkRef, TreeRef
from aifs_server import listing_cache
from aifs_server.deadline import NEVER, Deadline
from aifs_server.listing_cache import ListingCache, Pass
from aifs_server.metadata.pending import kept_name, materialize, release_base
from aifs_server.metadata.posix import FROZEN_PREFIX, PosixMeta
from aifs_server.metadata.records import now_ns
from aifs_server.metadata.store import Tx
from aifs_server.request_log import record

_ID_RE = re.compile(r"[0-9a-f]{32}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")


def check_name(kind: str, name: str) -> str:
    if not _NAME_RE.fullmatch(name) or name.startswith(FROZEN_PREFIX) or ".." in name:
        raise InvalidArgument(f"invalid {kind} name {name!r}: letters, digits, '.', '_', '-', "
                              "'/', starting with a letter or digit, at most 128")
    return name


@dataclass(frozen=True)
class Snapshot:
    id: str
    namespace: str
    tree_id: int
    branch: str
    parents: tuple[str, ...]
    created_ns: int
    message: str
    root: bytes
    signature: bytes

    @property
    def tree(self) -> TreeRef:
        return TreeRef(self.namespace, FROZEN_PREFIX + self.id)

    @property
    def uri(self) -> str:
        return merkle.snap_uri(self.namespace, self.id)

    def statement(self) -> bytes:
        return merkle.statement(bytes.fromhex(self.id), self.namespace, self.branch,
                                self.created_ns, self.root,
                                [bytes.fromhex(p) for p in self.parents], self.message)


@dataclass
class Diff:
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    visited: int = 0


@dataclass
class MergeResult:
    merged: bool
    conflicts: list[str]
    snapshot: str
    base: str
    applied: list[str]


@dataclass(frozen=True)
class TreeEntry:
    name: bytes
    attr: Attr
    hash: bytes
    symlink: bytes
    xattrs: dict[bytes, bytes]
    content_hash: bytes
    chunks: list[tuple[int, bytes, int]] = field(default_factory=list)  # a file's map


def _snap(ns: str, row: tuple[Any, ...]) -> Snapshot:
    sid, tree_id, branch, parents, created, message, root, sig = row
    return Snapshot(str(sid), ns, int(tree_id), str(branch),
                    tuple(p for p in str(parents).split(",") if p), int(created), str(message),
                    bytes(root), bytes(sig))


def compute_hashes(inputs: tuple[list[Any], list[Any], list[Any], list[Any]],
                   deadline: Deadline = NEVER, known: dict[int, bytes] | None = None,
                   with_paths: bool = True, listings: Pass | None = None
                   ) -> tuple[dict[int, bytes], dict[int, str]]:
    """Node hash of every inode reachable from the root, and one path per inode (only
    `with_paths`: verify names paths, a snapshot does not), from a tree's rows (FORMAT.md
    §6.1); an iterative post-order walk over the directories (no recursion limit on deep
    trees), each other node hashed when its directory is expanded.
    `known`: hashes taken as they are (clean children in incremental hashing; not returned).
    Ids, names and chunk ids are used as the drivers return them (int, bytes: sqlite3 and
    psycopg alike): converting the rows of a first snapshot's 100k entries cost 60 ms.
    `listings`: a directory's body from the listing kept for it (listing_cache.Pass.body: its
    entries in `inputs` are then only those that changed), or kept from there on."""
    inodes, dentries, slots, xattrs = inputs
    known = known or {}
    attrs = {r[0]: r for r in inodes}
    children: dict[int, list[tuple[bytes, int]]] = defaultdict(list)
    for parent, name, ino in dentries:
        children[parent].append((name, ino))
    maps: dict[int, list[tuple[int, bytes, int]]] = defaultdict(list)
    for ino, idx, cid, length in slots:
        maps[ino].append((idx, cid, length))
    xa: dict[int, dict[bytes, bytes]] = defaultdict(dict)
    for ino, name, value in xattrs:
        xa[int(ino)][bytes(name)] = bytes(value)
    hashes: dict[int, bytes] = {}
    paths: dict[int, str] = {ROOT_INO: "/"}
    stack: list[tuple[int, bool]] = [(ROOT_INO, False)]
    n = 0

    def leaf(ino: int, row: Any) -> bytes:
        _, mode, uid, gid, size, rdev, link = row
        if stat.S_ISREG(mode):
            return merkle.file_node_hash(mode, uid, gid, size, maps.get(ino, ()), xa.get(ino))
        body = bytes(link or b"") if stat.S_ISLNK(mode) else rdev
        return merkle.node_hash(mode, uid, gid, size, body, xa.get(ino))

    while stack:
        ino, expanded = stack.pop()
        if ino in hashes or ino not in attrs:
            continue
        row = attrs[ino]
        if not stat.S_ISDIR(row[1]):
            hashes[ino] = leaf(ino, row)
            continue
        kids = children.get(ino, ())
        if not expanded:
            stack.append((ino, True))
            base = paths[ino].rstrip("/") if with_paths else ""
            for name, child in kids:
                if with_paths:
                    paths.setdefault(child, f"{base}/{name.decode(errors='replace')}")
                if child in hashes or child in known:
                    continue
                c_row = attrs.get(child)
                if c_row is None or stat.S_ISDIR(c_row[1]):
                    stack.append((child, False))
                    continue
                n += 1
                if n % 4096 == 0:
                    deadline.check("hashing the tree")
                hashes[child] = leaf(child, c_row)
            continue
        n += 1
        if n % 4096 == 0:
            deadline.check("hashing the tree")
        _, mode, uid, gid, _size, _rdev, _link = row
        body = None if listings is None else listings.body(
            ino, kids, lambda c: hashes.get(c) or known.get(c, _ZERO))
        if body is None:
            body = merkle.dir_body([(nm, hashes.get(c) or known.get(c, _ZERO)) for nm, c in kids])
        hashes[ino] = merkle.node_hash(mode, uid, gid, 0, body, xa.get(ino))
    return hashes, paths


_ZERO = b"\0" * 32   # a child without a hash (no inode row)


def _too_many(tx: Tx, tree_id: int, dirty: set[int]) -> bool:
    """A quarter of a big tree changed: one full pass costs less than batched lookups. The
    tree's size bounded by the inode numbers it gave out (O(1); counting its inodes cost a
    scan of the tree, 70 ms at 100k, in every checkpoint of a thousand changes): a tree that
    removed many files may rehash a quarter of itself incrementally instead, as exactly."""
    return len(dirty) > 1024 and len(dirty) > tx.inos_given(tree_id) // 4


def _rehash(tx: Tx, tree_id: int, dirty: set[int], known_from: int | None,
            deadline: Deadline, listings: Pass | None = None
            ) -> tuple[dict[int, bytes], set[int]] | None:
    """The hashes of the `dirty` nodes of the live tree (`dirty` grows by every node with no
    stored hash below them: nodes new since), every clean child's hash taken from the tree's
    current hashes (known_from None) or from snapshot tree `known_from`'s, and those new nodes
    (no stored hash); None when the root is not dirty (the caller hashes the whole tree).
    `listings` (known_from None): the directories it holds a listing of are read by their
    changes only (_listing_changes), the others whole."""
    if ROOT_INO not in dirty:  # a change always reaches the root; anything else is a surprise
        return None
    inputs: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
    todo, new, rows = set(dirty), set(), []
    known: dict[int, bytes] = {}
    spliced, changes = (_listing_changes(tx, tree_id, dirty, listings)
                        if listings is not None and known_from is None else (set(), []))
    while todo:
        deadline.check("reading the changed nodes")
        got = tx.hash_inputs_of(tree_id, sorted(todo), entries=known_from is not None)
        if known_from is None:   # the entries with their current hashes, in one statement
            rows = tx.entries_hashed(tree_id, sorted(todo - spliced)) + changes
            changes = []
            got = (got[0], [(p, name, ino) for p, name, ino, _ in rows], got[2], got[3])
        for mine, more in zip(inputs, got, strict=True):
            mine += more
        clean = {int(ino) for _, _, ino in got[1]} - dirty
        if known_from is None:
            hashed = {ino: h for _, _, ino, h in rows if h is not None}
            for ino in hashed.keys() & dirty:   # a dirty node's stored hash is the old one
                del hashed[ino]
        else:
            hashed = tx.node_hashes_of(known_from, sorted(clean))
        known.update(hashed)
        todo = clean - hashed.keys()    # new: hashed from their rows, and what is below them
        dirty |= todo
        new |= todo
    hashes, _ = compute_hashes(inputs, deadline, known, with_paths=False, listings=listings)
    return hashes, new


def _listing_changes(tx: Tx, tree_id: int, dirty: set[int], listings: Pass
                     ) -> tuple[set[int], list[Any]]:
    """The dirty directories whose listing `listings` holds and may splice (listing_cache.py),
    and entries_hashed's rows for them: only their entries that changed in the epoch or name a
    dirty node; the names gone are told to `listings`."""
    if listings.since is None:
        return set(), []
    held = sorted(d for d in dirty if d in listings.held)
    if not held:
        return set(), []
    dirs = listings.usable(held, tx.current_hashes(tree_id, held))
    if not dirs:
        return set(), []
    gone, rows = tx.dentry_changes(tree_id, listings.epoch, dirs, listings.since, sorted(dirty))
    for parent, name in gone:
        listings.forget(parent, (name,))
    return set(dirs), rows


def epoch_hashes(tx: Tx, tree_id: int, epoch: int, deadline: Deadline = NEVER,
                 listings: Pass | None = None) -> tuple[bytes, int] | None:
    """Store the node hashes of live tree `tree_id` at `epoch` (the snapshot being taken) from
    those of its last snapshot: only the nodes whose rows changed in the epoch
    (tx.changed_since) and their ancestors are recomputed; every other hash stays as stored
    (tree_hashes keeps a hash from the epoch it was computed at until it changes): O(changes ·
    depth). (root hash, nodes recomputed); None: the caller hashes the whole tree.
    `listings`: the large directories' listings kept between hashings (listing_cache.py),
    finished here when this hashing went through them."""
    changed = set(tx.changed_since(tree_id, epoch))
    if not changed:
        root = tx.current_hashes(tree_id, [ROOT_INO]).get(ROOT_INO)
        if root is not None and listings is not None:
            listings.finish({}, tx.max_dentry_id())
        return (root, 0) if root is not None else None
    return _store_rehashed(tx, tree_id, epoch, _ancestors(tx, tree_id, changed, changed,
                                                          deadline), None, deadline, listings)


def incremental_hashes(tx: Tx, tree_id: int, base: int, epoch: int,
                       deadline: Deadline = NEVER) -> tuple[bytes, int] | None:
    """Store the node hashes of live tree `tree_id` at `epoch` when it has none yet (a branch's
    first snapshot) from those of snapshot tree `base` (the branch's head, normally the
    snapshot it was made of): only the nodes whose hashed rows differ from `base`'s
    (tx.changed_nodes: set differences, O(tree) in the database) and their ancestors are
    recomputed, every other hash is copied. (root hash, nodes recomputed); None when too much
    changed to gain over a full pass (or a clean node has no stored hash to reuse)."""
    rows = tx.changed_nodes(tree_id, base)
    if not rows:
        tx.copy_node_hashes(base, tree_id, epoch)
        root = tx.current_hashes(tree_id, [ROOT_INO]).get(ROOT_INO)
        return (root, 0) if root is not None else None
    # the parents of changed files came with changed_nodes
    dirty = _ancestors(tx, tree_id, {ino for ino, _ in rows},
                       [ino for ino, is_parent in rows if is_parent], deadline)
    return _store_rehashed(tx, tree_id, epoch, dirty, base, deadline)


def _ancestors(tx: Tx, tree_id: int, dirty: set[int], frontier: Iterable[int],
               deadline: Deadline) -> set[int]:
    """`dirty` with every directory above `frontier`, up to the root (each name's directory:
    a directory has one name)."""
    dirty, todo = set(dirty), sorted(frontier)
    while todo:
        deadline.check("finding the changed directories")
        up = {p for _, p in tx.names_of(tree_id, todo) if p not in dirty}
        dirty |= up
        todo = sorted(up)
    return dirty


def _store_rehashed(tx: Tx, tree_id: int, epoch: int, dirty: set[int], base: int | None,
                    deadline: Deadline, listings: Pass | None = None
                    ) -> tuple[bytes, int] | None:
    """Rehash the `dirty` nodes (clean children's hashes: the tree's own, or snapshot tree
    `base`'s, copied first) and store them as the tree's hashes at `epoch`."""
    if _too_many(tx, tree_id, dirty):
        return None
    got = _rehash(tx, tree_id, dirty, base, deadline, listings)
    if got is None:
        return None
    hashes, new = got
    if listings is not None:
        listings.finish(hashes, tx.max_dentry_id())
    if base is not None:
        tx.copy_node_hashes(base, tree_id, epoch)
    tx.close_hashes(tree_id, epoch, dirty - hashes.keys())   # removed, or no longer linked
    tx.set_hashes(tree_id, epoch, hashes.items(), new=new)
    return hashes[ROOT_INO], len(hashes)


def hash_epoch(tx: Tx, ns: str, tree_id: int, epoch: int, head: str,
               deadline: Deadline = NEVER, listings: Pass | None = None
               ) -> tuple[bytes, int]:
    """Store the node hashes of live tree `tree_id` at `epoch` (the epoch that just ended: its
    rows are the live ones now, in this transaction that moved the tree past it) and drop the
    history rows of that epoch no view sees; (root hash, nodes rehashed, -1: the whole tree).
    From the tree's hashes at its last epoch when it has them (epoch_hashes), else from the
    branch's head snapshot (a branch's first: incremental_hashes), else a full pass
    (FORMAT.md §6.4). Every epoch of a tree with hashes must end here (a snapshot, a hash
    checkpoint, a branch frozen from it), or its next hashing would miss that epoch's changes."""
    got = None
    has = tx.has_hashes(tree_id)
    if has:
        got = epoch_hashes(tx, tree_id, epoch, deadline, listings)
    elif head:
        row = tx.snapshot(ns, head)
        got = incremental_hashes(tx, tree_id, int(row[1]), epoch, deadline) if row else None
    if got is None:
        if listings is not None:   # every directory read whole: its listing made anew
            listings.restart()
        hashes, _ = compute_hashes(tx.hash_inputs(tree_id), deadline, with_paths=False,
                                   listings=listings)
        if listings is not None:
            listings.finish(hashes, tx.max_dentry_id())
        if has:
            tx.close_hashes(tree_id, epoch, tx.current_hashes(tree_id).keys() - hashes.keys())
        tx.set_hashes(tree_id, epoch, hashes.items(), fresh=not has)
        got = hashes[ROOT_INO], -1
    tx.gc_epoch(ns, tree_id, epoch, now_ns())
    return got


class Versions:
    """The rules of versions (see the module docstring)."""

    def __init__(self, meta: PosixMeta, signing_key: Ed25519PrivateKey,
                 listings: ListingCache | None = None) -> None:
        self.meta = meta
        self._store = meta.store
        # large directories' listings kept between hashings: one per store in this process,
        # so the RPCs' snapshots and the hash keeper's checkpoints pass them on to each other
        self.listings = listing_cache.of(meta.store) if listings is None else listings
        self._sk = signing_key
        self.public_key: Ed25519PublicKey = signing_key.public_key()
        # nodes the last snapshot hashed (-1: the whole tree); tests and the bench read it
        self.last_rehashed = -1

    # --- snapshots ---------------------------------------------------------------------------
    @contextmanager
    def _hashing(self) -> Iterator[tuple[Tx, list[Pass]]]:
        """A write transaction in which trees may be hashed (`_hash_epoch`): the listings the
        hashings leave go back to the cache once it committed, not before (a transaction
        rolled back leaves the trees it hashed with none)."""
        passes: list[Pass] = []
        with self._store.write() as tx:
            yield tx, passes
        for p in passes:
            self.listings.commit(p)

    def _hash_epoch(self, tx: Tx, passes: list[Pass], ns: str, tree_id: int, epoch: int,
                    head: str, deadline: Deadline = NEVER) -> tuple[bytes, int]:
        p = self.listings.begin(tree_id, epoch)
        passes.append(p)
        return hash_epoch(tx, ns, tree_id, epoch, head, deadline, p)

    def _head(self, tx: Tx, ns: str, branch: str) -> str:
        log = tx.branch_log(ns, branch)
        return log[-1][2] if log else ""

    def create_snapshot(self, ns: str, branch: str, message: str = "",
                        extra_parent: str = "", deadline: Deadline = NEVER) -> Snapshot:
        self.meta.get_namespace(ns)
        if branch.startswith(FROZEN_PREFIX):
            raise InvalidArgument("a snapshot is taken of a branch, not of a snapshot")
        if branch == "main":
            self.meta.ensure_tree(TreeRef(ns, "main"))  # as the Filesystem service does
        now = now_ns()
        sid = secrets.token_bytes(16).hex()
        self._settle(ns, branch, now)
        with self._hashing() as (tx, passes):
            src = tx.get_tree(ns, branch)
            if src is None:
                raise NotFound(f"branch {branch!r} of namespace {ns!r} does not exist")
            # O(1): the branch's tree at its current epoch, read through (FORMAT.md §6.4)
            dst, epoch = tx.freeze(ns, src[0], FROZEN_PREFIX + sid, now)
            head = self._head(tx, ns, branch)
            root, self.last_rehashed = self._hash_epoch(tx, passes, ns, src[0], epoch, head,
                                                        deadline)
            parents = tuple(p for p in (head, extra_parent) if p)
            snap = Snapshot(sid, ns, dst, branch, parents, now, message, root, b"")
            sig = self._sk.sign(snap.statement())
            tx.insert_snapshot(ns, (sid, dst, branch, ",".join(parents), now, message,
                                    snap.root, sig))
            tx.append_log(ns, branch, "merge" if extra_parent else "snapshot", sid, now)
            done = Snapshot(**{**snap.__dict__, "signature": sig})
            record(tx, done)   # exactly-once calls (request_log.py): no-op outside one
        return done

    def checkpoint(self, ns: str, branch: str, deadline: Deadline = NEVER) -> int | None:
        """Bring branch `branch`'s stored node hashes up to its committed rows: a snapshot
        without its row, view or log entry (the tree moves to its next epoch and the hashes of
        the one that ended are stored, hash_epoch), so that the next snapshot only rehashes
        what changed since. Nodes rehashed (-1: the whole tree); None when there was nothing
        to do (hashes current, a pending branch, no such branch). hash_keeper.HashKeeper runs
        it in the background."""
        if branch.startswith(FROZEN_PREFIX):
            return None
        with self._hashing() as (tx, passes):
            src = tx.get_tree(ns, branch)
            # the tree's row locked first (lock_tree), then the probe: a second server that
            # waited here finds the hashes it waited for current
            if src is None or tx.lock_tree(src[0]) is not None or not tx.trees_to_hash(src[0]):
                return None
            epoch = tx.bump_epoch(src[0])   # PostgreSQL: writers in flight commit first
            _, rehashed = self._hash_epoch(tx, passes, ns, src[0], epoch,
                                           self._head(tx, ns, branch), deadline)
        return rehashed

    def _settle(self, ns: str, branch: str, now: int) -> None:
        """A pending branch gets its rows (pending.py) before a snapshot freezes it: a view of
        a view is not supported. Its own transaction, as a first write's (posix._wtree): the
        snapshot's table lock then waits for no row lock this holds."""
        got = self._store.single().get_tree(ns, branch)
        if got is not None and self._store.single().tree_base(got[0]) is not None:
            with self._store.write() as tx:
                materialize(tx, ns, got[0], now)

    def get(self, ns: str, snap_id: str) -> Snapshot:
        row = self._store.single().snapshot(ns, snap_id)
        if row is None:
            raise NotFound(f"snapshot {snap_id} of namespace {ns!r} does not exist")
        return _snap(ns, row)

    def resolve(self, ns: str, ref: str) -> Snapshot:
        if ref.startswith(merkle.SNAP_SCHEME):
            uri_ns, ref, _ = merkle.parse_snap_uri(ref)
            if uri_ns != ns:
                raise InvalidArgument(f"{ref} is a snapshot of namespace {uri_ns!r}, not {ns!r}")
        kind, _, name = ref.partition(":") if ref.startswith(("tag:", "branch:")) else ("", "",
                                                                                        ref)
        tx = self._store.single()
        if not kind and _ID_RE.fullmatch(name):
            return self.get(ns, name)
        if kind in ("", "tag"):
            sid = tx.tag(ns, name)
            if sid is not None:
                return self.get(ns, sid)
        if kind in ("", "branch"):
            head = self._head(tx, ns, name)
            if head:
                return self.get(ns, head)
            if tx.get_tree(ns, name) is not None:
                raise NotFound(f"branch {name!r} has no snapshot yet: `aifs snapshot create "
                               f"--branch {name}`")
        raise NotFound(f"no snapshot, tag or branch {ref!r} in namespace {ns!r}")

    def list_snapshots(self, ns: str, branch: str = "") -> list[Snapshot]:
        self.meta.get_namespace(ns)
        snaps = [_snap(ns, r) for r in self._store.single().list_snapshots(ns)]
        return [s for s in snaps if not branch or s.branch == branch]

    def tags_of(self, ns: str) -> dict[str, list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for name, sid, _ in self._store.single().list_tags(ns):
            out[sid].append(name)
        return out

    def verify(self, ns: str, ref: str, deadline: Deadline = NEVER
               ) -> tuple[bool, list[str], int]:
        """Recompute every node hash from the stored rows; compare with the stored hashes, the
        root with the signed statement, and the signature with the data dir's key."""
        snap = self.resolve(ns, ref)
        problems: list[str] = []
        try:
            self.public_key.verify(snap.signature, snap.statement())
        except InvalidSignature:
            problems.append(f"snapshot {snap.id}: the signature does not verify with this "
                            "namespace's signing key (a foreign or altered statement)")
        with self._store.read() as tx:
            inputs = tx.hash_inputs(snap.tree_id)
            fresh, paths = compute_hashes(inputs, deadline)
            stored = tx.node_hashes(snap.tree_id)
        dentries = inputs[1]
        parent_of = {int(ino): int(p) for p, _, ino in dentries}
        bad = {ino for ino, h in fresh.items() if stored.get(ino) != h}
        # name the deepest altered nodes: those whose own rows changed, not the ancestors whose
        # hashes changed only because a descendant's did
        above = {parent_of.get(ino, 0) for ino in bad}
        for ino in sorted(bad - above if bad - above else bad):
            problems.append(f"{paths.get(ino, f'inode {ino}')}: the stored rows do not hash to "
                            "the recorded node hash (altered size, mode, owner, content, "
                            "xattrs or names)")
        if fresh.get(ROOT_INO) != snap.root and not bad:
            problems.append("/: the root hash differs from the signed one")
        for ino in set(stored) - set(fresh):
            problems.append(f"inode {ino}: has a recorded hash but is no longer in the tree")
        return not problems, problems, len(fresh)

    def _drop_snapshot(self, tx: Tx, snap: Snapshot, now: int) -> None:
        base = tx.tree_base(snap.tree_id)
        tx.add_tree_refs(snap.namespace, snap.tree_id, -1, now)   # a copy's (before epochs)
        tx.delete_tree(snap.tree_id)
        tx.delete_snapshot(snap.namespace, snap.id)
        self.meta.forget_tree(snap.tree)
        if base is not None:   # the history only it saw goes, with the chunks only it held
            release_base(tx, snap.namespace, base[0], now)

    def prune(self, ns: str, keep_last: int = 0, keep_daily: int = 0, keep_within_s: int = 0,
              dry_run: bool = False, branch: str = "", now: int | None = None
              ) -> tuple[list[str], list[str]]:
        """restic's `forget` policy per branch; snapshots a tag or a branch head names, and
        those an asset's lineage cites as a parent, are always kept (they are reachable)."""
        if not (keep_last or keep_daily or keep_within_s):
            raise InvalidArgument("prune needs a policy: --keep-last, --keep-daily or "
                                  "--keep-within (refusing to remove every snapshot)")
        snaps = self.list_snapshots(ns, branch)
        tx0 = self._store.single()
        pinned = {sid for _, sid, _ in tx0.list_tags(ns)}
        pinned |= {self._head(tx0, ns, b) for b in tx0.list_branches(ns)}
        pinned |= tx0.cited_snapshots(ns)
        by_branch: dict[str, list[Snapshot]] = defaultdict(list)
        for s in snaps:
            by_branch[s.branch].append(s)
        keep: set[str] = set()
        for group in by_branch.values():
            group.sort(key=lambda s: s.created_ns, reverse=True)
            keep |= {s.id for s in group[:keep_last]}
            days: list[str] = []
            for s in group:
                day = datetime.datetime.fromtimestamp(s.created_ns / 1e9, datetime.UTC).date()
                if len(days) < keep_daily and (not days or days[-1] != str(day)):
                    days.append(str(day))
                    keep.add(s.id)
            newest = group[0].created_ns
            keep |= {s.id for s in group if newest - s.created_ns <= keep_within_s * 10**9
                     and keep_within_s}
        keep |= pinned
        removed = [s.id for s in snaps if s.id not in keep]
        if not dry_run and removed:
            t = now if now is not None else now_ns()
            with self._store.write() as tx:
                # a child citing one may have been put since the policy was read: its parent
                # check share-locks the snapshot row, so after these locks the citations
                # read here are all there are until this transaction ends
                tx.lock_snapshots(ns, removed)
                cited = tx.cited_snapshots(ns)
                removed = [r for r in removed if r not in cited]
                for s in snaps:
                    if s.id in removed:
                        self._drop_snapshot(tx, s, t)
        return removed, [s.id for s in snaps if s.id not in removed]

    # --- branches ----------------------------------------------------------------------------
    def create_branch(self, ns: str, name: str, source: str = "") -> tuple[str, str, int]:
        """A new branch whose tree is `source`'s (a snapshot ref; a branch without snapshots:
        its live tree; default: main's live tree), in O(1) where it can (_new_tree)."""
        check_name("branch", name)
        self.meta.get_namespace(ns)
        now = now_ns()
        snap: Snapshot | None = None
        src_branch = ""
        if source:
            try:
                snap = self.resolve(ns, source)
            except NotFound:
                if self._store.single().get_tree(ns, source) is None:
                    raise
                src_branch = source  # a branch without snapshots: its live tree
        else:
            src_branch = "main"
            self.meta.ensure_tree(TreeRef(ns, "main"))
        with self._hashing() as (tx, passes):
            if src_branch:
                r = tx.get_tree(ns, src_branch)
                if r is None:
                    raise NotFound(f"branch {src_branch!r} does not exist")
                src_tid, head = r[0], self._head(tx, ns, src_branch)
            else:
                assert snap is not None
                # share-locked (PostgreSQL): a prune deleting it waits, or it is gone here
                if tx.snapshot(ns, snap.id) is None:
                    raise NotFound(f"snapshot {snap.id} of namespace {ns!r} does not exist")
                src_tid, head = snap.tree_id, snap.id
            if self._new_tree(tx, passes, ns, name, src_tid, bool(src_branch), now,
                              head) is None:
                raise AlreadyExists(f"branch {name!r} already exists in namespace {ns!r}")
            tx.delete_log(ns, name)
            if head:
                tx.append_log(ns, name, f"create from {source or 'main'}", head, now)
            record(tx, (name, head, now))
        return name, head, now

    def _new_tree(self, tx: Tx, passes: list[Pass], ns: str, name: str, src: int, live: bool,
                  now: int, head: str = "") -> int | None:
        """Branch `name`'s tree, equal to tree `src` (a snapshot's, or a live branch's: `live`,
        whose head snapshot is `head`); None when the name is taken. O(1) where it can: a
        pending branch (metadata/pending.py) reading the view `src` reads, flattened (a
        snapshot's or a pending branch's base); of a live tree unchanged since its head
        snapshot, that snapshot's view; of another live tree, the tree frozen at its epoch,
        its hashes stored at that epoch if it has any (hash_epoch: O(changes since they were
        last stored), as every epoch of a hashed tree must end). Else a copy (O(tree)): a
        snapshot copied before epochs."""
        base = tx.lock_tree(src) if live else tx.tree_base(src)
        if base is None and live and head and tx.has_hashes(src):
            row = tx.snapshot(ns, head)
            at = tx.tree_base(int(row[1])) if row else None
            if at is not None and at[0] == src and not tx.changed_after(*at):
                base = at                       # the live tree is its head snapshot's
        if base is None and live:
            # frozen at its epoch as freeze does, without a snapshot row; a tree with hashes
            # gets them at that epoch (O(changes since they were last stored): hash_epoch), as
            # every epoch of it must end
            base = (src, tx.bump_epoch(src))
            if tx.has_hashes(src):
                self._hash_epoch(tx, passes, ns, src, base[1], head)
        if base is not None:
            return tx.insert_view(ns, name, base, src, now)
        dst = tx.insert_tree(ns, name, now)
        if dst is not None:
            tx.copy_tree_rows(src, dst)
            tx.add_tree_refs(ns, dst, 1, now)
        return dst

    def list_branches(self, ns: str) -> list[tuple[str, str, int]]:
        self.meta.get_namespace(ns)
        tx = self._store.single()
        out = []
        for b in tx.list_branches(ns):
            if b.startswith(FROZEN_PREFIX):
                continue
            log = tx.branch_log(ns, b)
            out.append((b, log[-1][2] if log else "", log[0][3] if log else 0))
        return out

    def delete_branch(self, ns: str, name: str) -> None:
        if name == "main":
            raise PermissionDenied("branch main cannot be deleted")
        if name.startswith(FROZEN_PREFIX):
            raise InvalidArgument(f"{name!r} is a snapshot's tree, not a branch")
        now = now_ns()
        with self._store.write() as tx:
            r = tx.get_tree(ns, name)
            if r is None:
                raise NotFound(f"branch {name!r} does not exist in namespace {ns!r}")
            base = tx.lock_tree(r[0])
            if base is not None:    # pending: no rows, no references, no views of its own
                tx.delete_tree(r[0])
                release_base(tx, ns, base[0], now)
            elif tx.views_of(r[0]):   # its views read its rows: kept, nameless, read-only
                tx.rename_tree(r[0], kept_name(r[0]))
            else:
                tx.add_tree_refs(ns, r[0], -1, now)
                tx.gc_history(ns, r[0], now, keep_changes=False)   # no view: every row goes
                tx.delete_tree(r[0])
            tx.delete_log(ns, name)
            record(tx, None)
        self.meta.forget_tree(TreeRef(ns, name))

    def reset_branch(self, ns: str, name: str, ref: str) -> tuple[str, str, int]:
        """Replace the branch's rows by a copy of the snapshot's, in one transaction, keeping
        its tree id (so every server's cache of it, "rows of its own", stays right); a
        pending branch is pointed at the snapshot's view instead (O(1); no server caches
        that). Recorded in its log."""
        snap = self.resolve(ns, ref)
        now = now_ns()
        with self._store.write() as tx:
            r = tx.get_tree(ns, name)
            if r is None or name.startswith(FROZEN_PREFIX):
                raise NotFound(f"branch {name!r} does not exist in namespace {ns!r}")
            if tx.snapshot(ns, snap.id) is None:   # pruned since: its view may be gone
                raise NotFound(f"snapshot {snap.id} of namespace {ns!r} does not exist")
            old, new = tx.lock_tree(r[0]), tx.tree_base(snap.tree_id)
            if old is not None and new is not None:
                tx.set_base(r[0], new, snap.tree_id)
            else:
                tx.add_tree_refs(ns, r[0], -1, now)   # a chunk on both sides ends as it was
                tx.delete_tree_rows(r[0])
                tx.copy_tree_rows(snap.tree_id, r[0])
                tx.add_tree_refs(ns, r[0], 1, now)
                if old is not None:   # a pending branch settled by the copy
                    tx.set_base(r[0], None)
            if old is not None:
                release_base(tx, ns, old[0], now)
            tx.append_log(ns, name, f"reset to {ref}", snap.id, now)
            record(tx, (name, snap.id, now))
        return name, snap.id, now

    def branch_log(self, ns: str, name: str) -> list[tuple[int, str, str, int]]:
        tx = self._store.single()
        if tx.get_tree(ns, name) is None:
            raise NotFound(f"branch {name!r} does not exist in namespace {ns!r}")
        return tx.branch_log(ns, name)

    # --- tags --------------------------------------------------------------------------------
    def create_tag(self, ns: str, name: str, ref: str) -> tuple[str, str, int]:
        check_name("tag", name)
        snap = self.resolve(ns, ref)
        now = now_ns()
        with self._store.write() as tx:
            if not tx.insert_tag(ns, name, snap.id, now):
                have = tx.tag(ns, name)
                raise AlreadyExists(f"tag {name!r} already names snapshot {have}; tags never "
                                    "move (delete it first, which needs the delete verb)")
            record(tx, (name, snap.id, now))
        return name, snap.id, now

    def list_tags(self, ns: str) -> list[tuple[str, str, int]]:
        self.meta.get_namespace(ns)
        return self._store.single().list_tags(ns)

    def delete_tag(self, ns: str, name: str) -> None:
        with self._store.write() as tx:
            if not tx.delete_tag(ns, name):
                raise NotFound(f"tag {name!r} does not exist in namespace {ns!r}")
            record(tx, None)

    # --- reading a snapshot's tree -----------------------------------------------------------
    def list_tree(self, ns: str, ref: str, ino: int
                  ) -> tuple[Attr, bytes, dict[bytes, bytes], list[TreeEntry]]:
        snap = self.resolve(ns, ref)
        tid = snap.tree_id
        attr = self.meta.getattr(snap.tree, ino)
        with self._store.read() as tx:
            own = tx.node_hash(tid, ino)
            rows = tx.dir_rows(tid, ino) if stat.S_ISDIR(attr.mode) else []
            xrows = tx.dir_xattrs(tid, ino)
            srows = tx.dir_slots(tid, ino) if rows else []
        xa: dict[int, dict[bytes, bytes]] = defaultdict(dict)
        for x_ino, name, value in xrows:
            xa[int(x_ino)][bytes(name)] = bytes(value)
        maps: dict[int, list[tuple[int, bytes, int]]] = defaultdict(list)
        for s_ino, idx, cid, length in srows:
            maps[int(s_ino)].append((int(idx), bytes(cid), int(length)))
        entries = []
        for name, e_attr, link, h in rows:   # attrs checked as readdir's (dir_rows)
            regular = stat.S_ISREG(e_attr.mode)
            slots = maps.get(e_attr.ino, []) if regular else []
            content = merkle.content_hash(e_attr.size, slots) if regular else b""
            entries.append(TreeEntry(name, e_attr, h or b"", link, xa.get(e_attr.ino, {}),
                                     content, slots))
        return attr, own or b"", xa.get(ino, {}), entries

    # --- diff and merge ----------------------------------------------------------------------
    def _dir(self, tx: Tx, tid: int, ino: int) -> dict[bytes, tuple[int, int, bytes]]:
        return {name: (a.ino, a.mode, h or b"") for name, a, _, h in tx.dir_rows(tid, ino)}

    def _walk_diff(self, a: Snapshot, b: Snapshot, deadline: Deadline
                   ) -> dict[str, tuple[str, int, int]]:
        """path -> (kind, ino in b or 0, mode in b or in a): the changes from a to b, skipping
        every pair of equal subtrees (O(changed))."""
        out: dict[str, tuple[str, int, int]] = {}
        visited = 0
        with self._store.read() as tx:
            if a.root == b.root:
                return out
            todo = [("", ROOT_INO, ROOT_INO)]
            while todo:
                deadline.check("comparing snapshots")
                path, ia, ib = todo.pop()
                da, db = self._dir(tx, a.tree_id, ia), self._dir(tx, b.tree_id, ib)
                visited += 2
                for name in sorted(da.keys() | db.keys()):
                    p = f"{path}/{name.decode(errors='replace')}"
                    ea, eb = da.get(name), db.get(name)
                    if eb is None:
                        assert ea is not None
                        out[p] = ("removed", 0, ea[1])
                    elif ea is None:
                        out[p] = ("added", eb[0], eb[1])
                    elif ea[2] != eb[2]:
                        if stat.S_ISDIR(ea[1]) and stat.S_ISDIR(eb[1]):
                            todo.append((p, ea[0], eb[0]))
                            if ea[1] != eb[1]:
                                out[p + "/"] = ("changed", eb[0], eb[1])
                        else:
                            out[p] = ("changed", eb[0], eb[1])
        self._visited = visited
        return out

    def diff(self, ns: str, a: str, b: str, deadline: Deadline = NEVER) -> Diff:
        sa, sb = self.resolve(ns, a), self.resolve(ns, b)
        self._visited = 0
        changes = self._walk_diff(sa, sb, deadline)
        d = Diff(visited=self._visited)
        for p, (kind, _, mode) in sorted(changes.items()):
            shown = p + "/" if stat.S_ISDIR(mode) and not p.endswith("/") else p
            getattr(d, kind).append(shown)
        return d

    def _ancestors(self, ns: str, sid: str) -> list[str]:
        """Breadth-first, `sid` first (pruned ancestors end the walk there)."""
        seen, order, todo = {sid}, [sid], [sid]
        tx = self._store.single()
        while todo:
            nxt = []
            for s in todo:
                row = tx.snapshot(ns, s)
                for p in (_snap(ns, row).parents if row else ()):
                    if p not in seen:
                        seen.add(p)
                        order.append(p)
                        nxt.append(p)
            todo = nxt
        return order

    def merge(self, ns: str, source: str, into: str, message: str = "", dry_run: bool = False,
              deadline: Deadline = NEVER) -> MergeResult:
        """Three-way merge at path level: the changes from the common ancestor to `source` are
        written into branch `into` unless `into` changed one of those paths (or a path above or
        below one) too; then nothing is written and the conflicts are listed. A branch named as
        `source` and `into` itself are snapshotted first, so their latest writes count."""
        if self._store.single().get_tree(ns, into) is None or into.startswith(FROZEN_PREFIX):
            raise NotFound(f"branch {into!r} does not exist in namespace {ns!r}")
        if self._store.single().get_tree(ns, source) is not None:
            src = self.create_snapshot(ns, source, f"before merge into {into}", deadline=deadline)
        else:
            src = self.resolve(ns, source)
        dst = self.create_snapshot(ns, into, f"before merge of {source}", deadline=deadline)
        in_dst = set(self._ancestors(ns, dst.id))
        base_id = next((s for s in self._ancestors(ns, src.id) if s in in_dst), "")
        if not base_id:
            raise InvalidArgument(f"{source} and {into} have no common ancestor snapshot")
        base = self.get(ns, base_id)
        theirs = self._walk_diff(base, src, deadline)
        ours = self._walk_diff(base, dst, deadline)

        def related(p: str, q: str) -> bool:
            p, q = p.rstrip("/"), q.rstrip("/")
            return p == q or p.startswith(q + "/") or q.startswith(p + "/")

        conflicts = sorted(p for p in theirs if any(related(p, q) for q in ours))
        if conflicts or dry_run:
            return MergeResult(not conflicts and not dry_run, conflicts, "", base_id,
                               sorted(theirs) if not conflicts else [])
        applied = self._apply(ns, src, TreeRef(ns, into), theirs, deadline)
        snap = self.create_snapshot(ns, into, message or f"merge {source} into {into}",
                                    extra_parent=src.id, deadline=deadline)
        return MergeResult(True, [], snap.id, base_id, applied)

    # --- applying a merge through the POSIX rules (refcounts, nlink and names stay right) ----
    def _lookup_path(self, tree: TreeRef, path: str) -> int:
        ino = ROOT_INO
        for part in (p for p in path.split("/") if p):
            ino = self.meta.lookup(tree, ino, part.encode()).ino
        return ino

    def _remove(self, tree: TreeRef, parent: int, name: bytes, deadline: Deadline) -> None:
        a = self.meta.lookup(tree, parent, name)
        if stat.S_ISDIR(a.mode):
            for e in self._entries(tree, a.ino):
                deadline.check("merging")
                self._remove(tree, a.ino, e, deadline)
            self.meta.rmdir(tree, parent, name, forget=True)
        else:
            self.meta.unlink(tree, parent, name, forget=True)

    def _entries(self, tree: TreeRef, ino: int) -> list[bytes]:
        names, cookie = [], 0
        while True:
            ents, eof = self.meta.readdir(tree, ino, cookie, 1000)
            names += [e.name for e in ents]
            if eof or not ents:
                return names
            cookie = ents[-1].cookie

    def _copy(self, src: TreeRef, s_ino: int, dst: TreeRef, parent: int, name: bytes,
              deadline: Deadline) -> None:
        deadline.check("merging")
        a = self.meta.getattr(src, s_ino)
        if stat.S_ISDIR(a.mode):
            d = self.meta.mkdir(dst, parent, name, a.mode, a.uid, a.gid)
            for child in self._entries(src, s_ino):
                c = self.meta.lookup(src, s_ino, child)
                self._copy(src, c.ino, dst, d.ino, child, deadline)
            new = d.ino
        elif stat.S_ISLNK(a.mode):
            new = self.meta.symlink(dst, parent, name, self.meta.readlink(src, s_ino),
                                    a.uid, a.gid).ino
        else:
            f = self.meta.create(dst, parent, name, a.mode, a.uid, a.gid, a.rdev)
            new = f.ino
            if stat.S_ISREG(a.mode):
                _, refs = self.meta.get_chunk_map(src, s_ino)
                self.meta.commit_file(dst, new, [ChunkRef(r.index, r.chunk_id, r.length)
                                                 for r in refs], a.size, mtime_ns=a.mtime_ns)
        for xname in self.meta.listxattr(src, s_ino):
            self.meta.setxattr(dst, new, xname, self.meta.getxattr(src, s_ino, xname))

    def _apply(self, ns: str, src: Snapshot, into: TreeRef,
               changes: dict[str, tuple[str, int, int]], deadline: Deadline) -> list[str]:
        applied = []
        # removals deepest first; additions and changes parents first
        for p in sorted((p for p, c in changes.items() if c[0] != "added"),
                        key=lambda p: -p.count("/")):
            kind, s_ino, mode = changes[p]
            if p.endswith("/"):  # a directory's own attributes changed
                continue
            head, _, name = p.rpartition("/")
            parent = self._lookup_path(into, head)
            try:
                self._remove(into, parent, name.encode(), deadline)
            except NotFound:
                pass
            if kind == "removed":
                applied.append(p)
        for p in sorted((p for p, c in changes.items() if c[0] != "removed"),
                        key=lambda p: p.count("/")):
            kind, s_ino, mode = changes[p]
            head, _, name = p.rstrip("/").rpartition("/")
            parent = self._lookup_path(into, head)
            if p.endswith("/"):
                a = self.meta.getattr(src.tree, s_ino)
                ino = self._lookup_path(into, p)
                self.meta.setattr(into, ino, SET_MODE | SET_UID | SET_GID, mode=a.mode, uid=a.uid, gid=a.gid)
            else:
                self._copy(src.tree, s_ino, into, parent, name.encode(), deadline)
            applied.append(p)
        return applied
