"""Leases over real mounts of one real server (docs/LEASES.md): warm stat/open/lookup/readdir
of leased inodes cost no call (counted from the server's Prometheus metrics); close on one
mount then open on another always sees the new bytes (in-place rewrites, os.replace,
unlink/recreate, 500 rounds); a holder that is SIGKILLed costs the writer nothing, one that
hangs (SIGSTOP) at most one lease term."""

from __future__ import annotations

import errno
import os
import signal
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount
from tests.helpers import ServerProc

pytestmark = pytest.mark.usefixtures("caches_kept")   # counts what dropped caches would add

TERM = 2.0      # seconds: the lease term of the test server


@pytest.fixture(autouse=True)
def lease_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """The short lease term, set before the shared `metered` server (tests/conftest.py) starts:
    autouse fixtures are set up before the ones a test asks for."""
    monkeypatch.setenv("AIFS_LEASE_TERM_SECONDS", str(TERM))


def calls(sp: ServerProc) -> dict[str, int]:
    """Unary calls handled so far, per method (the lease stream itself is not counted)."""
    url = sp.ready_line.split("metrics on ", 1)[1].rstrip(")")
    text = urllib.request.urlopen(url, timeout=10).read().decode()
    out: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("aifs_rpc_total{"):
            method = line.split('method="', 1)[1].split('"', 1)[0]
            if method != "Open":
                out[method] = out.get(method, 0) + int(float(line.split()[-1]))
    return out


def total(c: dict[str, int]) -> int:
    return sum(c.values())


def _wait_leased(m: Mount, path: Path, sp: ServerProc, timeout: float = 10.0) -> None:
    """Stat and open `path` until one round of it costs no call (the session's first renewal
    answer arrives a moment after the mount starts)."""
    until = time.monotonic() + timeout
    quiet = 0
    while time.monotonic() < until:
        # the kernel sends the RELEASE of a close after close returned: an open before it
        # arrives is served from the handle's state without a call, lease or not (two quiet
        # rounds in a row: a loaded machine delays it)
        time.sleep(0.2)
        before = total(calls(sp))
        os.stat(path)
        with open(path, "rb") as f:
            f.read()
        quiet = quiet + 1 if total(calls(sp)) == before else 0
        if quiet == 2:
            return
    raise AssertionError(f"{path} never became leased:\n{m.log()}")


def test_warm_stat_open_readdir_cost_zero_calls(metered: ServerProc,
                                                mount_factory: Callable[..., Mount]) -> None:
    # attr/entry timeout 0: the kernel caches nothing, every stat and open reaches the mount
    m = mount_factory(metered, "--attr-timeout", "0", "--entry-timeout", "0")
    (m.path / "d").mkdir()
    f = m.path / "d" / "f.bin"
    f.write_bytes(b"x" * 5000)
    _wait_leased(m, f, metered)
    os.listdir(m.path / "d")
    with pytest.raises(FileNotFoundError):
        os.stat(m.path / "d" / "missing")
    before = calls(metered)
    for _ in range(1000):
        st = os.stat(f)
        assert st.st_size == 5000
        with open(f, "rb") as fh:
            assert len(fh.read()) == 5000
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "d" / "missing")
    for _ in range(50):
        assert os.listdir(m.path / "d") == ["f.bin"]
    after = calls(metered)
    assert total(after) - total(before) == 0, {k: after[k] - before.get(k, 0) for k in after}



def _read_again_with_no_call(files: list[Path], sp: ServerProc) -> None:
    """Read each of `files` (file i holds b"i" * 100) and list their directory: no call."""
    before = calls(sp)
    for i, f in enumerate(files):
        assert f.read_bytes() == b"%d" % i * 100
    assert len(os.listdir(files[0].parent)) == len(files)
    c = calls(sp)
    assert total(c) == total(before), {m: c[m] - before.get(m, 0) for m in c}


def test_an_atomic_save_elsewhere_keeps_the_other_leases(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """Write a temporary file and rename it over another (an atomic save: a checkpoint, a
    config) while a leased directory elsewhere is read: its stats, opens and listing still
    cost no call (a rename once dropped the mount's whole lease cache), and the saved file
    is the new one, here and on another mount."""
    a = mount_factory(metered, "--attr-timeout", "0", "--entry-timeout", "0")
    b = mount_factory(metered)
    (a.path / "data").mkdir()
    (a.path / "out").mkdir()
    files = [a.path / "data" / f"s{i}" for i in range(20)]
    for i, f in enumerate(files):
        f.write_bytes(b"%d" % i * 100)
    saved = a.path / "out" / "ckpt"
    saved.write_bytes(b"old")
    _wait_leased(a, files[-1], metered)
    for f in files:
        f.read_bytes()
    os.listdir(a.path / "data")
    os.stat(saved)
    for k in range(5):
        tmp = a.path / "out" / f"ckpt.tmp{k}"
        tmp.write_bytes(b"new %d" % k)
        os.replace(tmp, saved)
        _read_again_with_no_call(files, metered)
        assert saved.read_bytes() == b"new %d" % k
        assert (b.path / "out" / "ckpt").read_bytes() == b"new %d" % k
        assert sorted(os.listdir(a.path / "out")) == ["ckpt"]


def test_a_refused_rename_keeps_the_other_leases(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """A rename the server refuses (a directory over a non-empty one: ENOTEMPTY) changed
    nothing: the mount's leases elsewhere stand (it once dropped them all, as for a rename
    whose outcome is unknown), and what it knows of the two directories is asked again."""
    a = mount_factory(metered, "--attr-timeout", "0", "--entry-timeout", "0")
    (a.path / "data").mkdir()
    files = [a.path / "data" / f"s{i}" for i in range(20)]
    for i, f in enumerate(files):
        f.write_bytes(b"%d" % i * 100)
    (a.path / "src").mkdir()
    (a.path / "dst").mkdir()
    (a.path / "dst" / "keep").write_bytes(b"k")
    _wait_leased(a, files[-1], metered)
    for f in files:
        f.read_bytes()
    os.listdir(a.path / "data")
    for _ in range(3):
        with pytest.raises(OSError) as err:
            os.rename(a.path / "src", a.path / "dst")
        assert err.value.errno == errno.ENOTEMPTY
        _read_again_with_no_call(files, metered)
    assert sorted(os.listdir(a.path / "dst")) == ["keep"]
    assert (a.path / "src").is_dir()


@pytest.mark.parametrize("writer", ["this mount", "another mount"])
def test_a_leased_listing_after_a_rewrite_shows_the_new_size(
        writer: str, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """A listing served from the lease after a file of it was rewritten (by this mount, or
    by another: recalled) gives the kernel the new attributes, not the page's old ones:
    readdirplus sets the kernel's size of every entry it names (it set it back to 10)."""
    a = mount_factory(metered)
    b = a if writer == "this mount" else mount_factory(metered)
    (a.path / "d").mkdir()
    f = a.path / "d" / "f.bin"
    f.write_bytes(b"x" * 10)
    _wait_leased(a, f, metered)
    os.listdir(a.path / "d")
    before = calls(metered)
    assert os.listdir(a.path / "d") == ["f.bin"]
    assert total(calls(metered)) == total(before)      # the page is the lease's
    (b.path / "d" / "f.bin").write_bytes(b"y" * 100)
    for _ in range(3):
        assert [(e.name, e.stat().st_size) for e in os.scandir(a.path / "d")] == [("f.bin", 100)]
        assert os.stat(f).st_size == 100
        assert f.read_bytes() == b"y" * 100
        time.sleep(0.3)

def _check_round(a: Mount, b: Mount, i: int) -> None:
    name = "f.txt"
    data = f"round {i} ".encode() * (1 + i % 7)
    if i % 3 == 0:                       # in-place rewrite
        with open(b.path / name, "r+b" if (b.path / name).exists() else "wb") as f:
            f.truncate(0)
            f.write(data)
    elif i % 3 == 1:                     # write aside, then os.replace
        tmp = b.path / f".tmp{i}"
        tmp.write_bytes(data)
        os.replace(tmp, b.path / name)
    else:                                # unlink, recreate
        os.unlink(b.path / name)
        (b.path / name).write_bytes(data)
    with open(a.path / name, "rb") as f:
        got = f.read()
    assert got == data, f"round {i}: stale read on the other mount: {got[:40]!r}"
    os.stat(a.path / name)                 # A leases it again before the next round


def test_close_to_open_between_mounts_500_rounds(metered: ServerProc,
                                                 mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    (b.path / "f.txt").write_bytes(b"start")
    _wait_leased(a, a.path / "f.txt", metered)
    for i in range(500):
        _check_round(a, b, i)


def _hold(m: Mount, sp: ServerProc) -> Path:
    f = m.path / "held.txt"
    _wait_leased(m, f, sp)
    os.listdir(m.path)
    return f


@pytest.fixture
def long_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease term (300 s) ten times the mount's call deadline (30 s), set before `metered`
    starts (ask for it first): a change that waited out a lease fails at its deadline instead
    of succeeding late, so no clock reading is needed to tell."""
    monkeypatch.setenv("AIFS_LEASE_TERM_SECONDS", "300")


def test_sigkilled_holder_does_not_delay_writer(long_term: None, metered: ServerProc,
                                                mount_factory: Callable[..., Mount]) -> None:
    b = mount_factory(metered)
    (b.path / "held.txt").write_bytes(b"v1")
    a = mount_factory(metered)
    _hold(a, metered)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)
    # both succeed within the calls' 30 s deadline: the dead holder's 300 s lease was not
    # waited for (checked: a holder that is alive but stopped makes this write fail)
    (b.path / "held.txt").write_bytes(b"v2")
    os.unlink(b.path / "held.txt")
    c = mount_factory(metered)
    assert not (c.path / "held.txt").exists()


def test_hung_holder_delays_writer_at_most_one_term(metered: ServerProc,
                                                    mount_factory: Callable[..., Mount]
                                                    ) -> None:
    # the writer's calls have a deadline of 5 terms and no retry after it (the retry budget
    # is shorter): a server that waited for the hung holder's ack past its term answers at
    # that deadline, and the write fails (checked: with a 300 s term it does)
    b = mount_factory(metered, "--timeout", str(5 * TERM), "--retry-for", str(2 * TERM))
    (b.path / "held.txt").write_bytes(b"v1")
    a = mount_factory(metered)
    f = _hold(a, metered)
    os.kill(a.proc.pid, signal.SIGSTOP)
    try:
        (b.path / "held.txt").write_bytes(b"v2")    # succeeds while the holder is stopped
    finally:
        os.kill(a.proc.pid, signal.SIGCONT)
    # the holder resumes: it must not serve its old lease (it lapsed; the recall is queued)
    assert f.read_bytes() == b"v2"


def test_a_branch_reset_recalls_the_leases_on_its_tree(metered: ServerProc,
                                                      mount_factory: Callable[..., Mount]) -> None:
    """A whole-tree change by the Versioning service (reset to a snapshot) must reach a mount
    that holds leases on that tree: the next open sees the snapshot's content, not its lease."""
    from aifsfs.client import AIFSClient

    m = mount_factory(metered, "--attr-timeout", "0", "--entry-timeout", "0")
    f = m.path / "f.bin"
    f.write_bytes(b"1" * 5000)
    with AIFSClient(metered.address, token_file=metered.token_file) as sdk:
        snap = sdk.versions.snapshot("main", "before")
        f.write_bytes(b"2" * 5000)          # same size: only the content tells
        _wait_leased(m, f, metered)         # the mount now answers from its lease
        sdk.versions.reset_branch("main", snap["id"])
    assert f.read_bytes() == b"1" * 5000
