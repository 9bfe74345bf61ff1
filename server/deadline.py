"""The deadline of a call, for every server-side loop that could run long.

Interface:
    Deadline(at: float | None)                  `at` on the time.monotonic() clock; None = never
    Deadline.of_call(context, cap=MAX_CALL_SECONDS) -> Deadline
        the client's deadline, and never later than `cap` seconds from now (a client that sets
        no deadline must not be able to hold a server thread forever)
    Deadline.after(seconds) -> Deadline
    deadline.remaining() -> float | None
    deadline.check(doing: str)                  raise TimedOut("<doing>: ...") once it has passed
    NEVER                                       a Deadline that never passes (offline tools)

    call_deadline() -> Deadline                 the deadline of the call this thread serves now
                                                (NEVER outside one): for waits far from the
                                                handler's arguments (a pooled database connection)
    in_call(context)                            context manager the `rpc` wrapper enters per call
    bounded_by(deadline)                        the same for work that is not a call (a scrape)

A loop calls `check` once per unit of work (a chunk, a row page, a MiB hashed), so a call stops
within one unit of its deadline and its worker thread is free again; shutdown then finishes in
bounded time too.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

from aifs_core.errors import TimedOut

MAX_CALL_SECONDS = 300.0


class Deadline:
    __slots__ = ("at",)

    def __init__(self, at: float | None) -> None:
        self.at = at

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        return cls(time.monotonic() + seconds)

    @classmethod
    def of_call(cls, context: Any, cap: float = MAX_CALL_SECONDS) -> Deadline:
        remaining = context.time_remaining() if context is not None else None
        limit = cap if remaining is None else min(float(remaining), cap)
        return cls.after(max(0.0, limit))

    def remaining(self) -> float | None:
        return None if self.at is None else self.at - time.monotonic()

    def check(self, doing: str) -> None:
        if self.at is not None and time.monotonic() >= self.at:
            raise TimedOut(f"{doing}: the call's deadline passed before the work was done; "
                           f"nothing was changed")


NEVER = Deadline(None)


# grpc runs each call's handler (and its interceptors) in a contextvars.Context of its own
_CALL: ContextVar[Deadline] = ContextVar("aifs_call_deadline", default=NEVER)


def call_deadline() -> Deadline:
    return _CALL.get()


@contextlib.contextmanager
def bounded_by(deadline: Deadline) -> Iterator[None]:
    token = _CALL.set(deadline)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):   # a generator finalized in another context
            _CALL.reset(token)


def in_call(context: Any) -> contextlib.AbstractContextManager[None]:
    return bounded_by(Deadline.of_call(context))
