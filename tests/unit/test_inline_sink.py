"""The server's side of the inline file (server/inline_file.InlineSink) on its own: who may use
it, where the pieces land, its size bound; and the mount's memory cache keeping its own bytes
of a slice of a mapped file."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import pytest

from aifs_server.inline_file import InlineSink
from aifsfs.fuse.chunk_cache import ChunkCache
from aifsfs.rpc import inline_file

pytestmark = pytest.mark.skipif(not inline_file.available(["unix:x"]), reason="no /dev/shm")


def test_pieces_land_back_to_back_until_the_limit() -> None:
    with inline_file.InlineFile() as f:
        assert InlineSink.open(f.path, "ipv4:127.0.0.1:5000") is None      # not local
        assert InlineSink.open(f.path + "0", "unix:") is None                # not our name
        sink = InlineSink.open(f.path, "unix:", limit=10)
        assert sink is not None
        try:
            assert sink.place([b"abc", memoryview(b"de")]) == 0
            assert sink.place([bytearray(b"fgh")]) == 5
            assert sink.place([b"ijk"]) is None          # past the limit: in the reply
            assert sink.place([b"ij"]) == 8
        finally:
            sink.close()
        view = f.view()
        assert view is not None and bytes(view) == b"abcdefghij"
        assert f.view_upto(10) is view and f.view_upto(11) is None   # no more than written


def test_a_file_written_already_is_refused_unless_reused(tmp_path: Path) -> None:
    path = f"{inline_file.private_dir()}/{secrets.token_hex(16)}"
    Path(path).write_bytes(b"x")
    try:
        assert InlineSink.open(path, "unix:/s.sock") is None
        # GetChunks' file, reused by the client after an earlier call: written over from 0
        sink = InlineSink.open(path, "unix:/s.sock", reused=True)
        assert sink is not None
        try:
            assert sink.place([b"yz"]) == 0
        finally:
            sink.close()
        assert Path(path).read_bytes() == b"yz"
    finally:
        os.unlink(path)


def test_only_a_file_in_a_directory_closed_to_others_is_written() -> None:
    # /dev/shm is listed by anyone: a file named there, or in a directory others may enter,
    # could be named by another user's client while its owner's call is in flight
    top = f"{inline_file.SHM}/{inline_file.PREFIX}{os.getpid()}-{secrets.token_hex(16)}"
    Path(top).touch(mode=0o600)
    shared = Path(f"{inline_file.SHM}/{inline_file.PREFIX}{os.getpid()}-{secrets.token_hex(16)}")
    shared.mkdir(mode=0o700)
    inside = shared / secrets.token_hex(16)
    inside.touch(mode=0o600)
    try:
        assert InlineSink.open(top, "unix:") is None                  # the old, open form
        sink = InlineSink.open(str(inside), "unix:")                 # 0700: written
        assert sink is not None
        sink.close()
        shared.chmod(0o755)                                          # others may list it
        assert InlineSink.open(str(inside), "unix:") is None
        assert inside.stat().st_size == 0
    finally:
        os.unlink(top)
        inside.unlink()
        shared.rmdir()
    with inline_file.InlineFile() as f:                              # what the mount makes
        assert os.stat(os.path.dirname(f.path)).st_mode & 0o777 == 0o700
        sink = InlineSink.open(f.path, "unix:")
        assert sink is not None
        sink.close()


def test_memory_cache_keeps_bytes_not_a_view_of_the_mapping() -> None:
    with inline_file.InlineFile() as f:
        os.pwrite(f.fd, b"0123456789" * 1000, 0)
        view = f.view()
    assert view is not None
    cache = ChunkCache(1 << 20)
    cache.put(b"c" * 32, 0, view[100:200])
    got = cache.get(b"c" * 32, 0, 100)
    assert type(got) is bytes and got == (b"0123456789" * 1000)[100:200]
