"""CreateFiles (group commit) against a real server over its socket, with a real lease session
(the exclusive directory lease and the delegated inode numbers a mount gets):

- several files of one directory in one call, each with its data inline, exactly as
  CreateFile would make them;
- the call fails at the first file that fails (here: an inode number never given out); the
  files before it are made, those after it are not; sent again one by one with their own
  request ids, the made ones are answered from the server's request log (not made twice) and
  the rest are made;
- refused: files of two directories, more than CREATE_FILES_MAX files, none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import blake3
import pytest

from aifs_core.errors import AIFSError, InvalidArgument
from aifs_server.rpc_batch import CREATE_FILES_MAX
from aifsfs.rpc.channel import Channel
from aifsfs.rpc.filesystem import new_request_id
from aifsfs.rpc.session import LeaseSession
from tests.helpers import ServerProc

ROOT = 1


@pytest.fixture
def session(server: ServerProc) -> Iterator[LeaseSession]:
    ch = Channel(server.address, token=server.token, timeout=30, retry_for=5)
    s = LeaseSession(ch, lambda inos: None, lambda: None)
    s.start()
    try:
        deadline = time.monotonic() + 20
        while not s.session_id and time.monotonic() < deadline:
            time.sleep(0.02)
        assert s.session_id, "no lease session"
        s.want_excl = True
        s.want_inos = True
        yield s
    finally:
        s.close()
        ch.close()


def _held_dir(s: LeaseSession, name: bytes) -> tuple[int, list[int]]:
    """A new directory this session holds exclusively, and inode numbers delegated to it."""
    d, _pa, _c = s.fs.mkdir_entry(ROOT, name)
    s.fs.create_entry(d.ino, b"first")      # the reply grants the lease and the numbers
    inos = list(s.inos_granted())
    assert s.excl_granted() == d.ino and len(inos) >= 8, (s.excl_granted(), inos)
    return d.ino, inos


def _file(parent: int, i: int, ino: int, size: int = 0) -> dict[str, Any]:
    data = (b"file %d " % i * (size // 7 + 100))[:size] if size else b"file %d " % i * 100
    cid = blake3.blake3(data).digest()
    commit = (([(0, cid, len(data))], len(data)), {"inline": [(cid, data)]})
    return dict(parent=parent, name=b"f%d" % i, ino=ino, mode=0o644, uid=0, gid=0,
                commit=commit, request_id=new_request_id())


def _read(s: LeaseSession, parent: int, name: bytes) -> bytes:
    a = s.fs.lookup(parent, name)
    _attr, _cs, _refs, inline = s.fs.open_chunk_map(a.ino, 1 << 20)
    return bytes(inline)


def test_several_files_in_one_call(session: LeaseSession) -> None:
    parent, inos = _held_dir(session, b"g")
    files = [_file(parent, i, inos[i]) for i in range(5)]
    got = session.fs.create_files(files)
    assert [a.ino for a, _r, _c in got] == inos[:5]
    for i, (a, _results, _cookie) in enumerate(got):
        assert a.size == len(b"file %d " % i * 100)
        assert _read(session, parent, b"f%d" % i) == b"file %d " % i * 100
    # the session holds the directory: each reply names the file's place in the listing
    listed = {e.name: e.cookie for e in session.fs.readdir(parent, 0)[0]}
    assert [c for _a, _r, c in got] == [listed[b"f%d" % i] for i in range(5)]
    assert 0 < listed[b"first"] < got[0][2]


def test_a_failed_call_made_the_files_before_the_bad_one_and_alone_they_are_answered_again(
        session: LeaseSession) -> None:
    parent, inos = _held_dir(session, b"h")
    files = [_file(parent, 0, inos[0]), _file(parent, 1, inos[1]),
             _file(parent, 2, 10**12),                  # never given out
             _file(parent, 3, inos[3])]
    with pytest.raises(AIFSError):
        session.fs.create_files(files)
    assert _read(session, parent, b"f0") == b"file 0 " * 100
    assert _read(session, parent, b"f1") == b"file 1 " * 100
    with pytest.raises(AIFSError):
        session.fs.lookup(parent, b"f3")                # after the bad one: not made
    # one by one, as the mount then sends them: the made ones answered from the log
    for f in (files[0], files[1], files[3]):
        a, _pa, _results, _cookie = session.fs.create_file(**f)
        assert a.ino == f["ino"]
    with pytest.raises(AIFSError):
        session.fs.create_file(**files[2])
    assert _read(session, parent, b"f3") == b"file 3 " * 100
    names = {e.name for e in session.fs.readdir(parent, 0)[0]}
    assert names == {b"first", b"f0", b"f1", b"f3"}, names


def test_refused_calls(session: LeaseSession) -> None:
    parent, inos = _held_dir(session, b"r")
    other, more = _held_dir(session, b"s")
    with pytest.raises(InvalidArgument, match="one directory"):
        session.fs.create_files([_file(parent, 0, inos[0]), _file(other, 1, more[0])])
    with pytest.raises(InvalidArgument, match="1 to"):
        session.fs.create_files([])
    too_many = [_file(parent, i, inos[0]) for i in range(CREATE_FILES_MAX + 1)]
    with pytest.raises(InvalidArgument, match="1 to"):
        session.fs.create_files(too_many)
    assert {e.name for e in session.fs.readdir(parent, 0)[0]} == {b"first"}


def test_a_call_larger_than_a_metadata_message(session: LeaseSession) -> None:
    """Three files of 1 MiB inline: past the 1 MiB a metadata call may carry, within what a
    data-carrying call may (request_limits.MESSAGE_LIMITS)."""
    parent, inos = _held_dir(session, b"big")
    files = [_file(parent, i, inos[i], size=1 << 20) for i in range(3)]
    got = session.fs.create_files(files)
    assert [a.size for a, _r, _c in got] == [1 << 20] * 3
    for i in range(3):
        assert _read(session, parent, b"f%d" % i) == files[i]["commit"][1]["inline"][0][1]
