"""Mapping of storage-core errors to gRPC statuses with a `google.rpc.ErrorInfo`.

Interface:
    DOMAIN = "aifs"
    status_for(err: AIFSError) -> grpc.Status      code, message, ErrorInfo(reason, domain)
    status_of(code, message, reason) -> grpc.Status
    abort(context, err) -> NoReturn                 fail the RPC with `err`
    rpc(fn)                                         decorator for servicer methods (unary or
                                                    generator): AIFSError -> its status;
                                                    anything else -> INTERNAL, traceback logged

The client side rebuilds the error with `grpc_status.rpc_status.from_call(call)` and the
`ErrorInfo.reason` (see `aifs_server.errors.REASONS`).
"""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aifs_server.errors import AIFSError

DOMAIN = "aifs"
log = logging.getLogger("aifs.server")

F = TypeVar("F", bound=Callable[..., Any])


def status_of(code: grpc.StatusCode, message: str, reason: str,
              metadata: dict[str, str] | None = None) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    st = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(st)


def status_for(err: AIFSError) -> grpc.Status:
    return status_of(err.code, err.message, err.reason)


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


def rpc(fn: F) -> F:
    """Run a servicer method and turn its errors into statuses (works for generators too)."""
    name = fn.__qualname__

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(self: Any, request: Any, context: grpc.ServicerContext
                        ) -> Iterator[Any]:
            try:
                yield from fn(self, request, context)
            except Exception as exc:  # noqa: BLE001 - mapped to a status
                _fail(context, exc, name)
        return gen_wrapper  # type: ignore[return-value]

    @functools.wraps(fn)
    def wrapper(self: Any, request: Any, context: grpc.ServicerContext) -> Any:
        try:
            return fn(self, request, context)
        except Exception as exc:  # noqa: BLE001 - mapped to a status
            _fail(context, exc, name)
    return wrapper  # type: ignore[return-value]
