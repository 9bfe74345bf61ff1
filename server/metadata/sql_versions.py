"""Row primitives of versions (snapshots, hashes, tags, branch logs) in SQL; mixed into SQLTx.

Interface (the `store.Tx` methods under "versions"; rules in aifs_server.versions):
    copy_tree_rows(src, dst) -> n copy every linked inode of tree `src` with its names, xattrs
                                  and chunk map into the empty tree `dst`, inside the database;
                                  the number of inodes copied
    delete_tree_rows(tree_id)     drop every row of a tree (not the tree row); delete_tree(id)
    add_tree_refs(ns, tree_id, sign, now)   refcount += sign * (slots of the tree naming the
                                  chunk), for every chunk the tree names, in one statement
                                  (records' adjust_refs rule for unreferenced_since_ns)
    hash_inputs(tree_id)          (inodes, dentries, slots, xattrs) row iterators for hashing
    dir_rows(tree_id, ino)        one directory's entries with what their hashes cover
    dir_xattrs / dir_slots        the xattrs / chunk-map slots of a directory's entries
    changed_nodes(new, old)       (ino, is a parent of a changed one) of the nodes of `new`
                                  whose hashed rows differ from `old`'s, and their parents
    dir_parents(tree_id, inos)    (ino, inodes.parent) of those inodes (directories' parent)
    hash_inputs_of(tree_id, inos) hash_inputs restricted to those inodes (entries: of those
                                  directories)
    node_hashes_of(tree_id, inos) / copy_node_hashes(src, dst) (of dst's linked inodes)
    put_node_hashes / node_hashes / node_hash
    insert_snapshot / snapshot / list_snapshots / delete_snapshot
    insert_tag (False: exists) / tag / list_tags / delete_tag
    append_log / branch_log / delete_log

Statements are SQL that SQLite and PostgreSQL both accept, like sql.py's; the tables are
schema version 2 (sqlite_schema._V2, postgres_schema._V2) and the row MAC columns of version 3
(SQLite) / 4 (PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# mac: copied as it is (row MACs do not cover the tree id: row_mac.py), so that a copy stays
# one INSERT ... SELECT however many rows it holds
_INODE_COLS = ("ino, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, "
               "data_bytes, generation, parent, symlink, asset_id, asset_gen, mac")
_IN_BATCH = 500  # ids per "IN (...)" query (as sql.py: under SQLite's variable limit)
_SNAP_COLS = "snap_id, tree_id, branch, parents, created_ns, message, root_hash, signature"


class VersionSQL:
    """Mixin for sql.SQLTx: needs `_x(sql, params)` and `_many(sql, rows)`."""

    _d: Any                                                            # from SQLTx: the Dialect
    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any: ...     # from SQLTx
    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...  # from SQLTx

    # --- whole trees -------------------------------------------------------------------------
    def copy_tree_rows(self, src: int, dst: int) -> int:
        # unlinked (nlink 0) inodes are open files waiting for their last close: not part of
        # the tree's committed state, and they would pin chunks in the copy forever
        n = self._x(f"INSERT INTO inodes (tree_id, {_INODE_COLS}) SELECT ?, {_INODE_COLS} "
                    "FROM inodes WHERE tree_id = ? AND nlink > 0", (dst, src)).rowcount
        # (parent, id): each directory keeps its readdir order, and it is the order of the
        # readdir index, so the database needs no sort (ORDER BY id cost a temporary b-tree)
        self._x("INSERT INTO dentries (tree_id, parent, name, ino) SELECT ?, parent, name, ino "
                "FROM dentries WHERE tree_id = ? ORDER BY parent, id", (dst, src))
        self._x("INSERT INTO xattrs (tree_id, ino, name, value) SELECT ?, x.ino, x.name, "
                "x.value FROM xattrs x JOIN inodes i ON i.tree_id = x.tree_id AND i.ino = x.ino "
                "WHERE x.tree_id = ? AND i.nlink > 0", (dst, src))
        self._x("INSERT INTO chunk_maps (tree_id, ino, idx, chunk_id, length, mac) SELECT ?, "
                "c.ino, c.idx, c.chunk_id, c.length, c.mac FROM chunk_maps c JOIN inodes i ON "
                "i.tree_id = c.tree_id AND i.ino = c.ino WHERE c.tree_id = ? AND i.nlink > 0",
                (dst, src))
        # inode numbers stay unique within `dst` whatever it held before
        self._x("UPDATE trees SET next_ino = (SELECT MAX(next_ino) FROM trees WHERE tree_id "
                "IN (?, ?)) WHERE tree_id = ?", (src, dst, dst))
        return int(n)

    def delete_tree_rows(self, tree_id: int) -> None:
        for table in ("chunk_maps", "xattrs", "dentries", "node_hashes", "inodes"):
            self._x(f"DELETE FROM {table} WHERE tree_id = ?", (tree_id,))

    def delete_tree(self, tree_id: int) -> None:
        self.delete_tree_rows(tree_id)
        self._x("DELETE FROM trees WHERE tree_id = ?", (tree_id,))

    def add_tree_refs(self, namespace: str, tree_id: int, sign: int, now: int) -> None:
        # One set-based UPDATE instead of one per chunk (a tree of 100k one-chunk files: about
        # a third of a snapshot's time went to those). `refcount` on the right of SET is the
        # old value in both engines, so the CASE is adjust_refs' rule with d = sign * n.
        slots = "SELECT chunk_id FROM chunk_maps WHERE tree_id = ?"
        if self._d.row_lock:  # row-locking engines: lock in id order, as adjust_refs does
            self._x(f"SELECT chunk_id FROM chunks WHERE namespace = ? AND chunk_id IN ({slots}) "
                    f"ORDER BY chunk_id {self._d.row_lock}", (namespace, tree_id)).fetchall()
        self._x("UPDATE chunks SET refcount = refcount + ? * c.n, unreferenced_since_ns = CASE "
                "WHEN refcount + ? * c.n > 0 THEN NULL WHEN refcount > 0 THEN ? "
                "ELSE unreferenced_since_ns END FROM (SELECT chunk_id, COUNT(*) AS n FROM "
                "chunk_maps WHERE tree_id = ? GROUP BY chunk_id) AS c "
                "WHERE chunks.namespace = ? AND chunks.chunk_id = c.chunk_id",
                (sign, sign, now, tree_id, namespace))

    def hash_inputs(self, tree_id: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """(ino, mode, uid, gid, size, rdev, symlink) of linked inodes; (parent, name, ino);
        (ino, idx, chunk_id, length) by ino then idx; (ino, name, value)."""
        inodes = self._x("SELECT ino, mode, uid, gid, size, rdev, symlink FROM inodes "
                         "WHERE tree_id = ? AND nlink > 0", (tree_id,)).fetchall()
        dentries = self._x("SELECT parent, name, ino FROM dentries WHERE tree_id = ?",
                           (tree_id,)).fetchall()
        slots = self._x("SELECT ino, idx, chunk_id, length FROM chunk_maps WHERE tree_id = ? "
                        "ORDER BY ino, idx", (tree_id,)).fetchall()
        xattrs = self._x("SELECT ino, name, value FROM xattrs WHERE tree_id = ?",
                         (tree_id,)).fetchall()
        return inodes, dentries, slots, xattrs

    def dir_rows(self, tree_id: int, ino: int) -> list[Any]:
        """(name, ino, mode, uid, gid, size, rdev, symlink, stored hash or None) per entry."""
        return self._x("SELECT d.name, i.ino, i.mode, i.uid, i.gid, i.size, i.rdev, i.symlink, "
                       "h.hash FROM dentries d JOIN inodes i ON i.tree_id = d.tree_id AND "
                       "i.ino = d.ino LEFT JOIN node_hashes h ON h.tree_id = d.tree_id AND "
                       "h.ino = d.ino WHERE d.tree_id = ? AND d.parent = ? ORDER BY d.name",
                       (tree_id, ino)).fetchall()

    def dir_xattrs(self, tree_id: int, ino: int) -> list[Any]:
        """(ino, name, value) of the entries of directory `ino` and of the directory itself."""
        return self._x("SELECT x.ino, x.name, x.value FROM xattrs x WHERE x.tree_id = ? AND "
                       "(x.ino = ? OR x.ino IN (SELECT d.ino FROM dentries d WHERE d.tree_id = ? "
                       "AND d.parent = ?))", (tree_id, ino, tree_id, ino)).fetchall()

    def dir_slots(self, tree_id: int, ino: int) -> list[Any]:
        """(ino, idx, chunk_id, length) of the files of directory `ino`, by ino then idx."""
        return self._x("SELECT c.ino, c.idx, c.chunk_id, c.length FROM chunk_maps c WHERE "
                       "c.tree_id = ? AND c.ino IN (SELECT d.ino FROM dentries d WHERE "
                       "d.tree_id = ? AND d.parent = ?) ORDER BY c.ino, c.idx",
                       (tree_id, tree_id, ino)).fetchall()

    # --- incremental hashing (versions.incremental_hashes) -------------------------------------
    def changed_nodes(self, new: int, old: int) -> list[tuple[int, int]]:
        """(ino, 0) for every node of `new` whose own hashed rows (inode fields, chunk map,
        xattrs, entries as a directory) differ from `old`'s, and (parent, 1) for the directories
        naming one of them in `new`. Set differences in the database over exactly the columns
        the node hash covers (FORMAT.md §6.1): exact, whatever the two trees' history."""
        # rows of one tree only (a key is unique within a tree, so a row both trees hold
        # appears twice): one pass over both trees per table, where EXCEPT in each direction
        # built and probed two temporary b-trees
        def only_one(cols: str, table: str, out: str) -> str:
            return (f"SELECT {out} FROM (SELECT {cols} FROM {table} WHERE tree_id = ? UNION ALL "
                    f"SELECT {cols} FROM {table} WHERE tree_id = ?) AS u GROUP BY {cols} "
                    "HAVING COUNT(*) = 1")
        diff = (
            "SELECT ino FROM (SELECT ino, mode, uid, gid, size, rdev, symlink FROM inodes "
            "WHERE tree_id = ? AND nlink > 0 EXCEPT SELECT ino, mode, uid, gid, size, rdev, "
            "symlink FROM inodes WHERE tree_id = ? AND nlink > 0) AS a "
            f"UNION SELECT parent FROM ({only_one('parent, name, ino', 'dentries', 'parent')}) "
            f"AS b UNION SELECT ino FROM ({only_one('ino, idx, chunk_id, length', 'chunk_maps', 'ino')}) "
            f"AS c UNION SELECT ino FROM ({only_one('ino, name, value', 'xattrs', 'ino')}) AS d")
        args = (new, old, new, old, new, old, new, old)
        rows = self._x(f"WITH c (ino) AS ({diff}) SELECT ino, 0 FROM c UNION ALL "
                       "SELECT DISTINCT d.parent, 1 FROM dentries d WHERE d.tree_id = ? AND "
                       "d.ino IN (SELECT ino FROM c)", (*args, new)).fetchall()
        return [(int(r[0]), int(r[1])) for r in rows]

    def _in(self, sql: str, tree_id: int, inos: Sequence[int]) -> list[Any]:
        """`sql` (one "?" for the tree, then "{}" for the id list) over `inos` in batches."""
        out: list[Any] = []
        for i in range(0, len(inos), _IN_BATCH):
            batch = inos[i:i + _IN_BATCH]
            out += self._x(sql.format(", ".join("?" * len(batch))), (tree_id, *batch)).fetchall()
        return out

    def dir_parents(self, tree_id: int, inos: Sequence[int]) -> list[tuple[int, int]]:
        return [(int(r[0]), int(r[1])) for r in self._in(
            "SELECT ino, parent FROM inodes WHERE tree_id = ? AND ino IN ({})", tree_id, inos)]

    def hash_inputs_of(self, tree_id: int, inos: Sequence[int]
                       ) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """hash_inputs' four lists for those inodes only (dentries: the entries of those of
        them that are directories)."""
        inos = sorted(inos)
        return (self._in("SELECT ino, mode, uid, gid, size, rdev, symlink FROM inodes WHERE "
                         "tree_id = ? AND nlink > 0 AND ino IN ({})", tree_id, inos),
                self._in("SELECT parent, name, ino FROM dentries WHERE tree_id = ? AND parent "
                         "IN ({})", tree_id, inos),
                self._in("SELECT ino, idx, chunk_id, length FROM chunk_maps WHERE tree_id = ? "
                         "AND ino IN ({}) ORDER BY ino, idx", tree_id, inos),
                self._in("SELECT ino, name, value FROM xattrs WHERE tree_id = ? AND ino IN ({})",
                         tree_id, inos))

    def node_hashes_of(self, tree_id: int, inos: Sequence[int]) -> dict[int, bytes]:
        return {int(r[0]): bytes(r[1]) for r in self._in(
            "SELECT ino, hash FROM node_hashes WHERE tree_id = ? AND ino IN ({})", tree_id,
            sorted(inos))}

    def copy_node_hashes(self, src: int, dst: int) -> None:
        """The stored hashes of `src` for the inodes `dst` holds (linked)."""
        self._x("INSERT INTO node_hashes (tree_id, ino, hash) SELECT ?, h.ino, h.hash FROM "
                "node_hashes h JOIN inodes i ON i.tree_id = ? AND i.ino = h.ino WHERE "
                "h.tree_id = ? AND i.nlink > 0", (dst, dst, src))

    # --- node hashes -------------------------------------------------------------------------
    def put_node_hashes(self, tree_id: int, rows: Iterable[tuple[int, bytes]]) -> None:
        """Insert, or replace a copied hash (incremental hashing recomputes dirty nodes)."""
        self._many("INSERT INTO node_hashes (tree_id, ino, hash) VALUES (?, ?, ?) "
                   "ON CONFLICT (tree_id, ino) DO UPDATE SET hash = excluded.hash",
                   [(tree_id, ino, h) for ino, h in rows])

    def node_hashes(self, tree_id: int) -> dict[int, bytes]:
        return {int(r[0]): bytes(r[1]) for r in self._x(
            "SELECT ino, hash FROM node_hashes WHERE tree_id = ?", (tree_id,)).fetchall()}

    def node_hash(self, tree_id: int, ino: int) -> bytes | None:
        r = self._x("SELECT hash FROM node_hashes WHERE tree_id = ? AND ino = ?",
                    (tree_id, ino)).fetchone()
        return None if r is None else bytes(r[0])

    # --- snapshots ---------------------------------------------------------------------------
    def insert_snapshot(self, namespace: str, row: Sequence[Any]) -> None:
        """row: snap_id, tree_id, branch, parents, created_ns, message, root_hash, signature."""
        self._x(f"INSERT INTO snapshots (namespace, {_SNAP_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (namespace, *row))

    def snapshot(self, namespace: str, snap_id: str) -> tuple[Any, ...] | None:
        r = self._x(f"SELECT {_SNAP_COLS} FROM snapshots WHERE namespace = ? AND snap_id = ?",
                    (namespace, snap_id)).fetchone()
        return None if r is None else tuple(r)

    def list_snapshots(self, namespace: str) -> list[tuple[Any, ...]]:
        """Oldest first."""
        return [tuple(r) for r in self._x(
            f"SELECT {_SNAP_COLS} FROM snapshots WHERE namespace = ? ORDER BY created_ns, "
            "snap_id", (namespace,)).fetchall()]

    def delete_snapshot(self, namespace: str, snap_id: str) -> None:
        self._x("DELETE FROM snapshots WHERE namespace = ? AND snap_id = ?", (namespace, snap_id))

    # --- tags --------------------------------------------------------------------------------
    def insert_tag(self, namespace: str, name: str, snap_id: str, now: int) -> bool:
        return bool(self._x("INSERT INTO tags (namespace, name, snap_id, created_ns) "
                            "VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING",
                            (namespace, name, snap_id, now)).rowcount == 1)

    def tag(self, namespace: str, name: str) -> str | None:
        r = self._x("SELECT snap_id FROM tags WHERE namespace = ? AND name = ?",
                    (namespace, name)).fetchone()
        return None if r is None else str(r[0])

    def list_tags(self, namespace: str) -> list[tuple[str, str, int]]:
        return [(str(r[0]), str(r[1]), int(r[2])) for r in self._x(
            "SELECT name, snap_id, created_ns FROM tags WHERE namespace = ? ORDER BY name",
            (namespace,)).fetchall()]

    def delete_tag(self, namespace: str, name: str) -> bool:
        return bool(self._x("DELETE FROM tags WHERE namespace = ? AND name = ?",
                            (namespace, name)).rowcount == 1)

    # --- branch logs -------------------------------------------------------------------------
    def append_log(self, namespace: str, branch: str, action: str, snap_id: str,
                   now: int) -> None:
        self._x("INSERT INTO branch_log (namespace, branch, seq, action, snap_id, at_ns) "
                "SELECT ?, ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM branch_log "
                "WHERE namespace = ? AND branch = ?",
                (namespace, branch, action, snap_id, now, namespace, branch))

    def branch_log(self, namespace: str, branch: str) -> list[tuple[int, str, str, int]]:
        """(seq, action, snapshot id, time), oldest first."""
        return [(int(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in self._x(
            "SELECT seq, action, snap_id, at_ns FROM branch_log WHERE namespace = ? AND "
            "branch = ? ORDER BY seq", (namespace, branch)).fetchall()]

    def delete_log(self, namespace: str, branch: str) -> None:
        self._x("DELETE FROM branch_log WHERE namespace = ? AND branch = ?", (namespace, branch))
