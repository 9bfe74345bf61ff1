"""A chunk put that makes its fan-out directory: the new directory's parent and the store's
root are fsynced while the chunk's file is written (in the store's directory-sync threads),
and both before the chunk's name is linked, as when they ran first (server/chunkstore.py
`_sync_parents`). Real files on a real file system; os.fsync and os.link are wrapped only to
record what ran, in which thread, and in what order."""

from __future__ import annotations

import errno
import os
import stat
import threading
from pathlib import Path

import pytest

from aifs_server.chunkstore import LocalChunkStore
from aifs_server.small_chunks import SMALL_MAX

# more than SMALL_MAX: stored as a chunk file (smaller envelopes are rows of small.sqlite)
ENVELOPE = b"envelope bytes" * (SMALL_MAX // 8)

NAME = "abcd" + "0" * 60


class Events:
    """("fsync", path, is_dir, thread name) and ("link", target) in the order they finished;
    `fail_dir`: a directory whose fsync fails with EIO."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, fail_dir: str | None = None) -> None:
        self.log: list[tuple[str, ...]] = []
        self._lock = threading.Lock()
        real_fsync, real_link = os.fsync, os.link

        def fsync(fd: int) -> None:
            path = os.readlink(f"/proc/self/fd/{fd}")
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            if path == fail_dir:
                raise OSError(errno.EIO, "injected")
            real_fsync(fd)
            with self._lock:
                self.log.append(("fsync", path, "dir" if is_dir else "file",
                                 threading.current_thread().name))

        def link(src: str, dst: str) -> None:
            real_link(src, dst)
            with self._lock:
                self.log.append(("link", dst))

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "link", link)

    def index(self, kind: str, path: str) -> int:
        return next(i for i, e in enumerate(self.log) if e[0] == kind and e[1] == path)


def test_a_new_fan_out_directory_is_durable_before_the_name_appears(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    store = LocalChunkStore(root)
    ev = Events(monkeypatch)
    assert store.put(NAME, ENVELOPE) is True
    parent, leaf, final = str(root / "ab"), str(root / "ab" / "cd"), str(root / "ab" / "cd" / NAME)
    linked = ev.index("link", final)
    files = [e for e in ev.log if e[0] == "fsync" and e[2] == "file"]
    assert len(files) == 1 and ev.log.index(files[0]) < linked     # data durable first
    for d in (parent, str(root)):
        i = ev.index("fsync", d)
        assert i < linked                                          # before the name shows
        assert ev.log[i][3].startswith("aifs-store-dirsync")       # beside the file's write
    assert ev.index("fsync", leaf) > linked                        # the name's own entry
    assert (root / "ab" / "cd" / NAME).read_bytes() == ENVELOPE

    # the directory exists now: the next chunk there fsyncs its file and the leaf only
    ev.log.clear()
    other = "abcd" + "1" * 60
    assert store.put(other, b"more" * SMALL_MAX) is True
    assert sorted((e[1], e[2]) for e in ev.log if e[0] == "fsync") == sorted(
        [(ev.log[0][1], "file"), (leaf, "dir")])


def test_a_failed_parent_fsync_links_nothing(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    store = LocalChunkStore(root)
    ev = Events(monkeypatch, fail_dir=str(root))
    with pytest.raises(OSError) as info:
        store.put(NAME, ENVELOPE)
    assert info.value.errno == errno.EIO
    assert not any(e[0] == "link" for e in ev.log)
    assert not store.has_many([NAME])[0]
    assert os.listdir(root / "ab" / "cd") == []                     # no temp file left
    monkeypatch.undo()
    assert store.put(NAME, ENVELOPE) is True               # and it can be put again
    assert store.get(NAME) == ENVELOPE
