"""A cold pass over a directory of a tag's view (`/.aifs/tags/T/...`, issue 11: "a training job
reading a tag runs at least as fast as on the live tree") costs about the calls of one over the
live tree: the view's listing carries each file's chunk map (no GetChunkMap per open) and the
directory is prefetched in batched GetChunks calls (dir_prefetch.py over the view's verified
listings), not one call per file. Bytes exact; calls counted from the server's metrics.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount
from tests.e2e.test_dir_prefetch import N, _check, _delta, _epoch, _payload
from tests.e2e.test_leases import calls
from tests.e2e.test_versions_mount import config_home  # noqa: F401 - autouse: keys pinned here
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add


def test_a_cold_pass_over_a_tag_costs_batched_calls_not_two_per_file(
        metered: ServerProc, mount_factory: Callable[..., Mount], tmp_path: Path) -> None:
    client = AIFSClient(metered.address, token=metered.token, timeout=30)
    a = mount_factory(metered)
    (a.path / "ds").mkdir()
    for i in range(N):
        (a.path / "ds" / f"s{i:04d}.npy").write_bytes(_payload(i))
    os.sync()
    with client:
        snap = client.versions.snapshot(message="training set")
        client.versions.create_tag("train", snap["id"])
    # a second mount, cold: nothing of the data in its memory (2 MiB, the directory is
    # 15 MiB), disk or page cache
    b = mount_factory(metered, "--mem-cache-size", "2M", "--cache-dir",
                      str(tmp_path / "cache"), "--cache-size", "256M")
    view = b.path / ".aifs" / "tags" / "train" / "ds"
    before = calls(metered)
    _check(_epoch(view, 1))
    c = _delta(metered, before)
    # the maps came with the verified listing; the bytes with the directory's prefetch
    # (without it: a GetChunkMap and a GetChunks per file, 2 * N calls)
    assert c.get("GetChunkMap", 0) == 0, c
    assert c.get("GetChunks", 0) <= N // 6, c
    assert c.get("ListTree", 0) <= 4, c
    # the live tree changes; the view does not
    (a.path / "ds" / "s0000.npy").write_bytes(b"changed")
    assert (view / "s0000.npy").read_bytes() == _payload(0)
