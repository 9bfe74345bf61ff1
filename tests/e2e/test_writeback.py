"""--writeback (docs/LEASES.md "Closes that return before their commit"), over a real mount of
a real server, calls counted from its metrics:

- the closes of small files made in a directory the mount holds return while the server is
  stopped (SIGSTOP): nothing waits for it; once it runs again, another mount's first look at
  the directory recalls the lease and sees every byte (close-to-open holds), and the files
  went in fewer calls than files, their data with their creates;
- a closed file survives a server crash: the server is SIGKILLed while those closes' commits
  are queued or on the wire, restarted on the same data directory, and the mount's commits
  reach it; its unmount waits for them, and a new mount reads every byte;
- `tar -xp` runs to its end with the server stopped: its utimens and fchown before each close
  are folded into the file's queued create (no call), and another mount then sees each file's
  bytes, mode and mtime.
"""

from __future__ import annotations

import os
import signal
import subprocess
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


def test_tar_runs_to_its_end_without_the_server_and_keeps_times_and_modes(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(FILES):
        p = src / f"w{i:03d}"
        p.write_bytes(_payload(i))
        p.chmod(0o640 if i % 2 else 0o755)
        os.utime(p, (1_600_000_000 + i, 1_500_000_000 + 3600 * i))
    archive = tmp_path / "a.tar"
    # the files alone: an archive of "." would end with a chmod and utimens of the directory,
    # which are calls (a directory's attributes are not answered here)
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src),
                    *sorted(p.name for p in src.iterdir())], check=True)
    a = mount_factory(metered, "--writeback")
    b = mount_factory(metered)
    _ready(a, metered)
    d = _exclusive_dir(a)
    before = calls(metered)
    with _stopped(metered):
        r = subprocess.run(["tar", "-xpf", str(archive), "-C", str(d)], timeout=60,
                           capture_output=True)
    assert r.returncode == 0, r.stderr
    seen = b.path / "d"
    _check_all(seen)
    for i in range(FILES):
        got = os.stat(seen / f"w{i:03d}")
        assert got.st_mtime == 1_500_000_000 + 3600 * i, i
        assert got.st_mode & 0o7777 == (0o640 if i % 2 else 0o755), i
    c = _delta(metered, before)
    assert c.get("CommitFile", 0) == 0, c       # data, times and owner in each create
    assert c.get("CreateFiles", 0) + c.get("CreateFile", 0) <= FILES // 4, c
