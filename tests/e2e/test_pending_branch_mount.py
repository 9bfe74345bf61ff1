"""Branches created without a copy (metadata/pending.py, FORMAT.md §6.4 "Branches") through real
mounts and a real server: a branch of a snapshot of a 2000-file tree reads byte-exact through a
mount before any write while the database holds no row of it; its first write copies the rows
(main untouched, the snapshot still verifies); prune + GC never free a chunk a pending branch
reaches (a branch of a snapshot, and a branch of main's live tree frozen without a snapshot);
two servers on one PostgreSQL, a mount of the branch on each, see each other's writes across
the copy."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from aifsfs.client import AIFSClient
from tests.cluster import Cluster, session_cluster
from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.e2e.test_cluster_mount import Endpoint
from tests.helpers import ServerProc
from tests.services import Postgres, SeaweedFS

FILES = 2000


@pytest.fixture
def client(server: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(server.address, token=server.token, timeout=60) as c:
        yield c


def _rows(server: ServerProc, branch: str) -> int:
    """Rows of the branch's own in the server's database (a pending branch has none)."""
    with sqlite3.connect(Path(server.data_dir) / "meta.db") as db:
        tid = db.execute("SELECT tree_id FROM trees WHERE branch = ?", (branch,)).fetchone()[0]
        return int(sum(db.execute(f"SELECT COUNT(*) FROM {t} WHERE tree_id = ?",
                                  (tid,)).fetchone()[0]
                       for t in ("inodes", "dentries", "xattrs", "chunk_maps")))


def _write_tree(root: Path, n: int) -> dict[str, bytes]:
    """n files in directories of 100, each different; a few of several chunks."""
    files: dict[str, bytes] = {}
    for i in range(n):
        rel = f"d{i // 100:02d}/f{i:04d}"
        data = (os.urandom(3 << 20) if i % 500 == 7 else
                f"file {i}\n".encode() * (1 + i % 37))
        files[rel] = data
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
    return files


def _same(root: Path, files: dict[str, bytes]) -> None:
    dirs = sorted({rel.split("/")[0] for rel in files})
    assert sorted(d for d in os.listdir(root) if not d.startswith(".")) == dirs
    for d in dirs:
        want = sorted(rel.split("/")[1] for rel in files if rel.startswith(d + "/"))
        assert sorted(os.listdir(root / d)) == want, d
    for rel, data in files.items():
        assert (root / rel).read_bytes() == data, rel


def test_a_branch_reads_byte_exact_before_its_first_write_copies_it(
        server: ServerProc, client: AIFSClient, mount_factory: Callable[..., Mount]) -> None:
    main = mount_factory()
    files = _write_tree(main.path, FILES)
    v = client.versions
    snap = v.snapshot(message="base")
    main_rows = _rows(server, "main")
    v.create_branch("exp", snap["id"])
    assert _rows(server, "exp") == 0                      # created without a copy
    exp = mount_factory(server, "--branch", "exp")
    _same(exp.path, files)
    assert _rows(server, "exp") == 0                      # reading copies nothing
    (exp.path / "d00" / "f0000").write_bytes(b"changed on exp")
    (exp.path / "d01" / "new").write_bytes(b"new on exp")
    assert _rows(server, "exp") == main_rows + 3    # the copy; the new inode, name and slot
    changed = {**files, "d00/f0000": b"changed on exp", "d01/new": b"new on exp"}
    _same(exp.path, changed)
    _same(main.path, files)                               # main untouched
    assert v.verify(snap["id"])["ok"]
    view = main.path / ".aifs" / "snapshots" / snap["id"]
    assert (view / "d00" / "f0000").read_bytes() == files["d00/f0000"]
    assert not (view / "d01" / "new").exists()


def test_gc_never_frees_what_a_pending_branch_reads(
        server: ServerProc, client: AIFSClient, mount_factory: Callable[..., Mount]) -> None:
    """`live` is main's live tree frozen at its epoch (main had no snapshot: no copy, no
    snapshot row), `snap` a branch of main's first snapshot, taken after main rewrote or
    deleted every file `live` reads (so only `live`'s row keeps them); main then rewrites and
    deletes again, snapshots twice, prunes and collects garbage: both branches still read
    every byte through a mount."""
    main = mount_factory()
    files = _write_tree(main.path, 200)
    v = client.versions
    v.create_branch("live")
    assert _rows(server, "live") == 0
    second = _change_every_file(main.path, files, b"second")
    s = v.snapshot(message="first")
    v.create_branch("snap", s["id"])
    _change_every_file(main.path, second, b"third")
    for _ in range(2):
        v.snapshot()
    removed = v.prune(keep_last=1)["removed"]
    assert removed and s["id"] not in removed               # snap's head: pinned
    client.gc(grace_seconds=0)
    assert _rows(server, "live") == _rows(server, "snap") == 0
    for branch, want in (("live", files), ("snap", second)):
        m = mount_factory(server, "--branch", branch)
        _same(m.path, want)


def _change_every_file(root: Path, files: dict[str, bytes], tag: bytes) -> dict[str, bytes]:
    """Delete every other file, rewrite the others; what is left."""
    left = {}
    for i, rel in enumerate(sorted(files)):
        if i % 2:
            (root / rel).unlink()
        else:
            left[rel] = tag + b" %d" % i
            (root / rel).write_bytes(left[rel])
    return left


@pytest.fixture
def two_servers(postgres: Postgres, seaweedfs: SeaweedFS) -> Iterator[Cluster]:
    with session_cluster(postgres, seaweedfs, "pending_branch") as c:
        yield c


def test_two_servers_see_each_others_writes_across_the_copy(two_servers: Cluster) -> None:
    """A mount of the branch on each server: server 1 reads it pending, server 0 copies it on
    its first write, server 1 then reads that write and writes into the branch's own rows."""
    made: list[Mount] = []
    try:
        ends = [Endpoint(s.address, str(two_servers.token_file)) for s in two_servers.servers]
        main = start_mount(ends[0])  # type: ignore[arg-type]
        made.append(main)
        files = _write_tree(main.path, 50)
        with AIFSClient(ends[0].address, token=Path(ends[0].token_file).read_text().strip(),
                        timeout=60) as c:
            s = c.versions.snapshot()
            c.versions.create_branch("exp", s["id"])
        a, b = (start_mount(e, "--branch", "exp") for e in ends)  # type: ignore[arg-type]
        made += [a, b]
        _same(b.path, files)                                   # server 1: the view
        (a.path / "d00" / "f0001").write_bytes(b"from server 0")   # server 0 copies it
        assert (b.path / "d00" / "f0001").read_bytes() == b"from server 0"
        (b.path / "d00" / "from-b").write_bytes(b"from server 1")
        assert (a.path / "d00" / "from-b").read_bytes() == b"from server 1"
        _same(main.path, files)
    finally:
        for m in reversed(made):
            teardown_mount(m)
