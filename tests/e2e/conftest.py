"""End-to-end fixtures: a real `aifs server` and real FUSE mounts of it (always unmounted).

Fixtures:
    mount_factory(server=None, *extra_args) -> Mount   mount a server (default: the test's
                    `server`, not started for a test that asks for `metered` and not for
                    `server`) on a fresh directory; every mount made is unmounted at teardown
                    with `fusermount3 -u`, then `-uz`, and its process stopped, even on failure
    aifs_mount / mount   one mount of the function-scoped `server`
    module_mount    one mount of `server_module`, shared by a module's tests (for modules
                    whose tests are independent, use names of their own and leave the mount
                    working; a module opts in by defining `mount` as this fixture)
    Mount: .path (Path), .server (ServerProc), .proc (Popen), .log(), .unmount()
    stats_at_unmount(m, label) -> dict   unmount m (fusermount3 -u; the fixture's teardown
                    still cleans up) and read the dict the mount logged as `label: {...}` as
                    it stopped (fuse requests, queued dirops, directory prefetches, ...)
    caches_kept     the test counts calls or requests that a dropped page cache or dentry
                    would add: no test holding `drops_caches` runs meanwhile (a shared lock
                    across the suite's xdist workers)
    drops_caches    the test writes /proc/sys/vm/drop_caches (it runs `aifs bench`): it waits
                    for every `caches_kept` test, and they for it (the exclusive lock)

Skips the module when /dev/fuse or fusermount3 is missing.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import ServerProc

if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
    pytest.skip("needs /dev/fuse and fusermount3", allow_module_level=True)

pytestmark = pytest.mark.e2e


@dataclass
class Mount:
    path: Path
    server: ServerProc
    proc: subprocess.Popen[bytes]
    log_path: str
    tmpdir: str

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return Path(self.log_path).read_text(errors="replace")
        return ""

    def unmount(self) -> None:
        """Unmount and wait for the mount process (it commits what it holds, then exits)."""
        teardown_mount(self)


def _is_mount(path: Path) -> bool:
    """From the kernel's mount table, not os.path.ismount: a mount whose FUSE daemon died
    fails lstat (ENOTCONN) and ismount then says False, which left such mounts behind."""
    target = os.path.abspath(path)
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 1 and fields[1].replace("\\040", " ") == target:
                return True
    return False


def start_mount(server: ServerProc, *extra: str, wait: float = 30.0) -> Mount:
    tmpdir = tempfile.mkdtemp(prefix="aifs-mnt-", dir="/tmp")
    mp = Path(tmpdir) / "m"
    mp.mkdir()
    log_path = os.path.join(tmpdir, "mount.log")
    cmd = [sys.executable, "-m", "aifsfs.fuse.mounter", server.address, str(mp),
           "--token-file", server.token_file, *extra]
    with open(log_path, "wb") as logf:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                start_new_session=True)
    m = Mount(path=mp, server=server, proc=proc, log_path=log_path, tmpdir=tmpdir)
    deadline = time.monotonic() + wait
    while not os.path.ismount(mp):
        if proc.poll() is not None or time.monotonic() > deadline:
            teardown_mount(m)
            raise RuntimeError(f"mount did not come up (rc={proc.poll()}):\n{m.log()}")
        time.sleep(0.05)
    return m


def teardown_mount(m: Mount) -> None:
    try:
        if _is_mount(m.path):
            r = subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True)
            if r.returncode != 0:
                time.sleep(0.5)
                r = subprocess.run(["fusermount3", "-u", str(m.path)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(m.path)], capture_output=True)
        try:
            m.proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                m.proc.send_signal(signal.SIGKILL)
            m.proc.wait(10)
    finally:
        if m.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                m.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                m.proc.wait(10)
        if not _is_mount(m.path):
            shutil.rmtree(m.tmpdir, ignore_errors=True)


@pytest.fixture
def mount_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Mount]]:
    # The default server is the test's `server`, started here (during this fixture's set-up,
    # so it is stopped after the mounts are down). A test that asks for `metered` (a server of
    # its own) and not for `server` mounts only what it names: no unused server is started.
    server: ServerProc | None = None
    if "server" in request.fixturenames or "metered" not in request.fixturenames:
        server = request.getfixturevalue("server")
    made: list[Mount] = []

    def make(srv: ServerProc | None = None, *extra: str) -> Mount:
        target = srv or server
        if target is None:
            raise AssertionError("mount_factory(): name the server to mount (this test has "
                                 "`metered`, not `server`)")
        m = start_mount(target, *extra)
        made.append(m)
        return m

    try:
        yield make
    finally:
        errors = []
        for m in reversed(made):
            try:
                teardown_mount(m)
            except Exception as exc:  # noqa: BLE001 - unmount the others anyway
                errors.append(exc)
        if errors:
            raise errors[0]


def stats_at_unmount(m: Mount, label: str) -> dict[str, int]:
    # read before the fixture's teardown, which removes the log with the mount's directory
    subprocess.run(["fusermount3", "-u", str(m.path)], check=True)
    m.proc.wait(60)
    lines = [ln for ln in m.log().splitlines() if f"{label}: " in ln]
    assert lines, f"no {label!r} in the mount's log:\n{m.log()[-2000:]}"
    stats = ast.literal_eval(lines[-1].split(f"{label}: ", 1)[1].split(";")[0])
    assert isinstance(stats, dict), lines[-1]
    return stats


_CACHE_LOCK = Path(tempfile.gettempdir()) / "aifs-tests-drop-caches.lock"


def _cache_lock(mode: int) -> Iterator[None]:
    # Why: a drop_caches drops every file's pages and every dentry machine-wide; the tests
    # that count the calls a warm page cache or a leased name saves would then count the
    # refetches as if the mount had not kept what it should (CI failures of test_kernel_names
    # and test_dir_prefetch while test_bench_quick ran on the other worker).
    with open(_CACHE_LOCK, "a+") as f:
        fcntl.flock(f, mode)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@pytest.fixture
def caches_kept() -> Iterator[None]:
    yield from _cache_lock(fcntl.LOCK_SH)


@pytest.fixture
def drops_caches() -> Iterator[None]:
    yield from _cache_lock(fcntl.LOCK_EX)


@pytest.fixture
def aifs_mount(mount_factory: Callable[..., Mount]) -> Mount:
    return mount_factory()


@pytest.fixture
def mount(aifs_mount: Mount) -> Mount:
    return aifs_mount


@pytest.fixture(scope="module")
def module_mount(server_module: ServerProc) -> Iterator[Mount]:
    m = start_mount(server_module)
    try:
        yield m
    finally:
        teardown_mount(m)
