"""Reads of a snapshot's tree without a copy (docs/FORMAT.md §6.4); mixed into sql.SQLTx.

A snapshot's tree is a `trees` row with `base_tree` = the tree it was taken of and
`base_epoch` = that tree's epoch then, and no rows of its own: its rows are the base tree's
live rows born at or before the epoch plus the history rows (history_schema.py) alive at it.
Everything under `store.Tx` reads it with the same primitives and the same tree id as a branch.

A branch created from a snapshot is such a view too until its first change (a *pending*
branch: aifs_server.metadata.pending copies the rows in and clears its base, once).

Interface:
    ViewSQL._view(tree_id) -> (base tree, epoch) | None     None: a tree with rows of its own
                                (a branch, or a snapshot copied before epochs). Cached per
                                engine for snapshots and for trees with rows (neither ever
                                changes: a snapshot keeps its base, a tree with rows never gets
                                one, tree ids are never reused); a pending branch's is read
                                again by every transaction (its base goes at its first change),
                                once per transaction (the memo: what it read, or set_base)
    ViewSQL.begin_views() / end_views()   the store brackets each transaction with these (the
                                memo lives for one transaction; without them every statement
                                reads a pending branch's row again)
    ViewSQL._rx(trees, sql, params)   run `sql` where each of `trees` that is a view reads its
                                rows through a subquery in place of each table it names (FROM
                                or JOIN inodes/dentries/xattrs/chunk_maps/node_hashes); the
                                statement as it is when none is (the hot path: one dict lookup)
    ViewSQL._v_entry / _v_list_dir / _v_dir_inodes
                                the reads that join tables, in steps for a view: SQLite does not
                                push a join's conditions into a UNION ALL subquery (it would
                                read the whole tree per lookup), so each step reads one table
    ViewSQL._v_children(tree_id, ino, sel, table, ...)   what a directory's entries join to in
                                `table`, in one statement: the join of the two halves of each
                                side (live rows born by the epoch, history rows alive at it),
                                four plain joins that the database drives from the directory's
                                dentries (index range scans), instead of IN-lists of its inodes

Row MACs are checked by the callers exactly as for live rows (history rows keep their MAC).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from aifs_server.metadata.history_schema import TABLES

_SOURCES = re.compile(r"\b(FROM|JOIN)\s+(inodes|dentries|xattrs|chunk_maps|node_hashes)\b"
                      r"(?:\s+INDEXED BY \w+)?"
                      r"(\s+(?!WHERE\b|ON\b|ORDER\b|GROUP\b|LIMIT\b|UNION\b|EXCEPT\b)[a-z]\b)?")
_LOCKS = re.compile(r"\s+FOR (?:UPDATE|KEY SHARE|SHARE)\b")
_IN_BATCH = 500
_UNKNOWN = object()
# how the branch names of snapshots' trees start: posix.FROZEN_PREFIX (the rules' module; the
# row primitives do not import it), checked equal by tests/unit/test_pending_branches.py
SNAPSHOT_PREFIX = "@snap:"
_REWRITES_MAX = 4096   # rewritten statements cached per engine (one per view and statement)


def _cols(table: str) -> tuple[str, ...]:
    return tuple(c for c in TABLES[table][0] if c != "born")


def _view_rows(table: str, view: int, base: int, epoch: int) -> str:
    """The rows of `table` a view sees, with tree_id = the view's id."""
    if table == "node_hashes":
        return (f"SELECT {view} AS tree_id, ino, hash FROM tree_hashes WHERE tree_id = {base} "
                f"AND born <= {epoch} AND died > {epoch}")
    cols = ", ".join(f"{view} AS tree_id" if c == "tree_id" else c for c in _cols(table))
    linked = " AND nlink > 0" if table == "inodes" else ""   # as the copies of old did
    return (f"SELECT {cols} FROM {table} WHERE tree_id = {base} AND born <= {epoch}{linked} "
            f"UNION ALL SELECT {cols} FROM {table}_hist WHERE tree_id = {base} AND born <= "
            f"{epoch} AND died > {epoch}{linked}")


def _halves(table: str, alias: str, base: int, epoch: int) -> list[tuple[str, str]]:
    """(source, condition) of the two halves of a view's rows of `table` (_view_rows) for a
    join: the live rows born by `epoch`, the history rows alive at it. `+died`: not an index
    term (SQLite without statistics probed `(tree_id, died)`, every history row dying after the
    epoch, per entry, instead of the key)."""
    cond = f"{alias}.tree_id = {base} AND {alias}.born <= {epoch}"
    if table == "inodes":
        cond += f" AND {alias}.nlink > 0"
    return [(f"{table} {alias}", cond),
            (f"{table}_hist {alias}", f"{cond} AND +{alias}.died > {epoch}")]


def rewrite(sql: str, views: dict[int, tuple[int, int]], plain: Sequence[int]) -> str:
    """`sql` with every table source replaced by the rows of `plain` trees (live, as they are)
    and those of `views`; no row locks (a view never changes)."""
    def source(m: re.Match[str]) -> str:
        table, alias = m.group(2), (m.group(3) or "").strip() or m.group(2)
        parts = [_view_rows(table, v, b, e) for v, (b, e) in sorted(views.items())]
        if plain:
            cols = "tree_id, ino, hash" if table == "node_hashes" else ", ".join(_cols(table))
            ids = ", ".join(str(int(t)) for t in plain)
            parts.insert(0, f"SELECT {cols} FROM {table} WHERE tree_id IN ({ids})")
        return f"{m.group(1)} ({' UNION ALL '.join(parts)}) {alias}"
    return _SOURCES.sub(source, _LOCKS.sub("", sql))


class ViewSQL:
    """Mixin for sql.SQLTx: needs `_x`, `_views` and `_rewrites` (shared caches)."""

    _views: dict[int, Any]
    _rewrites: dict[tuple[Any, ...], str]
    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any: ...   # from SQLTx

    # this transaction's view of the trees whose base may change (pending branches): what it
    # read (PostgreSQL's REPEATABLE READ reads must agree with their snapshot, which an
    # engine-wide "no base" filled after the branch's first change would not) and what it set
    # (never shared before it commits); None outside a transaction
    _memo: dict[int, tuple[int, int] | None] | None = None

    def begin_views(self) -> None:
        self._memo = {}

    def end_views(self) -> None:
        self._memo = None

    def _view(self, tree_id: int) -> tuple[int, int] | None:
        memo = self._memo
        if memo is not None and tree_id in memo:
            return memo[tree_id]
        v = self._views.get(tree_id, _UNKNOWN)
        if v is not _UNKNOWN:
            return v  # type: ignore[no-any-return]
        r = self._x("SELECT base_tree, base_epoch, branch FROM trees WHERE tree_id = ?",
                    (tree_id,)).fetchone()
        if r is None:
            return None   # not (yet) a tree: nothing to cache
        base = None if r[0] is None else (int(r[0]), int(r[1]))
        if base is not None and not str(r[2]).startswith(SNAPSHOT_PREFIX):
            if memo is not None:   # a pending branch: only for this transaction
                memo[tree_id] = base
            return base
        self._views[tree_id] = base
        return base

    def _set_view(self, tree_id: int, base: tuple[int, int] | None) -> None:
        """This transaction changed the tree's base (sql_versions.set_base): what its own
        statements read from now on, and nothing cached before it commits."""
        if self._memo is not None:
            self._memo[tree_id] = base
        self._views.pop(tree_id, None)

    def _rx(self, trees: Iterable[int], sql: str, params: Sequence[Any] = ()) -> Any:
        views: dict[int, tuple[int, int]] = {}
        plain: list[int] = []
        for t in trees:
            v = self._view(t)
            if v is None:
                plain.append(t)
            else:
                views[t] = v
        if not views:
            return self._x(sql, params)
        key = (sql, tuple(sorted(views.items())), tuple(sorted(plain)))
        out = self._rewrites.get(key)
        if out is None:
            if len(self._rewrites) > _REWRITES_MAX:
                self._rewrites.clear()
            out = self._rewrites[key] = rewrite(sql, views, sorted(plain))
        return self._x(out, params)

    def _rin(self, tree_id: int, sql: str, inos: Sequence[int], *head: Any) -> list[Any]:
        """`sql` ("?" for each of `head`, then "{}" for an id list) over `inos` in batches."""
        out: list[Any] = []
        for i in range(0, len(inos), _IN_BATCH):
            batch = list(inos[i:i + _IN_BATCH])
            out += self._rx((tree_id,), sql.format(", ".join("?" * len(batch))),
                            (*head, *batch)).fetchall()
        return out

    # --- the joined reads, one table per step ------------------------------------------------
    def _v_entry(self, tree_id: int, parent: int, name: bytes) -> tuple[int, int, int] | None:
        r = self._rx((tree_id,), "SELECT id, ino FROM dentries WHERE tree_id = ? AND "
                     "parent = ? AND name = ?", (tree_id, parent, name)).fetchone()
        if r is None:
            return None
        m = self._rx((tree_id,), "SELECT mode FROM inodes WHERE tree_id = ? AND ino = ?",
                     (tree_id, r[1])).fetchone()
        return None if m is None else (r[0], r[1], m[0])

    def _v_dir_inodes(self, tree_id: int, cols: str, inos: Sequence[int]) -> dict[int, Any]:
        """ino -> row (`cols`, starting with ino) of those inodes."""
        return {int(r[0]): r for r in self._rin(
            tree_id, f"SELECT {cols} FROM inodes WHERE tree_id = ? AND ino IN ({{}})",
            sorted(set(inos)), tree_id)}

    def _v_list_dir(self, tree_id: int, ino: int, cookie: int, limit: int, cols: str
                    ) -> list[tuple[Any, ...]]:
        """(id, name, *cols of the inode) per entry after `cookie`, in cookie order."""
        ents = self._rx((tree_id,), "SELECT id, name, ino FROM dentries WHERE tree_id = ? AND "
                        "parent = ? AND id > ? ORDER BY id LIMIT ?",
                        (tree_id, ino, cookie, limit)).fetchall()
        rows = self._v_dir_inodes(tree_id, cols, [e[2] for e in ents])
        return [(e[0], e[1], *rows[int(e[2])]) for e in ents if int(e[2]) in rows]

    def _v_children(self, tree_id: int, ino: int, sel: str, table: str, order: str,
                    extra: str = "") -> list[Any]:
        """`sel` (columns of `d`, the entries of directory `ino`, and `o`, the rows of `table`
        with o.ino = d.ino) over the view `tree_id`, ordered by `order`; `extra`: more joins
        (may name the view's base and epoch as {base} and {epoch}). The view's rows of a table
        are two disjoint halves, so the join is the UNION ALL of the four joins of halves;
        each is driven by dentries' (tree_id, parent) prefix and probes `table` by its key,
        where a join of the UNION ALL subqueries read the whole tree. CROSS JOIN: SQLite then
        keeps that order (without statistics it scanned a tree's xattrs or slots instead)."""
        view = self._view(tree_id)
        assert view is not None, tree_id
        base, epoch = view
        key = ("children", sel, table, order, extra, base, epoch)
        sql = self._rewrites.get(key)
        if sql is None:
            more = extra.format(base=base, epoch=epoch)
            sql = " UNION ALL ".join(
                f"SELECT {sel} FROM {d_src} CROSS JOIN {o_src}{more} WHERE {d_cond} AND "
                f"d.parent = ? AND o.ino = d.ino AND {o_cond}"
                for d_src, d_cond in _halves("dentries", "d", base, epoch)
                for o_src, o_cond in _halves(table, "o", base, epoch)) + f" ORDER BY {order}"
            if len(self._rewrites) > _REWRITES_MAX:
                self._rewrites.clear()
            self._rewrites[key] = sql
        return list(self._x(sql, (ino,) * 4).fetchall())
