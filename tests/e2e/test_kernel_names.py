"""The kernel keeps what a lease answered for as long as the lease lasts (docs/LEASES.md "Kernel
caches under a lease", aifsfs/fuse/kernel_names.py), over real mounts of one real server with
the default lease term (10 s; the two tests that count requests: TERM):

- stats of files this mount created, past the 1 s timeouts, reach the mount no more (FUSE
  LOOKUP/GETATTR requests counted by the mount, logged at its unmount);
- yet another mount's change is seen at once by a mount whose own timeouts are 0 (so that
  only entries kept for a lease's term could be stale): the recall drops them first.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount, stats_at_unmount
from tests.e2e.test_leases import _wait_leased, calls, total
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

N = 50
TERM = 60.0     # seconds: a lease term far past the test's length, however loaded the machine


@pytest.fixture
def long_lease_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel keeps an entry for what was left of the lease when it was answered (a renewal
    does not lengthen what the kernel was told). With the default 10 s term that is 6.5-9 s: a
    loaded machine that takes that long over the creates and the stats sees the first entries
    expire and looked up again, which is correct but not what this test counts. Asked for
    before `metered`, so it is set before that server starts."""
    monkeypatch.setenv("AIFS_LEASE_TERM_SECONDS", str(TERM))


def _requests(m: Mount) -> dict[str, int]:
    """The FUSE lookups and getattrs the mount served (its unmount logs them)."""
    return stats_at_unmount(m, "fuse requests")


def _slab_drops() -> int:
    """How often anyone wrote 2 or 3 to /proc/sys/vm/drop_caches (it drops every dentry)."""
    for line in Path("/proc/vmstat").read_text().splitlines():
        if line.startswith("drop_slab "):
            return int(line.split()[1])
    return 0


def _undisturbed(run: Callable[[int], dict[str, int]]) -> dict[str, int]:
    """run(attempt)'s request counts from an attempt during which nothing dropped the kernel's
    dentries: the suite's other workers drop caches (cold-read tests), and a dropped dentry is
    rightly looked up again, which would count here as if the lease had not been used."""
    for attempt in range(3):
        before = _slab_drops()
        got = run(attempt)
        if _slab_drops() == before:
            return got
    pytest.skip("another test dropped the kernel's caches during each of 3 attempts")


def test_stats_of_own_files_past_the_timeouts_reach_the_mount_no_more(
        long_lease_term: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    def run(attempt: int) -> dict[str, int]:
        m = mount_factory(metered)
        ready = m.path / f"ready{attempt}"
        ready.write_bytes(b"ok")
        _wait_leased(m, ready, metered)
        d = m.path / f"d{attempt}"
        d.mkdir()
        for i in range(N):
            (d / f"f{i}").write_bytes(b"x" * i)
        time.sleep(1.5)     # past the mount's 1 s entry and attribute timeouts
        for _ in range(3):
            for i in range(N):
                assert os.stat(d / f"f{i}").st_size == i
        return _requests(m)

    got = _undisturbed(run)
    # one negative LOOKUP per create (the kernel never saw the name before) and none for the
    # 3 x N stats (3 N more with 1 s entries): the kernel kept the created entries for the
    # lease's term. Two GETATTRs a file: one in its create, one at the first stat (the close's
    # commit makes the kernel ask for the attributes once); the later stats ask nothing.
    assert got["lookup"] <= N + 10, got
    assert got["getattr"] <= 2 * N + 10, got


def test_another_mounts_change_is_seen_at_once(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    # no kernel caching but what a lease answered: a stale entry here could only be one the
    # lease handed out for longer and the recall failed to drop
    a, b = _two_mounts(metered, mount_factory)
    (a.path / "d").mkdir()
    da, db = a.path / "d", b.path / "d"
    for i in range(40):
        name = f"n{i % 5}"
        # A caches the name (or its absence), its attributes and the directory's
        st = _stat(da / name)
        size = 0 if st is None else st.st_size
        if i % 3 == 0 and st is not None:
            os.unlink(db / name)                    # gone: A must not find it
            assert _stat(da / name) is None, i
            continue
        tmp = db / f".tmp{i}"
        tmp.write_bytes(b"y" * (size + 1 + i))
        os.replace(tmp, db / name)                  # a new inode under the name
        st2 = _stat(da / name)
        assert st2 is not None and st2.st_size == size + 1 + i, (i, st2)
        assert (da / name).read_bytes() == b"y" * (size + 1 + i)
    assert sorted(os.listdir(da)) == sorted(os.listdir(db))


def _two_mounts(metered: ServerProc, mount_factory: Callable[..., Mount]) -> tuple[Mount, Mount]:
    """A (whose kernel keeps only what a lease answered: its own timeouts 0, its session
    leasing) and B."""
    a = mount_factory(metered, "--attr-timeout", "0", "--entry-timeout", "0")
    b = mount_factory(metered)
    ready = a.path / "ready"
    ready.write_bytes(b"ok")
    _wait_leased(a, ready, metered)
    return a, b


def _stat(p: Path) -> os.stat_result | None:
    try:
        return os.stat(p)
    except FileNotFoundError:
        return None


def test_listed_names_past_the_timeouts_reach_the_mount_no_more(
        long_lease_term: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    def run(attempt: int) -> dict[str, int]:
        # another mount makes the files: this one knows them only from its listing
        # (readdirplus)
        w = mount_factory(metered)
        (w.path / f"d{attempt}").mkdir()
        for i in range(N):
            (w.path / f"d{attempt}" / f"f{i}").write_bytes(b"x" * i)
        # the writer goes before the reader comes: a batch of its queued changes sent late
        # would recall the reader's listing after it was leased
        subprocess.run(["fusermount3", "-u", str(w.path)], check=True)
        w.proc.wait(60)
        m = mount_factory(metered)
        ready = m.path / f"ready{attempt}"
        ready.write_bytes(b"ok")
        _wait_leased(m, ready, metered)
        d = m.path / f"d{attempt}"
        # listed until a listing costs no call: its page is leased (the first ReadDir recalls
        # the writer's exclusive lease, and a read that saw a change run is not leased)
        for _ in range(50):
            before = total(calls(metered))
            assert len(os.listdir(d)) == N
            if total(calls(metered)) == before:
                break
            time.sleep(0.1)
        else:
            raise AssertionError("the listing never became leased")
        time.sleep(1.5)                     # past the mount's 1 s entry and attribute timeouts
        for _ in range(2):
            for i in range(N):
                assert os.stat(d / f"f{i}").st_size == i
        # the reads come last: a read that reaches the mount (its pages not yet pushed) makes
        # the kernel ask for the attributes again at the file's next stat (it marks atime
        # stale), which is the kernel's rule and not an entry the lease failed to keep
        for i in range(N):
            with open(d / f"f{i}", "rb") as f:      # its fstat follows the stats: kept too
                assert len(f.read()) == i
        return _requests(m)

    got = _undisturbed(run)
    # with the mount's 1 s entries every name would be looked up again (N LOOKUPs, N GETATTRs
    # at least); a few for `ready` and the directory itself
    assert got["lookup"] <= 10, got
    assert got["getattr"] <= 10, got


def test_a_listed_name_changed_by_another_mount_is_seen_at_once(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    # A learns each name only from its listing (readdirplus under the lease, kept for the
    # lease's term): a recall that failed to drop such an entry would show it stale here
    a, b = _two_mounts(metered, mount_factory)
    db = b.path / "listed"
    db.mkdir()
    da = a.path / db.name
    for i in range(30):
        name = f"n{i}"
        (db / name).write_bytes(b"v" * i)
        assert name in os.listdir(da), i
        new = b"y" * (100 + i)
        match i % 3:
            case 0:         # gone: A must not find it
                os.unlink(db / name)
                assert _stat(da / name) is None, i
                continue
            case 1:         # another inode under the name
                (db / ".tmp").write_bytes(new)
                os.replace(db / ".tmp", db / name)
            case _:         # the same inode rewritten: new size and times
                with open(db / name, "r+b") as f:
                    f.write(new)
        got = _stat(da / name)
        assert got is not None and got.st_size == len(new), (i, got)
        assert (da / name).read_bytes() == new, i
    assert sorted(os.listdir(da)) == sorted(os.listdir(db))
