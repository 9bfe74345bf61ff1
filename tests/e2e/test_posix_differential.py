"""Differential POSIX conformance: every case of `posix_ops.CASES` runs once in a native
directory (the oracle: Linux's own behaviour on the local filesystem) and once on a real AIFS
mount, and the two traces (return values, errno, normalised stat fields, directions in which
times move) must be equal. Modelled on pjdfstest's areas (open, chmod, chown, link, mkdir,
rmdir, rename, symlink, truncate, unlink, utimensat, mknod, xattrs, readdir, statvfs).

One mount (with --allow-other, so that cases can act as `nobody`) serves the whole module;
each case gets its own subdirectory on both sides. Runs as root (chown, mknod, setuid).

Known differences are listed in KNOWN with `xfail(strict=True)`: "BUG: ..." entries are
defects waiting for a fix (remove the entry when fixed: strict xfail turns the pass into a
failure so the list cannot go stale).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.e2e.posix_ops import CASES, Fs
from tests.helpers import ServerProc

if os.geteuid() != 0:
    pytest.skip("the differential POSIX suite needs root (chown, mknod, setuid children)",
                allow_module_level=True)

KNOWN: dict[str, str] = {
    "read_updates_atime":
        "INTENDED: the mount is noatime (as JuiceFS by default): a read never writes "
        "metadata; atime changes only when set explicitly (docs/DECISIONS.md)",
}

# Cases whose oracle is tmpfs (/dev/shm), not the local disk: where ext4's own limits, not
# Linux's, would decide the outcome.
TMPFS_ORACLE = {"xattr_large"}


@pytest.fixture(scope="module")
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(scope="module")
def diff_mount(server_module: ServerProc, umask: None) -> Iterator[Mount]:
    m = start_mount(server_module, "--allow-other")
    try:
        os.chmod(m.tmpdir, 0o755)     # `nobody` must reach the mount point
        yield m
    finally:
        teardown_mount(m)


@contextlib.contextmanager
def _oracle_dir(parent: str) -> Iterator[Path]:
    # Not tmp_path: pytest's base dirs are 0700 and `nobody` must traverse the oracle too.
    d = Path(tempfile.mkdtemp(prefix="aifs-native-", dir=parent))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def native_base(umask: None) -> Iterator[Path]:
    with _oracle_dir("/tmp") as d:
        yield d


@pytest.fixture(scope="module")
def tmpfs_base(umask: None) -> Iterator[Path]:
    if not os.path.isdir("/dev/shm"):
        pytest.skip("needs /dev/shm (tmpfs) as the oracle")
    with _oracle_dir("/dev/shm") as d:
        yield d


def _run(root: Path, name: str) -> list[tuple[str, Any]]:
    root.mkdir(mode=0o755)
    fs = Fs(str(root))
    try:
        CASES[name](fs)
    finally:
        fs.close_all()
    return fs.trace


def _report(native: list[tuple[str, Any]], aifs: list[tuple[str, Any]]) -> str:
    lines = []
    for i in range(max(len(native), len(aifs))):
        n = native[i] if i < len(native) else ("<missing>", None)
        a = aifs[i] if i < len(aifs) else ("<missing>", None)
        mark = "  " if n == a else "!!"
        lines.append(f"{mark} {n[0]}: native={n[1]!r}" + ("" if n == a else f"  aifs={a[1]!r}"))
    return "\n".join(lines)


def _params() -> list[Any]:
    out = []
    for name in CASES:
        marks = [pytest.mark.xfail(strict=True, reason=KNOWN[name])] if name in KNOWN else []
        out.append(pytest.param(name, marks=marks, id=name))
    return out


@pytest.mark.parametrize("name", _params())
def test_posix_differential(name: str, diff_mount: Mount, request: pytest.FixtureRequest
                            ) -> None:
    base = request.getfixturevalue("tmpfs_base" if name in TMPFS_ORACLE else "native_base")
    native = _run(base / name, name)
    aifs = _run(diff_mount.path / name, name)
    assert native, "the case recorded nothing"
    assert aifs == native, "AIFS differs from native Linux:\n" + _report(native, aifs)


def test_oracle_is_not_trivial(native_base: Path) -> None:
    """The oracle must produce errors where POSIX demands them (guards the harness itself)."""
    trace = _run(native_base / "_selfcheck", "rename_type_mismatch")
    outcomes = [o for _, o in trace]
    assert "EISDIR" in outcomes and "ENOTDIR" in outcomes and "ENOTEMPTY" in outcomes
