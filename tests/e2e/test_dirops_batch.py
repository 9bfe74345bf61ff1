"""Unlinks batched under an exclusive directory lease (docs/LEASES.md "Exclusive directory
leases"), over real mounts of one real server, calls counted from its Prometheus metrics:

- N unlinks in a directory the mount holds exclusively cost a few UnlinkBatch calls, and
  another mount's first access sees all of them (close-to-open);
- a batch held pending (a long interval) costs no call until another mount's lookup or
  listing recalls the lease: the recall sends it first, so that mount sees the names gone;
- fsync of the directory sends it (one call);
- a mount SIGKILLed with unlinks pending: the other mount goes on and sees the files (the
  documented window: answered unlinks not yet sent are lost with their mount);
- `--sync-dirops` sends each unlink before answering it;
- a create answered here (delegated inode number) is made on the server before another
  mount's lookup of the directory goes on, and at its close even across a server restart.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount
from tests.e2e.test_leases import calls, lease_term  # noqa: F401 - fixture
from tests.e2e.test_small_files import _delta, _opens, _ready
from tests.helpers import ServerProc, start_server, stop_server

N = 300
SLACK = N // 20     # lapses of a 2 s lease term on a loaded machine make a few unlinks sync


def _files(m: Mount, name: str, n: int) -> Path:
    """n small files made in a new directory by 4 writers at once (their closes share calls:
    group commit), as tar or a DataLoader's workers would: the tests are about what follows."""
    d = m.path / name
    d.mkdir()

    def make(i: int) -> None:
        (d / f"f{i:04d}").write_bytes(b"%d" % i)
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(make, range(n)))
    return d


def _unlink_first(sp: ServerProc, a: Mount, files: int,
                  unlinked: int) -> tuple[Path, dict[str, int]]:
    """`files` files in a new directory of A, listed, then the first `unlinked` of them
    unlinked. Returns the directory and the calls counted before the unlinks."""
    d = _files(a, "d", files)
    os.listdir(d)
    before = calls(sp)
    for i in range(unlinked):
        os.unlink(d / f"f{i:04d}")
    return d, before


def _pending(sp: ServerProc, a: Mount, files: int, unlinked: int) -> tuple[Path, dict[str, int]]:
    """_unlink_first, with every unlink answered by A and pending (no call)."""
    d, before = _unlink_first(sp, a, files, unlinked)
    c = _delta(sp, before)
    assert c == {}, c
    return d, before


@pytest.fixture
def long_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mounts started after this hold a batch for 600 s: only a recall, fsync, a dependent
    call, a full batch or the unmount sends it."""
    monkeypatch.setenv("AIFS_DIROPS_INTERVAL", "600")


def test_unlinks_are_batched_and_another_mount_sees_them(
        monkeypatch: pytest.MonkeyPatch, metered: ServerProc,
        mount_factory: Callable[..., Mount]) -> None:
    monkeypatch.setenv("AIFS_DIROPS_INTERVAL", "1")   # batch sizes independent of the load
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d = _files(a, "d", N)
    names = sorted(os.listdir(d))
    before = calls(metered)
    for name in names:
        os.unlink(d / name)
    c = _delta(metered, before)
    assert c.get("Unlink", 0) <= SLACK, c           # N without the exclusive lease
    assert c.get("UnlinkBatch", 0) <= N // 10, c
    assert sum(c.values()) <= N // 10 + SLACK, c
    assert os.listdir(d) == []
    assert os.listdir(b.path / "d") == []
    for name in names[:20]:
        assert not (b.path / "d" / name).exists()


def test_a_lookup_elsewhere_recalls_a_pending_batch(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d, before = _pending(metered, a, 20, 10)
    assert sorted(os.listdir(d)) == [f"f{i:04d}" for i in range(10, 20)]
    # B's first lookup recalls A's lease; A sends its batch before it acks
    assert not (b.path / "d" / "f0003").exists()
    assert (b.path / "d" / "f0013").read_bytes() == b"13"
    assert sorted(os.listdir(b.path / "d")) == [f"f{i:04d}" for i in range(10, 20)]
    c = _delta(metered, before)
    assert c.get("UnlinkBatch", 0) == 1 and c.get("Unlink", 0) == 0, c
    # A keeps working: its next unlink is a call or a new batch, and B sees it (open, not
    # stat: B's kernel may serve a stat from the dentry and attributes it cached for 1 s)
    os.unlink(d / "f0010")
    assert not _opens(b.path / "d" / "f0010")


def test_a_directory_held_inside_another_is_still_recalled_after_the_outer_one(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """A holds d, whose grant covers its child directory d/in, then d/in itself (its first
    create's reply). B's lookup in d recalls d's lease only. A then creates d/in/new (held
    open: made only in A) and B's lookup of it must recall in's lease, so that A makes it
    first (the server once dropped in's own lease with d's, which covered it: B got ENOENT)."""
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d = a.path / "d"
    inner = d / "in"
    inner.mkdir(parents=True)
    (d / "first").write_bytes(b"1")                 # d held, covering `in`
    (inner / "g0").write_bytes(b"0")                # d/in held too
    assert (b.path / "d" / "first").read_bytes() == b"1"    # recalls d
    before = calls(metered)
    with open(inner / "new", "wb") as f:
        f.write(b"hello")
        f.flush()
        c = _delta(metered, before)                 # (A's lookups of d and d/in: d's
        assert not c.get("Create") and not c.get("CreateFile"), c   # recall dropped them)
        assert _opens(b.path / "d" / "in" / "new")  # B's lookup recalls it: A makes it
    assert (b.path / "d" / "in" / "new").read_bytes() == b"hello"


def test_fsync_of_the_directory_sends_the_batch(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    _ready(a, metered)
    d, before = _pending(metered, a, 10, 5)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    c = _delta(metered, before)
    assert c.get("UnlinkBatch", 0) == 1 and sum(c.values()) == 1, c


def test_a_full_batch_is_sent_without_waiting_for_the_interval(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    # 300 unlinks: a full batch (256) goes on its own, in the background (the unlink that
    # filled it does not wait for the call); nothing else would send it for 600 s
    a = mount_factory(metered)
    _ready(a, metered)
    d, before = _unlink_first(metered, a, 310, 300)
    deadline = time.monotonic() + 10
    while _delta(metered, before).get("UnlinkBatch", 0) < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    c = _delta(metered, before)
    assert 1 <= c.get("UnlinkBatch", 0) <= 2 and c.get("Unlink", 0) == 0, c
    assert sorted(os.listdir(d)) == [f"f{i:04d}" for i in range(300, 310)]


@pytest.mark.parametrize("files", [300, 700, 2000])
def test_rmtree_right_after_batches_went_in_the_background(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount],
        files: int) -> None:
    # `rm -rf`: the unlinks, then at once the rmdir. Full batches go in the background; an
    # rmdir (or a listing, a lookup) reaching the server while one is on its way would see
    # names already answered as gone (ENOTEMPTY: the bench's rmtree hit it at 5,000 files)
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    for round_ in range(3 if files < 1000 else 1):   # the 2,000 one: 8 batches in flight
        d = _files(a, f"t{round_}", files)
        os.listdir(d)
        shutil.rmtree(d)
        assert not d.exists()
        assert not (b.path / f"t{round_}").exists()


def test_a_name_unlinked_then_made_again_reaches_the_server_in_order(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d, _ = _pending(metered, a, 3, 0)
    os.unlink(d / "f0001")                       # queued
    (d / "f0001").write_bytes(b"again")          # the create sends the batch first
    assert (d / "f0001").read_bytes() == b"again"
    assert (b.path / "d" / "f0001").read_bytes() == b"again"


def test_sigkilled_holder_loses_its_pending_unlinks(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d, before = _pending(metered, a, 10, 5)
    os.kill(a.proc.pid, signal.SIGKILL)
    a.proc.wait(10)
    # the stream ended with A: its lease went with it, B does not wait; the five unlinks
    # answered but never sent are lost (docs/LEASES.md): the files are still there
    assert sorted(os.listdir(b.path / "d")) == [f"f{i:04d}" for i in range(10)]
    assert (b.path / "d" / "f0002").read_bytes() == b"2"


def test_sync_dirops_sends_every_unlink(
        monkeypatch: pytest.MonkeyPatch, metered: ServerProc,
        mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered, "--sync-dirops")
    _ready(a, metered)
    d, before = _unlink_first(metered, a, 30, 30)
    c = _delta(metered, before)
    assert c.get("Unlink", 0) == 30 and c.get("UnlinkBatch", 0) == 0, c


# --- creates answered here (delegated inode numbers, docs/LEASES.md "Delegated inodes") ----

def _exclusive_dir(a: Mount) -> Path:
    """A directory A made and created a file in: A holds it exclusively, with inode numbers
    delegated (the first create's reply)."""
    d = a.path / "d"
    d.mkdir()
    (d / "first").write_bytes(b"1")
    return d


def test_a_file_still_open_here_is_seen_by_another_mounts_lookup(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered)
    b = mount_factory(metered)
    _ready(a, metered)
    d = _exclusive_dir(a)
    before = calls(metered)
    with open(d / "new", "wb") as f:
        f.write(b"hello")
        f.flush()
        assert _delta(metered, before) == {}     # created and written here: no call yet
        # B's lookup recalls A's lease: A makes the file (empty, still open) before it acks
        assert _opens(b.path / "d" / "new")
    assert (b.path / "d" / "new").read_bytes() == b"hello"      # the close committed it
    c = _delta(metered, before)
    assert c.get("CreateFile", 0) == 1 and c.get("CommitFile", 0) == 1, c


def test_a_file_created_here_is_made_at_its_close_across_a_server_restart(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """The inode numbers given out are in the database: a file answered here before the
    server was SIGKILLed and restarted (same data dir, same socket) is made at its close."""
    a = mount_factory(metered)
    _ready(a, metered)
    d = _exclusive_dir(a)
    # The file is held open by a process of its own: had this one held it, starting the new
    # server (fork, exec) would close the child's copy of it, a FLUSH the mount could not
    # commit while no server is up: 30 s of retries before the exec went on.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nf = open(sys.argv[1], 'wb')\n"
         "f.write(b'made after the restart')\nprint('open', flush=True)\n"
         "sys.stdin.readline()\nf.close()\nprint('closed', flush=True)", str(d / "late")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    restarted = None
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        metered.proc.send_signal(signal.SIGKILL)
        metered.proc.wait(10)
        restarted = start_server(metered.data_dir, listen=[metered.address])
        out, _ = holder.communicate("close\n", timeout=60)   # CreateFile + commit, to the
        assert holder.returncode == 0 and out == "closed\n"  # restarted server
        a.unmount()
        c = mount_factory(restarted)
        assert (c.path / "d" / "late").read_bytes() == b"made after the restart"
        c.unmount()
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
        if restarted is not None:
            stop_server(restarted)


def test_a_merge_takes_the_source_branchs_pending_unlinks(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    """A merge snapshots its source branch first: a mount of that branch holding unlinks it
    answered under an exclusive lease sends them before (as for CreateSnapshot and
    CreateBranch), so the merge carries them."""
    main = mount_factory(metered)
    (main.path / "seed").write_bytes(b"x")
    with AIFSClient(metered.address, token=metered.token, timeout=30) as c:
        base = c.versions.snapshot(message="base")
        c.versions.create_branch("exp", base["id"])
        exp = mount_factory(metered, "--branch", "exp")
        _ready(exp, metered)
        _pending(metered, exp, 20, 10)
        before = calls(metered)
        c.versions.merge("exp", "main")
        assert _delta(metered, before).get("UnlinkBatch", 0) == 1
    assert sorted(os.listdir(main.path / "d")) == [f"f{i:04d}" for i in range(10, 20)]


def _two_mounts_and_an_own_dir(sp: ServerProc, mount_factory: Callable[..., Mount]
                               ) -> tuple[Mount, Mount, Path]:
    """Mounts A and B; a directory A made and holds exclusively (its first create took it)."""
    a = mount_factory(sp)
    b = mount_factory(sp)
    _ready(a, sp)
    d = a.path / "d"
    d.mkdir()
    (d / "first").write_bytes(b"0")
    return a, b, d


def _attrs_of(p: Path) -> tuple[int, int, int, int, int]:
    st = os.stat(p)
    return st.st_mode & 0o7777, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns


def _set(p: Path, i: int) -> tuple[int, int, int, int, int]:
    """tar's three changes after a close: chown, chmod, utimens; what they set."""
    os.chown(p, 500 + i, 600 + i)
    os.chmod(p, 0o640 | i % 8)
    os.utime(p, ns=(1_500_000_000 * 10**9 + i, 1_600_000_000 * 10**9 + i))
    return 0o640 | i % 8, 500 + i, 600 + i, 1_600_000_000 * 10**9 + i, 1_500_000_000 * 10**9 + i


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_attribute_changes_of_own_files_are_queued_and_another_mount_sees_them(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a, b, d = _two_mounts_and_an_own_dir(metered, mount_factory)
    before = calls(metered)
    want = {}
    for i in range(20):
        p = d / f"f{i:02d}"
        p.write_bytes(b"x" * i)         # one CreateFile at the close
        want[p.name] = _set(p, i)       # answered here: queued (the next create carries them)
        assert _attrs_of(p) == want[p.name]
    c = _delta(metered, before)
    assert c.get("SetAttr", 0) == 0 and c.get("UnlinkBatch", 0) == 0, c
    assert c.get("CreateFile", 0) == 20 and sum(c.values()) == 20, c
    # the last file's changes are still queued: B's lookup recalls A's lease, A sends them
    # (one UnlinkBatch) before it acks, and B sees every change
    for name, attrs in want.items():
        assert _attrs_of(b.path / "d" / name) == attrs, name
    c = _delta(metered, before)
    assert c.get("UnlinkBatch", 0) == 1 and c.get("SetAttr", 0) == 0, c
    # after the recall A asks the server again: same answers
    for name, attrs in want.items():
        assert _attrs_of(d / name) == attrs, name


def test_a_change_of_an_open_unborn_file_goes_with_its_create(
        long_interval: None, metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a, b, d = _two_mounts_and_an_own_dir(metered, mount_factory)
    before = calls(metered)
    with open(d / "g", "wb") as f:
        os.fchmod(f.fileno(), 0o604)            # folded into the file's CreateFile
        f.write(b"data")
    c = _delta(metered, before)
    assert c == {"CreateFile": 1}, c
    st = os.stat(b.path / "d" / "g")
    assert st.st_mode & 0o7777 == 0o604 and st.st_size == 4


def test_sync_dirops_sends_each_attribute_change(
        metered: ServerProc, mount_factory: Callable[..., Mount]) -> None:
    a = mount_factory(metered, "--sync-dirops")
    _ready(a, metered)
    d = a.path / "d"
    d.mkdir()
    (d / "f").write_bytes(b"0")
    before = calls(metered)
    os.chmod(d / "f", 0o600)
    os.utime(d / "f", ns=(10**18, 10**18))
    c = _delta(metered, before)
    assert c.get("SetAttr", 0) == 2, c
