"""The Session service (session.proto, docs/LEASES.md): one stream per mount carrying lease
renewals, recalls and acks. Leases themselves are granted by the Filesystem calls that carry
the session id (rpc_filesystem.py), and kept by `backend.leases` (leases.LeaseManager).

Interface:
    SessionServicer(backend)       Open(stream SessionUp) -> stream SessionDown
    register_session(backend, server)   also ends the sessions when the server stops

The stream handler holds one worker thread for the mount's lifetime (sending what the lease
manager queues) and starts one more that reads the client's messages; the session and all its
leases go as soon as the stream ends, whichever side ends it. The same stream carries change
events (events.py): a Watch message registers the stream's watcher (replacing one before), and
the sender sends what it queued, EVENTS_BATCH events a message.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from typing import Any

import grpc

from aifs_proto.v1 import session_pb2, session_pb2_grpc
from aifs_server.events import Watcher

_POLL = 0.5     # how often the sender looks whether the call is still active
EVENTS_BATCH = 256
PREFIX_MAX = 4096   # bytes of a Watch prefix (PATH_MAX): each event's path is compared with it


class _Watch:
    """The stream's watcher, set by the reader thread, drained by the sender."""

    def __init__(self) -> None:
        self.w: Watcher | None = None


class SessionServicer(session_pb2_grpc.SessionServicer):
    def __init__(self, backend: Any) -> None:
        self.b = backend
        self.leases = backend.leases

    def Open(self, request_iterator: Iterator[Any], context: grpc.ServicerContext
             ) -> Iterator[Any]:
        try:
            first = next(request_iterator)
        except StopIteration:
            return
        if first.WhichOneof("msg") != "hello":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be hello")
        tree = self.b.tree(context)
        sess = self.leases.open_session(tree)
        watch = _Watch()

        def closed() -> None:
            self.leases.close_session(sess.id)
            if watch.w is not None:
                self.b.events.unwatch(watch.w)
        context.add_callback(closed)
        threading.Thread(target=self._read, args=(request_iterator, sess, tree, watch),
                         name="aifs-session-rx", daemon=True).start()
        yield session_pb2.SessionDown(welcome=session_pb2.Welcome(
            session_id=sess.id, term_ms=int(self.leases.term * 1000)))
        while context.is_active():
            try:
                item = sess.outbox.get(timeout=_POLL)
            except queue.Empty:
                continue
            if item is None:
                return
            if item[0] == "recall":
                yield session_pb2.SessionDown(recall=session_pb2.Recall(seq=item[1],
                                                                        inos=item[2]))
            elif item[0] == "events":
                yield from self._events(item[1])
            elif item[0] == "refused":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, item[1])
            elif item[0] == "watching":
                # the answer to Watch, sent even when empty: the client knows it is watched
                item[1].answered = True
                yield self._batch(item[1])
                yield from self._events(item[1])
            else:
                yield session_pb2.SessionDown(renew_ok=session_pb2.RenewOk(stamp=item[1]))

    @staticmethod
    def _wake(sess: Any, w: Watcher) -> None:
        """A watcher's queue got its first event: the sender drains it, once the Watch was
        answered (before that, the answer itself drains it: an Events sent earlier would be
        taken for the answer while other servers may not have heard of the watch yet)."""
        if w.answered:
            sess.outbox.put(("events", w))

    def _batch(self, w: Watcher) -> Any:
        """Up to EVENTS_BATCH of what `w` queued, with the cursor to resume after them."""
        events, overflow, seq = w.take(EVENTS_BATCH)
        return session_pb2.SessionDown(events=session_pb2.Events(
            events=events, overflow=overflow, cursor=self.b.events.cursor(seq)))

    def _events(self, w: Watcher) -> Iterator[Any]:
        """What `w` queued, EVENTS_BATCH a message (its next offer wakes the sender again)."""
        while True:
            msg = self._batch(w)
            if not msg.events.events and not msg.events.overflow:
                return
            yield msg

    def _read(self, requests: Iterator[Any], sess: Any, tree: Any, watch: _Watch) -> None:
        sid = sess.id
        try:
            for m in requests:
                kind = m.WhichOneof("msg")
                if kind == "watch" and len(m.watch.path_prefix.encode()) > PREFIX_MAX:
                    sess.outbox.put(("refused", f"a Watch prefix is at most {PREFIX_MAX} "
                                                f"bytes (PATH_MAX); this one is "
                                                f"{len(m.watch.path_prefix.encode())}"))
                    return
                if kind == "watch":
                    old = watch.w
                    watch.w = self.b.events.watch(tree, m.watch.path_prefix,
                                                  lambda w: self._wake(sess, w),
                                                  resume=m.watch.resume)
                    sess.outbox.put(("watching", watch.w))
                    if old is not None:
                        self.b.events.unwatch(old)
                elif kind == "ack":
                    self.leases.ack(sid, m.ack.seq)
                elif kind == "renew":
                    s = self.leases.renew(sid)
                    if s is None:
                        return
                    s.outbox.put(("renew_ok", m.renew.stamp))
                elif kind == "release":
                    self.leases.release(sid, m.release.inos)
        except grpc.RpcError:
            pass    # the stream broke: the close callback drops the session
        finally:
            self.leases.close_session(sid)
            if watch.w is not None:
                self.b.events.unwatch(watch.w)


def register_session(backend: Any, server: grpc.Server) -> None:
    """Serve Session on `server`. Whoever stops the server ends the session streams first
    (`backend.leases.close_all()`, as serve.Server.stop does): a graceful stop waits for
    running calls, and a mount's stream never ends by itself."""
    session_pb2_grpc.add_SessionServicer_to_server(SessionServicer(backend), server)
