"""Cut a database connection whose holder's call ran past its deadline.

Interface:
    DeadlineCutter()
        .hold(conn, deadline) -> context manager   while the block runs, `conn` (a psycopg
                                connection) is shut down at `deadline` (a deadline.Deadline;
                                NEVER: not watched). A block whose connection was cut raises
                                TimedOut (from the psycopg error the cut caused) instead.
                                A deadline already passed raises TimedOut before the block.
        .cuts                   connections cut so far (tests, metrics)
        .close()                end the watcher thread (the store closes)

Why: the pool wait is bounded by the call's deadline (postgres.PostgresStore._wait), but a
statement already sent waits for its answer as long as the database takes: a lock another
client holds, a database host that stopped answering without closing the connection (a
partition, a paused VM). psycopg's blocking calls take no timeout, and the database's own
`statement_timeout` fires only in a database that runs. So one thread watches the deadlines of
the connections in use and, when one passes, shuts the connection's socket down
(shutdown(2) on a duplicate of its descriptor): the holder's recv returns at once, psycopg
raises OperationalError, the pool throws the broken connection away, and the call ends with
DEADLINE_EXCEEDED. What the statement did is then unknown to us -- a COMMIT may have landed --
which is what a client that gave up at its deadline knows too (a changing call's retry is
matched by the request log: exactly-once, records.py).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

from aifs_core.errors import TimedOut
from aifs_server.deadline import Deadline


class _Held:
    __slots__ = ("at", "fd", "cut")

    def __init__(self, at: float, fd: int) -> None:
        self.at = at
        self.fd = fd
        self.cut = False


class DeadlineCutter:
    def __init__(self, where: str = "the metadata database") -> None:
        self.where = where
        self.cuts = 0
        self._held: set[_Held] = set()
        self._cv = threading.Condition()
        self._next = float("inf")       # the earliest deadline the watcher sleeps towards
        self._thread: threading.Thread | None = None
        self._closed = False

    @contextlib.contextmanager
    def hold(self, conn: Any, deadline: Deadline) -> Iterator[None]:
        at = deadline.at
        if at is None:
            yield
            return
        if time.monotonic() >= at:
            raise TimedOut(f"{self.where}: the call's deadline passed before its statement "
                           f"was sent; nothing was changed")
        h = _Held(at, conn.pgconn.socket)
        with self._cv:
            self._held.add(h)
            if at < self._next:         # the watcher sleeps past this one: wake it
                self._next = at
                self._start()
                self._cv.notify()
        try:
            yield
        except Exception as exc:
            if h.cut:
                raise TimedOut(
                    f"{self.where} did not answer within the call's deadline: its connection "
                    f"was cut ({type(exc).__name__}); a change the call made may or may not "
                    f"have been committed -- retry it (a changing call's retry is matched)"
                ) from exc
            raise
        finally:
            with self._cv:
                self._held.discard(h)
            if h.cut:
                # cut as the block ended (no error reached it): closed, the pool discards it
                # rather than hand the next call a connection whose socket is shut down
                conn.close()

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify()
            thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(5)

    def _start(self) -> None:
        if self._thread is None and not self._closed:
            self._thread = threading.Thread(target=self._watch, name="aifs-pg-cutter",
                                            daemon=True)
            self._thread.start()

    def _watch(self) -> None:
        with self._cv:
            while not self._closed:
                now = time.monotonic()
                for h in [h for h in self._held if h.at <= now and not h.cut]:
                    # under the lock: the holder cannot leave (and its connection go back to
                    # the pool, to another call) while we cut it
                    h.cut = True
                    self.cuts += 1
                    _shut_down(h.fd)
                live = [h.at for h in self._held if not h.cut]
                self._next = min(live, default=float("inf"))
                self._cv.wait(None if not live else max(0.0, self._next - now))


def _shut_down(fd: int) -> None:
    """shutdown(2) the socket behind `fd` (a duplicate is made and closed: the holder's
    descriptor stays open and valid, only its connection ends)."""
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return              # already closed by its holder
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass                # not connected any more
    finally:
        s.close()
