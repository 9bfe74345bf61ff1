"""Group commit in DirOps.birth (aifsfs/fuse/dirops_queue.py), with real threads closing at
once and the session's Filesystem client replaced by a recording one (the calls' server side
is tests/integration/test_create_files.py, the whole over a mount tests/e2e/test_group_commit.py):

- closes that queue behind a birth on the wire go in one create_files, each gets its own
  attributes back;
- when that call fails, each file is sent alone with the request id it had in the group (so
  the server answers again what the group did), and each close gets its own result or error;
- a lone close never waits for a group: one create_file;
- closes queued by --writeback (queue_birth) go with their data whoever sends them: a recall
  (the directory's flush) or a call on the file, never the file empty; the close's own send
  then returns the attributes that send got, with no call of its own.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace
from typing import Any

import pytest

from aifs_core.types import Attr
from aifsfs.fuse.dirops_queue import DirOps

PARENT = 7


def _attr(ino: int) -> Attr:
    return Attr(ino, 0o100644, 1, 0, 0, 10, 0, 0, 0, 0, 0, 1)


class RecordingFs:
    """create_file / create_files as the server answers them; the first create_file waits for
    `release` (a call on the wire while other closes queue); `fail_group`: create_files raises;
    `bad`: the inode whose create fails wherever it is sent."""

    def __init__(self, fail_group: bool = False, bad: int = 0) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.singles: list[tuple[int, bytes]] = []           # (ino, request id)
        self.groups: list[list[tuple[int, bytes]]] = []
        self.group_bytes: list[int] = []                    # inline bytes a call carried
        self.fail_group, self.bad = fail_group, bad
        self.commits: dict[int, Any] = {}                   # ino -> the commit it went with
        self._lock = threading.Lock()

    def create_file(self, parent: int, name: bytes, ino: int, mode: int, uid: int, gid: int,
                    commit: Any = None, request_id: bytes = b"", attrs: Any = None,
                    items: Any = ()) -> tuple[Attr, None, list[Any], int]:
        with self._lock:
            first = not self.singles and not self.groups
            self.singles.append((ino, request_id))
            self.commits[ino] = commit
        if first:
            self.entered.set()
            assert self.release.wait(10)
        if ino == self.bad:
            raise OSError(f"inode {ino} cannot be made")
        return _attr(ino), None, [], 0

    def create_files(self, files: list[dict[str, Any]]) -> list[tuple[Attr, list[Any], int]]:
        with self._lock:
            self.groups.append([(f["ino"], f["request_id"]) for f in files])
            self.commits.update((f["ino"], f["commit"]) for f in files)
            self.group_bytes.append(sum(len(d) for f in files if f["commit"]
                                        for _c, d in f["commit"][1]["inline"]))
        if self.fail_group or any(f["ino"] == self.bad for f in files):
            raise OSError("the group failed")
        return [(_attr(f["ino"]), [], 0) for f in files]


def _dirops(fs: RecordingFs) -> DirOps:
    session = SimpleNamespace(fs=fs, want_inos=False, valid_until=time.monotonic() + 3600,
                              inos_granted=lambda: range(0), excl_granted=lambda: PARENT)
    q = DirOps(session, on_failed=lambda ino: None)
    q.took(PARENT, q.mark())                    # we hold PARENT
    for ino in range(100, 106):
        assert q.add_unborn(PARENT, b"f%d" % ino, ino, 0o644, 0, 0)
    return q


def _close_at_once(q: DirOps, fs: RecordingFs, inos: list[int], size: int = 0) -> list[Any]:
    """The first close goes on the wire and waits there; the others close meanwhile (each
    with `size` bytes of inline data when size > 0)."""
    def commit(ino: int) -> Any:
        return (((), size), {"inline": [(b"%032d" % ino, bytes(size))]}) if size else None

    with ThreadPoolExecutor(len(inos)) as pool:
        first = pool.submit(q.birth, inos[0], commit(inos[0]))
        assert fs.entered.wait(10)
        rest = [pool.submit(q.birth, ino, commit(ino)) for ino in inos[1:]]
        deadline = time.monotonic() + 10
        while len(q._births.get(PARENT, ())) < len(inos) - 1 and time.monotonic() < deadline:
            time.sleep(0.005)           # every other close has queued behind the first
        fs.release.set()
        out = []
        for f in [first, *rest]:
            try:
                out.append(f.result(20))
            except Exception as exc:  # noqa: BLE001 - the test compares them
                out.append(exc)
        return out


def test_closes_queued_behind_a_birth_go_in_one_call() -> None:
    fs = RecordingFs()
    q = _dirops(fs)
    got = _close_at_once(q, fs, [100, 101, 102, 103])
    assert [a.ino for a in got] == [100, 101, 102, 103]
    assert [ino for ino, _ in fs.singles] == [100]
    assert len(fs.groups) == 1 and sorted(i for i, _ in fs.groups[0]) == [101, 102, 103]
    assert q.stats["grouped"] == 3 and q.stats["created"] == 4
    assert not any(q.unborn(i) for i in (100, 101, 102, 103))


def test_a_failed_group_is_sent_file_by_file_with_the_same_request_ids() -> None:
    fs = RecordingFs(bad=102)
    q = _dirops(fs)
    got = _close_at_once(q, fs, [100, 101, 102, 103])
    assert got[0].ino == 100 and got[1].ino == 101 and got[3].ino == 103
    assert isinstance(got[2], OSError) and "102" in str(got[2])
    group_ids = dict(fs.groups[0])
    alone = [(i, r) for i, r in fs.singles if i != 100]
    assert sorted(i for i, _ in alone) == [101, 102, 103]     # each once, alone
    assert all(group_ids[i] == r for i, r in alone), "the group's request ids, kept"
    assert q.unborn(102) and not q.unborn(101) and not q.unborn(103)


def test_a_lone_close_is_one_create_file() -> None:
    fs = RecordingFs()
    fs.release.set()
    q = _dirops(fs)
    assert q.birth(104).ino == 104
    assert fs.singles == [(104, fs.singles[0][1])] and fs.groups == []


@pytest.mark.parametrize("n", [2, 6])
def test_every_close_returns_its_own_file(n: int) -> None:
    fs = RecordingFs(fail_group=n == 6)
    q = _dirops(fs)
    got = _close_at_once(q, fs, list(range(100, 100 + n)))
    assert [a.ino for a in got] == list(range(100, 100 + n))


def test_a_group_stays_within_its_bytes() -> None:
    """Five closes of 1 MiB each queue behind the first: no call carries more than
    GROUP_BYTES (4 MiB) of inline data, and every close returns its file."""
    fs = RecordingFs()
    q = _dirops(fs)
    got = _close_at_once(q, fs, list(range(100, 106)), size=1 << 20)
    assert [a.ino for a in got] == list(range(100, 106))
    assert fs.group_bytes and max(fs.group_bytes) <= 4 << 20, fs.group_bytes
    sent = [i for g in fs.groups for i, _ in g] + [i for i, _ in fs.singles]
    assert sorted(sent) == list(range(100, 106)), sent          # each file once
    assert len(fs.groups) + len(fs.singles) >= 3                 # 6 MiB: not one call


def _wb_commit(ino: int) -> Any:
    return (((), 5), {"inline": [(b"%032d" % ino, b"data%d" % ino)]})


def test_a_recall_sends_the_closes_queued_behind_with_their_data() -> None:
    fs = RecordingFs()
    fs.release.set()
    q = _dirops(fs)
    for ino in (100, 101, 102):
        assert q.queue_birth(ino, _wb_commit(ino))
    assert not q.queue_birth(100, _wb_commit(100)), "queued once"
    q.recalled([PARENT])                        # the lease stream, before its ack
    assert fs.commits[100] == _wb_commit(100) and fs.commits[102] == _wb_commit(102)
    assert [sorted(i for i, _ in g) for g in fs.groups] == [[100, 101, 102]]
    assert fs.commits[103] is None and fs.commits[105] is None   # open here: made empty
    calls = len(fs.singles) + len(fs.groups)
    for ino in (100, 101, 102):                 # each close's own send: answered already
        assert q.birth(ino, _wb_commit(ino)).ino == ino
    assert len(fs.singles) + len(fs.groups) == calls
    assert not any(q.unborn(i) for i in range(100, 106))


def test_a_call_on_a_file_queued_behind_sends_it_with_its_data() -> None:
    fs = RecordingFs()
    fs.release.set()
    q = _dirops(fs)
    assert q.queue_birth(101, _wb_commit(101))
    assert q.birth(101).ino == 101              # e.g. a rename of it: born first
    assert fs.commits == {101: _wb_commit(101)}
    assert q.birth(101, _wb_commit(101)).ino == 101
    assert len(fs.singles) + len(fs.groups) == 1
