"""Scale limits through a real mount: files past 4 GiB, and a directory of 100k entries."""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Callable
from pathlib import Path

from aifs_core.types import ROOT_INO, TreeRef
from aifs_server.metadata.sqlite import SQLiteMetadata
from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.helpers import make_data_dir, short_tmpdir, start_server, stop_server

GiB = 1 << 30


def test_file_larger_than_4gib(mount_factory: Callable[..., Mount]) -> None:
    """64-bit offsets end to end: writes at, across and past 4 GiB, read through a second
    mount; the holes in between are not stored."""
    writer, reader = mount_factory(), mount_factory()
    pieces = {0: os.urandom(4096), 4 * GiB - 10: os.urandom(20),  # straddles 4 GiB
              5 * GiB + 12345: os.urandom(1 << 20)}
    fd = os.open(writer.path / "huge", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        for off, data in pieces.items():
            assert os.pwrite(fd, data, off) == len(data)
    finally:
        os.close(fd)
    end = 5 * GiB + 12345 + (1 << 20)
    st = (reader.path / "huge").stat()
    assert st.st_size == end
    assert st.st_blocks * 512 <= 8 << 20, "holes must not be stored"
    fd = os.open(reader.path / "huge", os.O_RDONLY)
    try:
        for off, data in pieces.items():
            assert os.pread(fd, len(data), off) == data
        assert os.pread(fd, 4096, 3 * GiB) == bytes(4096)  # inside a hole
    finally:
        os.close(fd)


def test_directory_of_100k_entries_lists_through_the_mount() -> None:
    """100k names made in one engine transaction (creating them through FUSE would only cost
    time), then listed and looked up through a real server and mount."""
    n = 100_000
    base = short_tmpdir()
    server = mount = None
    try:
        data = make_data_dir(os.path.join(base, "data"))
        # keyed as the server's engine is (its row MACs: server/metadata/row_mac.py)
        meta = SQLiteMetadata(data / "meta.db", row_key=(data / "storage.key").read_bytes())
        tree_ref = TreeRef("default")
        big = meta.mkdir(tree_ref, ROOT_INO, b"big", 0o755, 0, 0)
        tree = meta._tree(tree_ref)
        with meta._store.write() as tx:
            for i in range(n):
                meta._new_inode(tx, tree, big.ino, b"e%06d" % i, stat.S_IFREG | 0o644, 1, 0, 0,
                                0, 1)
        meta.close()
        server = start_server(data)
        mount = start_mount(server)
        names = os.listdir(Path(mount.path) / "big")
        assert len(names) == n
        assert sorted(names) == [f"e{i:06d}" for i in range(n)]
        assert (Path(mount.path) / "big" / "e099999").stat().st_size == 0
    finally:
        if mount is not None:
            teardown_mount(mount)
        if server is not None:
            stop_server(server)
        shutil.rmtree(base, ignore_errors=True)
