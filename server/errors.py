"""Errors of the storage core and the server.

Interface:
    AIFSError(message)          base; `.code` (grpc.StatusCode), `.reason` (ErrorInfo reason)
    NotFound, AlreadyExists, NotEmpty, NotADirectory, IsADirectory, NameTooLong, NoSpace,
    InvalidArgument, CorruptChunk, KeyUnavailable, MissingChunk, ParentNotCommitted,
    PermissionDenied, Unauthenticated, TokenExpired, CrossDevice
    REASONS: reason string -> class (the client rebuilds the same error from a status)

Every message says what happened and, where it helps, what to do about it.
"""

from __future__ import annotations

import grpc


class AIFSError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(AIFSError):
    code, reason = grpc.StatusCode.NOT_FOUND, "NOT_FOUND"


class AlreadyExists(AIFSError):
    code, reason = grpc.StatusCode.ALREADY_EXISTS, "ALREADY_EXISTS"


class NotEmpty(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "NOT_EMPTY"


class NotADirectory(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "NOT_DIR"


class IsADirectory(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "IS_DIR"


class CrossDevice(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "CROSS_DEVICE"


class NameTooLong(AIFSError):
    code, reason = grpc.StatusCode.INVALID_ARGUMENT, "NAME_TOO_LONG"


class InvalidArgument(AIFSError):
    code, reason = grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT"


class NoSpace(AIFSError):
    code, reason = grpc.StatusCode.RESOURCE_EXHAUSTED, "NO_SPACE"


class CorruptChunk(AIFSError):
    code, reason = grpc.StatusCode.DATA_LOSS, "CORRUPT_CHUNK"


class KeyUnavailable(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "KEY_UNAVAILABLE"


class MissingChunk(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "MISSING_CHUNK"


class ParentNotCommitted(AIFSError):
    code, reason = grpc.StatusCode.FAILED_PRECONDITION, "PARENT_NOT_COMMITTED"


class PermissionDenied(AIFSError):
    code, reason = grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"


class Unauthenticated(AIFSError):
    code, reason = grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"


class TokenExpired(Unauthenticated):
    reason = "TOKEN_EXPIRED"


REASONS: dict[str, type[AIFSError]] = {
    cls.reason: cls
    for cls in (
        NotFound, AlreadyExists, NotEmpty, NotADirectory, IsADirectory, CrossDevice, NameTooLong,
        InvalidArgument, NoSpace, CorruptChunk, KeyUnavailable, MissingChunk, ParentNotCommitted,
        PermissionDenied, Unauthenticated, TokenExpired,
    )
}
