"""Row primitives of versions (snapshots, hashes, tags, branch logs) in SQL; mixed into SQLTx.

Interface (the `store.Tx` methods under "versions"; rules in aifs_server.versions):
    copy_tree_rows(src, dst) -> n copy every linked inode of tree `src` with its names, xattrs
                                  and chunk map into the empty tree `dst`, inside the database;
                                  the number of inodes copied (a snapshot's view whose base
                                  has not changed since: from the base's live rows)
    bump_epoch(tree_id) -> E / insert_view(ns, name, (base, E), inos_of, now) -> id | None
                                  the two halves of freeze (a snapshot's tree); a pending
                                  branch is a view too (aifs_server.metadata.pending)
    lock_tree(tree_id) -> (base, E) | None   the base, the tree's row locked
    set_base(tree_id, base | None, inos_of=None)   re-point or settle a pending branch
    changed_after(tree_id, epoch) whether a row of live tree `tree_id` was written after
                                  `epoch` (index probes of the history tables)
    inos_given(tree_id) -> n       inode numbers given out (>= its inodes; O(1))
    epoch_frees_chunks(tree_id)   whether hashing its current epoch releases chunk references
    trees_to_hash(tree_id=None) -> [(ns, branch)]  branches whose stored hashes are behind
                                  their rows (versions.Versions.checkpoint brings them up)
    gc_history(ns, tree_id, now) / gc_epoch(ns, tree_id, epoch, now)   drop the history rows
                                  and old hashes no view sees (gc_epoch: those dying at epoch)
    delete_tree_rows(tree_id)     drop every row of a tree (not the tree row); delete_tree(id)
    add_tree_refs(ns, tree_id, sign, now)   refcount += sign * (slots of the tree naming the
                                  chunk), for every chunk the tree names, in one statement
                                  (records' adjust_refs rule for unreferenced_since_ns)
    hash_inputs(tree_id)          (inodes, dentries, slots, xattrs) row iterators for hashing
    dir_rows(tree_id, ino)        one directory's entries: name, checked attrs, symlink, hash
    dir_xattrs / dir_slots        the xattrs / chunk-map slots of a directory's entries
    changed_nodes(new, old)       (ino, is a parent of a changed one) of the nodes of `new`
                                  whose hashed rows differ from `old`'s, and their parents
    hash_inputs_of(tree_id, inos, entries=True) hash_inputs restricted to those inodes
                                  (entries: of those directories)
    entries_hashed(tree_id, dirs) (parent, name, ino, current hash) of those directories' entries
    dentry_changes(tree_id, epoch, dirs, since, dirty) -> (gone names, entries_hashed rows)
                                  those directories' entries changed in `epoch` (listing_cache)
    max_dentry_id()               the highest dentry id (ids are never reused)
    node_hashes_of(tree_id, inos) / copy_node_hashes(src, dst) (of dst's linked inodes)
    put_node_hashes / node_hashes / node_hash
    insert_snapshot / snapshot / list_snapshots / delete_snapshot
    lock_snapshots(ns, ids) / cited_snapshots(ns) -> ids a lineage names (prune keeps them)
    insert_tag (False: exists) / tag / list_tags / delete_tag
    append_log / branch_log / delete_log

Statements are SQL that SQLite and PostgreSQL both accept, like sql.py's; the tables are
schema version 2 (sqlite_schema._V2, postgres_schema._V2) and the row MAC columns of version 3
(SQLite) / 4 (PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any

from aifs_core.merkle import SNAP_SCHEME
from aifs_core.types import Attr
from aifs_server.metadata.history_schema import LIVE
from aifs_server.metadata.sql_views import _IN_BATCH, ViewSQL

# mac: copied as it is (row MACs do not cover the tree id: row_mac.py), so that a copy stays
# one INSERT ... SELECT however many rows it holds
_INODE_COLS = ("ino, mode, nlink, uid, gid, rdev, size, atime_ns, mtime_ns, ctime_ns, "
               "data_bytes, generation, parent, symlink, asset_id, asset_gen, mac")


def _checked_columns() -> str:
    """What a checked inode read selects (sql._CHECKED: the attrs, the symlink, the MAC);
    imported when first used, as sql.py imports this module."""
    from aifs_server.metadata.sql import _CHECKED
    return _CHECKED


# an entry of `dentries d` with its child's current hash: a lookup by the primary key (tree_id,
# ino, ...) for each entry, whatever the statistics say: `+h.died` keeps both engines off the
# (tree_id, died) index, and a subquery off a hash join (PostgreSQL with stale statistics
# probed the died index for every entry: 2.7 s for 1,000 entries next to 5,000 hashes; with
# fresh ones it hashed every live hash of the tree for each pass)
_ENTRY_HASHED = ("d.parent, d.name, d.ino, (SELECT h.hash FROM tree_hashes h WHERE h.tree_id = "
                 f"d.tree_id AND h.ino = d.ino AND +h.died = {LIVE})")
_SNAP_COLS = "snap_id, tree_id, branch, parents, created_ns, message, root_hash, signature"


class VersionSQL(ViewSQL):
    """Mixin for sql.SQLTx: needs `_x(sql, params)` and `_many(sql, rows)`."""

    _d: Any                                                            # from SQLTx: the Dialect
    _c: Any                                            # from SQLTx: the DB-API connection
    _lock: str                                             # from SQLTx: row lock suffix or ""
    _share: str                                            # from SQLTx: share lock suffix or ""
    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any: ...     # from SQLTx
    def _many(self, sql: str, rows: Iterable[Sequence[Any]]) -> None: ...  # from SQLTx
    def _checked(self, tree_id: int, r: Sequence[Any], at: int = 0) -> Attr: ...  # from SQLTx

    # --- whole trees -------------------------------------------------------------------------
    def copy_tree_rows(self, src: int, dst: int) -> int:
        # `src` may be a snapshot's view (sql_views); the rows are born at `dst`'s current
        # epoch. A view whose base has not changed since its epoch is copied from the base's
        # live rows: the same rows, read by plain index scans (no UNION ALL, no sort)
        ep = int(self._x("SELECT epoch FROM trees WHERE tree_id = ?", (dst,)).fetchone()[0])
        view = self._view(src)
        fast = view is not None and view[0] != dst and not self.changed_after(*view)
        n = self._copy_rows(view[0] if fast and view else src, dst, ep)
        if fast and view and self.changed_after(*view):
            # PostgreSQL runs each statement on its own snapshot (READ COMMITTED): a write to
            # the base committed before one of the copies read it. The view's rows never move.
            self.delete_tree_rows(dst)
            n = self._copy_rows(src, dst, ep)
        self._raise_next_ino(dst, src)
        return n

    def _raise_next_ino(self, dst: int, src: int) -> None:
        # inode numbers stay unique within `dst` whatever it held or gave out before
        self._x("UPDATE trees SET next_ino = (SELECT MAX(next_ino) FROM trees WHERE tree_id "
                "IN (?, ?)) WHERE tree_id = ?", (src, dst, dst))

    def _copy_rows(self, src: int, dst: int, ep: int) -> int:
        # unlinked (nlink 0) inodes are open files waiting for their last close: not part of
        # the tree's committed state, and they would pin chunks in the copy forever
        n = self._rx((src,), f"INSERT INTO inodes (tree_id, {_INODE_COLS}, born) SELECT ?, "
                     f"{_INODE_COLS}, ? FROM inodes WHERE tree_id = ? AND nlink > 0",
                     (dst, ep, src)).rowcount
        # (parent, id): each directory keeps its readdir order, and it is the order of the
        # readdir index, so the database needs no sort (ORDER BY id cost a temporary b-tree)
        self._rx((src,), "INSERT INTO dentries (tree_id, parent, name, ino, born) SELECT ?, "
                 "parent, name, ino, ? FROM dentries WHERE tree_id = ? ORDER BY parent, id",
                 (dst, ep, src))
        self._rx((src,), "INSERT INTO xattrs (tree_id, ino, name, value, born) SELECT ?, x.ino, "
                 "x.name, x.value, ? FROM xattrs x JOIN inodes i ON i.tree_id = x.tree_id AND "
                 "i.ino = x.ino WHERE x.tree_id = ? AND i.nlink > 0", (dst, ep, src))
        self._rx((src,), "INSERT INTO chunk_maps (tree_id, ino, idx, chunk_id, length, mac, "
                 "born) SELECT ?, c.ino, c.idx, c.chunk_id, c.length, c.mac, ? FROM chunk_maps c "
                 "JOIN inodes i ON i.tree_id = c.tree_id AND i.ino = c.ino WHERE c.tree_id = ? "
                 "AND i.nlink > 0", (dst, ep, src))
        return int(n)

    def changed_after(self, tree_id: int, epoch: int) -> bool:
        """Whether any row of live tree `tree_id` was written after `epoch` (False: its live
        rows, those of linked inodes, are exactly its snapshot at `epoch`'s). A row that
        existed at `epoch` and was changed or removed since left a history row dying after
        it; a row new since marked its owner (history_schema's marks: a dentry its
        directory, an xattr or slot its inode), which left one too unless the owner is new
        as well, and so on up to the root, which is never new. So four index range probes on
        `<table>_hist(tree_id, died)`, no scan of the live tables (no index on `born`)."""
        probes = " OR ".join(f"EXISTS (SELECT 1 FROM {t}_hist WHERE tree_id = ? AND died > ?)"
                             for t in ("inodes", "dentries", "xattrs", "chunk_maps"))
        return bool(self._x(f"SELECT {probes}", (tree_id, epoch) * 4).fetchone()[0])

    def delete_tree_rows(self, tree_id: int) -> None:
        """The live rows (the triggers keep in history what the tree's snapshots see)."""
        for table in ("chunk_maps", "xattrs", "dentries", "node_hashes", "inodes"):
            self._x(f"DELETE FROM {table} WHERE tree_id = ?", (tree_id,))

    def delete_tree(self, tree_id: int) -> None:
        """Every row of the tree and the tree; its history must hold no chunk reference any
        more (gc_history first: it is what releases them)."""
        self._x("UPDATE trees SET epoch = 0 WHERE tree_id = ?", (tree_id,))  # keep no history
        self.delete_tree_rows(tree_id)
        for table in ("chunk_maps_hist", "xattrs_hist", "dentries_hist", "inodes_hist",
                      "tree_hashes"):
            self._x(f"DELETE FROM {table} WHERE tree_id = ?", (tree_id,))
        self._x("DELETE FROM trees WHERE tree_id = ?", (tree_id,))

    def add_tree_refs(self, namespace: str, tree_id: int, sign: int, now: int) -> None:
        self._add_refs(namespace, "chunk_maps WHERE tree_id = ?", (tree_id,), sign, now)

    def _add_refs(self, namespace: str, rows: str, args: Sequence[Any], sign: int,
                  now: int) -> None:
        """refcount += sign * (the rows `rows` selects naming the chunk) for every chunk.
        One set-based UPDATE instead of one per chunk (a tree of 100k one-chunk files: about
        a third of a snapshot's time went to those). `refcount` on the right of SET is the
        old value in both engines, so the CASE is adjust_refs' rule with d = sign * n."""
        slots = f"SELECT chunk_id FROM {rows}"
        if self._d.row_lock:  # row-locking engines: lock in id order, as adjust_refs does
            self._x(f"SELECT chunk_id FROM chunks WHERE namespace = ? AND chunk_id IN ({slots}) "
                    f"ORDER BY chunk_id {self._d.row_lock}", (namespace, *args)).fetchall()
        self._x("UPDATE chunks SET refcount = refcount + ? * c.n, unreferenced_since_ns = CASE "
                "WHEN refcount + ? * c.n > 0 THEN NULL WHEN refcount > 0 THEN ? "
                "ELSE unreferenced_since_ns END FROM (SELECT chunk_id, COUNT(*) AS n FROM "
                f"{rows} GROUP BY chunk_id) AS c "
                "WHERE chunks.namespace = ? AND chunks.chunk_id = c.chunk_id",
                (sign, sign, now, *args, namespace))

    # --- epochs (history_schema.py, sql_views.py) --------------------------------------------
    def freeze(self, namespace: str, tree_id: int, name: str, now: int) -> tuple[int, int]:
        """A snapshot of the tree as it is: a new tree `name` that reads the tree at its
        current epoch E, and the tree moved to E + 1. O(1): no row is copied.
        (the new tree's id, E)"""
        ep = self.bump_epoch(tree_id)
        view = self.insert_view(namespace, name, (tree_id, ep), tree_id, now)
        assert view is not None, name   # snapshot names are random
        return view, ep

    def bump_epoch(self, tree_id: int) -> int:
        """Move the tree to its next epoch; the epoch it was at (whose rows stay readable as
        they are now: history keeps what changes later)."""
        # the tree's row first, then the tables: a create locks the row (take_ino) before it
        # writes any of them, so it never waits for the tables while holding what this waits for
        ep = self._x("UPDATE trees SET epoch = epoch + 1 WHERE tree_id = ? RETURNING epoch - 1",
                     (tree_id,)).fetchone()[0]
        if self._d.freeze_lock:   # PostgreSQL: writers in flight commit first, new ones wait
            self._x(self._d.freeze_lock)
        return int(ep)

    def insert_view(self, namespace: str, name: str, base: tuple[int, int], inos_of: int,
                    now: int) -> int | None:
        """A new tree `name` that reads tree base[0] at epoch base[1] (a snapshot's, or a
        pending branch's), its next inode number that of tree `inos_of`; None when `name`
        exists."""
        r = self._x("INSERT INTO trees (namespace, branch, next_ino, created_ns, base_tree, "
                    "base_epoch) SELECT ?, ?, next_ino, ?, ?, ? FROM trees WHERE tree_id = ? "
                    "ON CONFLICT DO NOTHING RETURNING tree_id",
                    (namespace, name, now, base[0], base[1], inos_of)).fetchone()
        return None if r is None else int(r[0])

    def lock_tree(self, tree_id: int) -> tuple[int, int] | None:
        """The tree's base (a pending branch's: pending.py), read with its row locked
        (row-locking databases: FOR UPDATE; SQLite's write lock is the database's), so that
        whoever changes the base next reads what this transaction leaves."""
        r = self._x("SELECT base_tree, base_epoch FROM trees WHERE tree_id = ?" + self._lock,
                    (tree_id,)).fetchone()
        base = None if r is None or r[0] is None else (int(r[0]), int(r[1]))
        self._set_view(tree_id, base)   # what this transaction's reads of the tree see
        return base

    def set_base(self, tree_id: int, base: tuple[int, int] | None,
                 inos_of: int | None = None) -> None:
        """Point a pending branch at another view (its next inode number raised to tree
        `inos_of`'s), or (None) make it a tree with rows of its own (once its rows are in)."""
        b = base or (None, None)
        self._x("UPDATE trees SET base_tree = ?, base_epoch = ? WHERE tree_id = ?",
                (b[0], b[1], tree_id))
        if inos_of is not None:
            self._raise_next_ino(tree_id, inos_of)
        self._set_view(tree_id, base)

    def tree_base(self, tree_id: int) -> tuple[int, int] | None:
        """(base tree, epoch) of a snapshot's or a pending branch's view, None for a tree with
        rows of its own."""
        return self._view(tree_id)

    def changed_since(self, tree_id: int, epoch: int) -> list[int]:
        """The nodes whose own hashed rows (inode, entries as a directory, chunk map, xattrs)
        changed in epoch `epoch` (the current one: since the last snapshot), the nodes new in it
        aside (their directories are among these). Rows only, no clock: a row of before the
        epoch that was changed or removed, or whose node got a new row (history_schema's
        marks), left a history row dying in it."""
        parts = [f"SELECT {col} FROM {table}_hist WHERE tree_id = ? AND died = ?"
                 for table, col in (("inodes", "ino"), ("dentries", "parent"),
                                    ("xattrs", "ino"), ("chunk_maps", "ino"))]
        return [int(r[0]) for r in self._x(" UNION ".join(parts),
                                           (tree_id, epoch) * len(parts)).fetchall()]

    def names_of(self, tree_id: int, inos: Sequence[int]) -> list[tuple[int, int]]:
        """(ino, parent) of every name of those inodes (dentries' (tree_id, ino) index)."""
        return [(int(r[0]), int(r[1])) for r in self._rin(
            tree_id, "SELECT ino, parent FROM dentries WHERE tree_id = ? AND ino IN ({})",
            sorted(inos), tree_id)]

    def gc_history(self, namespace: str, tree_id: int, now: int,
                   keep_changes: bool = True) -> None:
        """Drop the history rows and old hashes of the tree that no view of it (a snapshot or
        a pending branch) sees any more (no `trees` row with this base and an epoch in
        [born, died)), releasing the chunks they held. History rows dying at the tree's
        current epoch stay whatever sees them (unless not `keep_changes`: the tree is being
        deleted): they are the changes its next hashing reads (changed_since), gone with
        gc_epoch once it has."""
        self._gc_unseen(namespace, tree_id, now, "", (), keep_changes)

    def gc_epoch(self, namespace: str, tree_id: int, epoch: int, now: int) -> None:
        """gc_history of the rows that died at `epoch` alone (index ranges of
        `(tree_id, died)`): once the tree's hashes at `epoch` are stored, those rows were
        only kept for the views that see them (an epoch that ended without a view, a hash
        checkpoint, leaves them to no one)."""
        self._gc_unseen(namespace, tree_id, now, " AND {t}.died = ?", (epoch,), False)

    def _gc_unseen(self, namespace: str, tree_id: int, now: int, cond: str,
                   args: tuple[Any, ...], keep_changes: bool = True) -> None:
        def unseen(table: str) -> str:
            # a history row of the current epoch is a change not hashed yet: never dropped
            # here (a view at the epoch before, which would see it, may have been pruned, and
            # an epoch that ended in a hash checkpoint has no view)
            keep = keep_changes and table != "tree_hashes"
            pending = ("" if not keep else f" AND {table}.died < (SELECT "
                       f"t.epoch FROM trees t WHERE t.tree_id = {table}.tree_id)")
            return (f"{table} WHERE {table}.tree_id = ?{cond.format(t=table)}{pending} AND "
                    f"NOT EXISTS (SELECT 1 FROM trees r WHERE r.base_tree = {table}.tree_id "
                    f"AND r.base_epoch >= {table}.born AND r.base_epoch < {table}.died)")
        self._add_refs(namespace, unseen("chunk_maps_hist"), (tree_id, *args), -1, now)
        for table in ("chunk_maps_hist", "xattrs_hist", "dentries_hist", "inodes_hist"):
            self._x(f"DELETE FROM {unseen(table)}", (tree_id, *args))
        self._x(f"DELETE FROM {unseen('tree_hashes')} AND tree_hashes.died <> {LIVE}",
                (tree_id, *args))

    def views_of(self, tree_id: int) -> int:
        """How many views read the tree (snapshots' and pending branches')."""
        return int(self._x("SELECT COUNT(*) FROM trees WHERE base_tree = ?",
                           (tree_id,)).fetchone()[0])

    def rename_tree(self, tree_id: int, name: str) -> None:
        self._x("UPDATE trees SET branch = ? WHERE tree_id = ?", (name, tree_id))

    # --- hashes of a tree by epoch (tree_hashes) ---------------------------------------------
    def inos_given(self, tree_id: int) -> int:
        """How many inode numbers the tree has given out (its `next_ino` - 1): at least its
        inodes, read in O(1) (counting them scans the tree: 70 ms at 100k)."""
        return int(self._x("SELECT next_ino - 1 FROM trees WHERE tree_id = ?",
                           (tree_id,)).fetchone()[0])

    def has_hashes(self, tree_id: int) -> bool:
        return self._x(f"SELECT 1 FROM tree_hashes WHERE tree_id = ? AND died = {LIVE} LIMIT 1",
                       (tree_id,)).fetchone() is not None

    def trees_to_hash(self, tree_id: int | None = None) -> list[tuple[str, str]]:
        """(namespace, branch) of the branches with rows of their own (not a view, not pending,
        not being deleted; of tree `tree_id` only, if given) whose stored node hashes are
        behind their rows: none stored yet, or a row changed since they were (a history row
        dying at the tree's current epoch: every epoch of a hashed tree ends with its hashes
        stored, so those are exactly the changes since). Index probes per tree."""
        behind = " OR ".join(f"EXISTS (SELECT 1 FROM {t}_hist h WHERE h.tree_id = t.tree_id "
                             "AND h.died = t.epoch)"
                             for t in ("inodes", "dentries", "xattrs", "chunk_maps"))
        one = " AND t.tree_id = ?" if tree_id is not None else ""
        return [(str(r[0]), str(r[1])) for r in self._x(
            "SELECT t.namespace, t.branch FROM trees t WHERE t.base_tree IS NULL AND "
            f"t.epoch > 0 AND t.branch NOT LIKE ?{one} AND (NOT EXISTS (SELECT 1 FROM "
            f"tree_hashes h WHERE h.tree_id = t.tree_id AND h.died = {LIVE}) OR {behind}) "
            "ORDER BY t.tree_id", ("@%",) if tree_id is None else ("@%", tree_id)).fetchall()]

    def epoch_frees_chunks(self, tree_id: int) -> bool:
        """Whether hashing the tree's current epoch would release chunk references: a history
        row of `chunk_maps` dying at it that no view sees (gc_epoch drops it)."""
        return self._x(
            "SELECT 1 FROM chunk_maps_hist c JOIN trees t ON t.tree_id = c.tree_id WHERE "
            "c.tree_id = ? AND c.died = t.epoch AND NOT EXISTS (SELECT 1 FROM trees r WHERE "
            "r.base_tree = c.tree_id AND r.base_epoch >= c.born AND r.base_epoch < c.died) "
            "LIMIT 1", (tree_id,)).fetchone() is not None

    def current_hashes(self, tree_id: int, inos: Sequence[int] | None = None
                       ) -> dict[int, bytes]:
        """ino -> the hash the tree's last snapshot stored (of those inodes, or all)."""
        if inos is None:
            rows = self._x(f"SELECT ino, hash FROM tree_hashes WHERE tree_id = ? AND "
                           f"died = {LIVE}", (tree_id,)).fetchall()
        else:
            # by the primary key (tree_id, ino, born): `+died` keeps the (tree_id, died) index,
            # which PostgreSQL picks on stale statistics, from scanning every live hash
            rows = self._rin(tree_id, f"SELECT ino, hash FROM tree_hashes WHERE tree_id = ? AND "
                             f"+died = {LIVE} AND ino IN ({{}})", sorted(inos), tree_id)
        return {int(r[0]): bytes(r[1]) for r in rows}

    def set_hashes(self, tree_id: int, epoch: int, rows: Iterable[tuple[int, bytes]],
                   fresh: bool = False, new: Collection[int] = ()) -> None:
        """The hashes of the tree at `epoch` for those nodes: a hash that changed closes the
        old row (died = epoch) and starts a new one (a row already born at `epoch` is
        replaced); `fresh`: the tree has none yet; `new`: nodes known to have no hash row.
        The others' current rows are read first, so that an unchanged hash costs no statement,
        and the new rows go in as a first snapshot's do (_insert_hashes): a hash checkpoint
        during a fill stores thousands of new nodes, which one INSERT ... WHERE NOT EXISTS and
        one UPDATE each stored in ~20 us a node (10,000 in 0.2 s)."""
        rows = list(rows)
        if fresh:
            self._insert_hashes(tree_id, epoch, rows)
            return
        add = [r for r in rows if r[0] in new]
        rows = [r for r in rows if r[0] not in new] if add else rows
        inos = sorted(i for i, _ in rows)
        head = "SELECT ino, born, hash FROM tree_hashes WHERE tree_id = ? AND "
        cur = {int(r[0]): (int(r[1]), bytes(r[2])) for r in (
            self._x(head + f"died = {LIVE}", (tree_id,)).fetchall() if len(inos) > 20 * _IN_BATCH
            else self._rin(tree_id, head + f"+died = {LIVE} AND ino IN ({{}})", inos, tree_id))}
        close, replace = [], []
        for ino, h in rows:
            c = cur.get(ino)
            if c is None:
                add.append((ino, h))
            elif c[1] == h:
                continue
            elif c[0] == epoch:
                replace.append((h, tree_id, ino, epoch))
            else:
                close.append((epoch, tree_id, ino))
                add.append((ino, h))
        self._many(f"UPDATE tree_hashes SET died = ? WHERE tree_id = ? AND ino = ? AND "
                   f"+died = {LIVE}", close)
        self._many("UPDATE tree_hashes SET hash = ? WHERE tree_id = ? AND ino = ? AND born = ?",
                   replace)
        if add:
            self._insert_hashes(tree_id, epoch, add)

    def _insert_hashes(self, tree_id: int, epoch: int, rows: list[tuple[int, bytes]]) -> None:
        """New rows, in key order (appends to the primary key's b-tree instead of inserts all
        over it), _IN_BATCH a statement (one multi-row INSERT costs about half what as many
        executemany rows do: a first snapshot stores every node's hash). PostgreSQL: COPY
        (100k rows: client CPU 0.6-0.77 -> 0.13-0.18 s, wall 1.1-1.4 -> 0.27-0.44 s)."""
        rows.sort()
        if self._d.name == "postgresql":   # psycopg's COPY, in this transaction
            with self._c.cursor().copy("COPY tree_hashes (tree_id, ino, born, died, hash) "
                                       "FROM STDIN") as copy:
                for ino, h in rows:
                    copy.write_row((tree_id, ino, epoch, LIVE, h))
            return
        head = "INSERT INTO tree_hashes (tree_id, ino, born, died, hash) VALUES "
        row = f"({int(tree_id)}, ?, {int(epoch)}, {LIVE}, ?)"
        for i in range(0, len(rows), _IN_BATCH):
            batch = rows[i:i + _IN_BATCH]
            self._x(head + ", ".join([row] * len(batch)), [v for r in batch for v in r])

    def close_hashes(self, tree_id: int, epoch: int, inos: Iterable[int]) -> None:
        """Those nodes are gone at `epoch`."""
        self._many(f"UPDATE tree_hashes SET died = ? WHERE tree_id = ? AND ino = ? AND "
                   f"+died = {LIVE}", [(epoch, tree_id, i) for i in inos])

    def hash_inputs(self, tree_id: int) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """(ino, mode, uid, gid, size, rdev, symlink) of linked inodes; (parent, name, ino);
        (ino, idx, chunk_id, length) by ino then idx; (ino, name, value)."""
        t = (tree_id,)
        inodes = self._rx(t, "SELECT ino, mode, uid, gid, size, rdev, symlink FROM inodes "
                          "WHERE tree_id = ? AND nlink > 0", t).fetchall()
        dentries = self._rx(t, "SELECT parent, name, ino FROM dentries WHERE tree_id = ?",
                            t).fetchall()
        slots = self._rx(t, "SELECT ino, idx, chunk_id, length FROM chunk_maps WHERE "
                         "tree_id = ? ORDER BY ino, idx", t).fetchall()
        xattrs = self._rx(t, "SELECT ino, name, value FROM xattrs WHERE tree_id = ?",
                          t).fetchall()
        return inodes, dentries, slots, xattrs

    def dir_rows(self, tree_id: int, ino: int) -> list[tuple[bytes, Attr, bytes, bytes | None]]:
        """(name, attrs, symlink target or b"", stored hash or None) per entry, by name; the
        attrs as readdir reads them (CorruptMetadata when a row's MAC does not match). One
        statement: a view's in four joins driven by the directory (sql_views._v_children)."""
        cols = ", ".join(f"o.{c.strip()}" for c in _checked_columns().split(","))
        if self._view(tree_id):
            rows = self._v_children(
                tree_id, ino, f"d.name, {cols}, h.hash", "inodes", "1",
                " LEFT JOIN tree_hashes h ON h.tree_id = {base} AND h.ino = d.ino AND "
                "h.born <= {epoch} AND h.died > {epoch}")
        else:
            rows = self._x(f"SELECT d.name, {cols}, h.hash FROM dentries d JOIN inodes o ON "
                           "o.tree_id = d.tree_id AND o.ino = d.ino LEFT JOIN node_hashes h ON "
                           "h.tree_id = d.tree_id AND h.ino = d.ino WHERE d.tree_id = ? AND "
                           "d.parent = ? ORDER BY d.name", (tree_id, ino)).fetchall()
        sym = len(cols.split(",")) - 1   # the symlink column, right before the MAC
        return [(bytes(r[0]), self._checked(tree_id, r, 1), bytes(r[sym] or b""),
                 None if r[-1] is None else bytes(r[-1])) for r in rows]

    def dir_xattrs(self, tree_id: int, ino: int) -> list[Any]:
        """(ino, name, value) of the entries of directory `ino` and of the directory itself."""
        if self._view(tree_id):
            own = self._rx((tree_id,), "SELECT ino, name, value FROM xattrs WHERE tree_id = ? "
                           "AND ino = ?", (tree_id, ino)).fetchall()
            return own + self._v_children(tree_id, ino, "o.ino, o.name, o.value", "xattrs",
                                          "1, 2")
        return self._x("SELECT x.ino, x.name, x.value FROM xattrs x WHERE x.tree_id = ? AND "
                       "(x.ino = ? OR x.ino IN (SELECT d.ino FROM dentries d WHERE d.tree_id = ? "
                       "AND d.parent = ?))", (tree_id, ino, tree_id, ino)).fetchall()

    def dir_slots(self, tree_id: int, ino: int) -> list[Any]:
        """(ino, idx, chunk_id, length) of the files of directory `ino`, by ino then idx."""
        if self._view(tree_id):
            return self._v_children(tree_id, ino, "o.ino, o.idx, o.chunk_id, o.length",
                                    "chunk_maps", "1, 2")
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
        rows = self._rx((new, old), f"WITH c (ino) AS ({diff}) SELECT ino, 0 FROM c UNION ALL "
                       "SELECT DISTINCT d.parent, 1 FROM dentries d WHERE d.tree_id = ? AND "
                       "d.ino IN (SELECT ino FROM c)", (*args, new)).fetchall()
        return [(int(r[0]), int(r[1])) for r in rows]

    def _in(self, sql: str, tree_id: int, inos: Sequence[int]) -> list[Any]:
        """`sql` (one "?" for the tree, then "{}" for the id list) over `inos` in batches."""
        return self._rin(tree_id, sql, inos, tree_id)

    def hash_inputs_of(self, tree_id: int, inos: Sequence[int], entries: bool = True
                       ) -> tuple[list[Any], list[Any], list[Any], list[Any]]:
        """hash_inputs' four lists for those inodes only (dentries: the entries of those of
        them that are directories; none unless `entries`)."""
        inos = sorted(inos)
        return (self._in("SELECT ino, mode, uid, gid, size, rdev, symlink FROM inodes WHERE "
                         "tree_id = ? AND nlink > 0 AND ino IN ({})", tree_id, inos),
                self._in("SELECT parent, name, ino FROM dentries WHERE tree_id = ? AND parent "
                         "IN ({})", tree_id, inos) if entries else [],
                self._in("SELECT ino, idx, chunk_id, length FROM chunk_maps WHERE tree_id = ? "
                         "AND ino IN ({}) ORDER BY ino, idx", tree_id, inos),
                self._in("SELECT ino, name, value FROM xattrs WHERE tree_id = ? AND ino IN ({})",
                         tree_id, inos))

    def entries_hashed(self, tree_id: int, dirs: Sequence[int]) -> list[Any]:
        """(parent, name, ino, current hash or None) of every entry of those directories of
        live tree `tree_id`: a dirty directory's listing and its clean children's hashes in one
        statement (per _IN_BATCH directories), where reading the hashes by IN-lists of the
        children cost 200 statements for a directory of 100k."""
        return self._rin(tree_id, f"SELECT {_ENTRY_HASHED} FROM dentries d WHERE d.tree_id = ? "
                         "AND d.parent IN ({})", sorted(dirs), tree_id)

    def max_dentry_id(self) -> int:
        """The highest dentry id of any tree (ids are never reused; the primary key's end)."""
        return int(self._x("SELECT COALESCE(MAX(id), 0) FROM dentries").fetchone()[0])

    def dentry_changes(self, tree_id: int, epoch: int, dirs: Sequence[int], since: int,
                       dirty: Sequence[int]) -> tuple[list[tuple[int, bytes]], list[Any]]:
        """What changed in epoch `epoch` (the one being hashed) in those directories of live
        tree `tree_id` (listing_cache.py): (parent, name) of their entries that were there at
        the epoch before and were removed or changed (history rows dying at `epoch`), and
        entries_hashed's rows of their live entries that may differ from then: those
        history rows' ids now (a moved row keeps its id), the ids above `since` (the highest
        at the epoch before: new rows), and the names of the `dirty` nodes (their hashes
        change). O(changes): index ranges and lookups, no directory read whole."""
        want = set(dirs)
        hist = self._x("SELECT parent, name, id FROM dentries_hist WHERE tree_id = ? AND "
                       "died = ?", (tree_id, epoch)).fetchall()
        gone = [(int(p), bytes(n)) for p, n, _ in hist if int(p) in want]
        head = f"SELECT {_ENTRY_HASHED} FROM dentries d WHERE d.tree_id = ? AND "
        rows = self._rin(tree_id, head + "d.id IN ({})", sorted({int(r[2]) for r in hist}),
                         tree_id)
        rows += self._rin(tree_id, head + "d.id > ? AND d.parent IN ({})", sorted(want),
                          tree_id, since)
        rows += self._rin(tree_id, head + "d.ino IN ({})", sorted(dirty), tree_id)
        return gone, list({(int(r[0]), bytes(r[1])): r for r in rows
                           if int(r[0]) in want}.values())

    def node_hashes_of(self, tree_id: int, inos: Sequence[int]) -> dict[int, bytes]:
        return {int(r[0]): bytes(r[1]) for r in self._in(
            "SELECT ino, hash FROM node_hashes WHERE tree_id = ? AND ino IN ({})", tree_id,
            sorted(inos))}

    def copy_node_hashes(self, src: int, dst: int, epoch: int) -> None:
        """The stored hashes of `src` (a snapshot's tree) for the inodes the live tree `dst`
        holds (linked), as `dst`'s hashes at `epoch` (`dst` has none yet)."""
        self._rx((src, dst), "INSERT INTO tree_hashes (tree_id, ino, born, died, hash) SELECT "
                 f"?, h.ino, ?, {LIVE}, h.hash FROM node_hashes h JOIN inodes i ON "
                 "i.tree_id = ? AND i.ino = h.ino WHERE h.tree_id = ? AND i.nlink > 0",
                 (dst, epoch, dst, src))

    # --- node hashes -------------------------------------------------------------------------
    def put_node_hashes(self, tree_id: int, rows: Iterable[tuple[int, bytes]]) -> None:
        """Insert, or replace a copied hash (incremental hashing recomputes dirty nodes)."""
        self._many("INSERT INTO node_hashes (tree_id, ino, hash) VALUES (?, ?, ?) "
                   "ON CONFLICT (tree_id, ino) DO UPDATE SET hash = excluded.hash",
                   [(tree_id, ino, h) for ino, h in rows])

    def node_hashes(self, tree_id: int) -> dict[int, bytes]:
        return {int(r[0]): bytes(r[1]) for r in self._rx(
            (tree_id,), "SELECT ino, hash FROM node_hashes WHERE tree_id = ?",
            (tree_id,)).fetchall()}

    def node_hash(self, tree_id: int, ino: int) -> bytes | None:
        r = self._rx((tree_id,), "SELECT hash FROM node_hashes WHERE tree_id = ? AND ino = ?",
                     (tree_id, ino)).fetchone()
        return None if r is None else bytes(r[0])

    # --- snapshots ---------------------------------------------------------------------------
    def insert_snapshot(self, namespace: str, row: Sequence[Any]) -> None:
        """row: snap_id, tree_id, branch, parents, created_ns, message, root_hash, signature."""
        self._x(f"INSERT INTO snapshots (namespace, {_SNAP_COLS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (namespace, *row))

    def snapshot(self, namespace: str, snap_id: str) -> tuple[Any, ...] | None:
        # share-locked in a write transaction (PostgreSQL): a lineage child citing it commits
        # before a prune can delete it (lock_snapshots), or finds it gone
        r = self._x(f"SELECT {_SNAP_COLS} FROM snapshots WHERE namespace = ? AND snap_id = ?"
                    + self._share, (namespace, snap_id)).fetchone()
        return None if r is None else tuple(r)

    def list_snapshots(self, namespace: str) -> list[tuple[Any, ...]]:
        """Oldest first."""
        return [tuple(r) for r in self._x(
            f"SELECT {_SNAP_COLS} FROM snapshots WHERE namespace = ? ORDER BY created_ns, "
            "snap_id", (namespace,)).fetchall()]

    def lock_snapshots(self, namespace: str, snap_ids: Sequence[str]) -> None:
        """Lock those snapshot rows for deletion (row-locking engines; SQLite's write lock is
        the database's)."""
        if self._lock:
            for sid in sorted(snap_ids):
                self._x("SELECT 1 FROM snapshots WHERE namespace = ? AND snap_id = ?" + self._lock,
                        (namespace, sid)).fetchall()

    def cited_snapshots(self, namespace: str) -> set[str]:
        """Ids of the snapshots of `namespace` that an asset's lineage names as a parent."""
        prefix = f"{SNAP_SCHEME}{namespace}/"
        return {str(r[0])[len(prefix):] for r in self._x(
            "SELECT DISTINCT parent_id FROM asset_parents WHERE namespace = ? AND "
            "parent_id LIKE ?", (namespace, SNAP_SCHEME + "%")).fetchall()
            if str(r[0]).startswith(prefix)}

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
