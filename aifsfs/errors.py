"""Client-side errors: server errors rebuilt from gRPC status, and their errno.

Interface:
    RemoteError(message, code=None, reason=None, address="")
        base of every error the SDK raises for a failed call; subclass of
        `aifs_core.errors.AIFSError`; `.code` (grpc.StatusCode), `.reason`, `.message`.
    remote_class(reason) -> type   the RemoteError subclass that is also the server's class for
        that reason (`REASONS`), e.g. `remote_class("NOT_FOUND")` is a subclass of both
        `RemoteError` and `aifs_core.errors.NotFound` — so `except NotFound` works client side.
    from_rpc_error(err, address="") -> RemoteError
        read the `google.rpc.Status` details (ErrorInfo reason) of a failed call and build the
        matching error; a status without details falls back on the gRPC code.
    ServerUnavailable     retries ran out while the server could not be reached (UNAVAILABLE)
    DeadlineExceeded      the server did not answer within the call deadline, retries ran out
    IncompleteRead        a GetChunks answer did not cover the requested range
    LocalError            a client-side problem (bad token file, bad address) - AIFSError too
    errno_for(exc) -> int          POSIX errno for any exception (the FUSE layer uses this)
    xattr_errno_for(exc) -> int    same, but a missing attribute is ENODATA (getxattr/removexattr)
"""

from __future__ import annotations

import errno

import grpc

from aifs_core import errors as server_errors
from aifs_core.errors import AIFSError
from aifs_core.status import REASON_BY_CODE, code_for, reason_of


class RemoteError(AIFSError):
    """A call to the AIFS server failed; carries the status code, reason and server message."""

    code: grpc.StatusCode | None = None

    def __init__(self, message: str, code: grpc.StatusCode | None = None,
                 reason: str | None = None, address: str = "") -> None:
        super().__init__(message)
        # Instance attributes, so that a subclass mixing in a server class keeps the server
        # class's reason unless the status says otherwise.
        if reason is not None:
            self.reason = reason
        self.code = code or type(self).code or code_for(self.reason)
        self.address = address

    def __str__(self) -> str:
        return self.message


class ServerUnavailable(RemoteError):
    code, reason = grpc.StatusCode.UNAVAILABLE, "UNAVAILABLE"


class DeadlineExceeded(RemoteError):
    code, reason = grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_EXCEEDED"


class IncompleteRead(RemoteError):
    code, reason = grpc.StatusCode.DATA_LOSS, "INCOMPLETE_READ"


class LocalError(AIFSError):
    """A problem on the client side (token file unreadable, bad address, bad argument)."""

    code, reason = grpc.StatusCode.INVALID_ARGUMENT, "CLIENT_ERROR"


_REMOTE_CLASSES: dict[str, type[RemoteError]] = {}


def remote_class(reason: str) -> type[RemoteError]:
    """The RemoteError subclass for a server reason (also an instance of the server's class)."""
    cls = _REMOTE_CLASSES.get(reason)
    if cls is None:
        base = server_errors.REASONS.get(reason)
        if base is None:
            return RemoteError
        cls = type(f"Remote{base.__name__}", (RemoteError, base), {"__module__": __name__})
        _REMOTE_CLASSES[reason] = cls
    return cls


def from_rpc_error(err: grpc.RpcError, address: str = "") -> RemoteError:
    """Rebuild the server's error from a failed call."""
    code_fn = getattr(err, "code", None)
    code: grpc.StatusCode = code_fn() if callable(code_fn) else grpc.StatusCode.UNKNOWN
    details_fn = getattr(err, "details", None)
    message = (details_fn() if callable(details_fn) else None) or str(err)
    reason = reason_of(err) or REASON_BY_CODE.get(code)
    if code == grpc.StatusCode.UNAVAILABLE and reason is None:
        return ServerUnavailable(message, code, "UNAVAILABLE", address)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED and reason is None:
        return DeadlineExceeded(message, code, "DEADLINE_EXCEEDED", address)
    cls = remote_class(reason) if reason else RemoteError
    return cls(message, code, reason or code.name, address)


_ERRNO: list[tuple[type[BaseException], int]] = [
    (server_errors.NotFound, errno.ENOENT),
    (server_errors.AlreadyExists, errno.EEXIST),
    (server_errors.NotEmpty, errno.ENOTEMPTY),
    (server_errors.NotADirectory, errno.ENOTDIR),
    (server_errors.IsADirectory, errno.EISDIR),
    (server_errors.NameTooLong, errno.ENAMETOOLONG),
    (server_errors.NoSpace, errno.ENOSPC),
    (server_errors.PermissionDenied, errno.EACCES),
    (server_errors.Unauthenticated, errno.EACCES),  # TokenExpired included
    (server_errors.InvalidArgument, errno.EINVAL),
    (server_errors.CrossDevice, errno.EXDEV),
    (server_errors.TimedOut, errno.ETIMEDOUT),
]


def errno_for(exc: BaseException) -> int:
    """POSIX errno for an exception; anything unexpected (corruption, unreachable) is EIO."""
    for cls, num in _ERRNO:
        if isinstance(exc, cls):
            return num
    if isinstance(exc, OSError) and exc.errno:
        return exc.errno
    return errno.EIO


def xattr_errno_for(exc: BaseException) -> int:
    """errno for getxattr/removexattr: a missing attribute is ENODATA, not ENOENT."""
    if isinstance(exc, server_errors.NotFound):
        return errno.ENODATA
    return errno_for(exc)


__all__ = [
    "AIFSError", "DeadlineExceeded", "IncompleteRead", "LocalError", "RemoteError",
    "ServerUnavailable", "errno_for", "from_rpc_error", "remote_class", "xattr_errno_for",
]
