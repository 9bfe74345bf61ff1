"""The server's listing cache (server/listing_cache.py) as an operator sees it, over a real
server process: `--listing-cache-mb` sizes it (0 turns it off, an out-of-range value is refused
with a clear message), and the metrics endpoint shows what it holds and how often a hashing
used a kept listing (aifs_listing_cache_*). The cache's exactness is tested in
tests/unit/test_versions_checkpoints.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aifs_core.types import ROOT_INO, SET_MODE
from aifsfs.client import AIFSClient
from tests.helpers import ServerProc, make_data_dir, start_server, stop_server
from tests.integration.test_snapshot_open import metric

FILES = 600           # past the cache's threshold (512 entries)


def _scraped(sp: ServerProc, name: str) -> float:
    """A sample without labels (metric() sums labelled ones)."""
    import urllib.request

    url = sp.ready_line.split("metrics on ", 1)[1].rstrip(")")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.split(" ", 1)[0] == name)


def _flat_dir_snapshotted_twice(address: str) -> None:
    """A directory of FILES entries, a snapshot, one entry changed, a second snapshot."""
    with AIFSClient(address, timeout=120) as c:
        d = c.fs.mkdir(ROOT_INO, b"flat").ino
        first = 0
        for i in range(FILES):
            a, _pa, _c = c.fs.create_entry(d, b"f%04d" % i, 0o100644, 0, 0)
            first = first or a.ino
        c.versions.snapshot(message="one")
        c.fs.setattr(first, SET_MODE, mode=0o100600)
        c.versions.snapshot(message="two")


@pytest.mark.parametrize("mb", ["8", "0"])
def test_the_flag_sizes_the_cache_and_the_metrics_show_it(tmp_path: Path, mb: str) -> None:
    sp = start_server(make_data_dir(tmp_path / "d"),
                      args=["--metrics-port", "0", "--hash-interval", "0",
                            "--listing-cache-mb", mb])
    try:
        _flat_dir_snapshotted_twice(sp.address)
        made = _scraped(sp, "aifs_listing_cache_made_total")
        spliced = _scraped(sp, "aifs_listing_cache_spliced_total")
        held = _scraped(sp, "aifs_listing_cache_bytes")
        dirs = _scraped(sp, "aifs_listing_cache_directories")
        if mb == "0":
            assert (made, spliced, held, dirs) == (0, 0, 0, 0)
        else:
            # the first snapshot made the flat directory's listing, the second spliced it
            assert made >= 1 and spliced >= 1, (made, spliced)
            assert dirs >= 1 and 0 < held <= 8 << 20, (dirs, held)
        assert metric(sp, "aifs_rpc_total", 'method="CreateSnapshot"') >= 2
    finally:
        stop_server(sp)


@pytest.mark.parametrize("bad", ["-1", "2000000", "lots"])
def test_an_out_of_range_size_is_refused_clearly(tmp_path: Path, bad: str) -> None:
    r = subprocess.run([sys.executable, "-m", "aifs_server.serve", "--data",
                        str(make_data_dir(tmp_path / "d")), "--listing-cache-mb", bad],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert "--listing-cache-mb" in r.stderr, r.stderr
