"""Pending branches: a branch created in O(1) that copies its rows on its first change
(docs/FORMAT.md §6.4 "Branches").

A branch created from a snapshot (or from a branch without snapshots) is a `trees` row whose
`base_tree`/`base_epoch` name the view it starts as -- always a live tree at an epoch, never a
view of a view -- and which holds no rows: it reads through sql_views.py exactly as a snapshot
does. The first change to it (posix.PosixMeta._wtree; a snapshot of it) materializes it once: in
one write transaction, with its row locked, the view's rows are copied in (copy_tree_rows,
from the base's live rows when nothing changed since the epoch), their chunk references added,
and the base cleared. From then on it is a plain tree forever (so every server may cache that).
While pending it holds the base's rows at its epoch alive as a snapshot does: gc_history keeps
what a `trees` row with that base and epoch sees, views_of counts it, and chunk references stay
with the base's live and history rows.

Interface (each inside one write transaction `tx` of the store; `ns` the tree's namespace):
    materialize(tx, ns, tree_id, now) -> bool   copy the view's rows in and clear the base, if
                                    the tree is still pending (False: it was not)
    release_base(tx, ns, base_tree, now)        a view of `base_tree` went (a snapshot pruned, a
                                    pending branch materialized, re-pointed or deleted): the
                                    history only it saw goes, with the chunks only that held,
                                    and a deleted branch's kept tree goes with its last view
    kept_name(tree_id)              the name a deleted branch's tree is kept under while views
                                    read it ("@snap:deleted-<id>": read-only, no branch)
"""

from __future__ import annotations

from aifs_server.metadata.store import Tx

KEPT_PREFIX = "@snap:deleted-"     # under posix.FROZEN_PREFIX: refused every change


def kept_name(tree_id: int) -> str:
    return f"{KEPT_PREFIX}{tree_id}"


def materialize(tx: Tx, ns: str, tree_id: int, now: int) -> bool:
    base = tx.lock_tree(tree_id)    # a second server waits here, then finds it done
    if base is None:
        return False
    tx.copy_tree_rows(tree_id, tree_id)   # reads its own view: the rows land under its id
    tx.add_tree_refs(ns, tree_id, 1, now)
    tx.set_base(tree_id, None)
    release_base(tx, ns, base[0], now)
    return True


def release_base(tx: Tx, ns: str, base_tree: int, now: int) -> None:
    # a deleted branch's kept tree goes with its last view: all its history with it (else
    # the changes of its current epoch stay for its next hashing)
    gone = tx.views_of(base_tree) == 0 and tx.get_tree(ns, kept_name(base_tree)) is not None
    tx.gc_history(ns, base_tree, now, keep_changes=not gone)
    if gone:
        tx.add_tree_refs(ns, base_tree, -1, now)
        tx.delete_tree(base_tree)
