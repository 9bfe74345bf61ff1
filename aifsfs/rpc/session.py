"""Client of the Session service (docs/LEASES.md): the mount's lease stream, and a Filesystem
client whose calls carry the session id and report whether their reply was leased.

Interface:
    LeaseSession(channel, on_recall, on_reset)
        on_recall(inos): called on the stream's thread before the recall is acked; it must
            drop every cached thing those inodes cover
        on_reset(): the session was lost (stream broken); every lease is gone
        .start();  .close()
        .session_id -> str | None;   .valid_until -> float (time.monotonic(); 0 = none)
        .fs -> GrpcFilesystem        every call carries the session id (so its own changes do
                                     not recall its own leases: the caller drops those itself)
        .data -> GrpcData            HasChunks/PutChunks carry the session id too (the server
                                     keeps a session's uploads until it commits them or ends)
        .granted() -> bool           whether the last call of this thread was leased
        .excl_granted() -> int       the directory the last call of this thread leased to us
                                     exclusively (reply metadata `aifs-excl`), else 0
        .want_excl                   set True to ask for exclusive directory leases (every
                                     call then carries `aifs-excl-ok: 1`; dirops_queue.py)
        .want_inos;  .inos_granted() -> range
                                     set want_inos to ask for delegated inode numbers with
                                     the next exclusive grant (`aifs-inos-want: 1`); the
                                     range the last call of this thread got (reply metadata
                                     `aifs-inos: first:count`), else an empty one
        .epoch -> int                bumps on every recall and reset (a reply read across a
                                     change of it may predate a recall: not cacheable)

The stream is re-opened with backoff when it breaks; a new stream is a new session (no lease
survives it). Renewals go every term/4; a lease is trusted until (send time of the last
answered renewal) + term - margin, which is never later than the server's own bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc

from aifs_proto.v1 import session_pb2, session_pb2_grpc

from .channel import Channel
from .data import GrpcData
from .filesystem import GrpcFilesystem

log = logging.getLogger("aifsfs.session")
MARGIN = 0.1      # of the term: clock-rate and scheduling slack on our side


class _SessionChannel:
    """A Channel whose unary calls add the session id and keep the `aifs-lease` answer."""

    def __init__(self, ch: Channel, owner: LeaseSession) -> None:
        self._ch = ch
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ch, name)

    def unary(self, method: Any, request: Any, idempotent: bool = True,
              timeout: float | None = None) -> Any:
        t = timeout or self._ch.timeout
        tls = self._owner._tls
        tls.granted = False
        tls.excl = 0
        tls.inos = _NO_INOS
        sid = self._owner.session_id
        md = self._ch.metadata()
        if sid:
            md.append(("aifs-session", sid))
            if self._owner.want_excl:
                md.append(("aifs-excl-ok", "1"))
                if self._owner.want_inos:
                    md.append(("aifs-inos-want", "1"))

        def attempt() -> Any:
            try:
                resp, call = method.with_call(request, metadata=md, timeout=t)
            except grpc.RpcError as err:
                tls.granted = bool(sid) and _leased(err)
                raise
            tls.granted = bool(sid) and _leased(call)
            if sid:
                tls.excl, tls.inos = _excl(call)
            return resp
        return self._ch.retrying(attempt, idempotent, t)

    def client_stream(self, method: Any, make_requests: Any, replayable: bool,
                      timeout: float | None = None) -> Any:
        """PutChunks with the session id: the server keeps what it uploads from its
        collector until this session commits it or ends."""
        sid = self._owner.session_id

        def call(requests: Any, metadata: Any = None, timeout: float | None = None) -> Any:
            md = list(metadata or ())
            if sid:
                md.append(("aifs-session", sid))
            return method(requests, metadata=md, timeout=timeout)
        return self._ch.client_stream(call, make_requests, replayable, timeout)


_NO_INOS = range(0)


def _excl(call: Any) -> tuple[int, range]:
    """(the directory leased exclusively or 0, the inode numbers delegated): trailing
    metadata (initial from servers before it moved there)."""
    try:
        md = (*(call.trailing_metadata() or ()), *(call.initial_metadata() or ()))
    except Exception:  # noqa: BLE001
        return 0, _NO_INOS
    d, inos = 0, _NO_INOS
    for k, v in md:
        if k == "aifs-excl":
            d = int(v)
        elif k == "aifs-inos":
            first, n = (int(x) for x in v.split(":"))
            inos = range(first, first + n)
    return d, inos


def _leased(call: Any) -> bool:
    try:
        md = call.initial_metadata() or ()
    except Exception:  # noqa: BLE001 - a call that failed before any metadata
        return False
    return any(k == "aifs-lease" and v == "1" for k, v in md)


class LeaseSession:
    def __init__(self, channel: Channel, on_recall: Callable[[list[int]], None],
                 on_reset: Callable[[], None]) -> None:
        self._ch = channel
        self._on_recall = on_recall
        self._on_reset = on_reset
        self._stub = session_pb2_grpc.SessionStub(channel.grpc)
        self._tls = threading.local()
        self._lock = threading.Lock()
        self._sid: str | None = None
        self._term = 0.0
        self._valid_until = 0.0
        self.epoch = 0
        self.want_excl = False
        self.want_inos = False
        self._stop = threading.Event()
        self._out: queue.Queue[Any] | None = None
        self._call: Any = None
        self._thread: threading.Thread | None = None
        self.fs = GrpcFilesystem(_SessionChannel(channel, self))  # type: ignore[arg-type]
        self.data = GrpcData(_SessionChannel(channel, self))  # type: ignore[arg-type]

    @property
    def session_id(self) -> str | None:
        return self._sid

    @property
    def valid_until(self) -> float:
        return self._valid_until

    def bump(self) -> None:
        """Refuse every leased reply of a call that began before now."""
        with self._lock:
            self.epoch += 1

    def granted(self) -> bool:
        return bool(getattr(self._tls, "granted", False))

    def excl_granted(self) -> int:
        return int(getattr(self._tls, "excl", 0))

    def inos_granted(self) -> range:
        r: range = getattr(self._tls, "inos", _NO_INOS)
        return r

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="aifs-lease-stream", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        out, call = self._out, self._call
        if out is not None:
            out.put(None)
        if call is not None:
            call.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._reset()

    # --- the stream -------------------------------------------------------------------------
    def _reset(self) -> None:
        with self._lock:
            had = self._sid is not None
            self._sid = None
            self._valid_until = 0.0
            self.epoch += 1
        if had:
            self._on_reset()

    def _requests(self, out: queue.Queue[Any]) -> Iterator[Any]:
        yield session_pb2.SessionUp(hello=session_pb2.Hello())
        while True:
            wait = self._term / 4 if self._term else 1.0
            try:
                item = out.get(timeout=wait)
            except queue.Empty:
                if self._term:
                    stamp = time.monotonic_ns()
                    yield session_pb2.SessionUp(renew=session_pb2.Renew(stamp=stamp))
                continue
            if item is None:
                return
            yield item

    def _run(self) -> None:
        delay = 0.2
        quiet = False       # one line per outage, not one per reconnection attempt
        while not self._stop.is_set():
            out: queue.Queue[Any] = queue.Queue()
            self._out = out
            try:
                if not self._ch._seen_server:
                    self._ch.wait_ready()
                call = self._stub.Open(self._requests(out), metadata=self._ch.metadata())
                self._call = call
                for msg in call:
                    delay, quiet = 0.2, False
                    self._handle(msg, out)
            except grpc.RpcError as err:
                if not self._stop.is_set() and not quiet:
                    quiet = True
                    log.info("lease stream ended (%s); leases dropped, reconnecting",
                             err.code() if hasattr(err, "code") else err)
            except Exception as exc:  # noqa: BLE001 - the mount works on without leases
                if not self._stop.is_set():
                    log.info("lease stream: %s", exc)
            finally:
                out.put(None)
                self._reset()
            self._stop.wait(delay)
            delay = min(delay * 2, 5.0)

    def _handle(self, msg: Any, out: queue.Queue[Any]) -> None:
        kind = msg.WhichOneof("msg")
        if kind == "welcome":
            with self._lock:
                self._term = msg.welcome.term_ms / 1000.0
                self._sid = msg.welcome.session_id
                # the server counts the term from when it opened the session, after we sent
                # hello: now + term is later than its bound, so count from a renewal instead
                self._valid_until = 0.0
            out.put(session_pb2.SessionUp(renew=session_pb2.Renew(stamp=time.monotonic_ns())))
        elif kind == "renew_ok":
            until = msg.renew_ok.stamp / 1e9 + self._term * (1 - MARGIN)
            with self._lock:
                if self._sid is not None and until > self._valid_until:
                    self._valid_until = until
        elif kind == "recall":
            with self._lock:
                self.epoch += 1
            self._on_recall(list(msg.recall.inos))
            out.put(session_pb2.SessionUp(ack=session_pb2.Ack(seq=msg.recall.seq)))
