"""Change events of a tree's paths for SDK users (the RFC's SubscribeEvents): a Session stream
that holds no leases and asks for events (session.proto `Watch`; server/events.py).

Interface:
    Watch(channel, path_prefix="/", ready_timeout=None, resume_from="",
          reconnect_seconds=RECONNECT_SECONDS)
        opens the stream and returns once the server watches: every change committed after
        that, through any server of the deployment, of a path under the prefix is reported,
        in commit order per server ("/a": "/a" and below, not "/ab"; "/" everything; a prefix
        of at most 4,096 bytes). resume_from: a `.cursor` of an earlier Watch of this prefix
        (this process's or one before): the events after it come first, or an "overflow"
        event when the server no longer has them all
        iter(w) / next(w) -> Event         blocks for the next event; ends after close()
        .get(timeout=None) -> Event | None the next event, or None after `timeout` seconds
        .cursor -> str                     where the caller is: the cursor after the last
                                           event handed out (keep it to resume later)
        .reconnects -> int                 broken streams resumed so far
        .close()                           ends the stream (also `with Watch(...) as w`)
    Event(kind, path, ino, is_dir)         kind: "created" | "changed" | "removed" |
                                           "overflow" (events were lost before the next ones:
                                           the server's queue for this watcher was full, the
                                           tree changed whole, or a resume could not be exact:
                                           list the tree again; path is the prefix)
    AIFSClient.watch(path_prefix, ...) returns a Watch.

A stream that breaks after the server watched (the server restarting, a connection cut) is
opened again and resumed from the last batch received, for up to `reconnect_seconds` (the
server keeps a tree's recent events for a minute after its watcher went: events.py); the
events of the gap then come exactly once, in order, or, when the server cannot (another server,
a restarted one, more changes than it keeps), as one "overflow" event. Past that window, or for
an error a retry cannot mend (a refused prefix, a token without `stat`), next/get raise the
RemoteError. Servers sharing one PostgreSQL forward their changes to the one this client talks
to (docs/LEASES.md, "Change events").
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from aifs_proto.v1 import session_pb2, session_pb2_grpc

from ..errors import LocalError, RemoteError, ServerUnavailable, from_rpc_error
from .channel import Channel

KINDS = {session_pb2.Event.CREATED: "created", session_pb2.Event.CHANGED: "changed",
         session_pb2.Event.REMOVED: "removed"}
BUFFER = 1024           # events read ahead of the caller (then the server queues, bounded)
RECONNECT_SECONDS = 30.0
_BACKOFF = (0.1, 2.0)   # first and longest pause between attempts to open the stream again


@dataclass(frozen=True)
class Event:
    kind: str
    path: str
    ino: int = 0
    is_dir: bool = False
    # set on the last event of each batch the server sent; not part of what the event is
    cursor: str = field(default="", compare=False)


@dataclass(frozen=True)
class _Cursor:
    """A batch with no event to carry its cursor (the answer to Watch, an overflow)."""
    cursor: str


_END = object()


class Watch:
    def __init__(self, channel: Channel, path_prefix: str = "/",
                 ready_timeout: float | None = None, resume_from: str = "",
                 reconnect_seconds: float = RECONNECT_SECONDS) -> None:
        self._prefix = path_prefix or "/"
        self._channel = channel
        self._address = channel.address
        self._stub = session_pb2_grpc.SessionStub(channel.grpc)
        self._reconnect_seconds = reconnect_seconds
        self._events: queue.Queue[Any] = queue.Queue(BUFFER)
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._done = False
        self._watching = False
        self._received = resume_from    # the last batch's cursor: where a reconnect resumes
        self.cursor = resume_from       # where the caller is
        self.reconnects = 0
        self._lock = threading.Lock()
        self._up: queue.Queue[Any]      # the current stream's requests (_open)
        self._call = self._open()
        self._thread = threading.Thread(target=self._read, name="aifs-watch", daemon=True)
        self._thread.start()
        wait = channel.timeout if ready_timeout is None else ready_timeout
        if not self._ready.wait(wait) or not self._watching:
            try:
                first = self._events.get(timeout=1) if self._ready.is_set() else None
            except queue.Empty:
                first = None
            self.close()
            if isinstance(first, Exception):
                raise first     # the stream failed before the server watched
            raise LocalError(f"the server did not start watching {self._prefix!r} within "
                             f"{wait:g} s")

    def _open(self) -> Any:
        """A new stream: Hello, then Watch from the last cursor received."""
        up: queue.Queue[Any] = queue.Queue()
        self._up = up
        watch = session_pb2.Watch(path_prefix=self._prefix, resume=self._received)

        def requests() -> Iterator[Any]:
            yield session_pb2.SessionUp(hello=session_pb2.Hello())
            yield session_pb2.SessionUp(watch=watch)
            while up.get() is not None:
                pass
        return self._stub.Open(requests(), metadata=self._channel.metadata())

    def _read(self) -> None:
        try:
            call = self._call
            window_end = None   # set once a stream watched: how long a broken one is retried
            pause = _BACKOFF[0]
            while True:
                err, answered = self._pump(call)
                if err is None:
                    return
                if answered:
                    window_end = time.monotonic() + self._reconnect_seconds
                    pause = _BACKOFF[0]
                if (window_end is None or time.monotonic() >= window_end
                        or not _resumable(err)):
                    self._put(err)
                    return
                if self._closed.wait(pause):
                    return
                pause = min(pause * 2, _BACKOFF[1])
                with self._lock:
                    if self._closed.is_set():
                        return
                    self._call = call = self._open()
                self.reconnects += 1
        finally:
            self._put(_END)
            self._ready.set()

    def _pump(self, call: Any) -> tuple[Exception | None, bool]:
        """The stream's events into the queue until it ends: (the error that ended it, or
        None after close(); whether the server answered the Watch on it)."""
        answered = False
        try:
            for msg in call:
                if msg.WhichOneof("msg") != "events":
                    continue
                answered = True
                batch = msg.events
                if not self._watching:
                    # the first Events answers Watch: every later change is reported
                    self._watching = True
                    self._ready.set()
                if batch.overflow:
                    self._put(Event("overflow", self._prefix))
                events = batch.events
                for i, e in enumerate(events):
                    last = i == len(events) - 1
                    self._put(Event(KINDS.get(e.kind, "changed"), e.path, e.ino, e.is_dir,
                                    batch.cursor if last else ""))
                if not events and batch.cursor:
                    self._put(_Cursor(batch.cursor))
                if batch.cursor:
                    self._received = batch.cursor
            if self._closed.is_set():
                return None, answered
            # the server ended it (stopping): not our close
            return ServerUnavailable(f"the server at {self._address} ended the watch of "
                                     f"{self._prefix!r} (stopping?); watch again, then list "
                                     f"what you track", address=self._address), answered
        except grpc.RpcError as err:
            if self._closed.is_set():
                return None, answered
            return from_rpc_error(err), answered

    def _put(self, item: Any) -> None:
        while not self._closed.is_set():
            try:
                self._events.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None) -> Event | None:
        end = None if timeout is None else time.monotonic() + timeout
        while not self._done:
            try:
                left = None if end is None else max(0.0, end - time.monotonic())
                item = self._events.get(timeout=left)
            except queue.Empty:
                return None
            if item is _END:
                self._done = True
                return None
            if isinstance(item, Exception):
                self._done = True
                raise item
            if isinstance(item, _Cursor):
                self.cursor = item.cursor
                continue
            assert isinstance(item, Event)
            if item.cursor:
                self.cursor = item.cursor
            return item
        return None

    def __iter__(self) -> Iterator[Event]:
        while True:
            e = self.get()
            if e is None:
                return
            yield e

    def close(self) -> None:
        with self._lock:
            if self._closed.is_set():
                return
            self._closed.set()
            call = self._call
        self._up.put(None)
        call.cancel()
        self._thread.join(timeout=5)
        self._done = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _resumable(err: Exception) -> bool:
    """A break a new stream may mend: the server or the connection went away, not a refusal."""
    if isinstance(err, ServerUnavailable):
        return True
    return isinstance(err, RemoteError) and err.code in (
        grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNKNOWN)
