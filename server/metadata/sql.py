"""Row-level primitives of the metadata engine in SQL, shared by every SQL database.

Interface:
    Dialect(name, param="?", row_lock="", orphan_index="", share_lock="", tree_lock="",
            freeze_lock="")
                            what differs between SQL databases in these statements: the DB-API
                            placeholder, the suffix that locks rows read in a write transaction
                            ("FOR UPDATE" where rows must be locked; "" where the whole database
                            is, as SQLite's BEGIN IMMEDIATE), an index hint for orphan scans, the
                            suffix that keeps chunk rows a commit names from being deleted under
                            it, a statement (one "?": the tree id) that serialises the moves
                            of directories between parents within a tree, and one that a
                            snapshot runs first so that no write is half in it
    SQLTx(conn, dialect, mac=RowMac(), locking=False)
                            implements `store.Tx` over one DB-API connection; the store that made
                            it owns BEGIN/COMMIT (it runs these statements inside one transaction
                            or, for one-statement reads, in autocommit); `locking` for a write
                            transaction of a row-locking database; `mac` keys the row MACs
    SQLTx.bind(conn)        a locking SQLTx for one write transaction on `conn`, sharing this
                            one's statement caches

Row-locking databases (a non-empty `row_lock`): a write transaction locks a directory's row
before any row of its entries (`entry` locks the parent first), chunk rows in id order
(`adjust_refs`), so that concurrent rules mostly queue instead of deadlocking; `is_below` first
takes the tree's move lock (Linux's s_vfs_rename_mutex), since two directory moves each checking
the other's subtree before either commits could otherwise close a cycle.
    ATTR_COLUMNS            column list that `attr_of` turns into an `Attr`

Row MACs (row_mac.py): every write of an inode's size or generation and of a chunk-map slot
writes its row's MAC in the same transaction (an update that sets size, generation or mode
reads the new values back with RETURNING and, when the MAC they give differs from the row's,
writes it with a second UPDATE); every read of an
inode's attrs (inode, lookup, list_dir) and of slots (slots, slots_at, slot_length) checks it and
raises CorruptMetadata (DATA_LOSS) instead of returning a row that fails. `corrupt_rows` scans a
tree for fsck.

The statements use only SQL that SQLite (>= 3.35) and PostgreSQL both accept (RETURNING,
INSERT ... ON CONFLICT, WITH RECURSIVE); a database that needs something else gets a Dialect
field, not a copy of this module. The schema these statements expect is sqlite_schema.py's (and
postgres_schema.py's: the same tables in PostgreSQL types).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from aifs_core.types import (
    ROOT_INO,
    AssetRecord,
    Attr,
    ChunkRef,
    ChunkStats,
    DirEntry,
    Namespace,
    ParentEdge,
)
from aifs_server.metadata.row_mac import RowMac, corrupt
from aifs_server.metadata.sql_versions import VersionSQL

ATTR_COLUMNS = ("ino, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, "
                "data_bytes, generation")
_ATTR_I = ", ".join("i." + c.strip() for c in ATTR_COLUMNS.split(","))
# what a checked read selects: the attrs, then what only the MAC needs (at _SYM, _SYM + 1)
_CHECKED = ATTR_COLUMNS + ", symlink, mac"
_CHECKED_I = _ATTR_I + ", i.symlink, i.mac"
_SYM = 12
_IN_BATCH = 500  # ids per "IN (...)" query (well under SQLite's variable limit)
# a new row's epoch (history_schema.py): its tree's current one (one "?": the tree id)
_BORN = "(SELECT epoch FROM trees WHERE tree_id = ?)"

# update_inode may set these columns and add to those (names are never taken from callers' data)
_SETTABLE = frozenset({"mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns",
                       "nlink", "parent", "generation", "asset_id", "asset_gen"})
_ADDABLE = frozenset({"nlink", "data_bytes", "generation"})
_MACCED = frozenset({"size", "generation", "mode"})  # an update of one of these re-MACs the row
_SCAN_PAGE = 2000  # rows per page of corrupt_rows
_INODE_WHAT = "its size, generation, type or link target"   # what a failing inode MAC means


def attr_of(r: Sequence[Any]) -> Attr:
    """An `Attr` from a row in ATTR_COLUMNS order (`blocks` from data_bytes)."""
    return Attr(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                (r[10] + 511) // 512, r[11])


@dataclass(frozen=True)
class Dialect:
    name: str
    param: str = "?"
    row_lock: str = ""
    orphan_index: str = ""
    share_lock: str = ""
    tree_lock: str = ""
    freeze_lock: str = ""   # taken by a snapshot first (sql_versions.freeze)


class SQLTx(VersionSQL):
    """`store.Tx` in SQL (see the module docstring); versions' primitives in sql_versions."""

    def __init__(self, conn: Any, dialect: Dialect, mac: RowMac | None = None, *,
                 locking: bool = False) -> None:
        self._c = conn
        self._d = dialect
        self._mac = mac or RowMac()
        self._lock = (" " + dialect.row_lock) if locking and dialect.row_lock else ""
        self._share = (" " + dialect.share_lock) if locking and dialect.share_lock else ""
        self._tree_lock = dialect.tree_lock if locking else ""
        # (tree_id, ino) of the inode rows this transaction has locked (row-locking databases)
        self._locked: set[tuple[int, int]] = set()
        self._cache: dict[str, str] = {}
        self._updates: dict[tuple[tuple[str, ...], tuple[str, ...]], str] = {}
        self._views: dict[int, Any] = {}          # sql_views: tree id -> (base, epoch) | None
        self._rewrites: dict[tuple[Any, ...], str] = {}

    def bind(self, conn: Any, locking: bool = True) -> SQLTx:
        tx = SQLTx(conn, self._d, self._mac, locking=locking)
        # built once, shared (GIL-safe)
        tx._cache, tx._updates, tx._views, tx._rewrites = (self._cache, self._updates,
                                                           self._views, self._rewrites)
        tx.begin_views()   # one transaction (sql_views: what it reads of pending branches)
        return tx

    def _q(self, sql: str) -> str:
        if self._d.param == "?":
            return sql
        out = self._cache.get(sql)
        if out is None:
            out = self._cache[sql] = sql.replace("?", self._d.param)
        return out

    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self._c.execute(self._q(sql), params)

    # For a module that keeps its own table in the engine's transactions (request_log.py):
    # one statement ("?" placeholders) in this transaction, and which database it runs on.
    execute = _x

    @property
    def dialect_name(self) -> str:
        return self._d.name

    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        rows = list(rows)
        if rows:  # a cursor's: psycopg's connections have no executemany
            self._c.cursor().executemany(self._q(sql), rows)

    # --- namespaces --------------------------------------------------------------------------
    def insert_namespace(self, ns: Namespace) -> bool:
        return bool(self._x(
            "INSERT INTO namespaces (name, chunk_size, zstd_level, kms_key_id, created_ns) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (ns.name, ns.chunk_size, ns.zstd_level, ns.kms_key_id, ns.created_ns)).rowcount == 1)

    def get_namespace(self, name: str) -> Namespace | None:
        r = self._x("SELECT name, chunk_size, zstd_level, kms_key_id, created_ns FROM namespaces "
                    "WHERE name = ?", (name,)).fetchone()
        return None if r is None else Namespace(*r)

    def list_namespaces(self) -> list[Namespace]:
        return [Namespace(*r) for r in self._x(
            "SELECT name, chunk_size, zstd_level, kms_key_id, created_ns FROM namespaces "
            "ORDER BY name").fetchall()]

    # --- trees -------------------------------------------------------------------------------
    def get_tree(self, namespace: str, branch: str) -> tuple[int, int] | None:
        """(tree_id, chunk size of its namespace), or None."""
        r = self._x("SELECT t.tree_id, n.chunk_size FROM trees t JOIN namespaces n "
                    "ON n.name = t.namespace WHERE t.namespace = ? AND t.branch = ?",
                    (namespace, branch)).fetchone()
        return None if r is None else (r[0], r[1])

    def insert_tree(self, namespace: str, branch: str, now: int) -> int | None:
        """A new tree's id (its next inode number is ROOT_INO + 1); None when it exists."""
        r = self._x("INSERT INTO trees (namespace, branch, next_ino, created_ns) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING RETURNING tree_id",
                    (namespace, branch, ROOT_INO + 1, now)).fetchone()
        return None if r is None else int(r[0])

    def list_branches(self, namespace: str) -> list[str]:
        return [r[0] for r in self._x("SELECT branch FROM trees WHERE namespace = ? "
                                      "ORDER BY branch", (namespace,)).fetchall()]

    def take_ino(self, tree_id: int) -> int:
        """Allocate the tree's next inode number (never reused)."""
        return int(self._x("UPDATE trees SET next_ino = next_ino + 1 WHERE tree_id = ? "
                           "RETURNING next_ino - 1", (tree_id,)).fetchone()[0])

    def tree_totals(self, tree_id: int) -> tuple[int, int]:
        """(inodes, sum of their sizes)."""
        r = self._rx((tree_id,), "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM inodes "
                     "WHERE tree_id = ?", (tree_id,)).fetchone()  # int(): PostgreSQL's SUM of BIGINT is NUMERIC
        return int(r[0]), int(r[1])

    def orphans(self, tree_id: int) -> list[int]:
        """Inodes with nlink 0, ascending."""
        return [r[0] for r in self._rx(
            (tree_id,),
            f"SELECT ino FROM inodes {self._d.orphan_index} WHERE tree_id = ? AND nlink = 0 "
            "ORDER BY ino", (tree_id,)).fetchall()]

    # --- inodes ------------------------------------------------------------------------------
    def _checked(self, tree_id: int, r: Sequence[Any], at: int = 0) -> Attr:
        """The attrs of a row selected as _CHECKED from index `at`; CorruptMetadata when its MAC
        does not match."""
        row = r[at:] if at else r
        if not self._mac.inode_ok(row, _SYM):
            raise corrupt(tree_id, row[0], _INODE_WHAT)
        return attr_of(row)

    def inode(self, tree_id: int, ino: int) -> Attr | None:
        r = self._rx((tree_id,), f"SELECT {_CHECKED} FROM inodes WHERE tree_id = ? AND "
                     f"ino = ?{self._lock}", (tree_id, ino)).fetchone()
        if self._lock:
            self._locked.add((tree_id, ino))
        return None if r is None else self._checked(tree_id, r)

    def insert_inode(self, tree_id: int, a: Attr, parent: int, symlink: bytes | None) -> None:
        """A new inode row from `a` (its blocks are 0); `parent` is the parent directory of a
        directory, 0 otherwise."""
        self._x("INSERT INTO inodes (tree_id, ino, mode, nlink, uid, gid, rdev, size, atime_ns, "
                "mtime_ns, ctime_ns, generation, parent, symlink, mac, born) "
                f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, {_BORN})",
                (tree_id, a.ino, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.atime_ns,
                 a.mtime_ns, a.ctime_ns, a.generation, parent, symlink,
                 self._mac.inode(a.ino, a.mode, a.size, a.generation, symlink), tree_id))

    def update_inode(self, tree_id: int, ino: int, set: dict[str, Any],
                     add: dict[str, int] | None = None) -> Attr | None:
        """Set columns to values and add deltas to others; the attrs after (None: no inode)."""
        add = add or {}
        key = (tuple(set), tuple(add))
        sql = self._updates.get(key)
        if sql is None:  # a handful of shapes, built once: the hot path only looks them up
            if not (set.keys() <= _SETTABLE and add.keys() <= _ADDABLE):
                raise ValueError(f"update_inode: unknown columns in {set} / {add}")
            cols = [f"{k} = ?" for k in set] + [f"{k} = {k} + ?" for k in add]
            macced = bool(_MACCED & (set.keys() | add.keys()))
            sql = self._updates[key] = self._q(
                f"UPDATE inodes SET {', '.join(cols)} WHERE tree_id = ? AND ino = ? "
                f"RETURNING {ATTR_COLUMNS}" + (", symlink, mac" if macced else ""))
        r = self._c.execute(sql, (*set.values(), *add.values(), tree_id, ino)).fetchone()
        if r is None:
            return None
        if len(r) > _SYM:  # size, generation or mode set: the row's MAC, same transaction
            mac = self._mac.inode(r[0], r[1], r[6], r[11], r[_SYM])
            if r[_SYM + 1] is None or mac != bytes(r[_SYM + 1]):   # chmod, utimens: the same
                self._x("UPDATE inodes SET mac = ? WHERE tree_id = ? AND ino = ?",
                        (mac, tree_id, ino))
        return attr_of(r)

    def inode_asset(self, tree_id: int, ino: int) -> tuple[str, int, int] | None:
        """(asset_id, generation it was set for, current generation), or None: no inode."""
        r = self._rx((tree_id,), "SELECT asset_id, asset_gen, generation FROM inodes "
                     "WHERE tree_id = ? AND ino = ?", (tree_id, ino)).fetchone()
        return None if r is None else (r[0], r[1], r[2])

    def set_inode_asset(self, tree_id: int, ino: int, generation: int, asset_id: str) -> bool:
        """Name the asset of the file's content at `generation`; False when the inode is gone
        or its generation moved on."""
        return bool(self._x("UPDATE inodes SET asset_id = ?, asset_gen = ? WHERE tree_id = ? "
                            "AND ino = ? AND generation = ?",
                            (asset_id, generation, tree_id, ino, generation)).rowcount)

    def symlink_of(self, tree_id: int, ino: int) -> tuple[int, bytes | None] | None:
        """(mode, symlink target or None), or None: no inode."""
        r = self._rx((tree_id,), "SELECT mode, symlink FROM inodes WHERE tree_id = ? AND "
                     "ino = ?", (tree_id, ino)).fetchone()
        return None if r is None else (r[0], None if r[1] is None else bytes(r[1]))

    def delete_inode(self, tree_id: int, ino: int) -> None:
        self._x("DELETE FROM inodes WHERE tree_id = ? AND ino = ?", (tree_id, ino))

    def is_below(self, tree_id: int, ino: int, dir_ino: int) -> bool:
        """True when directory `ino` is `dir_ino` or lies below it (walks parents upwards)."""
        if self._tree_lock:
            self._x(self._tree_lock, (tree_id,))
        # CAST: PostgreSQL types a bare parameter by its value (int2 for small ones), and the
        # recursive term's column is BIGINT
        return self._x(
            "WITH RECURSIVE up(ino) AS (SELECT CAST(? AS BIGINT) UNION "
            "SELECT i.parent FROM inodes i JOIN up ON i.tree_id = ? AND i.ino = up.ino "
            "WHERE up.ino != ?) SELECT 1 FROM up WHERE ino = ? LIMIT 1",
            (ino, tree_id, ROOT_INO, dir_ino)).fetchone() is not None

    # --- dentries ----------------------------------------------------------------------------
    def entry(self, tree_id: int, parent: int, name: bytes) -> tuple[int, int, int] | None:
        """(dentry id, ino, mode) of `name` in `parent`, or None."""
        if self._view(tree_id):
            return self._v_entry(tree_id, parent, name)
        if self._lock and (tree_id, parent) not in self._locked:
            # the directory before its entry: every rule locks in that order (no deadlock
            # between an unlink and a rename or create in one directory)
            self._x(f"SELECT 1 FROM inodes WHERE tree_id = ? AND ino = ?{self._lock}",
                    (tree_id, parent))
            self._locked.add((tree_id, parent))
        r = self._x("SELECT d.id, d.ino, i.mode FROM dentries d JOIN inodes i "
                    "ON i.tree_id = d.tree_id AND i.ino = d.ino "
                    f"WHERE d.tree_id = ? AND d.parent = ? AND d.name = ?{self._lock}",
                    (tree_id, parent, name)).fetchone()
        return None if r is None else (r[0], r[1], r[2])

    def lookup(self, tree_id: int, parent: int, name: bytes) -> Attr | None:
        if self._view(tree_id):
            e = self._v_entry(tree_id, parent, name)
            return None if e is None else self.inode(tree_id, e[1])
        r = self._x(f"SELECT {_CHECKED_I} FROM dentries d JOIN inodes i "
                    "ON i.tree_id = d.tree_id AND i.ino = d.ino "
                    "WHERE d.tree_id = ? AND d.parent = ? AND d.name = ?",
                    (tree_id, parent, name)).fetchone()
        return None if r is None else self._checked(tree_id, r)

    def dentry_id(self, tree_id: int, parent: int, name: bytes) -> int:
        """`name`'s dentry id in `parent` (list_dir's cookie of it); 0 when absent, and in a
        view (whose listing merges trees: its cookies are not one table's ids)."""
        if self._view(tree_id):
            return 0
        r = self._x("SELECT id FROM dentries WHERE tree_id = ? AND parent = ? AND name = ?",
                    (tree_id, parent, name)).fetchone()
        return 0 if r is None else int(r[0])

    def insert_dentry(self, tree_id: int, parent: int, name: bytes, ino: int) -> bool:
        """False when `name` already exists in `parent`."""
        return bool(self._x("INSERT INTO dentries (tree_id, parent, name, ino, born) VALUES "
                            f"(?, ?, ?, ?, {_BORN}) ON CONFLICT DO NOTHING",
                            (tree_id, parent, name, ino, tree_id)).rowcount == 1)

    def delete_dentry(self, dentry_id: int) -> None:
        self._x("DELETE FROM dentries WHERE id = ?", (dentry_id,))

    def move_dentry(self, dentry_id: int, parent: int, name: bytes) -> None:
        self._x("UPDATE dentries SET parent = ?, name = ? WHERE id = ?",
                (parent, name, dentry_id))

    def point_dentry(self, dentry_id: int, ino: int) -> None:
        self._x("UPDATE dentries SET ino = ? WHERE id = ?", (ino, dentry_id))

    def name_of(self, tree_id: int, ino: int) -> tuple[int, bytes] | None:
        """(parent, name) of one entry naming `ino` (the oldest), or None: no name."""
        r = self._rx((tree_id,), "SELECT parent, name FROM dentries WHERE tree_id = ? AND "
                     "ino = ? ORDER BY id LIMIT 1", (tree_id, ino)).fetchone()
        return None if r is None else (int(r[0]), bytes(r[1]))

    def has_entries(self, tree_id: int, ino: int) -> bool:
        return self._rx((tree_id,), "SELECT 1 FROM dentries WHERE tree_id = ? AND parent = ? "
                        "LIMIT 1", (tree_id, ino)).fetchone() is not None

    def list_dir(self, tree_id: int, ino: int, cookie: int, limit: int) -> list[DirEntry]:
        """Up to `limit` entries after `cookie` (the dentry id), in cookie order."""
        if self._view(tree_id):
            rows = self._v_list_dir(tree_id, ino, cookie, limit, _CHECKED)
        else:
            rows = self._x(f"SELECT d.id, d.name, {_CHECKED_I} FROM dentries d JOIN inodes i "
                           "ON i.tree_id = d.tree_id AND i.ino = d.ino "
                           "WHERE d.tree_id = ? AND d.parent = ? AND d.id > ? ORDER BY d.id "
                           "LIMIT ?", (tree_id, ino, cookie, limit)).fetchall()
        # readdir hands these attrs to the kernel (READDIRPLUS): a row that fails is refused
        # like a getattr of it, and so is the page that holds it. One loop, no row slices
        # (the attrs start at 2): a listing pays this per entry.
        ok, at = self._mac.inode_ok, _SYM + 2
        out = []
        for r in rows:
            if not ok(r, at, 2):
                raise corrupt(tree_id, r[2], _INODE_WHAT)
            out.append(DirEntry(bytes(r[1]), Attr(r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9],
                                                  r[10], r[11], (r[12] + 511) // 512, r[13]),
                                r[0]))
        return out

    # --- xattrs ------------------------------------------------------------------------------
    def xattr(self, tree_id: int, ino: int, name: bytes) -> bytes | None:
        r = self._rx((tree_id,), "SELECT value FROM xattrs WHERE tree_id = ? AND ino = ? AND "
                     "name = ?", (tree_id, ino, name)).fetchone()
        return None if r is None else bytes(r[0])

    def put_xattr(self, tree_id: int, ino: int, name: bytes, value: bytes) -> None:
        self._x(f"INSERT INTO xattrs (tree_id, ino, name, value, born) VALUES (?, ?, ?, ?, {_BORN}) "
                "ON CONFLICT (tree_id, ino, name) DO UPDATE SET value = excluded.value",
                (tree_id, ino, name, value, tree_id))

    def delete_xattr(self, tree_id: int, ino: int, name: bytes) -> bool:
        return bool(self._x("DELETE FROM xattrs WHERE tree_id = ? AND ino = ? AND name = ?",
                            (tree_id, ino, name)).rowcount)

    def xattr_names(self, tree_id: int, ino: int) -> list[bytes]:
        return [bytes(r[0]) for r in self._rx((tree_id,), "SELECT name FROM xattrs WHERE "
                                              "tree_id = ? AND ino = ? ORDER BY name",
                                              (tree_id, ino)).fetchall()]

    def delete_xattrs(self, tree_id: int, ino: int) -> None:
        self._x("DELETE FROM xattrs WHERE tree_id = ? AND ino = ?", (tree_id, ino))

    # --- chunk maps --------------------------------------------------------------------------
    def _slot(self, tree_id: int, ino: int, idx: int, cid: Any, n: Any, mac: Any
              ) -> tuple[bytes, int]:
        """(chunk id, length) of a slot row; CorruptMetadata when its MAC does not match."""
        if not self._mac.slot_ok(ino, idx, cid, n, mac):
            raise corrupt(tree_id, ino, "its chunk id, length or index", idx)
        return bytes(cid), n

    def slots(self, tree_id: int, ino: int, first: int, end: int) -> list[ChunkRef]:
        """The file's chunk-map slots with first <= index < end, by index."""
        return [ChunkRef(i, *self._slot(tree_id, ino, i, cid, n, mac))
                for i, cid, n, mac in self._rx(
                    (tree_id,),
                    "SELECT idx, chunk_id, length, mac FROM chunk_maps WHERE tree_id = ? AND "
                    "ino = ? AND idx >= ? AND idx < ? ORDER BY idx",
                    (tree_id, ino, first, end)).fetchall()]

    def maps_of(self, tree_id: int, inos: Sequence[int]) -> dict[int, list[ChunkRef]]:
        """Whole chunk maps of several files (by index; a file with no slots is absent): one
        query per _IN_BATCH files instead of one per file (a ReadDir page's maps)."""
        out: dict[int, list[ChunkRef]] = {}
        for ino, i, cid, n, mac in sorted(self._rin(
                tree_id, "SELECT ino, idx, chunk_id, length, mac FROM chunk_maps WHERE "
                "tree_id = ? AND ino IN ({})", inos, tree_id), key=lambda r: (r[0], r[1])):
            out.setdefault(int(ino), []).append(
                ChunkRef(i, *self._slot(tree_id, int(ino), i, cid, n, mac)))
        return out

    def slots_at(self, tree_id: int, ino: int, idxs: list[int]) -> dict[int, tuple[bytes, int]]:
        """index -> (chunk id, length) for those of `idxs` that are mapped."""
        out: dict[int, tuple[bytes, int]] = {}
        for i in range(0, len(idxs), _IN_BATCH):
            part = idxs[i:i + _IN_BATCH]
            for idx, cid, n, mac in self._rx(
                    (tree_id,),
                    "SELECT idx, chunk_id, length, mac FROM chunk_maps WHERE tree_id = ? AND "
                    "ino = ? AND idx IN (" + ",".join("?" * len(part)) + ")" + self._lock,
                    (tree_id, ino, *part)):
                out[idx] = self._slot(tree_id, ino, idx, cid, n, mac)
        return out

    def put_slots(self, tree_id: int, ino: int, refs: list[ChunkRef]) -> None:
        slot = self._mac.slot
        self._many("INSERT INTO chunk_maps (tree_id, ino, idx, chunk_id, length, mac, born) "
                   f"VALUES (?, ?, ?, ?, ?, ?, {_BORN}) ON CONFLICT (tree_id, ino, idx) DO UPDATE "
                   "SET chunk_id = excluded.chunk_id, length = excluded.length, "
                   "mac = excluded.mac",
                   [(tree_id, ino, r.index, r.chunk_id, r.length,
                     slot(ino, r.index, r.chunk_id, r.length), tree_id) for r in refs])

    def delete_slots(self, tree_id: int, ino: int, idxs: list[int]) -> None:
        self._many("DELETE FROM chunk_maps WHERE tree_id = ? AND ino = ? AND idx = ?",
                   [(tree_id, ino, i) for i in idxs])

    def _released(self, tree_id: int, ino: int, rows: Iterable[Sequence[Any]]
                  ) -> list[tuple[bytes, int]]:
        """(chunk id, length) of the slot rows (idx, chunk_id, length, mac) whose MAC matches.
        A damaged row's chunk id is not the one its refcount counted: releasing it could drop
        a chunk other files use to 0 (and GC would delete it), so it is logged and skipped (the
        chunk it named keeps one reference too many: kept, never lost)."""
        out: list[tuple[bytes, int]] = []
        for idx, cid, n, mac in rows:
            if self._mac.slot_ok(ino, idx, cid, n, mac):
                out.append((bytes(cid), n))
            else:
                corrupt(tree_id, ino, "its chunk id, length or index; its reference is not "
                        "released", idx)
        return out

    def cut_slots(self, tree_id: int, ino: int, first: int) -> list[tuple[bytes, int]]:
        """Delete the slots at index >= first; returns their (chunk id, length) (of the rows
        whose MAC matches: `_released`)."""
        return self._released(tree_id, ino, self._x(
            "DELETE FROM chunk_maps WHERE tree_id = ? AND ino = ? AND idx >= ? "
            "RETURNING idx, chunk_id, length, mac", (tree_id, ino, first)).fetchall())

    def _slot_row(self, tree_id: int, ino: int, idx: int) -> tuple[bytes, int] | None:
        r = self._rx((tree_id,), "SELECT chunk_id, length, mac FROM chunk_maps WHERE "
                     "tree_id = ? AND ino = ? AND idx = ?" + self._lock,
                     (tree_id, ino, idx)).fetchone()
        return None if r is None else self._slot(tree_id, ino, idx, r[0], r[1], r[2])

    def slot_length(self, tree_id: int, ino: int, idx: int) -> int | None:
        r = self._slot_row(tree_id, ino, idx)
        return None if r is None else int(r[1])

    def set_slot_length(self, tree_id: int, ino: int, idx: int, length: int) -> None:
        r = self._slot_row(tree_id, ino, idx)   # checked: its chunk id goes into the new MAC
        if r is not None:
            self._x("UPDATE chunk_maps SET length = ?, mac = ? WHERE tree_id = ? AND ino = ? "
                    "AND idx = ?", (length, self._mac.slot(ino, idx, r[0], length), tree_id,
                                    ino, idx))

    def slot_chunk_counts(self, tree_id: int, ino: int) -> list[tuple[bytes, int]]:
        """(chunk id, slots naming it) over the file's whole map (rows whose MAC matches:
        `_released`)."""
        counts = Counter(cid for cid, _n in self._released(tree_id, ino, self._rx(
            (tree_id,),
            "SELECT idx, chunk_id, length, mac FROM chunk_maps WHERE tree_id = ? AND ino = ?",
            (tree_id, ino)).fetchall()))
        return list(counts.items())

    def delete_all_slots(self, tree_id: int, ino: int) -> None:
        self._x("DELETE FROM chunk_maps WHERE tree_id = ? AND ino = ?", (tree_id, ino))

    # --- integrity (fsck) --------------------------------------------------------------------
    def corrupt_rows(self, tree_id: int) -> list[tuple[int, int | None]]:
        """(ino, None) for every inode row and (ino, idx) for every chunk-map row of the tree
        whose MAC does not match, by ino; read page by page (a tree may hold millions)."""
        bad: list[tuple[int, int | None]] = []
        after = -1
        while rows := self._rx((tree_id,), f"SELECT {_CHECKED} FROM inodes WHERE tree_id = ? "
                               "AND ino > ? ORDER BY ino LIMIT ?",
                               (tree_id, after, _SCAN_PAGE)).fetchall():
            bad += [(int(r[0]), None) for r in rows if not self._mac.inode_ok(r, _SYM)]
            after = rows[-1][0]
        at = (-1, -1)
        while rows := self._rx((tree_id,), "SELECT ino, idx, chunk_id, length, mac FROM "
                               "chunk_maps WHERE tree_id = ? AND (ino > ? OR (ino = ? AND "
                               "idx > ?)) ORDER BY ino, idx LIMIT ?",
                               (tree_id, at[0], at[0], at[1], _SCAN_PAGE)).fetchall():
            bad += [(int(r[0]), int(r[1])) for r in rows if not self._mac.slot_ok(*r)]
            at = (rows[-1][0], rows[-1][1])
        return sorted(bad, key=lambda b: (b[0], -1 if b[1] is None else b[1]))

    def dentry_of(self, tree_id: int, ino: int) -> tuple[int, bytes] | None:
        """(parent, name) of one of the inode's names, or None: it has none."""
        r = self._rx((tree_id,), "SELECT parent, name FROM dentries WHERE tree_id = ? AND "
                     "ino = ? LIMIT 1", (tree_id, ino)).fetchone()
        return None if r is None else (int(r[0]), bytes(r[1]))

    # --- chunk records -----------------------------------------------------------------------
    def recorded(self, namespace: str, ids: Iterable[bytes]) -> dict[bytes, int]:
        """chunk id -> raw_len for those of `ids` recorded in `namespace`."""
        found: dict[bytes, int] = {}
        uniq = list(dict.fromkeys(ids))
        for i in range(0, len(uniq), _IN_BATCH):
            part = uniq[i:i + _IN_BATCH]
            for cid, raw in self._x("SELECT chunk_id, raw_len FROM chunks WHERE namespace = ? "
                                    "AND chunk_id IN (" + ",".join("?" * len(part)) + ")"
                                    + self._share, (namespace, *part)):
                found[bytes(cid)] = raw
        return found

    def stored_bytes(self, namespace: str, ids: Iterable[bytes]) -> int:
        """Sum of stored_len over the distinct recorded chunks among `ids`."""
        total = 0
        uniq = list(dict.fromkeys(ids))
        for i in range(0, len(uniq), _IN_BATCH):
            part = uniq[i:i + _IN_BATCH]
            total += int(self._x("SELECT COALESCE(SUM(stored_len), 0) FROM chunks WHERE "
                             "namespace = ? AND chunk_id IN (" + ",".join("?" * len(part)) + ")",
                             (namespace, *part)).fetchone()[0])  # NUMERIC in PostgreSQL
        return total

    def insert_chunk(self, namespace: str, chunk_id: bytes, raw_len: int, stored_len: int,
                     now: int) -> bool:
        """Record an unreferenced chunk (grace clock starting now); False when recorded."""
        return bool(self._x(
            "INSERT INTO chunks (namespace, chunk_id, raw_len, stored_len, refcount, "
            "recorded_ns, unreferenced_since_ns) VALUES (?, ?, ?, ?, 0, ?, ?) "
            "ON CONFLICT DO NOTHING",
            (namespace, chunk_id, raw_len, stored_len, now, now)).rowcount == 1)

    def restart_grace(self, namespace: str, chunk_id: bytes, now: int) -> None:
        """Restart the GC grace clock of the chunk if it is unreferenced."""
        self._x("UPDATE chunks SET unreferenced_since_ns = ? WHERE namespace = ? AND "
                "chunk_id = ? AND refcount = 0", (now, namespace, chunk_id))

    def adjust_refs(self, namespace: str, deltas: Counter[bytes], now: int) -> None:
        """Apply refcount changes; a count reaching 0 starts the GC grace clock, >0 stops it."""
        self._many(
            "UPDATE chunks SET refcount = refcount + ?, unreferenced_since_ns = CASE "
            "WHEN refcount + ? > 0 THEN NULL WHEN refcount > 0 THEN ? "
            "ELSE unreferenced_since_ns END WHERE namespace = ? AND chunk_id = ?",
            # in id order: two commits naming the same chunks lock their rows in one order
            [(d, d, now, namespace, cid) for cid, d in sorted(deltas.items()) if d])

    def chunk_totals(self, namespace: str) -> ChunkStats:
        r = self._x("SELECT COUNT(*), COALESCE(SUM(raw_len), 0), COALESCE(SUM(stored_len), 0) "
                    "FROM chunks WHERE namespace = ?", (namespace,)).fetchone()
        return ChunkStats(chunks=int(r[0]), raw_bytes=int(r[1]), stored_bytes=int(r[2]))

    def chunk_ids(self, namespace: str, after: bytes, limit: int) -> list[bytes]:
        """Up to `limit` recorded chunk ids greater than `after`, ascending."""
        return [bytes(r[0]) for r in self._x(
            "SELECT chunk_id FROM chunks WHERE namespace = ? AND chunk_id > ? "
            "ORDER BY chunk_id LIMIT ?", (namespace, after, limit)).fetchall()]

    def unreferenced_chunks(self, namespace: str, before_ns: int) -> list[bytes]:
        """Chunks unreferenced since before `before_ns`, longest unreferenced first."""
        return [bytes(r[0]) for r in self._x(
            "SELECT chunk_id FROM chunks WHERE namespace = ? AND refcount = 0 "
            "AND unreferenced_since_ns < ? ORDER BY unreferenced_since_ns",
            (namespace, before_ns)).fetchall()]

    def unreferenced_chunk_times(self, namespace: str, from_ns: int, before_ns: int, limit: int
                                 ) -> list[tuple[bytes, int]]:
        """Up to `limit` (chunk id, unreferenced since), since in [from_ns, before_ns), oldest
        first."""
        return [(bytes(r[0]), int(r[1])) for r in self._x(
            "SELECT chunk_id, unreferenced_since_ns FROM chunks WHERE namespace = ? AND "
            "refcount = 0 AND unreferenced_since_ns >= ? AND unreferenced_since_ns < ? "
            "ORDER BY unreferenced_since_ns LIMIT ?",
            (namespace, from_ns, before_ns, limit)).fetchall()]

    def delete_unreferenced_chunk(self, namespace: str, chunk_id: bytes) -> bool:
        return bool(self._x("DELETE FROM chunks WHERE namespace = ? AND chunk_id = ? AND "
                            "refcount = 0", (namespace, chunk_id)).rowcount == 1)

    # --- assets ------------------------------------------------------------------------------
    def asset_exists(self, namespace: str, asset_id: str) -> bool:
        # locked in a write transaction: two deletes of one asset must not both release its refs
        return self._x("SELECT 1 FROM assets WHERE namespace = ? AND asset_id = ?" + self._lock,
                       (namespace, asset_id)).fetchone() is not None

    def asset(self, namespace: str, asset_id: str) -> AssetRecord | None:
        """The asset with its chunk list and parent edges, or None."""
        r = self._x("SELECT kind, size, stored_bytes, metadata_json, created_ns FROM assets "
                    "WHERE namespace = ? AND asset_id = ?", (namespace, asset_id)).fetchone()
        if r is None:
            return None
        chunks = [ChunkRef(i, bytes(cid), n) for i, cid, n in self._x(
            "SELECT idx, chunk_id, length FROM asset_chunks WHERE namespace = ? AND asset_id = ? "
            "ORDER BY idx", (namespace, asset_id))]
        parents = [ParentEdge(p, tr, d) for p, tr, d in self._x(
            "SELECT parent_id, transform, transform_digest FROM asset_parents WHERE "
            "namespace = ? AND asset_id = ? ORDER BY pos", (namespace, asset_id))]
        return AssetRecord(asset_id=asset_id, kind=r[0], size=r[1], chunks=chunks,
                           metadata_json=r[3], parents=parents, stored_bytes=r[2],
                           created_ns=r[4])

    def insert_asset(self, namespace: str, a: AssetRecord) -> None:
        """The asset row (as given: stored_bytes, metadata_json and created_ns filled in), its
        chunk list and its parent edges."""
        self._x("INSERT INTO assets (namespace, asset_id, kind, size, stored_bytes, "
                "metadata_json, created_ns) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (namespace, a.asset_id, a.kind, a.size, a.stored_bytes, a.metadata_json,
                 a.created_ns))
        self._many("INSERT INTO asset_chunks (namespace, asset_id, idx, chunk_id, length) "
                   "VALUES (?, ?, ?, ?, ?)",
                   [(namespace, a.asset_id, ch.index, ch.chunk_id, ch.length)
                    for ch in a.chunks])
        self._many("INSERT INTO asset_parents (namespace, asset_id, pos, parent_id, "
                   "transform, transform_digest) VALUES (?, ?, ?, ?, ?, ?)",
                   [(namespace, a.asset_id, i, p.parent_id, p.transform, p.transform_digest)
                    for i, p in enumerate(a.parents)])

    def asset_chunk_counts(self, namespace: str, asset_id: str) -> list[tuple[bytes, int]]:
        """(chunk id, entries naming it) over the asset's chunk list."""
        return [(bytes(cid), n) for cid, n in self._x(
            "SELECT chunk_id, COUNT(*) FROM asset_chunks WHERE namespace = ? AND asset_id = ? "
            "GROUP BY chunk_id", (namespace, asset_id)).fetchall()]

    def delete_asset(self, namespace: str, asset_id: str) -> None:
        """The asset row; its chunk list and its own parent edges go by ON DELETE CASCADE,
        children's edges naming it stay (lineage history)."""
        self._x("DELETE FROM assets WHERE namespace = ? AND asset_id = ?", (namespace, asset_id))

    def asset_ids(self, namespace: str, kind: str, after: str, limit: int) -> list[str]:
        """Up to `limit` asset ids greater than `after` (of `kind` unless empty), ascending."""
        if kind:
            rows = self._x("SELECT asset_id FROM assets WHERE namespace = ? AND kind = ? "
                           "AND asset_id > ? ORDER BY asset_id LIMIT ?",
                           (namespace, kind, after, limit)).fetchall()
        else:
            rows = self._x("SELECT asset_id FROM assets WHERE namespace = ? "
                           "AND asset_id > ? ORDER BY asset_id LIMIT ?",
                           (namespace, after, limit)).fetchall()
        return [r[0] for r in rows]

    def parent_ids(self, namespace: str, asset_id: str) -> list[str]:
        """The asset's parent ids in edge order."""
        return [r[0] for r in self._x("SELECT parent_id FROM asset_parents WHERE namespace = ? "
                                      "AND asset_id = ? ORDER BY pos",
                                      (namespace, asset_id)).fetchall()]
