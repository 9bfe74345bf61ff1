"""SQLite implementation of the metadata engine (the embedded default).

Interface:
    SQLiteMetadata(path, *, durable=False, row_key=None)
                                             implements `MetadataEngine` (metadata/base.py):
                                             `posix.PosixMeta` over a `SQLiteStore`;
                                             `close()` closes every thread's connection
    SQLiteStore(path, *, durable=False, row_key=None)
                                             implements `store.Store` over one SQLite file
                                             (creating or migrating its schema on open);
                                             `row_key`: the deployment's storage key, which
                                             keys the row MACs (row_mac.py; None: unkeyed)
    SQLITE                                   the `sql.Dialect` of SQLite

Only connection handling, the schema (sqlite_schema.py) and the dialect live here; the
statements are sql.py's and the rules posix.py's and records.py's.

Threading: one connection per thread (`threading.local`); the gRPC server calls the engine from
a thread pool. Every change of more than one row runs in one `BEGIN IMMEDIATE` transaction
(take the write lock up front, so two writers never deadlock upgrading read locks, and rows a
write transaction read stay as read until it commits); reads that need more than one statement
run in one deferred (snapshot) transaction; single statements run in autocommit.

Durability: WAL mode with `synchronous=NORMAL`. In WAL mode a commit is an append to the WAL
file, so a committed transaction survives a crash of this process (the OS has the bytes); only
an OS crash or power loss can drop the last commits (never corrupt the database). Pass
`durable=True` for `synchronous=FULL` (fsync the WAL on every commit) when that matters more
than commit latency.

A full disk (SQLITE_FULL, ENOSPC on the WAL) is `NoSpace` naming the database file (ENOSPC at a
mount, no traceback), from any statement or commit; the failed transaction is rolled back and
the connection stays usable once there is room again.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from aifs_core.errors import InvalidArgument, NoSpace
from aifs_server.metadata.posix import PosixMeta
from aifs_server.metadata.row_mac import RowMac
from aifs_server.metadata.sql import Dialect, SQLTx
from aifs_server.metadata.sqlite_schema import migrate
from aifs_server.sqlite_full import disk_full

SQLITE = Dialect("sqlite", param="?", row_lock="", orphan_index="INDEXED BY inodes_orphans")


def no_space_error(path: str, exc: sqlite3.Error) -> NoSpace | None:
    """NoSpace naming the database file when `exc` is SQLite finding its disk full
    (sqlite_full.disk_full); None for any other error."""
    if not disk_full(path, exc):
        return None
    return NoSpace(f"metadata database {path}: the disk is full (SQLite: {exc}); the change "
                   f"was not made: free space on the file system holding it (or run `aifs gc`) "
                   f"and retry")


_EXECUTE = sqlite3.Connection.execute


class _Connection(sqlite3.Connection):
    """A connection whose statements raise NoSpace (ENOSPC at a mount) instead of a bare
    OperationalError (EIO and a traceback) when the database's disk is full. Every statement
    of SQLTx goes through execute or a cursor's executemany, autocommit ones included."""

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        try:
            return _EXECUTE(self, sql, parameters)   # not super(): this is the hot path
        except sqlite3.OperationalError as e:
            full = no_space_error(self.aifs_path, e)
            if full is None:
                raise
            raise _on_full(self.aifs_on_full, full) from e

    def cursor(self, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            return super().cursor(*args, **kwargs)
        cur = super().cursor(_Cursor)
        cur.aifs_path = self.aifs_path
        cur.aifs_on_full = self.aifs_on_full
        return cur

    aifs_path = ""
    aifs_on_full: list[Callable[[], bool]] = []


class _Cursor(sqlite3.Cursor):
    aifs_path = ""

    def executemany(self, sql: str, seq_of_parameters: Any, /) -> Any:
        try:
            return super().executemany(sql, seq_of_parameters)
        except sqlite3.OperationalError as e:
            full = no_space_error(self.aifs_path, e)
            if full is None:
                raise
            raise _on_full(self.aifs_on_full, full) from e

    aifs_on_full: list[Callable[[], bool]] = []


def _on_full(hooks: list[Callable[[], bool]], full: NoSpace) -> NoSpace:
    """Tell the store's on-full hook (the server's space reserve) and note whether it made room."""
    for hook in hooks:
        full.reserve_released = hook() or full.reserve_released
    return full


class SQLiteStore:
    """`store.Store` over one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, *, durable: bool = False,
                 row_key: bytes | None = None) -> None:
        self._path = str(path)
        self._mac = RowMac(row_key)
        self._sync = "FULL" if durable else "NORMAL"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._closed = False
        self._on_full: list[Callable[[], bool]] = []   # shared with every connection
        migrate(self._conn(), self._mac)

    def on_full(self, hook: Callable[[], bool]) -> None:
        """Call `hook` when a statement finds the disk full; it returns True if it made room
        (then the NoSpace raised says so: the rolled-back change may be run again)."""
        self._on_full.append(hook)

    def _conn(self) -> sqlite3.Connection:
        c: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if c is not None and not self._closed:
            return c
        if self._closed:
            raise InvalidArgument(f"metadata database {self._path} is closed")
        c = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False,
                            timeout=30.0, cached_statements=512, factory=_Connection)
        c.aifs_path = self._path
        c.aifs_on_full = self._on_full
        c.execute("PRAGMA busy_timeout=30000")
        c.execute("PRAGMA foreign_keys=ON")
        c.execute(f"PRAGMA synchronous={self._sync}")
        with self._lock:
            self._conns.append(c)
        self._local.conn = c
        # SQLite locks the whole database for a write transaction, so one Tx per connection
        # serves reads, writes and autocommit alike
        self._local.tx = SQLTx(c, SQLITE, self._mac)
        return c

    def single(self) -> SQLTx:
        self._conn()
        tx: SQLTx = self._local.tx
        return tx

    @contextmanager
    def write(self, durable: bool = False) -> Iterator[SQLTx]:
        """One write transaction. durable: this commit fsyncs the WAL (synchronous=FULL for it
        alone; in WAL mode that also makes every earlier commit durable), for fsync callers."""
        c = self._conn()
        if durable and self._sync != "FULL":
            c.execute("PRAGMA synchronous=FULL")
        try:
            c.execute("BEGIN IMMEDIATE")
            tx: SQLTx = self._local.tx
            tx.begin_views()   # sql_views: what this transaction reads of pending branches
            try:
                yield tx
                c.execute("COMMIT")
            except BaseException:
                # SQLite may have rolled back already (it does on SQLITE_FULL): a second
                # ROLLBACK would fail and hide the real error. A failed COMMIT (disk full)
                # must not leave this thread's connection holding the write lock.
                if c.in_transaction:
                    with suppress(sqlite3.Error):
                        c.execute("ROLLBACK")
                raise
        finally:
            self._local.tx.end_views()
            if durable and self._sync != "FULL":
                c.execute(f"PRAGMA synchronous={self._sync}")

    @contextmanager
    def read(self) -> Iterator[SQLTx]:
        c = self._conn()
        c.execute("BEGIN")
        tx: SQLTx = self._local.tx
        tx.begin_views()
        try:
            yield tx
        finally:
            tx.end_views()
            c.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, self._conns = self._conns, []
        for c in conns:
            c.close()


class SQLiteMetadata(PosixMeta):
    """`MetadataEngine` over one SQLite file (see the module docstring)."""

    def __init__(self, path: str | Path, *, durable: bool = False,
                 row_key: bytes | None = None) -> None:
        # for SQLite-only tests and tools
        self._sqlite = SQLiteStore(path, durable=durable, row_key=row_key)
        super().__init__(self._sqlite)

    def on_full(self, hook: Callable[[], bool]) -> None:
        """See SQLiteStore.on_full: the server's space reserve listens here."""
        self._sqlite.on_full(hook)
