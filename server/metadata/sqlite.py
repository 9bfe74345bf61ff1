"""SQLite implementation of the metadata engine (the embedded default).

Interface:
    SQLiteMetadata(path, *, durable=False)   implements `MetadataEngine` (metadata/base.py);
                                             `close()` closes every thread's connection

Threading: one connection per thread (`threading.local`); the gRPC server calls the engine from
a thread pool. Every change of more than one row runs in one `BEGIN IMMEDIATE` transaction
(take the write lock up front, so two writers never deadlock upgrading read locks); reads that
need more than one statement run in one deferred (snapshot) transaction.

Durability: WAL mode with `synchronous=NORMAL`. In WAL mode a commit is an append to the WAL
file, so a committed transaction survives a crash of this process (the OS has the bytes); only
an OS crash or power loss can drop the last commits (never corrupt the database). Pass
`durable=True` for `synchronous=FULL` (fsync the WAL on every commit) when that matters more
than commit latency.

POSIX rules kept here (the FUSE layer relies on them): directory nlink = 2 + subdirectories;
unlink/rmdir/rename-replace leave the inode with nlink 0 until `forget`; readdir excludes "."
and ".." and pages by dentry id; rename covers replace, RENAME_NOREPLACE, RENAME_EXCHANGE,
type mismatches, non-empty targets and moving a directory into its own subtree.
"""

from __future__ import annotations

import json
import re
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from aifs_core.errors import (
    AlreadyExists,
    InvalidArgument,
    IsADirectory,
    MissingChunk,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    ParentNotCommitted,
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
    AssetRecord,
    Attr,
    ChunkRef,
    ChunkStats,
    DirEntry,
    Namespace,
    ParentEdge,
    TreeRef,
    TreeStats,
)
from aifs_server.metadata.sqlite_schema import migrate

PATH_MAX = 4096           # longest symlink target (Linux PATH_MAX)
XATTR_SIZE_MAX = 65536    # largest xattr value (Linux XATTR_SIZE_MAX)
READDIR_MAX = 10000       # cap on one readdir page
LIST_MAX = 1000           # cap on one list_assets page
_IN_BATCH = 500           # ids per "IN (...)" query (well under SQLite's variable limit)
_NS_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Column order shared by every query that builds an Attr (see _attr).
_ATTR = ("ino, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, data_bytes, "
         "generation")
_ATTR_I = ", ".join("i." + c.strip() for c in _ATTR.split(","))


def _attr(r: Sequence[int]) -> Attr:
    return Attr(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                (r[10] + 511) // 512, r[11])


def _check_name(name: bytes) -> None:
    if not isinstance(name, bytes):
        raise InvalidArgument(f"a name must be bytes, got {type(name).__name__}")
    if len(name) > NAME_MAX:
        raise NameTooLong(f"name is {len(name)} bytes; the limit is {NAME_MAX} bytes")
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise InvalidArgument(
            f"invalid name {name!r}: names must be non-empty, not '.' or '..', "
            "and contain neither '/' nor NUL")


def _now() -> int:
    return time.time_ns()


@dataclass(frozen=True)
class _Tree:
    tree_id: int
    namespace: str
    branch: str
    chunk_size: int

    def where(self) -> str:
        return f"{self.namespace}/{self.branch}"


class SQLiteMetadata:
    """`MetadataEngine` over one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, *, durable: bool = False) -> None:
        self._path = str(path)
        self._sync = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        # Trees and namespaces are never deleted, so positive answers can be cached for good.
        self._trees: dict[TreeRef, _Tree] = {}
        self._namespaces: set[str] = set()
        migrate(self._conn())

    # --- connections and transactions --------------------------------------------------------
    def _conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is not None and not self._closed:
            return c
        if self._closed:
            raise InvalidArgument(f"metadata database {self._path} is closed")
        c = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                            timeout=30.0, cached_statements=512)
        c.execute("PRAGMA busy_timeout=30000")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute(f"PRAGMA synchronous={self._sync}")
        with self._lock:
            self._conns.append(c)
        self._local.conn = c
        return c

    @contextmanager
    def _write(self, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One write transaction. durable: this commit fsyncs the WAL (synchronous=FULL for it
        alone; in WAL mode that also makes every earlier commit durable), for fsync callers."""
        c = self._conn()
        if durable and self._sync != "FULL":
            c.execute("PRAGMA synchronous=FULL")
        try:
            c.execute("BEGIN IMMEDIATE")
            try:
                yield c
            except BaseException:
                c.execute("ROLLBACK")
                raise
            c.execute("COMMIT")
        finally:
            if durable and self._sync != "FULL":
                c.execute(f"PRAGMA synchronous={self._sync}")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        c = self._conn()
        c.execute("BEGIN")
        try:
            yield c
        finally:
            c.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()

    # --- namespaces --------------------------------------------------------------------------
    def create_namespace(self, ns: Namespace) -> Namespace:
        if not _NS_NAME.fullmatch(ns.name or ""):
            raise InvalidArgument(
                f"invalid namespace name {ns.name!r}: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
        if ns.chunk_size <= 0:
            raise InvalidArgument(f"chunk_size must be positive, got {ns.chunk_size}")
        if not 1 <= ns.zstd_level <= 22:
            raise InvalidArgument(f"zstd_level must be 1-22, got {ns.zstd_level}")
        rec = Namespace(ns.name, ns.chunk_size, ns.zstd_level, ns.kms_key_id,
                        ns.created_ns or _now())
        try:
            self._conn().execute(
                "INSERT INTO namespaces (name, chunk_size, zstd_level, kms_key_id, created_ns) "
                "VALUES (?, ?, ?, ?, ?)",
                (rec.name, rec.chunk_size, rec.zstd_level, rec.kms_key_id, rec.created_ns))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"namespace {ns.name!r} already exists") from None
        return rec

    def get_namespace(self, name: str) -> Namespace:
        r = self._conn().execute(
            "SELECT name, chunk_size, zstd_level, kms_key_id, created_ns FROM namespaces "
            "WHERE name = ?", (name,)).fetchone()
        if r is None:
            raise NotFound(f"namespace {name!r} does not exist; create it first")
        return Namespace(*r)

    def list_namespaces(self) -> list[Namespace]:
        rows = self._conn().execute(
            "SELECT name, chunk_size, zstd_level, kms_key_id, created_ns FROM namespaces "
            "ORDER BY name").fetchall()
        return [Namespace(*r) for r in rows]

    def _need_namespace(self, name: str) -> None:
        if name not in self._namespaces:
            self.get_namespace(name)
            self._namespaces.add(name)

    # --- trees -------------------------------------------------------------------------------
    def _tree(self, tree: TreeRef) -> _Tree:
        t = self._trees.get(tree)
        if t is not None:
            return t
        r = self._conn().execute(
            "SELECT t.tree_id, n.chunk_size FROM trees t JOIN namespaces n ON n.name = t.namespace "
            "WHERE t.namespace = ? AND t.branch = ?", (tree.namespace, tree.branch)).fetchone()
        if r is None:
            raise NotFound(f"branch {tree.branch!r} of namespace {tree.namespace!r} does not exist "
                           "(ensure_tree creates it)")
        t = _Tree(r[0], tree.namespace, tree.branch, r[1])
        self._trees[tree] = t
        return t

    def ensure_tree(self, tree: TreeRef, uid: int = 0, gid: int = 0) -> Attr:
        if not tree.branch or "\0" in tree.branch:
            raise InvalidArgument(f"invalid branch name {tree.branch!r}")
        self._need_namespace(tree.namespace)
        now = _now()
        with self._write() as c:
            r = c.execute("SELECT tree_id FROM trees WHERE namespace = ? AND branch = ?",
                          (tree.namespace, tree.branch)).fetchone()
            if r is None:
                tid = c.execute(
                    "INSERT INTO trees (namespace, branch, next_ino, created_ns) "
                    "VALUES (?, ?, ?, ?)", (tree.namespace, tree.branch, ROOT_INO + 1, now)
                ).lastrowid
                c.execute(
                    "INSERT INTO inodes (tree_id, ino, mode, nlink, uid, gid, atime_ns, mtime_ns, "
                    "ctime_ns, parent) VALUES (?, ?, ?, 2, ?, ?, ?, ?, ?, ?)",
                    (tid, ROOT_INO, stat.S_IFDIR | 0o755, uid, gid, now, now, now, ROOT_INO))
        return self.getattr(tree, ROOT_INO)

    def list_trees(self, namespace: str) -> list[TreeRef]:
        self._need_namespace(namespace)
        rows = self._conn().execute("SELECT branch FROM trees WHERE namespace = ? ORDER BY branch",
                                    (namespace,)).fetchall()
        return [TreeRef(namespace, r[0]) for r in rows]

    def _row(self, c: sqlite3.Connection, t: _Tree, ino: int) -> tuple[int, ...]:
        r = c.execute(f"SELECT {_ATTR} FROM inodes WHERE tree_id = ? AND ino = ?",
                      (t.tree_id, ino)).fetchone()
        if r is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        return tuple(r)

    def _dir(self, c: sqlite3.Connection, t: _Tree, ino: int, *, live: bool = True
             ) -> tuple[int, ...]:
        """The attr row of directory `ino`; `live` refuses a removed (nlink 0) directory."""
        r = self._row(c, t, ino)
        if not stat.S_ISDIR(r[1]):
            raise NotADirectory(f"inode {ino} in {t.where()} is not a directory")
        if live and r[2] == 0:
            raise NotFound(f"directory inode {ino} in {t.where()} has been removed")
        return r

    def _touch_dir(self, c: sqlite3.Connection, t: _Tree, ino: int, now: int,
                   nlink_delta: int = 0) -> None:
        c.execute("UPDATE inodes SET mtime_ns = ?, ctime_ns = ?, nlink = nlink + ? "
                  "WHERE tree_id = ? AND ino = ?", (now, now, nlink_delta, t.tree_id, ino))

    def _entry(self, c: sqlite3.Connection, t: _Tree, parent: int, name: bytes
               ) -> tuple[int, int, int] | None:
        """(dentry id, ino, mode) of `name` in `parent`, or None."""
        r = c.execute(
            "SELECT d.id, d.ino, i.mode FROM dentries d JOIN inodes i "
            "ON i.tree_id = d.tree_id AND i.ino = d.ino "
            "WHERE d.tree_id = ? AND d.parent = ? AND d.name = ?",
            (t.tree_id, parent, name)).fetchone()
        return None if r is None else (r[0], r[1], r[2])

    def _missing(self, c: sqlite3.Connection, t: _Tree, parent: int, name: bytes) -> NotFound:
        self._dir(c, t, parent, live=False)  # a bad parent is the better error
        return NotFound(f"no entry {name.decode(errors='replace')!r} in directory {parent} "
                        f"of {t.where()}")

    def lookup(self, tree: TreeRef, parent: int, name: bytes) -> Attr:
        _check_name(name)
        t = self._tree(tree)
        c = self._conn()
        r = c.execute(
            f"SELECT {_ATTR_I} FROM dentries d JOIN inodes i "
            "ON i.tree_id = d.tree_id AND i.ino = d.ino "
            "WHERE d.tree_id = ? AND d.parent = ? AND d.name = ?",
            (t.tree_id, parent, name)).fetchone()
        if r is None:
            raise self._missing(c, t, parent, name)
        return _attr(r)

    def getattr(self, tree: TreeRef, ino: int) -> Attr:
        t = self._tree(tree)
        r = self._conn().execute(f"SELECT {_ATTR} FROM inodes WHERE tree_id = ? AND ino = ?",
                                 (t.tree_id, ino)).fetchone()
        if r is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        return _attr(r)

    def setattr(self, tree: TreeRef, ino: int, fields: int, *, mode: int = 0, uid: int = 0,
                gid: int = 0, size: int = 0, atime_ns: int = 0, mtime_ns: int = 0,
                ctime_ns: int = 0) -> Attr:
        t = self._tree(tree)
        if fields & SET_SIZE and size < 0:
            raise InvalidArgument(f"size must not be negative, got {size}")
        now = _now()
        with self._write() as c:
            r = self._row(c, t, ino)
            new_mode, new_uid, new_gid, new_size = r[1], r[3], r[4], r[6]
            atime, mtime = r[7], r[8]
            if fields & SET_MODE:
                new_mode = stat.S_IFMT(r[1]) | (mode & 0o7777)
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
                if stat.S_ISDIR(r[1]):
                    raise IsADirectory(f"cannot truncate inode {ino}: it is a directory")
                if not stat.S_ISREG(r[1]):
                    raise InvalidArgument(f"cannot truncate inode {ino}: not a regular file")
                if size < r[6]:
                    deltas: Counter[bytes] = Counter()
                    data_delta = self._trim(c, t, ino, size, deltas)
                    self._adjust_refs(c, t.namespace, deltas, now)
                if not fields & SET_MTIME:
                    # POSIX: truncate/O_TRUNC change mtime even when the size stays the same
                    mtime = now
                new_size, gen_bump = size, 1
            ctime = ctime_ns if fields & SET_CTIME else now
            row = c.execute(
                f"UPDATE inodes SET mode = ?, uid = ?, gid = ?, size = ?, atime_ns = ?, "
                "mtime_ns = ?, ctime_ns = ?, data_bytes = data_bytes + ?, "
                "generation = generation + ?, "
                "asset_id = CASE WHEN ? THEN '' ELSE asset_id END "
                f"WHERE tree_id = ? AND ino = ? RETURNING {_ATTR}",
                (new_mode, new_uid, new_gid, new_size, atime, mtime, ctime, data_delta, gen_bump,
                 gen_bump, t.tree_id, ino)).fetchone()
        return _attr(row)

    def readdir(self, tree: TreeRef, ino: int, cookie: int, limit: int
                ) -> tuple[list[DirEntry], bool]:
        t = self._tree(tree)
        limit = READDIR_MAX if limit <= 0 else min(limit, READDIR_MAX)
        with self._read() as c:
            self._dir(c, t, ino, live=False)
            rows = c.execute(
                f"SELECT d.id, d.name, {_ATTR_I} FROM dentries d JOIN inodes i "
                "ON i.tree_id = d.tree_id AND i.ino = d.ino "
                "WHERE d.tree_id = ? AND d.parent = ? AND d.id > ? ORDER BY d.id LIMIT ?",
                (t.tree_id, ino, cookie, limit + 1)).fetchall()
        eof = len(rows) <= limit
        return [DirEntry(r[1], _attr(r[2:]), r[0]) for r in rows[:limit]], eof

    def _new_inode(self, c: sqlite3.Connection, t: _Tree, parent: int, name: bytes, mode: int,
                   nlink: int, uid: int, gid: int, rdev: int, now: int,
                   symlink: bytes | None = None) -> Attr:
        """Allocate an inode, name it `name` in `parent` and touch the parent (one transaction).
        A setgid parent gives the new inode its gid, and a new subdirectory its S_ISGID bit
        (BSD group semantics, as Linux's inode_init_owner): decided here, where the parent's
        row is read anyway, so that it is atomic and costs the client no extra call."""
        pr = self._dir(c, t, parent)
        if pr[1] & stat.S_ISGID:
            gid = pr[4]
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        ino = c.execute("UPDATE trees SET next_ino = next_ino + 1 WHERE tree_id = ? "
                        "RETURNING next_ino - 1", (t.tree_id,)).fetchone()[0]
        is_dir = stat.S_ISDIR(mode)
        size = len(symlink) if symlink is not None else 0
        try:
            c.execute("INSERT INTO dentries (tree_id, parent, name, ino) VALUES (?, ?, ?, ?)",
                      (t.tree_id, parent, name, ino))
        except sqlite3.IntegrityError:
            raise AlreadyExists(f"{name.decode(errors='replace')!r} already exists in directory "
                                f"{parent} of {t.where()}") from None
        c.execute(
            "INSERT INTO inodes (tree_id, ino, mode, nlink, uid, gid, rdev, size, atime_ns, "
            "mtime_ns, ctime_ns, parent, symlink) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (t.tree_id, ino, mode, nlink, uid, gid, rdev, size, now, now, now,
             parent if is_dir else 0, symlink))
        self._touch_dir(c, t, parent, now, 1 if is_dir else 0)
        return Attr(ino, mode, nlink, uid, gid, rdev, size, now, now, now, 0, 0)

    def mkdir(self, tree: TreeRef, parent: int, name: bytes, mode: int, uid: int, gid: int
              ) -> Attr:
        _check_name(name)
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            return self._new_inode(c, t, parent, name, stat.S_IFDIR | (mode & 0o7777), 2, uid,
                                   gid, 0, now)

    def create(self, tree: TreeRef, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0) -> Attr:
        _check_name(name)
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in (stat.S_IFREG, stat.S_IFIFO, stat.S_IFSOCK, stat.S_IFCHR, stat.S_IFBLK):
            raise InvalidArgument(f"create makes regular files, FIFOs, sockets and device nodes; "
                                  f"mode {mode:#o} is not one (use mkdir or symlink)")
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            return self._new_inode(c, t, parent, name, fmt | (mode & 0o7777), 1, uid, gid,
                                   rdev if fmt in (stat.S_IFCHR, stat.S_IFBLK) else 0, now)

    def symlink(self, tree: TreeRef, parent: int, name: bytes, target: bytes, uid: int,
                gid: int) -> Attr:
        _check_name(name)
        if not target or b"\0" in target:
            raise InvalidArgument("a symlink target must be non-empty and contain no NUL")
        if len(target) > PATH_MAX:
            raise NameTooLong(f"symlink target is {len(target)} bytes; the limit is {PATH_MAX}")
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            return self._new_inode(c, t, parent, name, stat.S_IFLNK | 0o777, 1, uid, gid, 0, now,
                                   symlink=target)

    def readlink(self, tree: TreeRef, ino: int) -> bytes:
        t = self._tree(tree)
        r = self._conn().execute("SELECT mode, symlink FROM inodes WHERE tree_id = ? AND ino = ?",
                                 (t.tree_id, ino)).fetchone()
        if r is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        if not stat.S_ISLNK(r[0]):
            raise InvalidArgument(f"inode {ino} in {t.where()} is not a symbolic link")
        return bytes(r[1])

    def link(self, tree: TreeRef, ino: int, new_parent: int, new_name: bytes) -> Attr:
        _check_name(new_name)
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            r = self._row(c, t, ino)
            if stat.S_ISDIR(r[1]):
                raise PermissionDenied(f"inode {ino} is a directory; directories cannot have "
                                       "hard links")
            if r[2] == 0:
                raise NotFound(f"inode {ino} in {t.where()} has been unlinked; it cannot get a "
                               "new name")
            self._dir(c, t, new_parent)
            try:
                c.execute("INSERT INTO dentries (tree_id, parent, name, ino) VALUES (?, ?, ?, ?)",
                          (t.tree_id, new_parent, new_name, ino))
            except sqlite3.IntegrityError:
                raise AlreadyExists(f"{new_name.decode(errors='replace')!r} already exists in "
                                    f"directory {new_parent} of {t.where()}") from None
            row = c.execute(f"UPDATE inodes SET nlink = nlink + 1, ctime_ns = ? "
                            f"WHERE tree_id = ? AND ino = ? RETURNING {_ATTR}",
                            (now, t.tree_id, ino)).fetchone()
            self._touch_dir(c, t, new_parent, now)
        return _attr(row)

    def unlink(self, tree: TreeRef, parent: int, name: bytes, forget: bool = False) -> Attr:
        """Remove a name; returns the inode's attrs after it. forget: if that was its last
        link, drop the inode in the same transaction (as `forget` would; the caller holds no
        handle of it)."""
        _check_name(name)
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            e = self._entry(c, t, parent, name)
            if e is None:
                raise self._missing(c, t, parent, name)
            if stat.S_ISDIR(e[2]):
                raise IsADirectory(f"{name.decode(errors='replace')!r} is a directory; "
                                   "use rmdir")
            c.execute("DELETE FROM dentries WHERE id = ?", (e[0],))
            row = c.execute(f"UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? "
                            f"WHERE tree_id = ? AND ino = ? RETURNING {_ATTR}",
                            (now, t.tree_id, e[1])).fetchone()
            self._touch_dir(c, t, parent, now)
            if forget and row[2] == 0:
                self._drop_inode(c, t, e[1], now)
        return _attr(row)

    def _is_empty(self, c: sqlite3.Connection, t: _Tree, ino: int) -> bool:
        return c.execute("SELECT 1 FROM dentries WHERE tree_id = ? AND parent = ? LIMIT 1",
                         (t.tree_id, ino)).fetchone() is None

    def rmdir(self, tree: TreeRef, parent: int, name: bytes) -> None:
        _check_name(name)
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            e = self._entry(c, t, parent, name)
            if e is None:
                raise self._missing(c, t, parent, name)
            if not stat.S_ISDIR(e[2]):
                raise NotADirectory(f"{name.decode(errors='replace')!r} is not a directory")
            if not self._is_empty(c, t, e[1]):
                raise NotEmpty(f"directory {name.decode(errors='replace')!r} is not empty")
            c.execute("DELETE FROM dentries WHERE id = ?", (e[0],))
            # kept with nlink 0 until forget: a process may still have it open (or as its cwd)
            c.execute("UPDATE inodes SET nlink = 0, ctime_ns = ? WHERE tree_id = ? AND ino = ?",
                      (now, t.tree_id, e[1]))
            self._touch_dir(c, t, parent, now, -1)

    def _inside(self, c: sqlite3.Connection, t: _Tree, ino: int, dir_ino: int) -> bool:
        """True when directory `ino` is `dir_ino` or lies below it (walks parents upwards)."""
        r = c.execute(
            "WITH RECURSIVE up(ino) AS (SELECT ? UNION "
            "SELECT i.parent FROM inodes i JOIN up ON i.tree_id = ? AND i.ino = up.ino "
            "WHERE up.ino != ?) SELECT 1 FROM up WHERE ino = ? LIMIT 1",
            (ino, t.tree_id, ROOT_INO, dir_ino)).fetchone()
        return r is not None

    def rename(self, tree: TreeRef, parent: int, name: bytes, new_parent: int,
               new_name: bytes, flags: int = 0) -> None:
        _check_name(name)
        _check_name(new_name)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise InvalidArgument(f"unknown rename flags {flags:#x}")
        if flags & RENAME_NOREPLACE and flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_NOREPLACE and RENAME_EXCHANGE cannot be combined")
        t = self._tree(tree)
        now = _now()
        sname = name.decode(errors="replace")
        dname = new_name.decode(errors="replace")
        with self._write() as c:
            self._dir(c, t, parent)
            if new_parent != parent:
                self._dir(c, t, new_parent)
            src = self._entry(c, t, parent, name)
            if src is None:
                raise self._missing(c, t, parent, name)
            dst = self._entry(c, t, new_parent, new_name)
            if dst is not None and flags & RENAME_NOREPLACE:
                raise AlreadyExists(f"rename target {dname!r} exists (RENAME_NOREPLACE)")
            if dst is None and flags & RENAME_EXCHANGE:
                raise NotFound(f"rename target {dname!r} does not exist (RENAME_EXCHANGE)")
            if dst is not None and dst[1] == src[1]:
                return  # same inode (same name or hard links): POSIX says do nothing
            src_dir = stat.S_ISDIR(src[2])
            moved = new_parent != parent
            if src_dir and moved and self._inside(c, t, new_parent, src[1]):
                raise InvalidArgument(f"cannot move directory {sname!r} into its own subtree")
            if dst is not None and flags & RENAME_EXCHANGE:
                dst_dir = stat.S_ISDIR(dst[2])
                if dst_dir and moved and self._inside(c, t, parent, dst[1]):
                    raise InvalidArgument(f"cannot move directory {dname!r} into its own subtree")
                c.execute("UPDATE dentries SET ino = ? WHERE id = ?", (dst[1], src[0]))
                c.execute("UPDATE dentries SET ino = ? WHERE id = ?", (src[1], dst[0]))
                for ino, is_dir, dest in ((src[1], src_dir, new_parent), (dst[1], dst_dir, parent)):
                    c.execute("UPDATE inodes SET ctime_ns = ?, parent = CASE WHEN ? THEN ? "
                              "ELSE parent END WHERE tree_id = ? AND ino = ?",
                              (now, is_dir, dest, t.tree_id, ino))
                shift = (1 if src_dir else 0) - (1 if dst_dir else 0) if moved else 0
                self._touch_dir(c, t, parent, now, -shift)
                if moved:
                    self._touch_dir(c, t, new_parent, now, shift)
                return
            new_parent_links = 1 if src_dir and moved else 0
            if dst is not None:
                dst_dir = stat.S_ISDIR(dst[2])
                if src_dir and not dst_dir:
                    raise NotADirectory(f"cannot replace non-directory {dname!r} with directory "
                                        f"{sname!r}")
                if dst_dir and not src_dir:
                    raise IsADirectory(f"cannot replace directory {dname!r} with non-directory "
                                       f"{sname!r}")
                if dst_dir:
                    if not self._is_empty(c, t, dst[1]):
                        raise NotEmpty(f"rename target directory {dname!r} is not empty")
                    c.execute("UPDATE inodes SET nlink = 0, ctime_ns = ? "
                              "WHERE tree_id = ? AND ino = ?", (now, t.tree_id, dst[1]))
                    new_parent_links -= 1
                else:
                    c.execute("UPDATE inodes SET nlink = nlink - 1, ctime_ns = ? "
                              "WHERE tree_id = ? AND ino = ?", (now, t.tree_id, dst[1]))
                c.execute("DELETE FROM dentries WHERE id = ?", (dst[0],))
            c.execute("UPDATE dentries SET parent = ?, name = ? WHERE id = ?",
                      (new_parent, new_name, src[0]))
            c.execute("UPDATE inodes SET ctime_ns = ?, parent = CASE WHEN ? THEN ? ELSE parent "
                      "END WHERE tree_id = ? AND ino = ?",
                      (now, src_dir, new_parent, t.tree_id, src[1]))
            if moved:
                self._touch_dir(c, t, parent, now, -1 if src_dir else 0)
            self._touch_dir(c, t, new_parent, now, new_parent_links)

    # --- xattrs ------------------------------------------------------------------------------
    @staticmethod
    def _check_xattr_name(name: bytes) -> None:
        if not name or b"\0" in name:
            raise InvalidArgument(f"invalid xattr name {name!r}: non-empty, no NUL")
        if len(name) > NAME_MAX:
            raise NameTooLong(f"xattr name is {len(name)} bytes; the limit is {NAME_MAX}")

    def getxattr(self, tree: TreeRef, ino: int, name: bytes) -> bytes:
        self._check_xattr_name(name)
        t = self._tree(tree)
        c = self._conn()
        r = c.execute("SELECT value FROM xattrs WHERE tree_id = ? AND ino = ? AND name = ?",
                      (t.tree_id, ino, name)).fetchone()
        if r is None:
            self._row(c, t, ino)
            raise NotFound(f"inode {ino} has no extended attribute {name!r}")
        return bytes(r[0])

    def setxattr(self, tree: TreeRef, ino: int, name: bytes, value: bytes, flags: int = 0
                 ) -> None:
        self._check_xattr_name(name)
        if len(value) > XATTR_SIZE_MAX:
            raise InvalidArgument(f"xattr value is {len(value)} bytes; the limit is "
                                  f"{XATTR_SIZE_MAX}")
        if flags & ~(XATTR_CREATE | XATTR_REPLACE) or flags == XATTR_CREATE | XATTR_REPLACE:
            raise InvalidArgument(f"invalid setxattr flags {flags:#x}")
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            self._row(c, t, ino)
            exists = c.execute("SELECT 1 FROM xattrs WHERE tree_id = ? AND ino = ? AND name = ?",
                               (t.tree_id, ino, name)).fetchone() is not None
            if exists and flags & XATTR_CREATE:
                raise AlreadyExists(f"inode {ino} already has extended attribute {name!r} "
                                    "(XATTR_CREATE)")
            if not exists and flags & XATTR_REPLACE:
                raise NotFound(f"inode {ino} has no extended attribute {name!r} (XATTR_REPLACE)")
            c.execute("INSERT OR REPLACE INTO xattrs (tree_id, ino, name, value) "
                      "VALUES (?, ?, ?, ?)", (t.tree_id, ino, name, bytes(value)))
            c.execute("UPDATE inodes SET ctime_ns = ? WHERE tree_id = ? AND ino = ?",
                      (now, t.tree_id, ino))

    def listxattr(self, tree: TreeRef, ino: int) -> list[bytes]:
        t = self._tree(tree)
        with self._read() as c:
            self._row(c, t, ino)
            rows = c.execute("SELECT name FROM xattrs WHERE tree_id = ? AND ino = ? ORDER BY name",
                             (t.tree_id, ino)).fetchall()
        return [bytes(r[0]) for r in rows]

    def removexattr(self, tree: TreeRef, ino: int, name: bytes) -> None:
        self._check_xattr_name(name)
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            self._row(c, t, ino)
            n = c.execute("DELETE FROM xattrs WHERE tree_id = ? AND ino = ? AND name = ?",
                          (t.tree_id, ino, name)).rowcount
            if n == 0:
                raise NotFound(f"inode {ino} has no extended attribute {name!r}")
            c.execute("UPDATE inodes SET ctime_ns = ? WHERE tree_id = ? AND ino = ?",
                      (now, t.tree_id, ino))

    # --- inode lifetime ----------------------------------------------------------------------
    def forget(self, tree: TreeRef, ino: int) -> None:
        t = self._tree(tree)
        now = _now()
        with self._write() as c:
            r = c.execute("SELECT nlink FROM inodes WHERE tree_id = ? AND ino = ?",
                          (t.tree_id, ino)).fetchone()
            if r is None or r[0] > 0 or ino == ROOT_INO:
                return  # still linked (or already gone): nothing to drop
            self._drop_inode(c, t, ino, now)

    def _drop_inode(self, c: sqlite3.Connection, t: _Tree, ino: int, now: int) -> None:
        """Delete an nlink-0 inode with its chunk map (releasing its chunk refs) and xattrs."""
        if ino == ROOT_INO:
            return
        deltas: Counter[bytes] = Counter()
        for cid, n in c.execute("SELECT chunk_id, COUNT(*) FROM chunk_maps "
                                "WHERE tree_id = ? AND ino = ? GROUP BY chunk_id",
                                (t.tree_id, ino)):
            deltas[bytes(cid)] -= n
        self._adjust_refs(c, t.namespace, deltas, now)
        c.execute("DELETE FROM chunk_maps WHERE tree_id = ? AND ino = ?", (t.tree_id, ino))
        c.execute("DELETE FROM xattrs WHERE tree_id = ? AND ino = ?", (t.tree_id, ino))
        c.execute("DELETE FROM inodes WHERE tree_id = ? AND ino = ?", (t.tree_id, ino))

    def orphan_inodes(self, tree: TreeRef) -> list[int]:
        t = self._tree(tree)
        rows = self._conn().execute("SELECT ino FROM inodes INDEXED BY inodes_orphans "
                                    "WHERE tree_id = ? AND nlink = 0 ORDER BY ino",
                                    (t.tree_id,)).fetchall()
        return [r[0] for r in rows]

    def tree_stats(self, tree: TreeRef) -> TreeStats:
        t = self._tree(tree)
        r = self._conn().execute("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM inodes "
                                 "WHERE tree_id = ?", (t.tree_id,)).fetchone()
        return TreeStats(files=r[0], logical_bytes=r[1])

    # --- file contents -----------------------------------------------------------------------
    def get_chunk_map(self, tree: TreeRef, ino: int, first_index: int = 0, count: int = 0
                      ) -> tuple[Attr, list[ChunkRef]]:
        t = self._tree(tree)
        if first_index < 0 or count < 0:
            raise InvalidArgument("first_index and count must not be negative")
        last = first_index + count if count else 1 << 62
        with self._read() as c:
            r = self._row(c, t, ino)
            if stat.S_ISDIR(r[1]):
                raise IsADirectory(f"inode {ino} in {t.where()} is a directory, not a file")
            rows = c.execute("SELECT idx, chunk_id, length FROM chunk_maps WHERE tree_id = ? "
                             "AND ino = ? AND idx >= ? AND idx < ? ORDER BY idx",
                             (t.tree_id, ino, first_index, last)).fetchall()
        return _attr(r), [ChunkRef(i, bytes(cid), n) for i, cid, n in rows]

    def _trim(self, c: sqlite3.Connection, t: _Tree, ino: int, size: int,
              deltas: Counter[bytes]) -> int:
        """Drop slots wholly past `size`, shorten the one holding the new end; returns the change
        of data_bytes and adds refcount changes to `deltas`. Bytes past a slot's length read as
        zeros, so the shortened chunk is not rewritten."""
        cs = t.chunk_size
        first_dropped = -(-size // cs)  # slots starting at or after `size`
        delta = 0
        for cid, n in c.execute("DELETE FROM chunk_maps WHERE tree_id = ? AND ino = ? "
                                "AND idx >= ? RETURNING chunk_id, length",
                                (t.tree_id, ino, first_dropped)).fetchall():
            deltas[bytes(cid)] -= 1
            delta -= n
        if size % cs:
            idx, keep = size // cs, size % cs
            r = c.execute("SELECT length FROM chunk_maps WHERE tree_id = ? AND ino = ? AND idx = ?",
                          (t.tree_id, ino, idx)).fetchone()
            if r is not None and r[0] > keep:
                c.execute("UPDATE chunk_maps SET length = ? WHERE tree_id = ? AND ino = ? "
                          "AND idx = ?", (keep, t.tree_id, ino, idx))
                delta -= r[0] - keep
        return delta

    def commit_file(self, tree: TreeRef, ino: int, changed: list[ChunkRef], size: int,
                    truncated: bool = False, mtime_ns: int = 0, asset_id: str = "",
                    durable: bool = False) -> Attr:
        t = self._tree(tree)
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
        now = _now()
        with self._write(durable) as c:
            r = self._row(c, t, ino)
            if stat.S_ISDIR(r[1]):
                raise IsADirectory(f"inode {ino} in {t.where()} is a directory, not a file")
            if not stat.S_ISREG(r[1]):
                raise InvalidArgument(f"inode {ino} in {t.where()} is not a regular file")
            new_size = size if truncated else max(r[6], size)
            need = [ref.chunk_id for ref in slots.values() if ref.chunk_id]
            raw = self._recorded(c, t.namespace, need)
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
                old: dict[int, tuple[bytes, int]] = {}
                idxs = list(slots)
                for i in range(0, len(idxs), _IN_BATCH):
                    part = idxs[i:i + _IN_BATCH]
                    q = ("SELECT idx, chunk_id, length FROM chunk_maps WHERE tree_id = ? AND "
                         "ino = ? AND idx IN (" + ",".join("?" * len(part)) + ")")
                    for idx, cid, n in c.execute(q, (t.tree_id, ino, *part)):
                        old[idx] = (bytes(cid), n)
                puts, drops = [], []
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
                        puts.append((t.tree_id, ino, idx, ref.chunk_id, length))
                    elif prev is not None:
                        drops.append((t.tree_id, ino, idx))
                c.executemany("INSERT OR REPLACE INTO chunk_maps (tree_id, ino, idx, chunk_id, "
                              "length) VALUES (?, ?, ?, ?, ?)", puts)
                c.executemany("DELETE FROM chunk_maps WHERE tree_id = ? AND ino = ? AND idx = ?",
                              drops)
            if truncated:
                data_delta += self._trim(c, t, ino, new_size, deltas)
            self._adjust_refs(c, t.namespace, deltas, now)
            row = c.execute(
                "UPDATE inodes SET size = ?, data_bytes = data_bytes + ?, mtime_ns = ?, "
                "ctime_ns = ?, generation = generation + 1, asset_id = ?, "
                f"asset_gen = generation + 1 WHERE tree_id = ? AND ino = ? RETURNING {_ATTR}",
                (new_size, data_delta, mtime_ns or now, now, asset_id, t.tree_id, ino)
            ).fetchone()
        return _attr(row)

    def get_file_asset_id(self, tree: TreeRef, ino: int) -> tuple[str, int]:
        t = self._tree(tree)
        r = self._conn().execute("SELECT asset_id, asset_gen, generation FROM inodes "
                                 "WHERE tree_id = ? AND ino = ?", (t.tree_id, ino)).fetchone()
        if r is None:
            raise NotFound(f"inode {ino} does not exist in {t.where()}")
        return (r[0] if r[1] == r[2] else ""), r[2]

    def set_file_asset_id(self, tree: TreeRef, ino: int, generation: int, asset_id: str
                          ) -> None:
        t = self._tree(tree)
        c = self._conn()
        n = c.execute("UPDATE inodes SET asset_id = ?, asset_gen = ? WHERE tree_id = ? AND "
                      "ino = ? AND generation = ?",
                      (asset_id, generation, t.tree_id, ino, generation)).rowcount
        if n == 0:
            self._row(c, t, ino)  # NotFound when the inode is gone; else the generation moved on

    # --- chunk records -----------------------------------------------------------------------
    @staticmethod
    def _adjust_refs(c: sqlite3.Connection, namespace: str, deltas: Counter[bytes],
                     now: int) -> None:
        """Apply refcount changes; a count reaching 0 starts the GC grace clock, >0 stops it."""
        c.executemany(
            "UPDATE chunks SET refcount = refcount + ?1, unreferenced_since_ns = CASE "
            "WHEN refcount + ?1 > 0 THEN NULL WHEN refcount > 0 THEN ?2 "
            "ELSE unreferenced_since_ns END WHERE namespace = ?3 AND chunk_id = ?4",
            [(d, now, namespace, cid) for cid, d in deltas.items() if d])

    def _recorded(self, c: sqlite3.Connection, namespace: str, ids: Iterable[bytes]
                  ) -> dict[bytes, int]:
        """chunk id -> raw_len for those of `ids` recorded in `namespace`."""
        found: dict[bytes, int] = {}
        uniq = list(dict.fromkeys(ids))
        for i in range(0, len(uniq), _IN_BATCH):
            part = uniq[i:i + _IN_BATCH]
            q = ("SELECT chunk_id, raw_len FROM chunks WHERE namespace = ? AND chunk_id IN ("
                 + ",".join("?" * len(part)) + ")")
            for cid, raw in c.execute(q, (namespace, *part)):
                found[bytes(cid)] = raw
        return found

    def record_chunk(self, namespace: str, chunk_id: bytes, raw_len: int, stored_len: int
                     ) -> bool:
        if len(chunk_id) != 32:
            raise InvalidArgument(f"chunk id must be 32 bytes (BLAKE3), got {len(chunk_id)}")
        if raw_len < 0 or stored_len < 0:
            raise InvalidArgument("chunk lengths must not be negative")
        self._need_namespace(namespace)
        now = _now()
        c = self._conn()
        new = c.execute("INSERT OR IGNORE INTO chunks (namespace, chunk_id, raw_len, stored_len, "
                        "refcount, recorded_ns, unreferenced_since_ns) "
                        "VALUES (?, ?, ?, ?, 0, ?, ?)",
                        (namespace, chunk_id, raw_len, stored_len, now, now)).rowcount == 1
        if not new:
            # Recorded again (re-uploaded): restart the grace clock of an unreferenced chunk so
            # a GC pass cannot take it while the commit that will name it is on its way.
            c.execute("UPDATE chunks SET unreferenced_since_ns = ? WHERE namespace = ? AND "
                      "chunk_id = ? AND refcount = 0", (now, namespace, chunk_id))
        return new

    def has_chunks(self, namespace: str, chunk_ids: list[bytes]) -> list[bool]:
        self._need_namespace(namespace)
        found = self._recorded(self._conn(), namespace, chunk_ids)
        return [bytes(cid) in found for cid in chunk_ids]

    def chunk_stats(self, namespace: str) -> ChunkStats:
        self._need_namespace(namespace)
        r = self._conn().execute("SELECT COUNT(*), COALESCE(SUM(raw_len), 0), "
                                 "COALESCE(SUM(stored_len), 0) FROM chunks WHERE namespace = ?",
                                 (namespace,)).fetchone()
        return ChunkStats(chunks=r[0], raw_bytes=r[1], stored_bytes=r[2])

    def iter_chunks(self, namespace: str) -> Iterator[bytes]:
        """Every chunk id recorded in `namespace`, paged so a huge store is never one list."""
        self._need_namespace(namespace)
        after = b""
        while True:
            rows = self._conn().execute(
                "SELECT chunk_id FROM chunks WHERE namespace = ? AND chunk_id > ? "
                "ORDER BY chunk_id LIMIT 1000", (namespace, after)).fetchall()
            yield from (bytes(r[0]) for r in rows)
            if len(rows) < 1000:
                return
            after = bytes(rows[-1][0])

    def gc_candidates(self, namespace: str, unreferenced_before_ns: int) -> list[bytes]:
        self._need_namespace(namespace)
        rows = self._conn().execute(
            "SELECT chunk_id FROM chunks WHERE namespace = ? AND refcount = 0 "
            "AND unreferenced_since_ns < ? ORDER BY unreferenced_since_ns",
            (namespace, unreferenced_before_ns)).fetchall()
        return [bytes(r[0]) for r in rows]

    def forget_chunk(self, namespace: str, chunk_id: bytes) -> bool:
        self._need_namespace(namespace)
        return self._conn().execute(
            "DELETE FROM chunks WHERE namespace = ? AND chunk_id = ? AND refcount = 0",
            (namespace, chunk_id)).rowcount == 1

    # --- assets ------------------------------------------------------------------------------
    def put_asset(self, namespace: str, asset: AssetRecord) -> AssetRecord:
        if not asset.asset_id:
            raise InvalidArgument("asset_id must not be empty")
        if not asset.kind:
            raise InvalidArgument(f"asset {asset.asset_id}: kind must not be empty")
        try:
            json.loads(asset.metadata_json or "{}")
        except ValueError as e:
            raise InvalidArgument(f"asset {asset.asset_id}: metadata_json is not JSON ({e})"
                                  ) from None
        if len({ch.index for ch in asset.chunks}) != len(asset.chunks):
            raise InvalidArgument(f"asset {asset.asset_id}: chunk indices must be unique")
        for ch in asset.chunks:
            if len(ch.chunk_id) != 32:
                raise InvalidArgument(f"asset {asset.asset_id}: chunk id of entry {ch.index} "
                                      f"must be 32 bytes (BLAKE3), got {len(ch.chunk_id)}")
        for p in asset.parents:
            if p.parent_id == asset.asset_id:
                raise InvalidArgument(f"asset {asset.asset_id} cannot be its own parent")
        self._need_namespace(namespace)
        now = _now()
        with self._write() as c:
            if c.execute("SELECT 1 FROM assets WHERE namespace = ? AND asset_id = ?",
                         (namespace, asset.asset_id)).fetchone() is not None:
                return self._load_asset(c, namespace, asset.asset_id)
            for p in asset.parents:
                if c.execute("SELECT 1 FROM assets WHERE namespace = ? AND asset_id = ?",
                             (namespace, p.parent_id)).fetchone() is None:
                    raise ParentNotCommitted(
                        f"parent asset {p.parent_id} of {asset.asset_id} is not committed in "
                        f"namespace {namespace!r}; put the parent first")
            ids = [ch.chunk_id for ch in asset.chunks]
            raw = self._recorded(c, namespace, ids)
            for ch in asset.chunks:
                if ch.chunk_id not in raw:
                    raise MissingChunk(
                        f"chunk {ch.chunk_id.hex()} (entry {ch.index}) of asset "
                        f"{asset.asset_id} is not stored in namespace {namespace!r}; "
                        "upload it first")
            stored = asset.stored_bytes
            if not stored and ids:
                uniq = list(dict.fromkeys(ids))
                for i in range(0, len(uniq), _IN_BATCH):
                    part = uniq[i:i + _IN_BATCH]
                    stored += c.execute(
                        "SELECT COALESCE(SUM(stored_len), 0) FROM chunks WHERE namespace = ? "
                        "AND chunk_id IN (" + ",".join("?" * len(part)) + ")",
                        (namespace, *part)).fetchone()[0]
            c.execute("INSERT INTO assets (namespace, asset_id, kind, size, stored_bytes, "
                      "metadata_json, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                      (namespace, asset.asset_id, asset.kind, asset.size, stored,
                       asset.metadata_json or "{}", asset.created_ns or now))
            c.executemany("INSERT INTO asset_chunks (namespace, asset_id, idx, chunk_id, length) "
                          "VALUES (?, ?, ?, ?, ?)",
                          [(namespace, asset.asset_id, ch.index, ch.chunk_id, ch.length)
                           for ch in asset.chunks])
            c.executemany("INSERT INTO asset_parents (namespace, asset_id, pos, parent_id, "
                          "transform, transform_digest) VALUES (?, ?, ?, ?, ?, ?)",
                          [(namespace, asset.asset_id, i, p.parent_id, p.transform,
                            p.transform_digest) for i, p in enumerate(asset.parents)])
            self._adjust_refs(c, namespace, Counter(ids), now)
            return self._load_asset(c, namespace, asset.asset_id)

    def get_asset(self, namespace: str, asset_id: str) -> AssetRecord:
        self._need_namespace(namespace)
        with self._read() as c:
            return self._load_asset(c, namespace, asset_id)

    def list_assets(self, namespace: str, kind: str = "", limit: int = 100, after: str = ""
                    ) -> list[AssetRecord]:
        self._need_namespace(namespace)
        limit = 100 if limit <= 0 else min(limit, LIST_MAX)
        with self._read() as c:
            if kind:
                ids = c.execute("SELECT asset_id FROM assets WHERE namespace = ? AND kind = ? "
                                "AND asset_id > ? ORDER BY asset_id LIMIT ?",
                                (namespace, kind, after, limit)).fetchall()
            else:
                ids = c.execute("SELECT asset_id FROM assets WHERE namespace = ? "
                                "AND asset_id > ? ORDER BY asset_id LIMIT ?",
                                (namespace, after, limit)).fetchall()
            return [self._load_asset(c, namespace, r[0]) for r in ids]

    def delete_asset(self, namespace: str, asset_id: str) -> None:
        self._need_namespace(namespace)
        now = _now()
        with self._write() as c:
            if c.execute("SELECT 1 FROM assets WHERE namespace = ? AND asset_id = ?",
                         (namespace, asset_id)).fetchone() is None:
                raise NotFound(f"asset {asset_id} does not exist in namespace {namespace!r}")
            deltas: Counter[bytes] = Counter()
            for cid, n in c.execute("SELECT chunk_id, COUNT(*) FROM asset_chunks WHERE "
                                    "namespace = ? AND asset_id = ? GROUP BY chunk_id",
                                    (namespace, asset_id)):
                deltas[bytes(cid)] -= n
            self._adjust_refs(c, namespace, deltas, now)
            # asset_chunks and this asset's own parent edges go by ON DELETE CASCADE; children's
            # edges naming it stay (lineage history)
            c.execute("DELETE FROM assets WHERE namespace = ? AND asset_id = ?",
                      (namespace, asset_id))

    def lineage(self, namespace: str, asset_id: str) -> list[AssetRecord]:
        self._need_namespace(namespace)
        with self._read() as c:
            self._load_asset(c, namespace, asset_id)  # NotFound for an unknown asset
            out: list[AssetRecord] = []
            seen = {asset_id}
            queue = [asset_id]
            while queue:  # breadth-first: nearest ancestors first
                nxt: list[str] = []
                for aid in queue:
                    for (pid,) in c.execute("SELECT parent_id FROM asset_parents WHERE "
                                            "namespace = ? AND asset_id = ? ORDER BY pos",
                                            (namespace, aid)):
                        if pid in seen:
                            continue
                        seen.add(pid)
                        try:
                            out.append(self._load_asset(c, namespace, pid))
                        except NotFound:
                            continue  # a deleted ancestor: its own parents are unknown now
                        nxt.append(pid)
                queue = nxt
        return out

    def _load_asset(self, c: sqlite3.Connection, namespace: str, asset_id: str) -> AssetRecord:
        r = c.execute("SELECT kind, size, stored_bytes, metadata_json, created_ns FROM assets "
                      "WHERE namespace = ? AND asset_id = ?", (namespace, asset_id)).fetchone()
        if r is None:
            raise NotFound(f"asset {asset_id} does not exist in namespace {namespace!r}")
        chunks = [ChunkRef(i, bytes(cid), n) for i, cid, n in c.execute(
            "SELECT idx, chunk_id, length FROM asset_chunks WHERE namespace = ? AND asset_id = ? "
            "ORDER BY idx", (namespace, asset_id))]
        parents = [ParentEdge(p, tr, d) for p, tr, d in c.execute(
            "SELECT parent_id, transform, transform_digest FROM asset_parents WHERE "
            "namespace = ? AND asset_id = ? ORDER BY pos", (namespace, asset_id))]
        return AssetRecord(asset_id=asset_id, kind=r[0], size=r[1], chunks=chunks,
                           metadata_json=r[3], parents=parents, stored_bytes=r[2],
                           created_ns=r[4])

