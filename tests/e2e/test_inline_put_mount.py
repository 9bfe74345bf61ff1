"""A big file written through a real mount sends its chunks' bytes through /dev/shm
(PutChunks naming a file of the call's own, aifsfs/rpc/data.py), counted by the server's
metrics as "in_file"; fsync'd and closed, it survives a SIGKILL of the server byte for byte
(read back through a new mount on a server restarted on the same data dir, whose read-ahead
gets the bytes through /dev/shm too: "out_file"); the files the mount keeps for its next
uploads hold at most CALL_FILES_KEEP bytes, and none is left once it has unmounted. With
AIFS_INLINE_FILE=0 the mount sends the same bytes in the messages."""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Callable

import pytest

from aifsfs.rpc import inline_file
from aifsfs.rpc.data import CALL_FILES_KEEP
from tests.e2e.conftest import Mount
from tests.helpers import ServerProc, start_server, stop_server
from tests.integration.test_snapshot_open import metric

MiB = 1 << 20
SIZE = 24 * MiB + 12_345        # whole chunks through the file, and a tail
pytestmark = pytest.mark.skipif(not inline_file.available(["unix:x"]), reason="no /dev/shm")


def _bytes(sp: ServerProc, direction: str) -> int:
    return int(metric(sp, "aifs_data_bytes_total", f'direction="{direction}"'))


def _in_file(sp: ServerProc) -> int:
    return _bytes(sp, "in_file")


def _write(m: Mount, name: str, data: bytes) -> None:
    with open(m.path / name, "wb") as f:
        for i in range(0, len(data), MiB):
            f.write(data[i:i + MiB])
        f.flush()
        os.fsync(f.fileno())


def test_big_file_through_the_file_survives_a_server_kill(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    data = random.Random(7).randbytes(SIZE)
    m = mount_factory(metered)
    before = _in_file(metered)
    _write(m, "big", data)
    through_file = _in_file(metered) - before
    # every whole chunk's bytes came through the mount's files (the tail may be committed
    # with the file itself)
    assert through_file >= 24 * MiB, through_file
    kept = inline_file.files_of(m.proc.pid)
    assert sum(os.path.getsize(f"{inline_file.SHM}/{f}") for f in kept) <= CALL_FILES_KEEP
    metered.proc.send_signal(signal.SIGKILL)
    metered.proc.wait(10)
    m.unmount()
    assert inline_file.files_of(m.proc.pid) == []
    sp = start_server(metered.data_dir, args=["--metrics-port", "0"])   # its own data dir
    try:
        m2 = mount_factory(sp)
        assert (m2.path / "big").read_bytes() == data
        # the new mount's sequential read (read-ahead GetChunks) got its bytes through files
        assert _bytes(sp, "out_file") >= 24 * MiB, _bytes(sp, "out_file")
        m2.unmount()
    finally:
        stop_server(sp)


def test_switched_off_the_mount_sends_messages(
        metered: ServerProc, mount_factory: Callable[..., Mount],
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIFS_INLINE_FILE", "0")
    m = mount_factory(metered)
    data = random.Random(8).randbytes(6 * MiB + 5)
    before = _in_file(metered)
    _write(m, "off", data)
    assert _in_file(metered) == before
    assert (m.path / "off").read_bytes() == data
