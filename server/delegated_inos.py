"""Inode numbers given out to mounts ahead of their creates (docs/LEASES.md "Delegated
inodes"), recorded in the metadata database so that a file a mount created locally can still
be made after a server restart, and only once.

Why a table: a mount answers a create under its exclusive directory lease with a number the
server gave it, and sends CreateFile at the close -- possibly to a restarted server (SQLite)
or another one (failover). The number must be one the tree allocated (numbers are never
reused: caches key on them) and not used yet; the row says so, and CreateFile deletes it in
the create's own transaction (so a create and its number's use commit together).

Interface (each inside one of the engine's write transactions `tx`, a sql.SQLTx):
    ensure_table(store)                 CREATE TABLE IF NOT EXISTS (outside the versioned
                                        schema, like the request log; not migrated: its rows
                                        only matter to mounts of this deployment)
    give(tx, tree_id, first, n)         numbers first .. first+n-1 given out (and rows older
                                        than KEEP_SECONDS deleted: their mounts are gone)
    use(tx, tree_id, ino) -> bool       the number was given out and not used: now it is
"""

from __future__ import annotations

import time
from typing import Any

TABLE = "aifs_delegated_inos"
KEEP_SECONDS = 7 * 24 * 3600


def ensure_table(store: Any) -> None:
    for attempt in (0, 1):
        try:
            with store.write() as tx:
                pg = tx.dialect_name == "postgresql"
                int64, rowid = ("BIGINT", "") if pg else ("INTEGER", " WITHOUT ROWID")
                tx.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} (tree_id {int64} NOT NULL, "
                           f"ino {int64} NOT NULL, given_ns {int64} NOT NULL, "
                           f"PRIMARY KEY (tree_id, ino)){rowid}")
            return
        except Exception:
            if attempt:     # two servers creating it at once: it is there the second time
                raise


def give(tx: Any, tree_id: int, first: int, n: int) -> None:
    now = time.time_ns()
    tx.execute(f"DELETE FROM {TABLE} WHERE given_ns < ?", (now - KEEP_SECONDS * 10**9,))
    # one statement for the n rows (n single INSERTs were a tenth of a create's server time)
    tx.execute(f"WITH RECURSIVE s(i) AS (SELECT CAST(? AS BIGINT) UNION ALL "
               f"SELECT i + 1 FROM s WHERE i < ?) "
               f"INSERT INTO {TABLE} (tree_id, ino, given_ns) SELECT ?, i, ? FROM s",
               (first, first + n - 1, tree_id, now))


def use(tx: Any, tree_id: int, ino: int) -> bool:
    cur = tx.execute(f"DELETE FROM {TABLE} WHERE tree_id = ? AND ino = ?", (tree_id, ino))
    return int(cur.rowcount) == 1
