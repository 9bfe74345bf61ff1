"""Real tools on a real mount: rsync -a and tar round trips of a tree with symlinks, modes and
times preserved, and git init/add/commit/log inside the mount."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.e2e.conftest import Mount


@pytest.fixture(scope="module")
def mount(module_mount: Mount) -> Mount:
    """One server and mount for the module (each test works in a directory of its own, none
    kills or damages the mount)."""
    return module_mount


def _make_tree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "a.txt").write_text("alpha\n" * 1000)
    (root / "sub" / "b.bin").write_bytes(os.urandom(1_500_000))
    (root / "sub" / "deeper" / "c").write_bytes(b"")
    (root / "exec.sh").write_text("#!/bin/sh\necho hi\n")
    os.chmod(root / "exec.sh", 0o755)
    os.chmod(root / "a.txt", 0o600)
    os.chmod(root / "sub" / "deeper", 0o700)
    os.symlink("a.txt", root / "link")
    os.symlink("../a.txt", root / "sub" / "uplink")
    os.symlink("does-not-exist", root / "dangling")
    for i, p in enumerate(sorted(root.rglob("*"))):
        os.utime(p, ns=(1_600_000_000_000_000_000 + i * 10**9,
                        1_600_000_000_000_000_000 + i * 10**9), follow_symlinks=False)


def _describe(root: Path) -> dict[str, tuple[object, ...]]:
    """Everything rsync -a / tar promise to keep: type, mode, mtime (s), content, link target."""
    out: dict[str, tuple[object, ...]] = {}
    for p in sorted(root.rglob("*")):
        st = p.lstat()
        rel = str(p.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", stat.S_IMODE(st.st_mode), int(st.st_mtime))
        else:
            out[rel] = ("f", stat.S_IMODE(st.st_mode), int(st.st_mtime), p.read_bytes())
    return out


def test_rsync_tree_roundtrip(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)
    subprocess.run(["rsync", "-a", f"{src}/", f"{mount.path}/tree/"], check=True)
    assert _describe(mount.path / "tree") == _describe(src)
    back = tmp_path / "back"
    subprocess.run(["rsync", "-a", f"{mount.path}/tree/", f"{back}/"], check=True)
    assert _describe(back) == _describe(src)
    # a second rsync finds nothing to do (sizes and mtimes match)
    r = subprocess.run(["rsync", "-a", "--itemize-changes", f"{src}/", f"{mount.path}/tree/"],
                       check=True, capture_output=True, text=True)
    assert [ln for ln in r.stdout.splitlines() if ln.strip()] == []


def test_tar_roundtrip(mount: Mount, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    _make_tree(src)
    archive = tmp_path / "t.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(src), "."], check=True)
    dest = mount.path / "untar"
    dest.mkdir()
    subprocess.run(["tar", "-xpf", str(archive), "-C", str(dest)], check=True)
    assert _describe(dest) == _describe(src)
    # and tar reads the mount back
    archive2 = tmp_path / "t2.tar"
    subprocess.run(["tar", "-cf", str(archive2), "-C", str(dest), "."], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "-xpf", str(archive2), "-C", str(out)], check=True)
    assert _describe(out) == _describe(src)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_in_mount(mount: Mount) -> None:
    repo = mount.path / "repo"
    repo.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
           "HOME": str(mount.path)}

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(repo), *args], check=True, env=env,
                              capture_output=True, text=True).stdout

    git("init", "-q")
    (repo / "README").write_text("hello\n")
    (repo / "data.bin").write_bytes(os.urandom(300_000))
    git("add", ".")
    git("commit", "-q", "-m", "first")
    (repo / "README").write_text("hello again\n")
    git("commit", "-q", "-am", "second")
    log = git("log", "--format=%s")
    assert log.split() == ["second", "first"]
    assert git("status", "--porcelain") == ""
    git("fsck", "--strict")
    assert git("show", "HEAD~1:README") == "hello\n"
