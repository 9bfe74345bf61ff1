"""Errors on the wire: the gRPC status code of each reason, and `google.rpc.Status` both ways.

Interface:
    DOMAIN = "aifs"                                  ErrorInfo.domain
    code_for(reason) -> grpc.StatusCode              INTERNAL for an unknown reason
    status_of(code, message, reason, metadata=None) -> grpc.Status   with an ErrorInfo detail
    status_for(err: AIFSError) -> grpc.Status        the status a server sends for `err`
    reason_of(rpc_error) -> str | None               the ErrorInfo reason a failed call carried
    REASON_BY_CODE: grpc.StatusCode -> reason        for a status without ErrorInfo (raised by
                                                     grpc itself or a proxy)

The server builds statuses with `status_for`; the client rebuilds the error class of the reason
with `reason_of` and `errors.REASONS`. One table, so the two sides cannot drift apart.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from aifs_core.errors import AIFSError

DOMAIN = "aifs"

_C = grpc.StatusCode
CODES: dict[str, grpc.StatusCode] = {
    "NOT_FOUND": _C.NOT_FOUND,
    "ALREADY_EXISTS": _C.ALREADY_EXISTS,
    "NOT_EMPTY": _C.FAILED_PRECONDITION,
    "NOT_DIR": _C.FAILED_PRECONDITION,
    "IS_DIR": _C.FAILED_PRECONDITION,
    "CROSS_DEVICE": _C.FAILED_PRECONDITION,
    "NAME_TOO_LONG": _C.INVALID_ARGUMENT,
    "INVALID_ARGUMENT": _C.INVALID_ARGUMENT,
    "NO_SPACE": _C.RESOURCE_EXHAUSTED,
    "CORRUPT_CHUNK": _C.DATA_LOSS,
    "CORRUPT_METADATA": _C.DATA_LOSS,
    "KEY_UNAVAILABLE": _C.FAILED_PRECONDITION,
    "MISSING_CHUNK": _C.FAILED_PRECONDITION,
    "PARENT_NOT_COMMITTED": _C.FAILED_PRECONDITION,
    "PERMISSION_DENIED": _C.PERMISSION_DENIED,
    "UNAUTHENTICATED": _C.UNAUTHENTICATED,
    "TOKEN_EXPIRED": _C.UNAUTHENTICATED,
    "TIMED_OUT": _C.DEADLINE_EXCEEDED,
    "STORE_UNAVAILABLE": _C.UNAVAILABLE,  # clients retry UNAVAILABLE (bounded): it may come back
    "STORE_MISCONFIGURED": _C.FAILED_PRECONDITION,
    "INTERNAL": _C.INTERNAL,
}

REASON_BY_CODE: dict[grpc.StatusCode, str] = {
    _C.NOT_FOUND: "NOT_FOUND",
    _C.ALREADY_EXISTS: "ALREADY_EXISTS",
    _C.INVALID_ARGUMENT: "INVALID_ARGUMENT",
    _C.PERMISSION_DENIED: "PERMISSION_DENIED",
    _C.UNAUTHENTICATED: "UNAUTHENTICATED",
    _C.DATA_LOSS: "CORRUPT_CHUNK",
}


def code_for(reason: str) -> grpc.StatusCode:
    return CODES.get(reason, _C.INTERNAL)


def status_of(code: grpc.StatusCode, message: str, reason: str,
              metadata: dict[str, str] | None = None) -> grpc.Status:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=DOMAIN, metadata=metadata or {})
    detail = any_pb2.Any()
    detail.Pack(info)
    st = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return rpc_status.to_status(st)


def status_for(err: AIFSError) -> grpc.Status:
    return status_of(code_for(err.reason), err.message, err.reason)


def reason_of(err: grpc.RpcError) -> str | None:
    try:
        status = rpc_status.from_call(err)  # type: ignore[arg-type]
    except (ValueError, AttributeError, TypeError):
        # from_call refuses a status whose code/message disagree with the call's; a
        # non-Call RpcError has no trailing metadata.
        return None
    if status is None:
        return None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            if info.reason:
                return str(info.reason)
    return None
