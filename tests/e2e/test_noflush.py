"""A read-only handle's close costs no FUSE request (FOPEN_NOFLUSH, aifsfs/fuse/ops.py
`_file_info`); a handle that may write still gets its FLUSH, which commits before close
returns. Over a real mount of a real server; FLUSH requests counted by the mount (logged at
its unmount)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pyfuse3

from tests.e2e.conftest import Mount, stats_at_unmount
from tests.helpers import ServerProc

N = 20


def test_the_setup_built_pyfuse3_with_our_patch() -> None:
    # scripts/setup.sh rebuilds pyfuse3 with scripts/pyfuse3.patch: without it every close
    # costs a FLUSH request and every request a task switch (the mount still works; this says
    # the setup did its job)
    assert hasattr(pyfuse3.FileInfo(), "noflush")
    assert "fast-loop" in getattr(pyfuse3, "aifs_patches", ())


def test_read_only_closes_send_no_flush_and_writing_ones_do(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(metered)
    d = m.path / "d"
    d.mkdir()
    arr = np.arange(1000, dtype=np.int32)
    for i in range(N):
        np.save(d / f"s{i}.npy", arr + i)           # N writing handles: N FLUSHes at least
    for _ in range(2):
        for i in range(N):
            got = np.load(d / f"s{i}.npy")           # numpy closes a dup too: 2 closes
            assert got[0] == i and len(got) == 1000
            with open(d / f"s{i}.npy", "rb") as f:
                assert f.read(6) == b"\x93NUMPY"
    fd = os.open(d / "s0.npy", os.O_RDWR)            # may write: FLUSH at its close
    os.close(fd)
    flushes = stats_at_unmount(m, "fuse requests")["flush"]
    # the saves' closes and the O_RDWR one; none of the 6 N = 120 read-only closes (2
    # passes of N files, each closed 3 times: numpy's two and the open() after)
    assert N + 1 <= flushes <= 2 * N + 1, flushes
