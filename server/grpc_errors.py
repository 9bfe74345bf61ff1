"""Mapping of storage-core errors to gRPC statuses with a `google.rpc.ErrorInfo`.

Interface (the status tables themselves are `aifs_core.status`):
    abort(context, err) -> NoReturn                 fail the RPC with `err`
    IN_FLIGHT.wait_idle(timeout) -> bool            every call wrapped by `rpc` has ended
    rpc(fn)                                         decorator for servicer methods (unary or
                                                    generator): checks the request's numbers
                                                    (`request_limits`); AIFSError -> its status;
                                                    anything else -> INTERNAL, traceback logged
                                                    (rate-limited); a unary or client-stream
                                                    call runs in an upload_pins.call_scope;
                                                    every call in a deadline.in_call (waits far
                                                    from the handler read its deadline)
    LogLimiter(burst=5, period=60.0)                at most `burst` lines per period per kind
        .pass_failed(log, what, exc, next_in)       a background pass's failure, limited
    log_limited(level, kind, msg, *args)            one line, unless LIMITER suppresses it;
                                                    the next line says how many were

The client side rebuilds the error with `grpc_status.rpc_status.from_call(call)` and the
`ErrorInfo.reason` (see `aifs_core.status.reason_of`).
"""

from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf.message import Message

from aifs_core.errors import AIFSError, NoSpace
from aifs_core.status import status_for, status_of
from aifs_server.deadline import in_call
from aifs_server.request_limits import check_request, checked_stream
from aifs_server.space_reserve import FREES_SPACE
from aifs_server.upload_pins import call_scope

log = logging.getLogger("aifs.server")

F = TypeVar("F", bound=Callable[..., Any])


class LogLimiter:
    """At most `burst` log lines per `period` seconds for each kind of event; the rest are
    counted and the count is told in the next line that gets through. A caller can make the
    server fail (or refuse) thousands of calls a second: one line each would fill the disk
    and bury what matters. Kinds are a small fixed set (reasons, method names): bounded."""

    def __init__(self, burst: int = 5, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.burst, self.period, self._clock = burst, period, clock
        self._lock = threading.Lock()
        # kind -> [window start, lines logged in it, events suppressed since the last line]
        self._kinds: dict[str, list[float]] = {}

    def allow(self, kind: str) -> tuple[bool, int]:
        """(log this one?, how many of this kind were suppressed since the last line)."""
        now = self._clock()
        with self._lock:
            st = self._kinds.get(kind)
            if st is None or now - st[0] >= self.period:
                if st is None and len(self._kinds) >= LIMITER_KINDS_MAX:
                    self._kinds.clear()   # never grows without bound, whatever the kinds
                st = self._kinds[kind] = [now, 0, st[2] if st is not None else 0]
            if st[1] >= self.burst:
                st[2] += 1
                return False, 0
            st[1] += 1
            suppressed, st[2] = int(st[2]), 0
            return True, suppressed

    def pass_failed(self, log: logging.Logger, what: str, exc: Exception,
                    next_in: float) -> None:
        """A background pass (`what`: "background hashing", ...) raised `exc`: a warning,
        within this limiter's bounds (a full disk or a database away fails every pass)."""
        ok, suppressed = self.allow(type(exc).__name__)
        if ok:
            log.warning("%s: %s: %s (next pass in %.3g s)%s", what, type(exc).__name__, exc,
                        next_in, suppressed_note(suppressed))


LIMITER_KINDS_MAX = 1024
LIMITER = LogLimiter()


def suppressed_note(n: int) -> str:
    return f" ({n} more like it since the last such line were not logged)" if n else ""


def log_limited(level: int, kind: str, msg: str, *args: Any, exc_info: Any = None) -> None:
    """log.log(level, msg, *args), rate-limited per `kind` by LIMITER."""
    ok, suppressed = LIMITER.allow(kind)
    if ok:
        log.log(level, msg + "%s", *args, suppressed_note(suppressed), exc_info=exc_info)


def abort(context: grpc.ServicerContext, err: AIFSError) -> NoReturn:
    context.abort_with_status(status_for(err))
    raise AssertionError("unreachable: abort_with_status raises")  # pragma: no cover


def _already_aborted(context: grpc.ServicerContext) -> bool:
    # context.abort() raises a bare Exception after recording the status; let it through
    code = getattr(context, "code", None)
    try:
        return callable(code) and code() not in (None, grpc.StatusCode.OK)
    except Exception:  # pragma: no cover - defensive
        return False


def _fail(context: grpc.ServicerContext, exc: Exception, name: str) -> NoReturn:
    if isinstance(exc, AIFSError):
        abort(context, exc)
    if _already_aborted(context):
        raise exc
    if isinstance(exc, grpc.RpcError) and not context.is_active():
        # the client went away mid-stream (the request iterator raised): nothing to report
        log_limited(logging.INFO, "cancelled", "%s: client cancelled or disconnected", name)
        raise exc
    log_limited(logging.ERROR, f"internal:{name}", "internal error in %s", name, exc_info=exc)
    context.abort_with_status(status_of(
        grpc.StatusCode.INTERNAL,
        f"internal server error in {name}: {type(exc).__name__}: {exc}; see the server log",
        "INTERNAL"))
    raise AssertionError("unreachable")  # pragma: no cover


class InFlight:
    """How many servicer calls are running, so that shutdown can wait for them to end before
    it closes the storage under them (closing SQLite while another thread is inside a
    statement can crash the process). One per process: servers in one process share it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.count = 0

    def __enter__(self) -> None:
        with self._cond:
            self.count += 1

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self.count -= 1
            if self.count == 0:
                self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.count == 0, timeout)


IN_FLIGHT = InFlight()


def _checked(request: Any) -> Any:
    """The request, its numbers checked (a client stream is checked message by message)."""
    if hasattr(request, "DESCRIPTOR"):
        check_request(request)
        return request
    return checked_stream(request)


# Methods whose work frees space: the only ones that may take the server's space reserve on a
# full disk (space_reserve.FREES_SPACE).
FREES_SPACE_METHODS = frozenset({
    "Unlink", "UnlinkBatch", "RmDir", "Rename", "SetAttr", "RemoveXattr", "Forget",
    "DeleteAsset", "DeleteBranch", "DeleteTag", "PruneSnapshots", "GC"})


def rpc(fn: F) -> F:
    """Run a servicer method and turn its errors into statuses (works for generators too)."""
    name = fn.__qualname__
    frees_space = name.rsplit(".", 1)[-1] in FREES_SPACE_METHODS

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(self: Any, request: Any, context: grpc.ServicerContext
                        ) -> Iterator[Any]:
            with IN_FLIGHT, in_call(context):
                try:
                    yield from fn(self, _checked(request), context)
                except Exception as exc:  # noqa: BLE001 - mapped to a status
                    _fail(context, exc, name)
        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        # call_scope: chunks this call uploads stay safe from the collector until it returns
        token = FREES_SPACE.set(frees_space)
        with IN_FLIGHT, call_scope(), in_call(context):
            try:
                try:
                    return fn(self, _checked(request), context)
                except NoSpace as full:
                    if not (full.reserve_released and isinstance(request, Message)):
                        raise
                    # The metadata disk was full and this failure gave back the server's space
                    # reserve (space_reserve.py); the change was rolled back, so the same call
                    # runs once more, now with room (an rm that would free space must work).
                    return fn(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                _fail(context, exc, name)
            finally:
                FREES_SPACE.reset(token)
    return wrapper  # type: ignore[return-value]
