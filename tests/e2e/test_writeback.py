"""--writeback (docs/LEASES.md "Closes that return before their commit"), over a real mount of
a real server, calls counted from its metrics:

- the closes of small files made in a directory the mount holds return while the server is
  stopped (SIGSTOP): nothing waits for it; once it runs again, another mount's first look at
  the directory recalls the lease and sees every byte (close-to-open holds), and the files
  went in fewer calls than files, their data with their creates;
- a closed file survives a server crash: the server is SIGKILLed while those closes' commits
  are queued or on the wire, restarted on the same data directory, and the mount's commits
  reach it; its unmount waits for them, and a new mount reads every byte.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.e2e.conftest import Mount
from tests.e2e.test_dirops_batch import _exclusive_dir
from tests.e2e.test_group_commit import calls
from tests.e2e.test_small_files import _delta, _ready
from tests.helpers import ServerProc, start_server, stop_server

FILES = 40          # within the inode numbers the first create's reply delegates


def _payload(i: int) -> bytes:
    return (b"%05d;" % i) * (500 + i * 7)           # 3-4 KiB, distinct


def _write_while_stopped(sp: ServerProc, d: Path, kill: bool = False) -> None:
    """Write FILES files in `d` (one thread, create + write + close each) while the server
    is stopped; every close must return without it. kill: the server is then SIGKILLed
    (before it runs again)."""
    closed = threading.Event()

    def writer() -> None:
        for i in range(FILES):
            (d / f"w{i:03d}").write_bytes(_payload(i))
        closed.set()

    t = threading.Thread(target=writer)
    with _stopped(sp):
        t.start()
        returned = closed.wait(30)
        if kill:
            sp.proc.send_signal(signal.SIGKILL)
            sp.proc.wait(10)
    t.join(60)
    assert returned, "a close waited for the stopped server"


@contextmanager
def _stopped(sp: ServerProc) -> Iterator[None]:
    os.kill(sp.proc.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if sp.proc.poll() is None:
            os.kill(sp.proc.pid, signal.SIGCONT)


def _check_all(d: Path) -> None:
    assert sorted(p.name for p in d.glob("w*")) == [f"w{i:03d}" for i in range(FILES)]
    for i in range(FILES):
        assert (d / f"w{i:03d}").read_bytes() == _payload(i), i


def test_closes_return_without_the_server_and_another_mount_sees_every_byte(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered, "--writeback")
    b = mount_factory(metered)
    _ready(a, metered)
    d = _exclusive_dir(a)
    before = calls(metered)
    _write_while_stopped(metered, d)
    _check_all(b.path / "d")                    # B's first look recalls A's lease
    c = _delta(metered, before)
    made = c.get("CreateFiles", 0) + c.get("CreateFile", 0) + c.get("Create", 0)
    assert c.get("CreateFiles", 0) >= 1, c
    assert made <= FILES // 4, c                # queued while stopped: a few large calls
    assert c.get("CommitFile", 0) == 0, c       # each file's data went with its create


def test_a_file_closed_before_a_server_crash_reaches_the_restarted_server(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered, "--writeback")
    _ready(a, metered)
    d = _exclusive_dir(a)
    _write_while_stopped(metered, d, kill=True)
    restarted = start_server(metered.data_dir, listen=[metered.address])
    try:
        a.unmount()                             # waits for the commits under way
        c = mount_factory(restarted)
        _check_all(c.path / "d")
        c.unmount()
    finally:
        stop_server(restarted)
