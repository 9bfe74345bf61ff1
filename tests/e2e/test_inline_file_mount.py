"""A cold shuffled epoch through a real mount whose ReadDir pages bring the samples' bytes
through /dev/shm (server/inline_file.py, aifsfs/rpc/inline_file.py): bytes exact, the bytes
counted by the server's metrics as written to the mount's files (not in replies), calls as
before (a few ReadDir pages, no per-file GetChunkMap or GetChunks), a rewrite on another mount
read new afterwards (close-to-open), and no file left behind once the mount is gone (before,
only the call files it keeps for reuse)."""

from __future__ import annotations

import os
import random
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from aifsfs.rpc import inline_file
from aifsfs.rpc.data import CALL_FILES_KEEP
from tests.e2e.conftest import Mount
from tests.e2e.test_leases import _wait_leased, calls, lease_term  # noqa: F401 - fixture
from tests.helpers import ServerProc

N = 60
SIZE = 150_000
pytestmark = pytest.mark.skipif(not inline_file.available(["unix:x"]), reason="no /dev/shm")


def _file_bytes(sp: ServerProc) -> int:
    """aifs_data_bytes_total{direction="out_file"}: ReadDir bytes written to clients' files."""
    url = sp.ready_line.split("metrics on ", 1)[1].rstrip(")")
    for line in urllib.request.urlopen(url, timeout=10).read().decode().splitlines():
        if line.startswith('aifs_data_bytes_total{direction="out_file"}'):
            return int(float(line.split()[-1]))
    return 0


def _left_by(pid: int) -> list[str]:
    return inline_file.files_of(pid)


def test_cold_epoch_bytes_come_through_the_inline_file(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    (a.path / "ds").mkdir()
    payload = {i: random.Random(i).randbytes(SIZE - i) for i in range(N)}
    for i, data in payload.items():
        (a.path / "ds" / f"s{i:04d}.npy").write_bytes(data)
    b = mount_factory(metered)
    ready = b.path / "ready"
    ready.write_bytes(b"ok")
    _wait_leased(b, ready, metered)
    d = b.path / "ds"
    before, placed = calls(metered), _file_bytes(metered)
    names = sorted(p.name for p in d.glob("*.npy"))
    random.Random(3).shuffle(names)
    with ThreadPoolExecutor(4) as pool:
        got = dict(zip(names, pool.map(lambda n: (d / n).read_bytes(), names), strict=True))
    for name, data in got.items():
        assert data == payload[int(name[1:5])], name
    after = calls(metered)
    delta = {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}
    # the directory's bytes came in ReadDir pages, through the file: at least all but the
    # first opened file's (which its own GetChunkMap may carry)
    assert _file_bytes(metered) - placed >= (N - 2) * (SIZE - N), delta
    assert delta.get("GetChunkMap", 0) + delta.get("GetChunks", 0) <= 4, delta
    assert delta.get("ReadDir", 0) <= 8, delta
    # ReadDir's files are gone with their calls; what stays is at most the GetChunks /
    # PutChunks files kept for reuse (CallFiles), and nothing once the mount is gone
    kept = _left_by(b.proc.pid)
    assert sum(os.path.getsize(f"{inline_file.SHM}/{f}") for f in kept) <= CALL_FILES_KEEP
    # close-to-open still: a rewrite on the other mount is read new
    for i in range(0, N, 13):
        p = f"ds/s{i:04d}.npy"
        (a.path / p).write_bytes(b"new %d" % i)
        assert (b.path / p).read_bytes() == b"new %d" % i
    b.unmount()
    assert _left_by(b.proc.pid) == []
