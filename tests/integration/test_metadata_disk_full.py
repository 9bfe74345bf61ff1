"""A full disk under the SQLite metadata database is ENOSPC-like NoSpace naming the database
file, never an INTERNAL error with a traceback (issue 13), on a real small tmpfs."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from aifs_core.errors import NoSpace
from aifs_core.types import Namespace, TreeRef
from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifs_server.metadata.sqlite import SQLiteMetadata
from tests.helpers import call_md, error_info, make_data_dir, start_server, stop_server, tmpfs

T = TreeRef("default", "main")


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 1 MiB tmpfs, unmounted even if the test fails."""
    with tmpfs(tmp_path / "small", "1m") as mnt:
        yield mnt


@pytest.fixture
def server_fs(tmp_path: Path) -> Iterator[Path]:
    """A real 8 MiB tmpfs for a whole data dir."""
    with tmpfs(tmp_path / "srvfs", "8m") as mnt:
        yield mnt


def _fill(where: Path, leave: int) -> Path:
    """A file taking all but about `leave` bytes of the file system holding `where`."""
    st = os.statvfs(where)
    filler = where / "filler"
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_full_disk_is_no_space_naming_the_database(small_fs: Path) -> None:
    db = small_fs / "meta.db"
    md = SQLiteMetadata(db)
    try:
        md.create_namespace(Namespace("default", 1 << 20, 1, ""))
        md.ensure_tree(T)
        filler = _fill(small_fs, 64 << 10)
        with pytest.raises(NoSpace) as ei:
            for i in range(10_000):   # bounded: 64 KiB is gone long before
                a = md.create(T, 1, b"f%d" % i, 0o100644, 0, 0)
                md.setxattr(T, a.ino, b"user.pad", os.urandom(3000))
        assert ei.value.reason == "NO_SPACE"
        assert str(db) in ei.value.message and "disk is full" in ei.value.message
        # the failed transaction left no lock behind: once there is room, writes work again
        # on the same connection (a leftover open transaction would make this one fail)
        filler.unlink()
        a = md.create(T, 1, b"after", 0o100644, 0, 0)
        assert md.lookup(T, 1, b"after").ino == a.ino
    finally:
        md.close()


def test_full_disk_over_the_server_is_no_space_without_traceback(server_fs: Path) -> None:
    data = make_data_dir(server_fs / "data")
    sp = start_server(data)
    try:
        with sp.channel() as ch:
            fs = filesystem_pb2_grpc.FilesystemStub(ch)
            md = call_md(sp.token)
            filler = _fill(server_fs, 64 << 10)
            with pytest.raises(grpc.RpcError) as ei:
                for i in range(10_000):
                    ino = fs.Create(filesystem_pb2.CreateRequest(
                        parent=1, name=b"f%d" % i, mode=0o100644), metadata=md,
                        timeout=30).attr.ino
                    fs.SetXattr(filesystem_pb2.XattrRequest(ino=ino, name=b"user.pad",
                                                            value=os.urandom(3000)),
                                metadata=md, timeout=30)
            code, reason, msg = error_info(ei.value)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and reason == "NO_SPACE", msg
            assert str(data / "meta.db") in msg
            filler.unlink()
            fs.Create(filesystem_pb2.CreateRequest(parent=1, name=b"after", mode=0o100644),
                      metadata=md, timeout=30)
        assert "Traceback" not in sp.log(), sp.log()
    finally:
        stop_server(sp)
