"""Versions in the mount (issue 11): `/.aifs/snapshots|tags|branches` views stay byte-exact while
the live tree changes, a branch mounted read-write diverges without touching main, a changed
database value gives EIO (never altered data), `--snapshot`/`--tag` mounts are read-only and
check the signature against the pinned key, `snapshot create --mount` commits buffered writes."""

from __future__ import annotations

import errno
import filecmp
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aifs_server.metadata.row_mac import RowMac
from aifsfs.client import AIFSClient
from tests.e2e.conftest import Mount
from tests.helpers import ServerProc


@pytest.fixture(autouse=True)
def config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # pinned keys go to this test's own config dir (the mount processes inherit it)
    cfg = tmp_path / "config"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(cfg))
    monkeypatch.delenv("AIFS_KNOWN_KEYS", raising=False)
    return cfg


@pytest.fixture
def client(server: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(server.address, token=server.token, timeout=30) as c:
        yield c


def aifs(server: ServerProc, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aifs_cli.main", *args, "--server",
                           server.address, "--token-file", server.token_file],
                          capture_output=True, text=True, timeout=120)


def populate(root: Path) -> dict[str, bytes]:
    files = {"a.bin": os.urandom(3 << 20) + b"tail", "dir/b.txt": b"hello\n" * 1000,
             "dir/sub/c.bin": os.urandom(70_000), "empty": b""}
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    os.symlink("dir/b.txt", root / "link")
    return files


def snap_tree(server: ServerProc, snap_id: str) -> int:
    """The tree whose rows the snapshot reads: the branch's (FORMAT.md §6.4: a snapshot is the
    branch's tree at an epoch, no copy), whose rows are the snapshot's while nothing changed."""
    with sqlite3.connect(Path(server.data_dir) / "meta.db") as db:
        return int(db.execute("SELECT t.base_tree FROM snapshots s JOIN trees t ON "
                              "t.tree_id = s.tree_id WHERE s.snap_id = ?",
                              (snap_id,)).fetchone()[0])


def test_snapshot_view_stays_byte_exact_while_the_live_tree_changes(
        server: ServerProc, client: AIFSClient, mount_factory: Callable[..., Mount],
        tmp_path: Path) -> None:
    m = mount_factory()
    files = populate(m.path)
    # written, not closed: only the mount holds these bytes until --mount flushes them
    f = open(m.path / "open.bin", "wb")  # noqa: SIM115 - held open across the snapshot
    f.write(b"buffered" * 1000)
    f.flush()
    before = client.versions.snapshot()   # without --mount: the buffered bytes are not in it
    try:
        r = aifs(server, "snapshot", "create", "--mount", str(m.path), "-m", "t1", "--json")
        assert r.returncode == 0, r.stderr
    finally:
        f.close()
    snap = json.loads(r.stdout)
    files["open.bin"] = b"buffered" * 1000
    copy = tmp_path / "copy"
    for rel, data in files.items():
        (copy / rel).parent.mkdir(parents=True, exist_ok=True)
        (copy / rel).write_bytes(data)

    # change everything on the live mount
    (m.path / "a.bin").write_bytes(b"rewritten")
    (m.path / "dir" / "b.txt").unlink()
    (m.path / "dir" / "sub" / "c.bin").write_bytes(b"x" * 100)
    (m.path / "new.txt").write_text("new")

    assert (m.path / ".aifs" / "snapshots" / before["id"] / "open.bin").stat().st_size == 0
    view = m.path / ".aifs" / "snapshots" / snap["id"]
    assert sorted(os.listdir(view)) == ["a.bin", "dir", "empty", "link", "open.bin"]
    for rel in files:
        assert filecmp.cmp(view / rel, copy / rel, shallow=False), rel
    r2 = subprocess.run(["cmp", str(view / "a.bin"), str(copy / "a.bin")], capture_output=True)
    assert r2.returncode == 0, r2.stdout
    assert os.readlink(view / "link") == "dir/b.txt"
    assert (view / "link").read_bytes() == files["dir/b.txt"]
    assert os.stat(view / "dir" / "b.txt").st_ctime_ns == snap["created_ns"]
    assert snap["id"] in os.listdir(m.path / ".aifs" / "snapshots")
    assert (m.path / "a.bin").read_bytes() == b"rewritten"
    for op in (lambda: (view / "a.bin").write_bytes(b"no"),
               lambda: (view / "nope").write_bytes(b"no"),
               lambda: (view / "dir" / "b.txt").unlink()):
        with pytest.raises(OSError) as ei:
            op()
        assert ei.value.errno == errno.EROFS


def test_branch_mount_diverges_and_tag_and_branch_views(
        server: ServerProc, client: AIFSClient, mount_factory: Callable[..., Mount]) -> None:
    main = mount_factory()
    files = populate(main.path)
    v = client.versions
    base = v.snapshot(message="base")
    v.create_branch("exp", base["id"])
    exp = mount_factory(server, "--branch", "exp")
    assert (exp.path / "a.bin").read_bytes() == files["a.bin"]
    (exp.path / "a.bin").write_bytes(b"experiment")
    (exp.path / "dir" / "only-exp.txt").write_text("exp")
    os.unlink(exp.path / "empty")
    assert (main.path / "a.bin").read_bytes() == files["a.bin"]
    assert not (main.path / "dir" / "only-exp.txt").exists()
    assert (main.path / "empty").exists()
    assert (exp.path / "a.bin").read_bytes() == b"experiment"

    # the branch's snapshot through its own mount's flush file, then the views
    r = aifs(server, "snapshot", "create", "--mount", str(exp.path), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["branch"] == "exp"
    v.create_tag("v1", base["id"])
    tag = main.path / ".aifs" / "tags" / "v1"
    assert (tag / "a.bin").read_bytes() == files["a.bin"]
    assert os.listdir(main.path / ".aifs" / "tags") == ["v1"]
    br = main.path / ".aifs" / "branches" / "exp"
    assert (br / "a.bin").read_bytes() == b"experiment"
    assert (br / "dir" / "only-exp.txt").read_text() == "exp"
    assert "exp" in os.listdir(main.path / ".aifs" / "branches")


def test_tampered_database_value_gives_eio(server: ServerProc, client: AIFSClient,
                                           mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory()
    populate(m.path)
    snap = client.versions.snapshot()
    ino = os.stat(m.path / "dir" / "sub" / "c.bin").st_ino
    tree = snap_tree(server, snap["id"])
    with sqlite3.connect(Path(server.data_dir) / "meta.db") as db:
        # under the engine: epoch 0 turns off the history its triggers keep (FORMAT.md §6.4)
        db.execute("UPDATE trees SET epoch = 0 WHERE tree_id = ?", (tree,))
        db.execute("UPDATE inodes SET size = size + 1 WHERE tree_id = ? AND ino = ?",
                   (tree, ino))
        # as a compromised server would serve it: the row's MAC forged with the server's own
        # key (else the server refuses the row itself, row_mac.py), so the mount's check is
        # what must refuse it
        mode, size, gen, link = db.execute(
            "SELECT mode, size, generation, symlink FROM inodes WHERE tree_id = ? AND ino = ?",
            (tree, ino)).fetchone()
        mac = RowMac((Path(server.data_dir) / "storage.key").read_bytes())
        db.execute("UPDATE inodes SET mac = ? WHERE tree_id = ? AND ino = ?",
                   (mac.inode(ino, mode, size, gen, link), tree, ino))
    view = m.path / ".aifs" / "snapshots" / snap["id"]
    assert (view / "a.bin").stat().st_size == (3 << 20) + 4    # untouched parts still verify
    with pytest.raises(OSError) as ei:
        os.listdir(view / "dir" / "sub")
    assert ei.value.errno == errno.EIO
    with pytest.raises(OSError) as ei:
        (view / "dir" / "sub" / "c.bin").read_bytes()
    assert ei.value.errno == errno.EIO
    assert "refused" in m.log() and "dir/sub/c.bin" in m.log()


def test_snapshot_and_tag_mounts_are_read_only_and_check_the_pinned_key(
        server: ServerProc, client: AIFSClient, mount_factory: Callable[..., Mount],
        config_home: Path, tmp_path: Path) -> None:
    m = mount_factory()
    files = populate(m.path)
    snap = client.versions.snapshot()
    client.versions.create_tag("t", snap["id"])
    (m.path / "a.bin").write_bytes(b"changed")
    ro = mount_factory(server, "--snapshot", snap["id"])
    assert (ro.path / "a.bin").read_bytes() == files["a.bin"]
    with pytest.raises(OSError) as ei:
        (ro.path / "a.bin").write_bytes(b"no")
    assert ei.value.errno == errno.EROFS
    with pytest.raises(OSError) as ei:
        (ro.path / "dir" / "new").mkdir()
    assert ei.value.errno == errno.EROFS
    tagged = mount_factory(server, "--tag", "t")
    assert (tagged.path / "dir" / "b.txt").read_bytes() == files["dir/b.txt"]

    # the key pinned at the first mount; a different one later is refused
    pins = config_home / "aifs" / "known_keys"
    addr, ns, key = pins.read_text().split()
    pins.write_text(f"{addr} {ns} {'00' * 32}\n")
    mp = tmp_path / "bad"
    mp.mkdir()
    try:
        r = subprocess.run([sys.executable, "-m", "aifsfs.fuse.mounter", server.address,
                            str(mp), "--token-file", server.token_file, "--snapshot", snap["id"]],
                           capture_output=True, text=True, timeout=60)
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-uz", str(mp)], check=False)
    assert r.returncode == 1 and "signing key of namespace 'default'" in r.stderr, r.stderr
    assert "remove line 1 of" in r.stderr
    fresh = mount_factory()
    with pytest.raises(OSError) as ei:
        os.listdir(fresh.path / ".aifs" / "snapshots" / snap["id"])
    assert ei.value.errno == errno.EIO
    assert "signing key of namespace" in fresh.log()
