"""Client error classes: the server's classes rebuilt client side, and their errno."""

from __future__ import annotations

import errno

import grpc
import pytest

from aifs_core import errors as server_errors
from aifs_core.status import code_for
from aifsfs.errors import (
    RemoteError,
    ServerUnavailable,
    errno_for,
    remote_class,
    xattr_errno_for,
)

EXPECTED = {
    "NOT_FOUND": errno.ENOENT, "ALREADY_EXISTS": errno.EEXIST, "NOT_EMPTY": errno.ENOTEMPTY,
    "NOT_DIR": errno.ENOTDIR, "IS_DIR": errno.EISDIR, "NAME_TOO_LONG": errno.ENAMETOOLONG,
    "NO_SPACE": errno.ENOSPC, "PERMISSION_DENIED": errno.EACCES,
    "UNAUTHENTICATED": errno.EACCES, "TOKEN_EXPIRED": errno.EACCES,
    "INVALID_ARGUMENT": errno.EINVAL, "CROSS_DEVICE": errno.EXDEV,
    "CORRUPT_CHUNK": errno.EIO, "CORRUPT_METADATA": errno.EIO, "KEY_UNAVAILABLE": errno.EIO, "MISSING_CHUNK": errno.EIO,
    "PARENT_NOT_COMMITTED": errno.EIO, "TIMED_OUT": errno.ETIMEDOUT,
    "STORE_UNAVAILABLE": errno.EIO, "STORE_MISCONFIGURED": errno.EIO,  # the server's store
}


@pytest.mark.parametrize("reason", sorted(server_errors.REASONS))
def test_every_reason_has_a_remote_class_and_errno(reason: str) -> None:
    cls = remote_class(reason)
    base = server_errors.REASONS[reason]
    assert issubclass(cls, RemoteError) and issubclass(cls, base)
    err = cls("server said so", None, reason, "unix:/x")
    assert err.reason == reason and err.code == code_for(reason) != grpc.StatusCode.INTERNAL
    assert str(err) == "server said so"
    assert errno_for(err) == EXPECTED[reason]
    assert errno_for(base("local")) == EXPECTED[reason]  # the server classes map the same


def test_errno_fallbacks_and_xattr() -> None:
    assert errno_for(ServerUnavailable("down")) == errno.EIO
    assert errno_for(RemoteError("?", grpc.StatusCode.INTERNAL, "INTERNAL")) == errno.EIO
    assert errno_for(ValueError("bug")) == errno.EIO
    assert errno_for(PermissionError(errno.EPERM, "no")) == errno.EPERM
    assert xattr_errno_for(remote_class("NOT_FOUND")("no such attribute")) == errno.ENODATA
    assert xattr_errno_for(remote_class("ALREADY_EXISTS")("exists")) == errno.EEXIST
    assert remote_class("SOMETHING_NEW") is RemoteError
