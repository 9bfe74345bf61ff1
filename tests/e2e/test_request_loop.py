"""The mount's FUSE request loop (pyfuse3 as patched by scripts/pyfuse3.patch, "fast-loop"):
/dev/fuse is non-blocking, and a worker task that has just answered a request takes the next
queued one without waiting (at most 16 in a row). Under a storm of parallel opens from 8
processes -- the queue rarely empty, every read path of the loop taken, EAGAIN included --
no request is lost (a lost one hangs its reader, and the test fails waiting for it), the
readers see the right bytes, and the mount still acks the recalls another mount's writes wait
for. (Our handlers reach trio checkpoints of their own, so the 16-in-a-row bound is a second
guard that this test cannot tell apart from the first: it passed with the bound removed.)
Real mounts of a real server, real processes; test_noflush checks that setup built the
patched pyfuse3."""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Callable
from typing import Any

import pytest

from tests.e2e.conftest import Mount
from tests.e2e.test_leases import _wait_leased, long_term  # noqa: F401 - a fixture
from tests.helpers import ServerProc

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("caches_kept")]  # _wait_leased counts calls

READERS = 8
FILES = 40


def _read_until(root: str, stop: Any, done: Any) -> None:
    n = 0
    names = [os.path.join(root, f"s{i:02d}") for i in range(FILES)]
    while not stop.is_set():
        i = (n * 7 + os.getpid()) % FILES
        fd = os.open(names[i], os.O_RDONLY)
        got = os.read(fd, 64)
        os.close(fd)
        if not got.startswith(b"sample %d " % i):
            done.put(-1)          # wrong bytes
            return
        n += 1
    done.put(n)


def test_recalls_are_answered_while_parallel_readers_keep_the_queue_full(
        long_term: None, metered: ServerProc,  # noqa: F811 - the fixture imported above
        mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    for i in range(FILES):
        (b.path / f"s{i:02d}").write_bytes(b"sample %d " % i * 100)
    f = b.path / "f.txt"
    f.write_bytes(b"v0")
    _wait_leased(a, a.path / "f.txt", metered)
    ctx = mp.get_context("fork")
    stop, done = ctx.Event(), ctx.Queue()
    readers = [ctx.Process(target=_read_until, args=(str(a.path), stop, done))
               for _ in range(READERS)]
    for p in readers:
        p.start()
    try:
        for i in range(1, 21):
            # the server recalls A's lease first and waits for A's ack; with a 300 s term, an
            # ack that never comes fails this write at its 30 s deadline (no clock needed)
            f.write_bytes(b"v%d" % i)
            assert (a.path / "f.txt").read_bytes() == b"v%d" % i
            assert all(p.is_alive() for p in readers)   # the storm is still going
    finally:
        stop.set()
        opened = [done.get(timeout=60) for _ in readers]
        for p in readers:
            p.join(30)
    assert min(opened) > 0 and sum(opened) >= 20 * READERS, opened

