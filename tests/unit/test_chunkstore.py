"""LocalChunkStore on real directories (and a real, tiny tmpfs for a full disk)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading

import pytest

from aifs_core.errors import InvalidArgument, NoSpace, NotFound
from aifs_server.chunkstore import LocalChunkStore

NAME = "ab" + "cd" + "0123456789abcdef" * 3 + "0123456789ab"


def _files(root) -> list[str]:
    return sorted(
        os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs
    )


def test_put_get_exists_delete(tmp_path) -> None:
    store = LocalChunkStore(tmp_path / "store")
    assert not store.exists(NAME)
    assert store.put(NAME, b"envelope bytes") is True
    assert store.exists(NAME) and store.get(NAME) == b"envelope bytes"
    assert store.size(NAME) == 14
    path = tmp_path / "store" / "ab" / "cd" / NAME  # two levels of fan-out
    assert path.read_bytes() == b"envelope bytes"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _files(tmp_path / "store") == [f"ab/cd/{NAME}"]  # no temp files left behind
    assert list(store.iter_names()) == [NAME]
    assert store.delete(NAME) is True
    assert store.delete(NAME) is False
    assert not store.exists(NAME)
    with pytest.raises(NotFound, match=NAME):
        store.get(NAME)
    with pytest.raises(NotFound, match="not in the chunk store"):
        store.size(NAME)


def test_put_is_idempotent(tmp_path) -> None:
    store = LocalChunkStore(tmp_path)
    assert store.put(NAME, b"first") is True
    assert store.put(NAME, b"first") is False
    assert store.get(NAME) == b"first"
    assert _files(tmp_path) == [f"ab/cd/{NAME}"]


def test_concurrent_puts_of_one_name_store_it_once(tmp_path) -> None:
    store = LocalChunkStore(tmp_path)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def put() -> None:
        barrier.wait()
        results.append(store.put(NAME, b"same bytes" * 1000))

    threads = [threading.Thread(target=put) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert _files(tmp_path) == [f"ab/cd/{NAME}"]
    assert store.usage()[0] == 10_000


@pytest.mark.parametrize("bad", ["../../etc/passwd", "ABCD1234", "ab/cd", "abc", "", "a b c d",
                                 ".tmp-abcd"])
def test_bad_names_are_refused(tmp_path, bad: str) -> None:
    store = LocalChunkStore(tmp_path)
    with pytest.raises(InvalidArgument, match="invalid chunk store name"):
        store.put(bad, b"x")
    with pytest.raises(InvalidArgument):
        store.get(bad)
    assert _files(tmp_path) == []


def test_usage_and_listing(tmp_path) -> None:
    store = LocalChunkStore(tmp_path)
    names = [f"{i:064x}" for i in range(0, 2000, 97)]
    for i, n in enumerate(names):
        store.put(n, b"z" * (i + 1))
    used, free = store.usage()
    assert used == sum(range(1, len(names) + 1))
    assert free > 0
    assert sorted(store.iter_names()) == sorted(names)
    store.delete(names[0])
    store.put("f" * 64, b"12345")
    assert store.usage()[0] == used - 1 + 5
    assert LocalChunkStore(tmp_path).usage()[0] == used - 1 + 5  # recomputed from disk


def test_stale_temp_files_are_removed(tmp_path) -> None:
    store = LocalChunkStore(tmp_path)
    store.put(NAME, b"x")
    stale = tmp_path / "ab" / "cd" / f".tmp-{NAME}-1-2"
    stale.write_bytes(b"half written")
    os.utime(stale, (1, 1))
    assert list(store.iter_names()) == [NAME]  # never listed as a chunk
    assert store.remove_stale_temp(older_than=60) == 1
    assert _files(tmp_path) == [f"ab/cd/{NAME}"]


@pytest.fixture
def tiny_fs(tmp_path):
    """A real 512 KiB tmpfs, unmounted even if the test fails."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        if os.path.ismount(mnt):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_no_space_and_leaves_nothing(tiny_fs) -> None:
    store = LocalChunkStore(tiny_fs / "store")
    assert store.put("00" * 32, b"a" * 1000)
    with pytest.raises(NoSpace) as exc:
        store.put("11" * 32, os.urandom(2 << 20))
    msg = str(exc.value)
    assert "disk is full" in msg and str(tiny_fs / "store") in msg and "11" * 32 in msg
    assert exc.value.reason == "NO_SPACE"
    assert not store.exists("11" * 32)
    leftovers = [f for f in _files(tiny_fs / "store") if ".tmp" in f]
    assert leftovers == []
    # the store still works once there is room
    assert store.put("22" * 32, b"small")
    assert store.get("22" * 32) == b"small" and store.get("00" * 32) == b"a" * 1000
