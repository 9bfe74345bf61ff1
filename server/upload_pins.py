"""Which unreferenced chunks the background collector must not delete: uploads in flight, and
chunks a live session (or a session-less SDK caller, for a grace) uploaded and has not
committed yet. In memory, per server process (docs/DECISIONS.md, Hardening).

Interface:
    UploadPins(sdk_grace=3600.0, ended_grace=120.0, max_holds=MAX_HOLDS)
        .inflight(ns, ids)              called by ChunkService before it looks for or stores
                                        chunks: waits while the collector is deleting one of
                                        them, then keeps them from deletion until the RPC ends
                                        (outside a call_scope: no pin, as offline tools need)
        .hold(session, ns, ids)         after the chunks are recorded: protected while
                                        `session` (a leases.Session; None = an SDK call without
                                        one) is alive, then `ended_grace`; without a session
                                        for `sdk_grace`. A hold covers the chunk only while it
                                        has stayed unreferenced since the hold (its record's
                                        unreferenced-since time <= the hold's time): once a
                                        commit named it and a later change dropped it, the hold
                                        is spent and the chunk is garbage like any other
        .deleting(ns, cid, since_ns, grace_ns=None) -> bool
                                        the collector's claim: False when the chunk is pinned
                                        or held; True marks it being deleted (uploads of it
                                        wait) until .deleted(ns, cid). grace_ns (an explicit
                                        `aifs gc --grace`) shortens session-less holds only
        .prune(limit) -> int            drop spent holds (at most `limit` looked at)
        .stats() -> dict

    call_scope()                        context manager around one RPC (grpc_errors.rpc): the
                                        in-flight pins taken during the call end with it

Why not a clock: a grace long enough for any upload (an hour) keeps every rm's space for an
hour, and one short enough to free space at once deletes a slow writer's uploads. A session is
what knows: its chunks stay until it commits them or ends.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from typing import Any

MAX_HOLDS = 65_536        # chunks held at once (~250 B each); beyond, the oldest hold goes
Key = tuple[str, bytes]

_CALL: contextvars.ContextVar[list[tuple[UploadPins, Key]] | None] = contextvars.ContextVar(
    "aifs_upload_pins", default=None)


@contextlib.contextmanager
def call_scope() -> Iterator[None]:
    taken: list[tuple[UploadPins, Key]] = []
    token = _CALL.set(taken)
    try:
        yield
    finally:
        _CALL.reset(token)
        for pins, key in taken:
            pins._unpin(key)


class _Hold:
    __slots__ = ("pin_ns", "sessions", "until_ns")

    def __init__(self) -> None:
        self.pin_ns = 0
        self.sessions: list[Any] = []     # leases.Session objects (.alive)
        self.until_ns = 0                 # session-less (or ended) protection ends here


class UploadPins:
    def __init__(self, sdk_grace: float = 3600.0, ended_grace: float = 120.0,
                 max_holds: int = MAX_HOLDS) -> None:
        self.sdk_grace_ns = int(sdk_grace * 1e9)
        self.ended_grace_ns = int(ended_grace * 1e9)
        self.max_holds = max_holds
        self._cv = threading.Condition()
        self._inflight: dict[Key, int] = {}
        self._deleting: set[Key] = set()
        self._holds: OrderedDict[Key, _Hold] = OrderedDict()

    def inflight(self, ns: str, ids: Iterable[bytes]) -> None:
        taken = _CALL.get()
        if taken is None:
            return
        keys = [(ns, bytes(c)) for c in ids]
        with self._cv:
            # a deletion of one of these is finishing (one store delete): wait for it, so the
            # upload that follows stores the chunk again instead of trusting a dying copy
            self._cv.wait_for(lambda: not any(k in self._deleting for k in keys))
            for k in keys:
                self._inflight[k] = self._inflight.get(k, 0) + 1
                taken.append((self, k))

    def _unpin(self, key: Key) -> None:
        with self._cv:
            n = self._inflight.get(key, 0) - 1
            if n > 0:
                self._inflight[key] = n
            else:
                self._inflight.pop(key, None)

    def hold(self, session: Any, ns: str, ids: Iterable[bytes]) -> None:
        now = time.time_ns()     # after the record: its unreferenced-since is <= now
        with self._cv:
            for c in ids:
                k = (ns, bytes(c))
                h = self._holds.get(k)
                if h is None:
                    h = self._holds[k] = _Hold()
                else:
                    self._holds.move_to_end(k)
                h.pin_ns = now
                if session is None:
                    h.until_ns = max(h.until_ns, now + self.sdk_grace_ns)
                elif session not in h.sessions:
                    h.sessions.append(session)
            while len(self._holds) > self.max_holds:
                self._holds.popitem(last=False)  # the oldest: a commit fails, re-uploads

    def _protects(self, h: _Hold, since_ns: int, now: int, grace_ns: int | None = None
                  ) -> bool:
        if since_ns > h.pin_ns:
            return False       # referenced after the hold and dropped since: spent
        live = [s for s in h.sessions if getattr(s, "alive", False)]
        if len(live) != len(h.sessions):
            # a session ended: what it uploaded and never committed gets a short grace (a
            # mount that reconnects commits with a new session)
            h.until_ns = max(h.until_ns, now + self.ended_grace_ns)
            h.sessions = live
        until = h.until_ns if grace_ns is None else min(h.until_ns, h.pin_ns + grace_ns)
        return bool(live) or until > now

    def deleting(self, ns: str, cid: bytes, since_ns: int, grace_ns: int | None = None
                 ) -> bool:
        k = (ns, bytes(cid))
        now = time.time_ns()
        with self._cv:
            if self._inflight.get(k):
                return False
            h = self._holds.get(k)
            if h is not None:
                if self._protects(h, since_ns, now, grace_ns):
                    return False
                del self._holds[k]
            self._deleting.add(k)
            return True

    def deleted(self, ns: str, cid: bytes) -> None:
        with self._cv:
            self._deleting.discard((ns, bytes(cid)))
            self._cv.notify_all()

    def prune(self, limit: int = 2000) -> int:
        """Drop holds that can protect nothing any more (sessions ended, grace over); oldest
        first, at most `limit` looked at. Holds of committed chunks that were never freed go
        when their session ends (or by the MAX_HOLDS bound)."""
        now = time.time_ns()
        dropped = 0
        with self._cv:
            for k in list(islice_keys(self._holds, limit)):
                h = self._holds[k]
                if not self._protects(h, h.pin_ns, now):
                    del self._holds[k]
                    dropped += 1
        return dropped

    def stats(self) -> dict[str, int]:
        with self._cv:
            return {"holds": len(self._holds), "inflight": len(self._inflight)}


def islice_keys(d: OrderedDict[Key, _Hold], n: int) -> Iterator[Key]:
    for i, k in enumerate(d):
        if i >= n:
            return
        yield k
