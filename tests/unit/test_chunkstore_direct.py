"""LocalChunkStore's big envelopes written with O_DIRECT (server/chunkstore.py _DirectWriter):
byte-exact on disk whatever the size's alignment, kept out of the page cache (counted with
util-linux's fincore), and a file system refusing O_DIRECT written buffered instead, the
bytes the same."""

from __future__ import annotations

import errno
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from aifs_server import chunkstore
from aifs_server.chunkstore import DIRECT_MIN, LocalChunkStore

pytestmark = pytest.mark.skipif(not hasattr(os, "O_DIRECT"), reason="no O_DIRECT")


@pytest.fixture(autouse=True)
def _fresh_writer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(chunkstore, "_DIRECT", chunkstore._DirectWriter())


def _resident(path: Path) -> int:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES",
                          str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def _stored(store: LocalChunkStore, name: str) -> Path:
    (p,) = Path(store.root).glob(f"*/*/{name}")
    return p


def test_big_envelopes_bypass_the_page_cache_and_read_back_exact(tmp_path: Path) -> None:
    if subprocess.run(["stat", "-f", "-c", "%T", str(tmp_path)], capture_output=True,
                      text=True).stdout.strip() == "tmpfs" or not shutil.which("fincore"):
        pytest.skip("needs a disk file system and fincore")
    store = LocalChunkStore(tmp_path / "s")
    rng = random.Random(1)
    sizes = {"a" * 64: (1 << 20) + 123, "b" * 64: 2 << 20, "c" * 64: DIRECT_MIN + 4095,
             "d" * 64: DIRECT_MIN - 1}
    datas = {n: rng.randbytes(k) for n, k in sizes.items()}
    assert store.put_many(list(datas.items())) == [True] * 4
    for n, d in datas.items():
        assert store.get(n) == d
        assert store.get(n, 5000, 70_000) == d[5000:75_000]
    assert chunkstore._DIRECT.enabled
    # the direct part never went through the page cache (the reads above were through it:
    # measured on fresh puts)
    more = {"e" * 64: rng.randbytes((1 << 20) + 77), "f" * 64: rng.randbytes(DIRECT_MIN - 1)}
    assert store.put_many(list(more.items())) == [True, True]
    assert _resident(_stored(store, "e" * 64)) <= 4096          # the tail's block at most
    assert _resident(_stored(store, "f" * 64)) == len(more["f" * 64]) + 1  # buffered, whole
    assert store.get("e" * 64) == more["e" * 64]


def test_a_file_system_refusing_o_direct_gets_buffered_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = LocalChunkStore(tmp_path / "s")
    real = os.pwrite
    refused: list[int] = []

    def pwrite(fd: int, data: object, offset: int) -> int:
        import fcntl
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT:
            refused.append(fd)
            raise OSError(errno.EINVAL, "no O_DIRECT here")
        return real(fd, data, offset)     # type: ignore[arg-type]

    writer = chunkstore._DIRECT
    monkeypatch.setattr(os, "pwrite", pwrite)
    data = random.Random(2).randbytes(3 << 20)
    assert store.put("a" * 64, data)
    assert store.put("b" * 64, data[:-1])
    monkeypatch.setattr(os, "pwrite", real)
    assert store.get("a" * 64) == data and store.get("b" * 64) == data[:-1]
    assert len(refused) == 1 and not writer.enabled         # asked once, then not
