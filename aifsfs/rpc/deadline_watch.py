"""Hold gRPC calls to their deadlines when grpc itself cannot (issue 13, the server-stall drill).

Interface:
    CallWatch()                         one per Channel; watched by one thread per process
        .begin(expiry, address) -> key   before a call: its deadline (time.monotonic()) and
                                         the server it goes to
        .end(key)                        after the call returned or raised (try/finally)
        .cuts                            how many times its calls' connections were cut
    GRACE    seconds a call may run past its deadline before its connection is cut
    TICK     how often the watchdog looks

Why: grpc completes a call at its deadline only when the transport can finish the call's
batch, and a sent message's part of the batch finishes only when the socket write holding it
does. Against a stopped server (SIGSTOP), a small call written into the same socket write as a
PutChunks stream's megabytes waits for that write for as long as the server is stopped: the
drill saw a Lookup 490 s past its 2 s deadline, and every call sharing the connection stuck
with it. Cancelling the call and closing the grpc channel (which waits for its calls) do not
help, nor does keepalive (its ping queues behind the same write). A failing connection does:
the watchdog cuts the connections to the server of any call past deadline + GRACE
(transport_cut), and every call on them completes at once.

Cost on the hot path: begin/end are a dict insert and pop (no lock, no syscall); the watchdog
thread wakes every TICK and scans the calls in flight. A watchdog that itself woke late (this
process was stopped or starved) skips that look: grpc's own timers had no chance to run either.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
import weakref

from .transport_cut import cut_connections

log = logging.getLogger("aifsfs.rpc")

GRACE = 2.0
TICK = 0.5
_QUIET = 60.0      # seconds: one warning per stall of a server, not one per cut

_watches: weakref.WeakSet[CallWatch] = weakref.WeakSet()
_thread: threading.Thread | None = None
_lock = threading.Lock()     # _watches and _thread


class CallWatch:
    """The calls in flight of one Channel, with their deadlines."""

    def __init__(self) -> None:
        self._calls: dict[int, tuple[float, str]] = {}
        self._keys = itertools.count()
        self._cut_for: set[int] = set()     # calls whose connection was cut already
        self._last_warning = -_QUIET
        self.cuts = 0
        _watch(self)

    def begin(self, expiry: float, address: str) -> int:
        key = next(self._keys)
        self._calls[key] = (expiry, address)
        return key

    def end(self, key: int) -> None:
        self._calls.pop(key, None)

    def check(self, now: float) -> None:
        """Cut the connections of calls past deadline + GRACE (each call once)."""
        late: dict[str, float] = {}
        calls = self._calls.copy()       # one C call: atomic with respect to other threads
        for key, (expiry, address) in calls.items():
            if now > expiry + GRACE and key not in self._cut_for:
                self._cut_for.add(key)
                late[address] = max(late.get(address, 0.0), now - expiry)
        self._cut_for.intersection_update(calls)
        for address, past in late.items():
            cut = cut_connections(address)
            self.cuts += 1
            quiet = now - self._last_warning < _QUIET
            if not quiet:
                self._last_warning = now
            (log.debug if quiet else log.warning)(
                "a call to the AIFS server at %s is %.1f s past its deadline (is the server "
                "stopped?): cut %d connection(s) to it so that its calls fail instead of "
                "hanging", address, past, cut)


def _watch(w: CallWatch) -> None:
    with _lock:
        _watches.add(w)
        _ensure_thread()


def _ensure_thread() -> None:
    global _thread
    if _thread is None:
        _thread = threading.Thread(target=_run, name="aifs-deadline-watch", daemon=True)
        _thread.start()


def _after_fork_in_child() -> None:
    global _thread, _lock
    _thread = None      # threads do not survive a fork: the child's channels need their own
    _lock = threading.Lock()    # it may have been held by the parent's watchdog
    if _watches:
        _ensure_thread()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _run() -> None:
    last = time.monotonic()
    while True:
        time.sleep(TICK)
        now = time.monotonic()
        woke_late = now - last > TICK + GRACE / 2
        last = now
        if woke_late:
            continue
        with _lock:
            watches = list(_watches)
        for w in watches:
            try:
                w.check(now)
            except Exception:  # noqa: BLE001 - the watchdog must outlive any one failure
                log.exception("deadline watchdog")
