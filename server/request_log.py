"""Exactly-once changing calls: a log of (namespace, request id) -> the result a call gave.

Why: a client retries a call that failed with UNAVAILABLE, on the same server or (failover) on
another. When the first attempt committed and its reply was lost (the server died after the
commit, the connection dropped), running the call again answers AlreadyExists for a create that
succeeded and NotFound for an unlink that did. So a client puts a random `request_id` in every
changing call, chosen once per logical call and resent by each retry (aifsfs.rpc.filesystem,
aifsfs.rpc.versioning), and the server runs the call through `RequestLog.once`:

1. a retry (the client marks its retries with the call metadata `aifs-retry: 1`) whose id is
   recorded gets the recorded result back; nothing runs (no lease recall, no change). A first
   attempt cannot have been recorded: it skips this read (one database round trip per call);
2. otherwise the call runs, and the engine, inside the change's own write transaction, calls
   `record(tx, result)`: the row (namespace, request_id, encoded result) commits with the change
   or not at all (SQLite and PostgreSQL alike: it is one more row of that transaction);
3. a retry that races its original (the original still running on a server the client gave up
   on), or an unmarked one, loses on the primary key or on the change itself (the name exists,
   the name is gone): when the call fails, the log is read again and a row found there is the
   answer. The primary key is what makes it exactly once; step 1 only saves the work.

What is recorded is the engine's result (for the Filesystem calls the inode's attributes just
after the change); the caller builds the reply from it as it does for a fresh result (reply
fields read after the commit, such as a parent directory's attributes, are read again).
Rows live KEEP_SECONDS (a retry comes within the client's retry budget, 30 s by default);
`expire` deletes older ones, at most every EXPIRE_EVERY seconds per server, after a call.

Interface:
    RequestLog(store, metrics_registry=None)   creates its table if missing (CREATE TABLE IF NOT
                                               EXISTS: this table is not in the versioned schema)
        .once(method, namespace, request_id, run, codec, retry=True) -> run()'s result or the
              recorded one; retry=False skips the first read (is_retry(context) says which);
              an empty request_id just runs; one longer than MAX_REQUEST_ID: InvalidArgument
        .recorded(namespace, request_id) -> bytes | None
        .expire(before_ns=None) -> rows deleted
        .replays                               how many calls this server answered from the log
    is_retry(context) -> bool                  the call carries `aifs-retry: 1`
    record(tx, result)                         in a write transaction of the engine: record the
                                               current call's result (a no-op outside `once`)
    Codec(encode, decode); ATTR_OR_NONE        Attr | None <-> bytes; EMPTY: -> common Empty
    TABLE, MAX_REQUEST_ID (64 bytes), KEEP_SECONDS (600)

Test hook: AIFS_TEST_KILL_AFTER_COMMIT="Create,Unlink": the server SIGKILLs itself after such a
call (one carrying a request id) committed, before it answers -- the "committed but never
answered" case the failover tests need. Read once, at import.
"""

from __future__ import annotations

import os
import signal
import struct
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from aifs_core.errors import InvalidArgument
from aifs_core.types import Attr
from aifs_proto.v1 import common_pb2

TABLE = "aifs_request_log"
MAX_REQUEST_ID = 64
KEEP_SECONDS = 600
EXPIRE_EVERY = 60.0
KILL_AFTER_COMMIT = frozenset(
    m.strip() for m in os.environ.get("AIFS_TEST_KILL_AFTER_COMMIT", "").split(",") if m.strip())

R = TypeVar("R")


@dataclass(frozen=True)
class Codec(Generic[R]):
    """encode: what the engine passes to `record` -> bytes (stored); decode: those bytes -> what
    `once` returns (what run() returns)."""
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], R]


# an Attr's 12 integers, packed: a tenth of what building its protobuf message costs, and
# the hot path (every create and unlink) pays it
_ATTR = struct.Struct("<12q")


def _encode_attr(a: Attr | None) -> bytes:
    if a is None:
        return b""
    return _ATTR.pack(a.ino, a.mode, a.nlink, a.uid, a.gid, a.rdev, a.size, a.atime_ns,
                      a.mtime_ns, a.ctime_ns, a.blocks, a.generation)


def _decode_attr(b: bytes) -> Attr | None:
    return Attr(*_ATTR.unpack(b)) if b else None


ATTR_OR_NONE: Codec[Attr | None] = Codec(_encode_attr, _decode_attr)
# a call whose reply is Empty: nothing to record but the fact
EMPTY: Codec[Any] = Codec(lambda _: b"", lambda _: common_pb2.Empty())


@dataclass
class _Pending:
    log: RequestLog
    namespace: str
    request_id: bytes
    encode: Callable[[Any], bytes]
    recorded: bool = False


# the call this thread is running under `once` (gRPC runs each call on one worker thread)
_pending: ContextVar[_Pending | None] = ContextVar("aifs_request_log_call", default=None)


def _execute(tx: Any, sql: str, params: tuple[Any, ...] = ()) -> Any:
    """Run one statement on a `sql.SQLTx` ("?" placeholders), in whatever transaction `tx`
    is part of."""
    return tx.execute(sql, params)


def _is_postgres(tx: Any) -> bool:
    return bool(tx.dialect_name == "postgresql")


def is_retry(context: Any) -> bool:
    """Does the call say it is a retry (aifsfs.rpc.filesystem.call_once marks them)?"""
    return any(k == "aifs-retry" and v == "1" for k, v in context.invocation_metadata() or ())


def record(tx: Any, result: Any) -> None:
    """Inside a write transaction of the engine: record the current call's result with it (the
    row commits with the change or not at all). Nothing to do when no call with a request id
    is running (tools, the engine's own tests, calls of older clients)."""
    p = _pending.get()
    if p is not None:
        _insert(tx, p, result)


def _insert(tx: Any, p: _Pending, result: Any) -> None:
    # a plain INSERT: a second row for one id fails on the primary key and rolls its change back
    _execute(tx, f"INSERT INTO {TABLE} (namespace, request_id, reply, created_ns) "
                 f"VALUES (?, ?, ?, ?)", (p.namespace, p.request_id, p.encode(result),
                                          time.time_ns()))
    p.recorded = True


class RequestLog:
    """See the module docstring."""

    def __init__(self, store: Any, metrics_registry: Any = None) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._next_expire = time.monotonic() + EXPIRE_EVERY
        self.replays = 0
        self._replay_counter: Any = None
        if metrics_registry is not None:
            from prometheus_client import Counter
            with suppress(ValueError):   # a registry that has it already (a second Backend)
                self._replay_counter = Counter(
                    "aifs_request_replays_total", "Changing calls answered from the request "
                    "log (a retry of a call that had committed)", ["method"],
                    registry=metrics_registry)
        self._create_table()

    def _create_table(self) -> None:
        for attempt in (0, 1):
            try:
                with self._store.write() as tx:
                    # SQLite: the primary key is the table (one B-tree less per insert)
                    blob, int64, rowid = (("BYTEA", "BIGINT", "") if _is_postgres(tx)
                                          else ("BLOB", "INTEGER", " WITHOUT ROWID"))
                    _execute(tx, f"CREATE TABLE IF NOT EXISTS {TABLE} ("
                                 f"namespace TEXT NOT NULL, request_id {blob} NOT NULL, "
                                 f"reply {blob} NOT NULL, created_ns {int64} NOT NULL, "
                                 f"PRIMARY KEY (namespace, request_id)){rowid}")
                    _execute(tx, f"CREATE INDEX IF NOT EXISTS {TABLE}_created "
                                 f"ON {TABLE} (created_ns)")
                return
            except Exception:
                # two servers starting on one new PostgreSQL database: one CREATE loses a race
                # on the catalog (a unique violation); the table is there the second time
                if attempt:
                    raise

    def recorded(self, namespace: str, request_id: bytes) -> bytes | None:
        row = _execute(self._store.single(),
                       f"SELECT reply FROM {TABLE} WHERE namespace = ? AND request_id = ?",
                       (namespace, bytes(request_id))).fetchone()
        return None if row is None else bytes(row[0])

    def expire(self, before_ns: int | None = None) -> int:
        if before_ns is None:
            before_ns = time.time_ns() - KEEP_SECONDS * 10**9
        cur = _execute(self._store.single(), f"DELETE FROM {TABLE} WHERE created_ns < ?",
                       (before_ns,))
        return max(0, int(cur.rowcount))

    def _replayed(self, method: str) -> None:
        with self._lock:
            self.replays += 1
        if self._replay_counter is not None:
            self._replay_counter.labels(method).inc()

    def _maybe_expire(self) -> None:
        now = time.monotonic()
        with self._lock:
            if now < self._next_expire:
                return
            self._next_expire = now + EXPIRE_EVERY
        with suppress(Exception):   # housekeeping: the next call's turn tries again
            self.expire()

    def once(self, method: str, namespace: str, request_id: bytes, run: Callable[[], R],
             codec: Codec[R], retry: bool = True) -> R:
        if not request_id:
            return run()
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidArgument(f"request_id is {len(request_id)} bytes; the limit is "
                                  f"{MAX_REQUEST_ID} (a client sends 16 random bytes)")
        rid = bytes(request_id)
        got = self.recorded(namespace, rid) if retry else None
        if got is not None:
            self._replayed(method)
            return codec.decode(got)
        p = _Pending(self, namespace, rid, codec.encode)
        token = _pending.set(p)
        try:
            result = run()
        except Exception as failure:
            # the same call may have committed meanwhile (this is a retry racing its original)
            try:
                got = self.recorded(namespace, rid)
            except Exception:
                raise failure from None
            if got is None:
                raise
            self._replayed(method)
            return codec.decode(got)
        finally:
            _pending.reset(token)
        if method in KILL_AFTER_COMMIT:
            # before the late record below: a change that failed to record in its own
            # transaction is then answered NotFound / AlreadyExists on retry, which the tests see
            os.kill(os.getpid(), signal.SIGKILL)
        if not p.recorded:
            # the engine committed no change (e.g. a rename of a name onto a link of itself,
            # which returns before it writes): record the result on its own
            with suppress(Exception), self._store.write() as tx:
                _insert(tx, p, result)
        self._maybe_expire()
        return result
