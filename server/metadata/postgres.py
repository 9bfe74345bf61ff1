"""PostgreSQL implementation of the metadata engine: several servers share one database.

Interface:
    PostgresMetadata(dsn, *, pool_size=10, timeout=POOL_TIMEOUT, row_key=None)
                                            implements `MetadataEngine` (metadata/base.py):
                                            `posix.PosixMeta` over a `PostgresStore`, every call
                                            re-run (bounded) when the database aborted it for a
                                            conflict; `close()` closes the pool (and the
                                            deadline cutter's thread)
    PostgresStore(dsn, *, pool_size=10, timeout=POOL_TIMEOUT, row_key=None)
                                            implements `store.Store` over a psycopg 3 connection
                                            pool of at most `pool_size` (creating or migrating
                                            the schema on open: postgres_schema.py); `timeout`:
                                            seconds a call waits for a connection; `row_key`:
                                            the deployment's storage key, which keys the row
                                            MACs (row_mac.py; None: unkeyed)
    POSTGRES                                the `sql.Dialect` of PostgreSQL

Only connections, transactions, errors and the dialect live here; the statements are sql.py's
and the rules posix.py's and records.py's.

Isolation: READ COMMITTED with row locks. A write transaction locks (`FOR UPDATE`) every row the
rules read before writing -- the directory rows first, then the entries and inodes they name,
chunk rows in id order -- so two servers working in one directory queue on its row instead of
failing, and each statement after a wait sees what the other committed (a rule re-reads rows
only after locking them). Moves of a directory between parents also take a per-tree advisory
lock (see sql.py). SERIALIZABLE would abort and retry nearly every pair of concurrent creates
in one directory (both update its row), so it was not chosen. What still aborts -- a deadlock
the lock order does not prevent (two renames between the same two directories in opposite
directions), a unique key two transactions inserted at once (`put_asset` of one id) -- rolls
back and the whole call runs again (at most `ATTEMPTS` times, then `StoreUnavailable`).

Reads: `read()` is one REPEATABLE READ, READ ONLY transaction (one snapshot, never blocks);
`single()` runs each statement alone in autocommit on a pooled connection.

Durability: a commit is durable as the database's `synchronous_commit` says (PostgreSQL's
default `on`: flushed to its WAL before COMMIT returns); `durable=True` sets it `on` for that
transaction even where an operator turned it off. A closed file's commit is thus a committed
transaction, which survives a crash of this server in every case.

Errors: a database that cannot be reached (refused, gone, pool exhausted for `timeout` seconds,
or for what is left of the served call's deadline when that is sooner) is `StoreUnavailable`
(clients retry UNAVAILABLE); a call cut off before its COMMIT is re-run on a fresh connection
first, a statement that may have committed is not. A statement the database has not answered
by the call's deadline (a lock held elsewhere, a host that stopped answering) has its
connection cut then (pg_cut.py): `TimedOut`.
"""

from __future__ import annotations

import functools
import random
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import psycopg
import psycopg.errors
from psycopg_pool import ConnectionPool, PoolClosed, PoolTimeout

from aifs_core.errors import AlreadyExists, InvalidArgument, StoreUnavailable
from aifs_server.deadline import Deadline, call_deadline
from aifs_server.metadata.base import MetadataEngine
from aifs_server.metadata.pg_cut import DeadlineCutter
from aifs_server.metadata.posix import PosixMeta
from aifs_server.metadata.postgres_schema import migrate
from aifs_server.metadata.row_mac import RowMac
from aifs_server.metadata.sql import Dialect, SQLTx

# Moves of directories between parents within one tree take this advisory lock (two 32-bit keys:
# a class for AIFS tree locks and the tree id; a key space apart from the migration lock's).
_TREE_LOCK_CLASS = 0x41494654  # "AIFT"
POSTGRES = Dialect(
    "postgresql", param="%s", row_lock="FOR UPDATE", orphan_index="",
    share_lock="FOR KEY SHARE",  # a commit's chunk rows: GC's DELETE waits, other commits not
    tree_lock=f"SELECT pg_advisory_xact_lock({_TREE_LOCK_CLASS}, CAST(? AS INTEGER))",
    # a snapshot (an epoch, sql_versions.freeze) waits for the writes in flight and holds new
    # ones until it commits: a row written at the old epoch after it would appear in it
    freeze_lock="LOCK TABLE inodes, dentries, xattrs, chunk_maps IN SHARE MODE")

ATTEMPTS = 8            # runs of one call the database aborted for a conflict
CONNECT_TIMEOUT = 5     # seconds to open one connection
POOL_TIMEOUT = 10.0     # seconds to wait for a pooled connection before StoreUnavailable

_CONFLICTS = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure,
              psycopg.errors.UniqueViolation, psycopg.errors.LockNotAvailable)


class _Again(Exception):
    """The database rolled the call's transaction back and running it again may succeed;
    `final` is raised when the attempts run out."""

    def __init__(self, final: Exception) -> None:
        super().__init__(str(final))
        self.final = final


def _unavailable(where: str, e: BaseException) -> StoreUnavailable:
    return StoreUnavailable(f"metadata database {where} cannot be reached: "
                            f"{type(e).__name__}: {e}".strip())


def _translate(where: str, e: psycopg.Error, *, committed_maybe: bool) -> Exception:
    """The error a psycopg error becomes: `_Again` when the transaction surely rolled back and
    a re-run may succeed, `StoreUnavailable` for a lost database, else a RuntimeError naming it
    (a broken rule, e.g. a CHECK constraint: INTERNAL on the wire, as with SQLite)."""
    if isinstance(e, PoolClosed):
        return InvalidArgument(f"metadata database {where} is closed")
    if isinstance(e, psycopg.errors.UniqueViolation):
        return _Again(AlreadyExists(f"a concurrent call created the same row: {e}"))
    if isinstance(e, _CONFLICTS):
        return _Again(StoreUnavailable(f"metadata database {where} kept aborting this call for "
                                       f"conflicts with concurrent ones ({ATTEMPTS} attempts); "
                                       f"retry: {e}"))
    if isinstance(e, psycopg.OperationalError):  # connection refused or lost, PoolTimeout
        err = _unavailable(where, e)
        return err if committed_maybe or isinstance(e, PoolTimeout) else _Again(err)
    return RuntimeError(f"metadata database {where}: {type(e).__name__}: {e}")


class _Rows:
    """A finished statement's rows and rowcount (the connection went back to the pool)."""

    def __init__(self, rows: list[Any], rowcount: int) -> None:
        self._rows, self.rowcount = rows, rowcount

    def fetchone(self) -> Any:
        return self._rows[0] if self._rows else None

    def fetchall(self) -> list[Any]:
        return self._rows

    def __iter__(self) -> Iterator[Any]:
        return iter(self._rows)


class _Autocommit:
    """A DB-API-like connection whose every statement runs alone on a pooled connection."""

    def __init__(self, store: PostgresStore) -> None:
        self._s = store

    def execute(self, sql: str, params: Sequence[Any] = ()) -> _Rows:
        read = sql.lstrip().startswith(("SELECT", "WITH"))
        for attempt in (0, 1):
            try:
                with self._s.connection() as c:
                    cur = c.execute(sql, params)
                    return _Rows(cur.fetchall() if cur.description else [], cur.rowcount)
            except psycopg.OperationalError as e:
                # a read is re-run once on a fresh connection (the pool dropped the broken one);
                # a write may have committed before the connection broke: not re-run here
                if attempt or not read or isinstance(e, (PoolTimeout, PoolClosed)):
                    raise _translate(self._s.where, e, committed_maybe=True) from e
            except psycopg.Error as e:
                raise _translate(self._s.where, e, committed_maybe=True) from e
        raise AssertionError("unreachable")

    def cursor(self) -> _Autocommit:
        return self  # SQLTx runs executemany on a cursor (DB-API); this one is its own

    def executemany(self, sql: str, rows: Any) -> None:
        try:
            with self._s.connection() as c:
                c.cursor().executemany(sql, rows)
        except psycopg.Error as e:
            raise _translate(self._s.where, e, committed_maybe=True) from e


class PostgresStore:
    """`store.Store` over a PostgreSQL database (see the module docstring)."""

    def __init__(self, dsn: str, *, pool_size: int = 10, timeout: float = POOL_TIMEOUT,
                 row_key: bytes | None = None) -> None:
        self._mac = RowMac(row_key)
        info = psycopg.conninfo.conninfo_to_dict(dsn)
        self.where = repr(f"{info.get('dbname', '')} on {info.get('host', '')}")
        kwargs = {"autocommit": True, "connect_timeout": CONNECT_TIMEOUT}
        try:
            with psycopg.connect(dsn, **kwargs) as conn:  # type: ignore[arg-type]
                migrate(conn, self._mac)
        except psycopg.OperationalError as e:
            raise _unavailable(self.where, e) from e
        self._pool = ConnectionPool(dsn, min_size=1, max_size=max(1, pool_size), kwargs=kwargs,
                                    timeout=timeout, open=False,
                                    name="aifs-metadata")
        try:
            self._pool.open(wait=True, timeout=timeout)
        except PoolTimeout as e:
            self._pool.close()
            raise _unavailable(self.where, e) from e
        self._timeout = timeout
        self._cutter = DeadlineCutter(f"metadata database {self.where}")
        self._single = SQLTx(_Autocommit(self), POSTGRES, self._mac)  # bind() shares its caches

    def _wait(self, deadline: Deadline) -> float:
        """Seconds to wait for a pooled connection: the pool's timeout, cut to what is left of
        the call this thread serves (a database that went away must not hold a call, and
        its worker thread, past the call's deadline)."""
        left = deadline.remaining()
        return self._timeout if left is None else max(0.001, min(self._timeout, left))

    @contextmanager
    def connection(self) -> Iterator[Any]:
        """A pooled connection for the call this thread serves, cut at the call's deadline
        (pg_cut.py: a statement the database does not answer ends with the call)."""
        deadline = call_deadline()
        with self._pool.connection(timeout=self._wait(deadline)) as conn, \
                self._cutter.hold(conn, deadline):
            yield conn

    def single(self) -> SQLTx:
        return self._single

    @contextmanager
    def write(self, durable: bool = False) -> Iterator[SQLTx]:
        committing = False
        try:
            with self.connection() as conn:
                tx = conn.transaction()
                with tx:
                    if durable:
                        conn.execute("SET LOCAL synchronous_commit = on")
                    yield self._single.bind(conn)
                    committing = True  # leaving the block sends COMMIT
        except psycopg.Error as e:
            raise _translate(self.where, e, committed_maybe=committing) from e

    @contextmanager
    def read(self) -> Iterator[SQLTx]:
        try:
            with self.connection() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                try:
                    yield self._single.bind(conn, locking=False)  # shared caches
                finally:
                    if not conn.broken:
                        conn.execute("COMMIT")
        except psycopg.Error as e:
            raise _translate(self.where, e, committed_maybe=False) from e

    def close(self) -> None:
        self._pool.close()
        self._cutter.close()


F = TypeVar("F", bound=Callable[..., Any])


def _rerun(fn: F) -> F:
    """Run a call again (fresh transaction) while the database aborts it for a conflict."""
    @functools.wraps(fn)
    def run(self: PostgresMetadata, *args: Any, **kw: Any) -> Any:
        if getattr(self._depth, "in_call", False):
            return fn(self, *args, **kw)  # a call inside a call: the outer one re-runs
        self._depth.in_call = True
        try:
            for attempt in range(ATTEMPTS):
                try:
                    return fn(self, *args, **kw)
                except _Again as again:
                    if attempt == ATTEMPTS - 1:
                        raise again.final from again
                    # jittered, growing pause: two servers that collided do not collide again
                    time.sleep(random.uniform(0.001, 0.004) * (1 << min(attempt, 5)))
            raise AssertionError("unreachable")
        finally:
            self._depth.in_call = False
    return run  # type: ignore[return-value]


class PostgresMetadata(PosixMeta):
    """`MetadataEngine` over a PostgreSQL database (see the module docstring)."""

    def __init__(self, dsn: str, *, pool_size: int = 10, timeout: float = POOL_TIMEOUT,
                 row_key: bytes | None = None) -> None:
        # for PostgreSQL-only tests
        self._pg = PostgresStore(dsn, pool_size=pool_size, timeout=timeout, row_key=row_key)
        self.dsn = dsn  # the lease bus (lease_bus.py) opens its own LISTEN connection with it
        self._depth = threading.local()
        super().__init__(self._pg)


# Every call of the engine's interface re-runs on a conflict, except close() and the
# iter_chunks generator (each of its pages is one statement; a page is not worth re-running).
for _name in [n for n in vars(MetadataEngine) if not n.startswith("_")]:
    if _name not in ("close", "iter_chunks"):
        setattr(PostgresMetadata, _name, _rerun(getattr(PosixMeta, _name)))
