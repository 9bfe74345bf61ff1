"""The POSIX rules of the metadata engine, over any `store.Store`.

Interface:
    PosixMeta(store)    implements `MetadataEngine` (metadata/base.py): `records.Records`
                        (namespaces, chunk records, assets) plus trees, names, inodes, xattrs
                        and chunk maps; an engine is `PosixMeta` over its own Store

Rules kept here (the FUSE layer relies on them): names are checked before any row is touched;
directory nlink = 2 + subdirectories; unlink/rmdir/rename-replace leave the inode with nlink 0
until `forget` (or drop it in the same transaction when the caller asks: it holds no handle);
readdir excludes "." and ".." and pages by dentry id; rename covers replace, RENAME_NOREPLACE,
RENAME_EXCHANGE, type mismatches, non-empty targets and moving a directory into its own
subtree; chunk refcounts follow every change of a chunk map (commit, truncate, drop), and a
truncate trims the map without rewriting the chunk that holds the new end.

mkdir/create/symlink/link/unlink/rmdir/rename/setxattr/removexattr record their result in their
own transaction with `request_log.record(tx, result)`: exactly-once calls, a no-op unless the
server runs the call under a request id.

A tree whose branch starts with FROZEN_PREFIX ("@snap:") is a snapshot's (aifs_server.versions):
every change to it is PermissionDenied. A pending branch (metadata/pending.py: created from a
snapshot, no rows yet) gets its rows before its first change (`_wtree`). `store` exposes the
Store to that module and `forget_tree` drops a deleted tree from the cache of tree ids;
`last_change` is when the last change was asked for (server/hash_keeper.py reads it).
"""

from __future__ import annotations

import errno
import stat
from collections import Counter
from dataclasses import dataclass
from time import monotonic
from typing import Any

from aifs_core.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    MissingChunk,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    PermissionDenied,
)
from aifs_core.types import (
    NAME_MAX,
    RENAME_EXCHANGE,
    RENAME_NOREPLACE,
    ROOT_INO,
    SET_ATIME,
    SET_CTIME,
    SET_GID,
    SET_MODE,
    SET_MTIME,
    SET_SIZE,
    SET_UID,
    XATTR_CREATE,
    XATTR_REPLACE,
    Attr,
    ChunkRef,
    DirEntry,
    TreeRef,
    TreeStats,
)
from aifs_server import delegated_inos
from aifs_server.metadata import pending
from aifs_server.metadata.records import Records, now_ns
from aifs_server.metadata.store import Store, Tx
from aifs_server.request_log import record

FROZEN_PREFIX = "@snap:"
_TIMES = SET_ATIME | SET_MTIME | SET_CTIME   # a setattr of the three times only

PATH_MAX = 4096           # longest symlink target (Linux PATH_MAX)
# path_of gives up past this many levels: their names and slashes alone would pass PATH_MAX
PATH_DEPTH_MAX = PATH_MAX // 2
XATTR_SIZE_MAX = 65536    # largest xattr value (Linux XATTR_SIZE_MAX)
READDIR_MAX = 10000       # cap on one readdir page


def _check_name(name: bytes) -> None:
    if not isinstance(name, bytes):
        raise InvalidArgument(f"a name must be bytes, got {type(name).__name__}")
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name is {len(name)} bytes; the limit is {NAME_MAX} bytes")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(
            f"invalid name {name!r}: names must be non-empty, not '.' or '..', "
            "and contain neither '/' nor NUL")


def _check_xattr_name(name: bytes) -> None:
    if not name or b"\0" in name:
        raise InvalidArgument(f"invalid xattr name {name!r}: non-empty, no NUL")
    if len(name) > NAME_MAX:
        raise NameTooLong(f"xattr name is {len(name)} bytes; the limit is {NAME_MAX}")


def _text(name: bytes) -> str:
    return name.decode(errors="replace")


@dataclass(frozen=True)
class _Tree:
    tree_id: int
    namespace: str
    branch: str
    chunk_size: int

    def where(self) -> str:
        return f"{self.namespace}/{self.branch}"


class PosixMeta(Records):
    """`MetadataEngine` over a `Store` (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        # Trees are deleted only by aifs_server.versions, which calls forget_tree.
        self._trees: dict[TreeRef, _Tree] = {}
        # time.monotonic() of the last change asked for (_wtree): hash_keeper waits for a
        # pause in the writes before it hashes them, where it can
        self.last_change = 0.0

    # --- trees -------------------------------------------------------------------------------
    def _tree(self, tree: TreeRef) -> _Tree:
        t = self._trees.get(tree)
        if t is not None:
            return t
        r = self._store.single().get_tree(tree.namespace, tree.branch)
        if r is None:
            raise NotFound(f"branch {tree.branch!r} of namespace {tree.namespace!r} does not exist "
                           "(ensure_tree creates it)")
        t = _Tree(r[0], tree.namespace, tree.branch, r[1])
        self._trees[tree] = t
        return t

    def _wtree(self, tree: TreeRef, *, own_rows: bool = True) -> _Tree:
        """The tree for a change: a snapshot's frozen tree (branch "@snap:<id>") refuses it; a
        pending branch (pending.py) first gets rows of its own, in a transaction of its own
        committed before the change's (so no server ever writes under a tree others still
        read as a view). `own_rows=False`: the change writes none of the tree's rows."""
        if tree.branch.startswith(FROZEN_PREFIX):
            raise PermissionDenied(f"{tree.namespace}/{tree.branch} is a snapshot: read-only")
        self.last_change = monotonic()
        t = self._tree(tree)
        # a dict lookup for a tree with rows (cached by the store for good); a pending
        # branch's row is read again until its first change
        if own_rows and self._store.single().tree_base(t.tree_id) is not None:
            with self._store.write() as tx:
                pending.materialize(tx, t.namespace, t.tree_id, now_ns())
        return t

    def forget_tree(self, tree: TreeRef) -> None:
        """Drop a cached tree id (aifs_server.versions deletes trees)."""
        self._trees.pop(tree, None)

    @property
    def store(self) -> Store:
        """The store under the rules (aifs_server.versions runs its own rows over it)."""
        return self._store

    def ensure_tree(self, tree: TreeRef, uid: int = 0, gid: int = 0) -> Attr:
        if not tree.branch or "\0" in tree.branch:
            raise InvalidArgument(f"invalid branch name {tree.branch!r}")
        self._need_namespace(tree.namespace)
        now = now_ns()
        with self._store.write() as tx:
            tid = tx.insert_tree(tree.namespace, tree.branch, now)
            if tid is not None:
                tx.insert_inode(tid, Attr(ROOT_INO, stat.S_IFDIR | 0o755, 2, uid, gid, 0, 0,
                                          now, now, now), ROOT_INO, None)
        return self.getattr(tree, ROOT_INO)

    def list_trees(self, namespace: str) -> list[TreeRef]:
        self._need_namespace(namespace)
        return [TreeRef(namespace, b) for b in self._store.single().list_branches(namespace)]

    def tree_stats(self, tree: TreeRef) -> TreeStats:
        t = self._tree(tree)
        files, size = self._store.single().tree_totals(t.tree_id)
        return TreeStats(files=files, logical_bytes=size)

    # --- rows the rules check ----------------------------------------------------------------
    @staticmethod
    def _row(tx: Tx, t: _Tree, ino: int) -> Attr:
        a = tx.inode(t.tree_id, ino)
        if a is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        return a

    def _dir(self, tx: Tx, t: _Tree, ino: int, *, live: bool = True) -> Attr:
        """The attrs of directory `ino`; `live` refuses a removed (nlink 0) directory."""
        a = self._row(tx, t, ino)
        if not stat.S_ISDIR(a.mode):
            raise NotADirectory(f"inode {ino} in {t.where()} is not a directory")
        if live and a.nlink == 0:
            raise NotFound(f"directory inode {ino} in {t.where()} has been removed")
        return a

    @staticmethod
    def _touch_dir(tx: Tx, t: _Tree, ino: int, now: int, nlink_delta: int = 0) -> None:
        tx.update_inode(t.tree_id, ino, {"mtime_ns": now, "ctime_ns": now},
                        {"nlink": nlink_delta})

    def _missing(self, tx: Tx, t: _Tree, parent: int, name: bytes) -> NotFound:
        self._dir(tx, t, parent, live=False)  # a bad parent is the better error
        return NotFound(f"no entry {_text(name)!r} in directory {parent} of {t.where()}")

    # --- attributes --------------------------------------------------------------------------
    def lookup(self, tree: TreeRef, parent: int, name: bytes) -> Attr:
        _check_name(name)
        t = self._tree(tree)
        tx = self._store.single()
        a = tx.lookup(t.tree_id, parent, name)
        if a is None:
            raise self._missing(tx, t, parent, name)
        return a

    def listing_cookie(self, tree: TreeRef, parent: int, name: bytes) -> int:
        """readdir's cookie of `name` in `parent` (0: absent, or not a plain tree's)."""
        t = self._tree(tree)
        return self._store.single().dentry_id(t.tree_id, parent, name)

    def getattr(self, tree: TreeRef, ino: int) -> Attr:
        t = self._tree(tree)
        return self._row(self._store.single(), t, ino)

    def path_of(self, tree: TreeRef, ino: int) -> bytes | None:
        """One path of `ino` from the root (b"/a/b"; a file with several names: its oldest),
        or None: unnamed (unlinked, or a name above it went meanwhile: no transaction
        spans the walk). Index lookups, one per level, at most PATH_DEPTH_MAX levels."""
        t = self._tree(tree)
        tx = self._store.single()
        names: list[bytes] = []
        while ino != ROOT_INO:
            if len(names) >= PATH_DEPTH_MAX:
                return None
            r = tx.name_of(t.tree_id, ino)
            if r is None:
                return None
            ino, name = r
            names.append(name)
        return b"/" + b"/".join(reversed(names))

    def setattr(self, tree: TreeRef, ino: int, fields: int, *, mode: int = 0, uid: int = 0,
                gid: int = 0, size: int = 0, atime_ns: int = 0, mtime_ns: int = 0,
                ctime_ns: int = 0) -> Attr:
        t = self._wtree(tree)
        if fields & SET_SIZE and size < 0:
            raise InvalidArgument(f"size must not be negative, got {size}")
        now = now_ns()
        with self._store.write() as tx:
            return self._setattr_in(tx, t, ino, now=now, fields=fields, mode=mode, uid=uid,
                                    gid=gid, size=size, atime_ns=atime_ns, mtime_ns=mtime_ns,
                                    ctime_ns=ctime_ns)

    def _setattr_in(self, tx: Tx, t: _Tree, ino: int, *, now: int, fields: int, mode: int = 0,
                    uid: int = 0, gid: int = 0, size: int = 0, atime_ns: int = 0,
                    mtime_ns: int = 0, ctime_ns: int = 0) -> Attr:
        """setattr's work inside the caller's write transaction (also a create's folded
        attributes and a batch's items: rpc_batch.py); a value `fields` does not name is
        not read."""
        r = self._row(tx, t, ino)
        new_mode, new_uid, new_gid, new_size = r.mode, r.uid, r.gid, r.size
        atime, mtime = r.atime_ns, r.mtime_ns
        if fields & SET_MODE:
            new_mode = stat.S_IFMT(r.mode) | (mode & 0o7777)
        if fields & SET_UID:
            new_uid = uid
        if fields & SET_GID:
            new_gid = gid
        if fields & SET_ATIME:
            atime = atime_ns
        if fields & SET_MTIME:
            mtime = mtime_ns
        gen_bump, data_delta = 0, 0
        if fields & SET_SIZE:
            if stat.S_ISDIR(r.mode):
                raise IsADirectory(f"cannot truncate inode {ino}: it is a directory")
            if not stat.S_ISREG(r.mode):
                raise InvalidArgument(f"cannot truncate inode {ino}: not a regular file")
            if size < r.size:
                deltas: Counter[bytes] = Counter()
                data_delta = self._trim(tx, t, ino, size, deltas)
                tx.adjust_refs(t.namespace, deltas, now)
            if not fields & SET_MTIME:
                # POSIX: truncate/O_TRUNC change mtime even when the size stays the same
                mtime = now
            new_size, gen_bump = size, 1
        cols: dict[str, object] = {
            "mode": new_mode, "uid": new_uid, "gid": new_gid, "size": new_size,
            "atime_ns": atime, "mtime_ns": mtime,
            "ctime_ns": ctime_ns if fields & SET_CTIME else now}
        if gen_bump:
            cols["asset_id"] = ""  # new content: the cached asset no longer describes it
        a = tx.update_inode(t.tree_id, ino, cols,
                            {"data_bytes": data_delta, "generation": gen_bump})
        assert a is not None  # the row was read in this transaction
        return a

    # --- directories -------------------------------------------------------------------------
    def readdir(self, tree: TreeRef, ino: int, cookie: int, limit: int
                ) -> tuple[list[DirEntry], bool]:
        t = self._tree(tree)
        limit = READDIR_MAX if limit <= 0 else min(limit, READDIR_MAX)
        with self._store.read() as tx:
            self._dir(tx, t, ino, live=False)
            ents = tx.list_dir(t.tree_id, ino, cookie, limit + 1)
        return ents[:limit], len(ents) <= limit

    def readdir_maps(self, tree: TreeRef, ino: int, cookie: int, limit: int
                     ) -> tuple[list[DirEntry], bool, dict[int, list[ChunkRef]]]:
        """readdir, and the whole chunk map of each regular file listed, read in the same
        transaction: each map goes with the attributes listed (ReadDir with_maps), in one
        query for the page instead of a transaction and two queries per file."""
        t = self._tree(tree)
        limit = READDIR_MAX if limit <= 0 else min(limit, READDIR_MAX)
        with self._store.read() as tx:
            self._dir(tx, t, ino, live=False)
            ents = tx.list_dir(t.tree_id, ino, cookie, limit + 1)
            page = ents[:limit]
            maps = tx.maps_of(t.tree_id, [e.attr.ino for e in page if stat.S_ISREG(e.attr.mode)])
        return page, len(ents) <= limit, maps

    def _new_inode(self, tx: Tx, t: _Tree, parent: int, name: bytes, mode: int, nlink: int,
                   uid: int, gid: int, rdev: int, now: int, symlink: bytes | None = None,
                   ino: int = 0, log: bool = True,
                   times: tuple[int, int, int] | None = None) -> Attr:
        """Allocate an inode, name it `name` in `parent` and touch the parent (one transaction).
        A setgid parent gives the new inode its gid, and a new subdirectory its S_ISGID bit
        (BSD group semantics, as Linux's inode_init_owner): decided here, where the parent's
        row is read anyway, so that it is atomic and costs the client no extra call."""
        pr = self._dir(tx, t, parent)
        if pr.mode & stat.S_ISGID:
            gid = pr.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        ino = ino or tx.take_ino(t.tree_id)     # given: delegated (take_inos) to the caller
        is_dir = stat.S_ISDIR(mode)
        size = len(symlink) if symlink is not None else 0
        if not tx.insert_dentry(t.tree_id, parent, name, ino):
            raise AlreadyExists(f"{_text(name)!r} already exists in directory {parent} of "
                                f"{t.where()}")
        a = Attr(ino, mode, nlink, uid, gid, rdev, size, *(times or (now, now, now)), 0, 0)
        tx.insert_inode(t.tree_id, a, parent if is_dir else 0, symlink)
        self._touch_dir(tx, t, parent, now, 1 if is_dir else 0)
        if log:     # else the caller records what it does next in this transaction
            record(tx, a)   # exactly-once calls (request_log.py): no-op outside one
        return a

    def mkdir(self, tree: TreeRef, parent: int, name: bytes, mode: int, uid: int, gid: int
              ) -> Attr:
        _check_name(name)
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            return self._new_inode(tx, t, parent, name, stat.S_IFDIR | (mode & 0o7777), 2, uid,
                                   gid, 0, now)

    def create(self, tree: TreeRef, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0) -> Attr:
        _check_name(name)
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"create makes regular files, FIFOs, sockets and device nodes; "
                                  f"mode {mode:#o} is not one (use mkdir or symlink)")
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            return self._new_inode(tx, t, parent, name, fmt | (mode & 0o7777), 1, uid, gid,
                                   rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0, now)

    def take_inos(self, tree: TreeRef, n: int) -> int:
        """Allocate n consecutive inode numbers of the tree (never reused); returns the first.
        A mount creates files at them later (create_at: docs/LEASES.md, delegated inodes).
        A pending branch stays pending (its first create copies its rows; numbers never go
        down then)."""
        t = self._wtree(tree, own_rows=False)
        with self._store.write() as tx:
            row = tx.execute("UPDATE trees SET next_ino = next_ino + ? WHERE tree_id = ? "
                             "RETURNING next_ino - ?", (n, t.tree_id, n)).fetchone()
            delegated_inos.give(tx, t.tree_id, int(row[0]), n)
        return int(row[0])

    def create_at(self, tree: TreeRef, parent: int, name: bytes, ino: int, mode: int,
                  uid: int, gid: int, attrs: dict[str, int] | None = None,
                  commit: dict[str, Any] | None = None, durable: bool = False,
                  before: list[tuple[Any, ...]] | None = None
                  ) -> list[tuple[int, Attr | None]]:
        """create() of a regular file at an inode number take_inos gave out and no create used
        yet (InvalidArgument otherwise), then (same transaction: one commit, one fsync) its
        folded attribute changes (`attrs`: setattr's keyword arguments, `fields` among them)
        and its first commit (`commit`: commit_file's keyword arguments but `durable`).
        `before`: unlink_many's items of `parent`, applied first. Returns (and records in the
        request log) [(0, the file's attributes after all of it), *the results of `before`]."""
        _check_name(name)
        for item in before or ():
            _check_name(item[0])
        t = self._wtree(tree)
        slots = self._slots(t, commit["changed"], commit["size"]) if commit else None
        now = now_ns()
        with self._store.write(durable) as tx:
            done = self._items_in(tx, t, parent, before, now, False) if before else []
            if not delegated_inos.use(tx, t.tree_id, ino):
                raise InvalidArgument(f"inode {ino} was not given out to a client in "
                                      f"{t.where()}, or is used already")
            times = None
            if attrs and attrs["fields"] == _TIMES:
                # only the times the client answered at its create (DirOps.add_unborn): the
                # new row takes them, no update of it
                times = (attrs["atime_ns"], attrs["mtime_ns"], attrs["ctime_ns"])
                attrs = None
            a = self._new_inode(tx, t, parent, name, stat.S_IFREG | (mode & 0o7777), 1, uid,
                                gid, 0, now, ino=ino, log=False, times=times)
            if attrs:
                a = self._setattr_in(tx, t, ino, now=now, **attrs)
            if slots is not None and commit is not None:
                a = self._commit_in(tx, t, ino, slots, commit["size"],
                                    commit.get("truncated", False), commit.get("mtime_ns", 0),
                                    commit.get("asset_id", ""), now)
            out: list[tuple[int, Attr | None]] = [(0, a), *done]
            record(tx, out)
        return out

    def symlink(self, tree: TreeRef, parent: int, name: bytes, target: bytes, uid: int,
                gid: int) -> Attr:
        _check_name(name)
        if not target or b"\0" in target:
            raise InvalidArgument("a symlink target must be non-empty and contain no NUL")
        if len(target) > PATH_MAX:
            raise NameTooLong(f"symlink target is {len(target)} bytes; the limit is {PATH_MAX}")
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            return self._new_inode(tx, t, parent, name, stat.S_IFLNK | 0o777, 1, uid, gid, 0, now,
                                   symlink=target)

    def readlink(self, tree: TreeRef, ino: int) -> bytes:
        t = self._tree(tree)
        r = self._store.single().symlink_of(t.tree_id, ino)
        if r is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        if not stat.S_ISLNK(r[0]) or r[1] is None:
            raise InvalidArgument(f"inode {ino} in {t.where()} is not a symbolic link")
        return r[1]

    def link(self, tree: TreeRef, ino: int, new_parent: int, new_name: bytes) -> Attr:
        _check_name(new_name)
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            r = self._row(tx, t, ino)
            if stat.S_ISDIR(r.mode):
                raise PermissionDenied(f"inode {ino} is a directory; directories cannot have "
                                       "hard links")
            if r.nlink == 0:
                raise NotFound(f"inode {ino} in {t.where()} has been unlinked; it cannot get a "
                               "new name")
            self._dir(tx, t, new_parent)
            if not tx.insert_dentry(t.tree_id, new_parent, new_name, ino):
                raise AlreadyExists(f"{_text(new_name)!r} already exists in directory "
                                    f"{new_parent} of {t.where()}")
            a = tx.update_inode(t.tree_id, ino, {"ctime_ns": now}, {"nlink": 1})
            self._touch_dir(tx, t, new_parent, now)
            record(tx, a)
        assert a is not None  # the row was read in this transaction
        return a

    def unlink(self, tree: TreeRef, parent: int, name: bytes, forget: bool = False) -> Attr:
        """Remove a name; returns the inode's attrs after it. forget: if that was its last
        link, drop the inode in the same transaction (as `forget` would; the caller holds no
        handle of it)."""
        _check_name(name)
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            e = tx.entry(t.tree_id, parent, name)
            if e is None:
                raise self._missing(tx, t, parent, name)
            if stat.S_ISDIR(e[2]):
                raise IsADirectory(f"{_text(name)!r} is a directory; use rmdir")
            a = self._unlink_entry(tx, t, e[0], e[1], now, forget)
            self._touch_dir(tx, t, parent, now)
            record(tx, a)
        return a

    def _unlink_entry(self, tx: Tx, t: _Tree, dentry_id: int, ino: int, now: int,
                      forget: bool) -> Attr:
        """unlink's step, also each item of unlink_many's: delete the dentry and one link of
        its (non-directory) inode; forget: drop an inode left with none. Its attrs after."""
        tx.delete_dentry(dentry_id)
        a = tx.update_inode(t.tree_id, ino, {"ctime_ns": now}, {"nlink": -1})
        assert a is not None  # the dentry names it
        if forget and a.nlink == 0:
            self._drop_inode(tx, t, ino, now)
        return a

    def unlink_many(self, tree: TreeRef, parent: int, items: list[tuple[Any, ...]],
                    forget: bool = False) -> list[tuple[int, Attr | None]]:
        """Several unlinks in `parent`, one transaction (a mount's batch: rpc_batch.py). Each
        item is (name, the inode the caller saw under it); one result per item: (0, the
        inode's attrs after it), or (errno, None) for an item left alone: ENOENT (no such
        name), ESTALE (the name is another inode's now), EISDIR. forget: as unlink's.
        An item (name, inode, attrs) instead sets that inode's attributes (`attrs`: setattr's
        keyword arguments, `fields` among them), under the same name check, in order."""
        for item in items:
            _check_name(item[0])
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            self._dir(tx, t, parent)
            out = self._items_in(tx, t, parent, items, now, forget)
            record(tx, out)
        return out

    def _items_in(self, tx: Tx, t: _Tree, parent: int, items: list[tuple[Any, ...]], now: int,
                  forget: bool) -> list[tuple[int, Attr | None]]:
        """unlink_many's work inside the caller's write transaction (also the attribute
        changes a CreateFile carries); touches `parent` when an unlink applied."""
        out: list[tuple[int, Attr | None]] = []
        unlinked = False
        for item in items:
            name, want = item[0], item[1]
            e = tx.entry(t.tree_id, parent, name)
            if e is None:
                out.append((errno.ENOENT, None))
                continue
            if want and e[1] != want:
                out.append((errno.ESTALE, None))
                continue
            if len(item) > 2:
                out.append((0, self._setattr_in(tx, t, e[1], now=now, **item[2])))
                continue
            if stat.S_ISDIR(e[2]):
                out.append((errno.EISDIR, None))
                continue
            out.append((0, self._unlink_entry(tx, t, e[0], e[1], now, forget)))
            unlinked = True
        if unlinked:
            self._touch_dir(tx, t, parent, now)
        return out

    def rmdir(self, tree: TreeRef, parent: int, name: bytes, forget: bool = False) -> Attr:
        """Remove an empty directory; returns its attrs after it (nlink 0). forget: drop it in
        the same transaction (the caller holds no handle of it)."""
        _check_name(name)
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            e = tx.entry(t.tree_id, parent, name)
            if e is None:
                raise self._missing(tx, t, parent, name)
            if not stat.S_ISDIR(e[2]):
                raise NotADirectory(f"{_text(name)!r} is not a directory")
            if tx.has_entries(t.tree_id, e[1]):
                raise NotEmpty(f"directory {_text(name)!r} is not empty")
            tx.delete_dentry(e[0])
            # kept with nlink 0 until forget: a process may still have it open (or as its cwd)
            a = tx.update_inode(t.tree_id, e[1], {"nlink": 0, "ctime_ns": now})
            assert a is not None  # the dentry names it
            self._touch_dir(tx, t, parent, now, -1)
            if forget:
                self._drop_inode(tx, t, e[1], now)
            record(tx, a)
        return a

    def rename(self, tree: TreeRef, parent: int, name: bytes, new_parent: int,
               new_name: bytes, flags: int = 0, forget: bool = False) -> Attr | None:
        """Returns the attrs of the inode a replace unlinked, after it (None: nothing was
        unlinked: no target, RENAME_EXCHANGE, or the same inode). forget: drop that inode in
        the same transaction if it has no link left (the caller holds no handle of it)."""
        _check_name(name)
        _check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise InvalidArgument(f"unknown rename flags {flags:#x}")
        if flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_NOREPLACE and RENAME_EXCHANGE cannot be combined")
        t = self._wtree(tree)
        now = now_ns()
        sname, dname = _text(name), _text(new_name)
        tid = t.tree_id
        with self._store.write() as tx:
            self._dir(tx, t, parent)
            if new_parent != parent:
                self._dir(tx, t, new_parent)
            src = tx.entry(tid, parent, name)
            if src is None:
                raise self._missing(tx, t, parent, name)
            dst = tx.entry(tid, new_parent, new_name)
            if dst is not None and flags & RENAME_NOREPLACE:
                raise AlreadyExists(f"rename target {dname!r} exists (RENAME_NOREPLACE)")
            if dst is None and flags & RENAME_EXCHANGE:
                raise NotFound(f"rename target {dname!r} does not exist (RENAME_EXCHANGE)")
            if dst is not None and dst[1] == src[1]:
                return None  # same inode (same name or hard links): POSIX says do nothing
            src_dir = stat.S_ISDIR(src[2])
            moved = new_parent != parent
            if src_dir and moved and tx.is_below(tid, new_parent, src[1]):
                raise InvalidArgument(f"cannot move directory {sname!r} into its own subtree")
            if dst is not None and flags & RENAME_EXCHANGE:
                dst_dir = stat.S_ISDIR(dst[2])
                if dst_dir and moved and tx.is_below(tid, parent, dst[1]):
                    raise InvalidArgument(f"cannot move directory {dname!r} into its own subtree")
                tx.point_dentry(src[0], dst[1])
                tx.point_dentry(dst[0], src[1])
                for ino, is_dir, dest in ((src[1], src_dir, new_parent), (dst[1], dst_dir, parent)):
                    tx.update_inode(tid, ino, {"ctime_ns": now, "parent": dest} if is_dir
                                    else {"ctime_ns": now})
                shift = (1 if src_dir else 0) - (1 if dst_dir else 0) if moved else 0
                self._touch_dir(tx, t, parent, now, -shift)
                if moved:
                    self._touch_dir(tx, t, new_parent, now, shift)
                record(tx, None)
                return None
            new_parent_links = 1 if src_dir and moved else 0
            replaced: Attr | None = None
            if dst is not None:
                dst_dir = stat.S_ISDIR(dst[2])
                if src_dir and not dst_dir:
                    raise NotADirectory(f"cannot replace non-directory {dname!r} with directory "
                                        f"{sname!r}")
                if dst_dir and not src_dir:
                    raise IsADirectory(f"cannot replace directory {dname!r} with non-directory "
                                       f"{sname!r}")
                if dst_dir:
                    if tx.has_entries(tid, dst[1]):
                        raise NotEmpty(f"rename target directory {dname!r} is not empty")
                    replaced = tx.update_inode(tid, dst[1], {"nlink": 0, "ctime_ns": now})
                    new_parent_links -= 1
                else:
                    replaced = tx.update_inode(tid, dst[1], {"ctime_ns": now}, {"nlink": -1})
                tx.delete_dentry(dst[0])
            tx.move_dentry(src[0], new_parent, new_name)
            tx.update_inode(tid, src[1], {"ctime_ns": now, "parent": new_parent} if src_dir
                            else {"ctime_ns": now})
            if moved:
                self._touch_dir(tx, t, parent, now, -1 if src_dir else 0)
            self._touch_dir(tx, t, new_parent, now, new_parent_links)
            if forget and replaced is not None and replaced.nlink == 0:
                self._drop_inode(tx, t, replaced.ino, now)
            record(tx, replaced)
        return replaced

    # --- xattrs ------------------------------------------------------------------------------
    def getxattr(self, tree: TreeRef, ino: int, name: bytes) -> bytes:
        _check_xattr_name(name)
        t = self._tree(tree)
        tx = self._store.single()
        v = tx.xattr(t.tree_id, ino, name)
        if v is None:
            self._row(tx, t, ino)
            raise NotFound(f"inode {ino} has no extended attribute {name!r}")
        return v

    def setxattr(self, tree: TreeRef, ino: int, name: bytes, value: bytes, flags: int = 0
                 ) -> None:
        _check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise InvalidArgument(f"xattr value is {len(value)} bytes; the limit is "
                                  f"{XATTR_SIZE_MAX}")
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise InvalidArgument(f"invalid setxattr flags {flags:#x}")
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            self._row(tx, t, ino)
            exists = tx.xattr(t.tree_id, ino, name) is not None
            if exists and flags & XATTR_CREATE:
                raise AlreadyExists(f"inode {ino} already has extended attribute {name!r} "
                                    "(XATTR_CREATE)")
            if not exists and flags & XATTR_REPLACE:
                raise NotFound(f"inode {ino} has no extended attribute {name!r} (XATTR_REPLACE)")
            tx.put_xattr(t.tree_id, ino, name, bytes(value))
            tx.update_inode(t.tree_id, ino, {"ctime_ns": now})
            record(tx, None)

    def listxattr(self, tree: TreeRef, ino: int) -> list[bytes]:
        t = self._tree(tree)
        with self._store.read() as tx:
            self._row(tx, t, ino)
            return tx.xattr_names(t.tree_id, ino)

    def removexattr(self, tree: TreeRef, ino: int, name: bytes) -> None:
        _check_xattr_name(name)
        t = self._wtree(tree)
        now = now_ns()
        with self._store.write() as tx:
            self._row(tx, t, ino)
            if not tx.delete_xattr(t.tree_id, ino, name):
                raise NotFound(f"inode {ino} has no extended attribute {name!r}")
            tx.update_inode(t.tree_id, ino, {"ctime_ns": now})
            record(tx, None)

    # --- inode lifetime ----------------------------------------------------------------------
    def forget(self, tree: TreeRef, ino: int) -> None:
        t = self._wtree(tree, own_rows=False)   # a pending branch has no unlinked inode
        now = now_ns()
        with self._store.write() as tx:
            a = tx.inode(t.tree_id, ino)
            if a is None or a.nlink > 0 or ino == ROOT_INO:
                return  # still linked (or already gone): nothing to drop
            self._drop_inode(tx, t, ino, now)

    @staticmethod
    def _drop_inode(tx: Tx, t: _Tree, ino: int, now: int) -> None:
        """Delete an nlink-0 inode with its chunk map (releasing its chunk refs) and xattrs."""
        if ino == ROOT_INO:
            return
        deltas: Counter[bytes] = Counter()
        for cid, n in tx.slot_chunk_counts(t.tree_id, ino):
            deltas[cid] -= n
        tx.adjust_refs(t.namespace, deltas, now)
        tx.delete_all_slots(t.tree_id, ino)
        tx.delete_xattrs(t.tree_id, ino)
        tx.delete_inode(t.tree_id, ino)

    def orphan_inodes(self, tree: TreeRef) -> list[int]:
        t = self._tree(tree)
        return self._store.single().orphans(t.tree_id)

    def gc_candidate_times(self, namespace: str, from_ns: int, before_ns: int, limit: int
                           ) -> list[tuple[bytes, int]]:
        """Records.gc_candidates with each chunk's unreferenced-since time, paged by it
        (the background collector: collector.py)."""
        self._need_namespace(namespace)
        return self._store.single().unreferenced_chunk_times(namespace, from_ns, before_ns,
                                                             limit)

    # --- file contents -----------------------------------------------------------------------
    def get_chunk_map(self, tree: TreeRef, ino: int, first_index: int = 0, count: int = 0
                      ) -> tuple[Attr, list[ChunkRef]]:
        t = self._tree(tree)
        if first_index < 0 or count < 0:
            raise InvalidArgument("first_index and count must not be negative")
        last = first_index + count if count else 1 << 62
        with self._store.read() as tx:
            a = self._row(tx, t, ino)
            if stat.S_ISDIR(a.mode):
                raise IsADirectory(f"inode {ino} in {t.where()} is a directory, not a file")
            return a, tx.slots(t.tree_id, ino, first_index, last)

    @staticmethod
    def _trim(tx: Tx, t: _Tree, ino: int, size: int, deltas: Counter[bytes]) -> int:
        """Drop slots wholly past `size`, shorten the one holding the new end; returns the change
        of data_bytes and adds refcount changes to `deltas`. Bytes past a slot's length read as
        zeros, so the shortened chunk is not rewritten."""
        cs = t.chunk_size
        delta = 0
        for cid, n in tx.cut_slots(t.tree_id, ino, -(-size // cs)):  # slots starting >= size
            deltas[cid] -= 1
            delta -= n
        if size % cs:
            idx, keep = size // cs, size % cs
            n = tx.slot_length(t.tree_id, ino, idx)
            if n is not None and n > keep:
                tx.set_slot_length(t.tree_id, ino, idx, keep)
                delta -= n - keep
        return delta

    def commit_file(self, tree: TreeRef, ino: int, changed: list[ChunkRef], size: int,
                    truncated: bool = False, mtime_ns: int = 0, asset_id: str = "",
                    durable: bool = False) -> Attr:
        t = self._wtree(tree)
        slots = self._slots(t, changed, size)
        now = now_ns()
        with self._store.write(durable) as tx:
            return self._commit_in(tx, t, ino, slots, size, truncated, mtime_ns, asset_id, now)

    @staticmethod
    def _slots(t: _Tree, changed: list[ChunkRef], size: int) -> dict[int, ChunkRef]:
        """A commit's changed slots, checked before any row is touched."""
        if size < 0:
            raise InvalidArgument(f"size must not be negative, got {size}")
        slots: dict[int, ChunkRef] = {}  # a later change of the same slot wins
        for ref in changed:
            if ref.index < 0:
                raise InvalidArgument(f"chunk index must not be negative, got {ref.index}")
            if ref.chunk_id:
                if len(ref.chunk_id) != 32:
                    raise InvalidArgument(f"chunk id must be 32 bytes (BLAKE3), got "
                                          f"{len(ref.chunk_id)} for slot {ref.index}")
                if not 0 < ref.length <= t.chunk_size:
                    raise InvalidArgument(f"slot {ref.index}: length {ref.length} is outside "
                                          f"1..{t.chunk_size} (the namespace chunk size)")
            slots[ref.index] = ref
        return slots

    def _commit_in(self, tx: Tx, t: _Tree, ino: int, slots: dict[int, ChunkRef], size: int,
                   truncated: bool, mtime_ns: int, asset_id: str, now: int) -> Attr:
        """commit_file's work inside the caller's write transaction (also CreateFile's)."""
        r = self._row(tx, t, ino)
        if stat.S_ISDIR(r.mode):
            raise IsADirectory(f"inode {ino} in {t.where()} is a directory, not a file")
        if not stat.S_ISREG(r.mode):
            raise InvalidArgument(f"inode {ino} in {t.where()} is not a regular file")
        new_size = size if truncated else max(r.size, size)
        need = [ref.chunk_id for ref in slots.values() if ref.chunk_id]
        raw = tx.recorded(t.namespace, need)
        for ref in slots.values():
            if not ref.chunk_id:
                continue
            if ref.chunk_id not in raw:
                raise MissingChunk(
                    f"chunk {ref.chunk_id.hex()} (slot {ref.index}) is not stored in "
                    f"namespace {t.namespace!r}; upload it with PutChunks, then commit again")
            if ref.length > raw[ref.chunk_id]:
                raise InvalidArgument(
                    f"slot {ref.index}: length {ref.length} exceeds chunk "
                    f"{ref.chunk_id.hex()}'s {raw[ref.chunk_id]} bytes")
            if not truncated and ref.index * t.chunk_size >= new_size:
                raise InvalidArgument(
                    f"slot {ref.index} starts at or past the file size {new_size}; "
                    "send a size that covers every committed slot")
        deltas: Counter[bytes] = Counter()
        data_delta = 0
        if slots:
            old = tx.slots_at(t.tree_id, ino, list(slots))
            puts: list[ChunkRef] = []
            drops: list[int] = []
            for idx, ref in slots.items():
                prev = old.get(idx)
                if prev is not None:
                    deltas[prev[0]] -= 1
                    data_delta -= prev[1]
                room = new_size - idx * t.chunk_size  # <= 0 only for a truncating commit
                if ref.chunk_id and room > 0:
                    length = min(ref.length, room)
                    deltas[ref.chunk_id] += 1
                    data_delta += length
                    puts.append(ChunkRef(idx, ref.chunk_id, length))
                elif prev is not None:
                    drops.append(idx)
            tx.put_slots(t.tree_id, ino, puts)
            tx.delete_slots(t.tree_id, ino, drops)
        if truncated:
            data_delta += self._trim(tx, t, ino, new_size, deltas)
        tx.adjust_refs(t.namespace, deltas, now)
        # the row was read in this transaction (and locked by it), so generation + 1 is
        # the value the update below writes: asset_gen names the new generation
        a = tx.update_inode(t.tree_id, ino, {
            "size": new_size, "mtime_ns": mtime_ns or now, "ctime_ns": now,
            "asset_id": asset_id, "asset_gen": r.generation + 1},
            {"data_bytes": data_delta, "generation": 1})
        assert a is not None
        return a

    def get_file_asset_id(self, tree: TreeRef, ino: int) -> tuple[str, int]:
        t = self._tree(tree)
        r = self._store.single().inode_asset(t.tree_id, ino)
        if r is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        return (r[0] if r[1] == r[2] else ""), r[2]

    def set_file_asset_id(self, tree: TreeRef, ino: int, generation: int, asset_id: str
                          ) -> None:
        t = self._tree(tree)
        tx = self._store.single()
        if not tx.set_inode_asset(t.tree_id, ino, generation, asset_id):
            self._row(tx, t, ino)  # NotFound when the inode is gone; else the generation moved on
