"""What a listing costs over a real mount of a real server: a cold listing of a directory of
several pages shows every entry once, in order, and costs exactly one ReadDir per page (the
page fetched ahead while the kernel takes the one before is used, never asked again; the
kernel's last READDIR, asked after the last entry to learn the end, is answered by the mount:
it cost one more ReadDir per listing); a reader that stops early costs no more than the whole
listing; a name another mount adds is in the next listing. Calls are counted with the
server's Prometheus metrics.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount
from tests.e2e.test_leases import calls
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

PAGE = 1000                 # ops.READDIR_PAGE: entries per ReadDir the mount asks
N = 2 * PAGE + 150          # three pages, the last one short


def _readdirs(sp: ServerProc) -> int:
    return calls(sp).get("ReadDir", 0)


def _settled(sp: ServerProc, at_least: int, wait: float = 10.0) -> int:
    """ReadDir calls so far, once a fetch still in flight has been counted (at least
    `at_least`) and the count has stopped moving."""
    until = time.monotonic() + wait
    n = _readdirs(sp)
    while time.monotonic() < until:
        time.sleep(0.3)
        m = _readdirs(sp)
        if m == n and m >= at_least:
            return m
        n = m
    return n


def test_cold_listing_costs_one_call_per_page(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    with AIFSClient(metered.address, token=metered.token) as c:
        d = c.fs.mkdir(1, b"big").ino
        for i in range(N):
            c.fs.create(d, f"f{i:05d}".encode())
    a = mount_factory(metered)
    before = _readdirs(metered)
    names = os.listdir(a.path / "big")
    assert names == [f"f{i:05d}" for i in range(N)]      # listing (creation) order, once each
    # one call per page, none twice, none past the end (the kernel's last READDIR asked 4)
    assert _settled(metered, before + 3) - before == 3

    # a reader that stops after one entry: the kernel still fills its buffer (more than a
    # page on recent kernels); never more than the whole listing
    b = mount_factory(metered)
    before = _readdirs(metered)
    with os.scandir(b.path / "big") as it:
        first = next(it).name
    assert first == "f00000"
    assert 1 <= _settled(metered, before + 1) - before <= 3

    # another mount's new name is in A's next listing (its lease on the directory recalled)
    (b.path / "big" / "zz-from-b").write_bytes(b"b")
    again = os.listdir(a.path / "big")
    assert len(again) == N + 1 and again[-1] == "zz-from-b" and len(set(again)) == N + 1
