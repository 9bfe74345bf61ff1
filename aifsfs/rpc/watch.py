"""Change events of a tree's paths for SDK users (the RFC's SubscribeEvents): a Session stream
that holds no leases and asks for events (session.proto `Watch`; server/events.py).

Interface:
    Watch(channel, path_prefix="/", ready_timeout=None)
        opens the stream and returns once the server watches: every change committed after
        that, through any server of the deployment, of a path under the prefix is reported,
        in commit order per server ("/a": "/a" and below, not "/ab"; "/" everything; a prefix
        of at most 4,096 bytes)
        iter(w) / next(w) -> Event         blocks for the next event; ends after close()
        .get(timeout=None) -> Event | None the next event, or None after `timeout` seconds
        .close()                           ends the stream (also `with Watch(...) as w`)
    Event(kind, path, ino, is_dir)         kind: "created" | "changed" | "removed" |
                                           "overflow" (the server dropped events before the
                                           next ones, its queue for this watcher was full:
                                           list the tree again; path is the prefix)
    AIFSClient.watch(path_prefix) returns a Watch.

A broken stream (the server went away, or stopped and ended it: ServerUnavailable) raises its
RemoteError from next/get; events of the gap are not replayed: watch again, then list what you track. Servers sharing one PostgreSQL forward
their changes to the one this client talks to (docs/LEASES.md, "Change events").
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from aifs_proto.v1 import session_pb2, session_pb2_grpc

from ..errors import LocalError, ServerUnavailable, from_rpc_error
from .channel import Channel

KINDS = {session_pb2.Event.CREATED: "created", session_pb2.Event.CHANGED: "changed",
         session_pb2.Event.REMOVED: "removed"}
BUFFER = 1024           # events read ahead of the caller (then the server queues, bounded)


@dataclass(frozen=True)
class Event:
    kind: str
    path: str
    ino: int = 0
    is_dir: bool = False


_END = object()


class Watch:
    def __init__(self, channel: Channel, path_prefix: str = "/",
                 ready_timeout: float | None = None) -> None:
        self._prefix = path_prefix or "/"
        self._address = channel.address
        self._events: queue.Queue[Any] = queue.Queue(BUFFER)
        self._up: queue.Queue[Any] = queue.Queue()
        self._closed = threading.Event()
        self._ready = threading.Event()
        self._done = False
        self._watching = False
        stub = session_pb2_grpc.SessionStub(channel.grpc)
        self._call = stub.Open(self._requests(), metadata=channel.metadata())
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

    def _requests(self) -> Iterator[Any]:
        yield session_pb2.SessionUp(hello=session_pb2.Hello())
        yield session_pb2.SessionUp(watch=session_pb2.Watch(path_prefix=self._prefix))
        while self._up.get() is not None:
            pass

    def _read(self) -> None:
        try:
            for msg in self._call:
                if msg.WhichOneof("msg") != "events":
                    continue
                if not self._watching:
                    # the first Events answers Watch: every later change is reported
                    self._watching = True
                    self._ready.set()
                if msg.events.overflow:
                    self._put(Event("overflow", self._prefix))
                for e in msg.events.events:
                    self._put(Event(KINDS.get(e.kind, "changed"), e.path, e.ino, e.is_dir))
            if not self._closed.is_set():    # the server ended it (stopping): not our close
                self._put(ServerUnavailable(f"the server at {self._address} ended the watch "
                                            f"of {self._prefix!r} (stopping?); watch again, "
                                            f"then list what you track",
                                            address=self._address))
        except grpc.RpcError as err:
            if not self._closed.is_set():
                self._put(from_rpc_error(err))
        finally:
            self._put(_END)
            self._ready.set()

    def _put(self, item: Any) -> None:
        while not self._closed.is_set():
            try:
                self._events.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def get(self, timeout: float | None = None) -> Event | None:
        if self._done:
            return None
        try:
            item = self._events.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _END:
            self._done = True
            return None
        if isinstance(item, Exception):
            self._done = True
            raise item
        assert isinstance(item, Event)
        return item

    def __iter__(self) -> Iterator[Event]:
        while True:
            e = self.get()
            if e is None:
                return
            yield e

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._up.put(None)
        self._call.cancel()
        self._thread.join(timeout=5)
        self._done = True

    def __enter__(self) -> Watch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
