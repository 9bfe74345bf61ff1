"""Mapping of storage-core errors to gRPC statuses with a `google.rpc.ErrorInfo`.

Interface (the status tables themselves are `aifs_core.status`):
    abort(context, err) -> NoReturn                 fail the RPC with `err`
    rpc(fn)                                         decorator for servicer methods (unary or
                                                    generator): checks the request's numbers
                                                    (`request_limits`); AIFSError -> its status;
                                                    anything else -> INTERNAL, traceback logged

The client side rebuilds the error with `grpc_status.rpc_status.from_call(call)` and the
`ErrorInfo.reason` (see `aifs_core.status.reason_of`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc

from aifs_core.errors import AIFSError
from aifs_core.status import status_for, status_of
from aifs_server.request_limits import check_request, checked_stream

log = logging.getLogger("aifs.server")

F = TypeVar("F", bound=Callable[..., Any])


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
        log.info("%s: client cancelled or disconnected", name)
        raise exc
    log.error("internal error in %s", name, exc_info=exc)
    context.abort_with_status(status_of(
        grpc.StatusCode.INTERNAL,
        f"internal server error in {name}: {type(exc).__name__}: {exc}; see the server log",
        "INTERNAL"))
    raise AssertionError("unreachable")  # pragma: no cover


def _checked(request: Any) -> Any:
    """The request, its numbers checked (a client stream is checked message by message)."""
    if hasattr(request, "DESCRIPTOR"):
        check_request(request)
        return request
    return checked_stream(request)


def rpc(fn: F) -> F:
    """Run a servicer method and turn its errors into statuses (works for generators too)."""
    name = fn.__qualname__

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(self: Any, request: Any, context: grpc.ServicerContext
                        ) -> Iterator[Any]:
            try:
                yield from fn(self, _checked(request), context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                _fail(context, exc, name)
        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, _checked(request), context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            _fail(context, exc, name)
    return wrapper  # type: ignore[return-value]
