"""Background collection on a real server and a real FUSE mount (issue 13): the space of a
removed file comes back by itself, while chunks a live session uploaded and has not committed
survive every pass. Store usage is the size of the files in the data dir's chunk store
(chunk files and small.sqlite with its WAL); passes are
counted from the server's Prometheus metrics. Polls have generous limits: the behaviour is
checked, never its speed.
"""

from __future__ import annotations

import hashlib
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.helpers import ServerProc, start_server, stop_server

MiB = 1 << 20
POLL = 90.0        # seconds any poll may take on a loaded machine before the test fails


@pytest.fixture
def collecting(data_dir: Path) -> Iterator[ServerProc]:
    # --upload-grace 0: an upload without a session is not protected at all, so what keeps the
    # mount's uploads is their session, as it must be
    sp = start_server(data_dir, args=["--metrics-port", "0", "--collect-interval", "0.5",
                                      "--upload-grace", "0"])
    try:
        yield sp
    finally:
        stop_server(sp)


@pytest.fixture
def mount_of() -> Iterator[Callable[..., Mount]]:
    """mount_of(server, *options): a real mount of that server, always torn down."""
    made: list[Mount] = []

    def make(sp: ServerProc, *extra: str) -> Mount:
        made.append(start_mount(sp, *extra))
        return made[-1]
    try:
        yield make
    finally:
        for m in reversed(made):
            teardown_mount(m)


def store_bytes(sp: ServerProc) -> int:
    total = 0
    for root, _dirs, files in os.walk(Path(sp.data_dir) / "chunks"):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass  # deleted while we walked
    return total


def metric(sp: ServerProc, name: str) -> float:
    url = sp.ready_line.split("metrics on ", 1)[1].rstrip(")")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name} in:\n{text}")


def wait_for(what: str, cond: Callable[[], bool]) -> None:
    end = time.monotonic() + POLL
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"still not {what} after {POLL:.0f} s")
        time.sleep(0.2)


def wait_passes(sp: ServerProc, n: int) -> None:
    start = metric(sp, "aifs_collector_passes_total")
    wait_for(f"{n} collection passes", lambda: metric(
        sp, "aifs_collector_passes_total") >= start + n)


def test_rm_gives_the_space_back_without_gc(
        collecting: ServerProc, mount_of: Callable[..., Mount]) -> None:
    m = mount_of(collecting)
    before = store_bytes(collecting)
    data = os.urandom(50 * MiB)       # incompressible: stored bytes ~ written bytes
    (m.path / "big").write_bytes(data)
    assert store_bytes(collecting) >= before + 50 * MiB
    os.unlink(m.path / "big")
    wait_for("freed", lambda: store_bytes(collecting) < before + 2 * MiB)
    assert metric(collecting, "aifs_collector_chunks_deleted_total") >= 50


def test_uncommitted_uploads_of_a_live_session_survive_collection(
        collecting: ServerProc, mount_of: Callable[..., Mount]) -> None:
    # a small dirty bound: most of the file is uploaded (spilled) long before its close
    m = mount_of(collecting, "--max-dirty", "8M")
    data = os.urandom(40 * MiB)
    before = store_bytes(collecting)
    with open(m.path / "open-long", "wb") as f:
        f.write(data)                 # no flush, no close: uploaded, not committed
        wait_for("uploaded", lambda: store_bytes(collecting) >= before + 30 * MiB)
        held = store_bytes(collecting)
        wait_passes(collecting, 4)
        assert store_bytes(collecting) >= held   # nothing of it was collected
    # the close commits what was uploaded: no chunk had to be sent again
    assert (m.path / "open-long").read_bytes() == data
    assert "uploading them again" not in m.log()
    assert "collected before" not in m.log()


def test_a_mount_without_a_session_uploads_collected_chunks_again(
        collecting: ServerProc, mount_of: Callable[..., Mount], monkeypatch: pytest.MonkeyPatch
        ) -> None:
    """Leases off: no session, so (with --upload-grace 0) the collector takes the chunks
    uploaded behind the writer before the close; the commit is answered MISSING_CHUNK and the
    mount sends them again from the bytes it holds (up to half its dirty bound), then commits."""
    monkeypatch.setenv("AIFS_LEASES", "0")
    m = mount_of(collecting, "--max-dirty", "64M")     # holds up to 32 MiB for re-uploads
    data = os.urandom(20 * MiB)
    deleted = metric(collecting, "aifs_collector_chunks_deleted_total")
    try:
        with open(m.path / "respilled", "wb") as f:
            f.write(data)
            # all 20 uploaded and collected: the close finds every one gone
            wait_for("collected", lambda: metric(
                collecting, "aifs_collector_chunks_deleted_total") >= deleted + 20)
    except OSError as e:
        raise AssertionError(f"close failed: {e}; the mount's log:\n{m.log()}") from e
    assert (m.path / "respilled").read_bytes() == data
    assert "uploading them again" in m.log()


def test_many_rewrites_leave_bounded_garbage(
        collecting: ServerProc, mount_of: Callable[..., Mount]) -> None:
    m = mount_of(collecting)
    base = store_bytes(collecting)
    peak = 0
    last = b""
    for i in range(200):
        last = os.urandom(MiB + 4096)
        (m.path / "rewritten").write_bytes(last)
        if i % 10 == 0:
            peak = max(peak, store_bytes(collecting) - base)
    # collection ran during the loop (200 MiB were written), and catches up after it
    assert peak < 150 * MiB
    wait_for("collected", lambda: store_bytes(collecting) - base < 4 * MiB)
    got = (m.path / "rewritten").read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(last).digest()
