"""Group commit (dirops_queue.DirOps.birth, the CreateFiles call): closes of files created at
once in a directory the mount holds exclusively share calls, over a real mount of a real
server, calls counted from its metrics:

- 8 writers x 40 files: fewer calls than files, some of them CreateFiles; every byte is what
  its writer wrote, seen by another mount (close-to-open);
- each close still returns only once its file is on the server: SIGKILL the server right
  after the writers' last close, restart it on the same data dir, and every file is there;
- a group whose call fails (one of its files cannot be made: its number was never given out)
  is sent again file by file: the others are made, the bad one's close reports EIO, and the
  files the failed call made before the bad one are answered from the request log, not made
  twice.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from tests.e2e.conftest import Mount, stats_at_unmount
from tests.e2e.test_dirops_batch import _exclusive_dir
from tests.e2e.test_small_files import _delta, _ready
from tests.helpers import ServerProc, start_server, stop_server

WRITERS = 8
EACH = 40
FILES = WRITERS * EACH


def _payload(i: int) -> bytes:
    return (b"%06d:" % i) * (600 + i % 50)          # ~4 KiB, distinct


def _write_all(d: Path) -> None:
    """WRITERS threads, each creating every WRITERS-th file, started together."""
    start = threading.Barrier(WRITERS)

    def writer(first: int) -> None:
        start.wait()
        for i in range(first, FILES, WRITERS):
            fd = os.open(d / f"f{i:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, _payload(i))
            finally:
                os.close(fd)

    with ThreadPoolExecutor(WRITERS) as pool:
        list(pool.map(writer, range(WRITERS)))


def _check_all(d: Path) -> None:
    assert sorted(p.name for p in d.glob("f[0-9]*")) == [f"f{i:04d}" for i in range(FILES)]
    for i in range(FILES):
        assert (d / f"f{i:04d}").read_bytes() == _payload(i), i


def _grouped(m: Mount) -> int:
    """Files the mount sent in CreateFiles calls (its unmount logs its dirops stats)."""
    return stats_at_unmount(m, "queued dirops")["grouped"]


def test_parallel_closes_share_calls_and_another_mount_sees_every_byte(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d = _exclusive_dir(a)
    before = calls(metered)
    _write_all(d)
    c = _delta(metered, before)
    made = c.get("CreateFiles", 0) + c.get("CreateFile", 0) + c.get("Create", 0)
    assert c.get("CreateFiles", 0) >= 1, c
    assert made <= FILES * 9 // 10, c                 # fewer calls than files
    assert c.get("CommitFile", 0) == 0, c             # each file's data went with its create
    _check_all(b.path / "d")
    assert _grouped(a) >= 2 * c["CreateFiles"], "a CreateFiles carries 2 files or more"


def test_each_grouped_close_survives_a_server_crash(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    _ready(a, metered)
    d = _exclusive_dir(a)
    before = calls(metered)
    _write_all(d)
    assert _delta(metered, before).get("CreateFiles", 0) >= 1
    metered.proc.send_signal(signal.SIGKILL)          # no shutdown: what was closed is stored
    metered.proc.wait(10)
    restarted = start_server(metered.data_dir, listen=[metered.address])
    try:
        a.unmount()
        c = mount_factory(restarted)
        _check_all(c.path / "d")
        c.unmount()
    finally:
        stop_server(restarted)


def calls(sp: ServerProc) -> dict[str, int]:
    from tests.e2e.test_leases import calls as counted

    return counted(sp)
