"""Errors shared by the server and the client: a class per reason, nothing about transport.

Interface:
    AIFSError(message)          base; `.reason` (the `google.rpc.ErrorInfo` reason on the wire),
                                `.message`; the gRPC code for a reason is `aifs_core.status`'s
    NotFound, AlreadyExists, NotEmpty, NotADirectory, IsADirectory, NameTooLong, NoSpace,
    InvalidArgument, CorruptChunk, CorruptMetadata (a metadata row fails its checksum),
    KeyUnavailable, MissingChunk, ParentNotCommitted,
    PermissionDenied, Unauthenticated, TokenExpired, CrossDevice, TimedOut,
    StoreUnavailable (the server's chunk store or metadata database cannot be reached: retry
    later),
    StoreMisconfigured (the server's chunk store refuses it: bucket, credentials; an operator
    must fix the server's configuration)
    REASONS: reason string -> class (the client rebuilds the same error from a status)

Every message says what happened and, where it helps, what to do about it.
"""

from __future__ import annotations


class AIFSError(Exception):
    reason: str = "INTERNAL"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(AIFSError):
    reason = "NOT_FOUND"


class AlreadyExists(AIFSError):
    reason = "ALREADY_EXISTS"


class NotEmpty(AIFSError):
    reason = "NOT_EMPTY"


class NotADirectory(AIFSError):
    reason = "NOT_DIR"


class IsADirectory(AIFSError):
    reason = "IS_DIR"


class CrossDevice(AIFSError):
    reason = "CROSS_DEVICE"


class NameTooLong(AIFSError):
    reason = "NAME_TOO_LONG"


class InvalidArgument(AIFSError):
    reason = "INVALID_ARGUMENT"


class NoSpace(AIFSError):
    reason = "NO_SPACE"
    # set by the server when this failure gave back its space reserve (space_reserve.py):
    # the failed change was rolled back and may run once more
    reserve_released = False


class CorruptChunk(AIFSError):
    reason = "CORRUPT_CHUNK"


class CorruptMetadata(AIFSError):
    """A metadata row that decides a file's bytes fails its keyed checksum: never served."""

    reason = "CORRUPT_METADATA"


class KeyUnavailable(AIFSError):
    reason = "KEY_UNAVAILABLE"


class MissingChunk(AIFSError):
    reason = "MISSING_CHUNK"


class ParentNotCommitted(AIFSError):
    reason = "PARENT_NOT_COMMITTED"


class PermissionDenied(AIFSError):
    reason = "PERMISSION_DENIED"


class Unauthenticated(AIFSError):
    reason = "UNAUTHENTICATED"


class TimedOut(AIFSError):
    """Server-side work stopped at the call's deadline (the client may retry with a longer one)."""

    reason = "TIMED_OUT"


class StoreUnavailable(AIFSError):
    """The server's own chunk store (e.g. S3) or metadata database (e.g. PostgreSQL) did not
    answer after bounded retries."""

    reason = "STORE_UNAVAILABLE"


class StoreMisconfigured(AIFSError):
    """The server's own chunk store refused it (missing bucket, wrong credentials, no access):
    not the caller's fault, and retrying does not help."""

    reason = "STORE_MISCONFIGURED"


class TokenExpired(Unauthenticated):
    reason = "TOKEN_EXPIRED"


REASONS: dict[str, type[AIFSError]] = {
    cls.reason: cls
    for cls in (
        NotFound, AlreadyExists, NotEmpty, NotADirectory, IsADirectory, CrossDevice, NameTooLong,
        InvalidArgument, NoSpace, CorruptChunk, KeyUnavailable, MissingChunk, ParentNotCommitted,
        CorruptMetadata, PermissionDenied, Unauthenticated, TokenExpired, TimedOut, StoreUnavailable,
        StoreMisconfigured,
    )
}
