"""Background hashing on real servers (issue 11, server/hash_keeper.py; FORMAT.md §6.4 "Hash
checkpoints"): the server keeps a branch's node hashes current while it is written, so that a
snapshot rehashes only what changed since the keeper's last pass, and a snapshot taken at any
moment -- before, during or after a pass, of changes of every kind, on SQLite and on two
servers sharing PostgreSQL -- verifies (VerifySnapshot recomputes every node hash from the
stored rows and the root against the signed statement) and equals the same tree's root taken
from another server."""

from __future__ import annotations

import random
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from aifs_core.errors import AIFSError
from aifs_core.types import ROOT_INO, SET_GID, SET_MODE, SET_MTIME, SET_UID
from aifsfs.client import AIFSClient
from tests.cluster import Cluster, temp_cluster
from tests.helpers import ServerProc
from tests.services import S3Location

LIVE = 2**63 - 1


def _walk(c: AIFSClient) -> tuple[list[int], list[tuple[int, bytes, int, int]]]:
    dirs, ents, todo = [ROOT_INO], [], [ROOT_INO]
    while todo:
        d = todo.pop()
        cookie = 0
        while True:
            page, eof = c.fs.readdir(d, cookie, 1000)
            for e in page:
                ents.append((d, e.name, e.attr.ino, e.attr.mode))
                if stat.S_ISDIR(e.attr.mode):
                    dirs.append(e.attr.ino)
                    todo.append(e.attr.ino)
            if eof or not page:
                break
            cookie = page[-1].cookie
    return dirs, ents


def random_change(c: AIFSClient, rng: random.Random) -> str:
    """One change of a random kind through the Filesystem service (refused ones count)."""
    dirs, ents = _walk(c)
    files = [e for e in ents if stat.S_ISREG(e[3])]
    d, name = rng.choice(dirs), rng.choice([b"a", b"b", b"c", b"d.txt", b"e\xff"])
    op = rng.choice(["create", "create", "mkdir", "write", "write", "chmod", "chown", "utimes",
                     "xattr", "rmxattr", "rename", "link", "unlink", "rmdir", "symlink"])
    try:
        if op == "create" or (not files and op in ("write", "link")):
            c.fs.create(d, name, rng.choice([0o100644, 0o100600]))
        elif op == "mkdir":
            c.fs.mkdir(d, name)
        elif op == "write":
            data = rng.randbytes(rng.randint(1, 300))
            cid = blake3.blake3(data).digest()
            c.data.put_chunks([(cid, data)])
            c.fs.commit_file(rng.choice(files)[2], [(0, cid, len(data))], len(data),
                             truncated=True)
        elif not ents:
            c.fs.mkdir(d, name)
        elif op == "chmod":
            e = rng.choice(ents)
            if not stat.S_ISLNK(e[3]):
                c.fs.setattr(e[2], SET_MODE, mode=rng.choice([0o600, 0o750]))
        elif op == "chown":
            c.fs.setattr(rng.choice(ents)[2], rng.choice([SET_UID, SET_GID]),
                         uid=rng.randint(0, 3), gid=rng.randint(0, 3))
        elif op == "utimes":
            c.fs.setattr(rng.choice(ents)[2], SET_MTIME, mtime_ns=rng.randint(0, 10**18))
        elif op == "xattr":
            c.fs.setxattr(rng.choice(ents)[2], b"user.k", rng.choice([b"", b"v", b"w" * 30]))
        elif op == "rmxattr":
            c.fs.removexattr(rng.choice(ents)[2], b"user.k")
        elif op == "rename":
            e = rng.choice(ents)
            c.fs.rename(e[0], e[1], d, name)
        elif op == "link":
            c.fs.link(rng.choice(files)[2], d, name)
        elif op == "unlink":
            e = rng.choice([e for e in ents if not stat.S_ISDIR(e[3])] or ents)
            c.fs.remove(e[0], e[1], directory=stat.S_ISDIR(e[3]), forget=True)
        elif op == "rmdir":
            e = rng.choice(ents)
            c.fs.remove(e[0], e[1], directory=stat.S_ISDIR(e[3]), forget=True)
        elif op == "symlink":
            c.fs.symlink(d, name, rng.choice([b"a", b"../x"]))
    except AIFSError as e:
        return f"{op} refused ({type(e).__name__})"
    return op


def _db(server: ServerProc) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{Path(server.data_dir) / 'meta.db'}?mode=ro", uri=True)


def _caught_up(server: ServerProc) -> bool:
    """main's stored hashes are current (what trees_to_hash asks, read from outside)."""
    with _db(server) as db:
        tid, epoch = db.execute("SELECT tree_id, epoch FROM trees WHERE namespace = 'default' "
                                "AND branch = 'main'").fetchone()
        if not db.execute("SELECT 1 FROM tree_hashes WHERE tree_id = ? AND died = ?",
                          (tid, LIVE)).fetchone():
            return False
        return not any(db.execute(f"SELECT 1 FROM {t}_hist WHERE tree_id = ? AND died = ?",
                                  (tid, epoch)).fetchone()
                       for t in ("inodes", "dentries", "xattrs", "chunk_maps"))


def _wait_caught_up(server: ServerProc, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not _caught_up(server):
        assert time.monotonic() < end, "the server's background hashing did not catch up"
        time.sleep(0.05)


@pytest.fixture
def client(server: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(server.address, token=server.token, timeout=30) as c:
        yield c


def test_a_snapshot_after_the_keeper_caught_up_rehashes_nothing(
        server: ServerProc, client: AIFSClient) -> None:
    v = client.versions
    for i in range(3):
        d = client.fs.mkdir(ROOT_INO, f"d{i}".encode()).ino
        for j in range(40):
            client.fs.create(d, f"f{j}".encode())
    _wait_caught_up(server)        # without a snapshot: the server hashed them by itself
    s = v.snapshot()
    with _db(server) as db:
        tid, epoch = db.execute("SELECT base_tree, base_epoch FROM trees WHERE branch = ?",
                                (s["tree_branch"],)).fetchone()
        # the snapshot's own hashing stored nothing: every hash was current already
        assert db.execute("SELECT COUNT(*) FROM tree_hashes WHERE tree_id = ? AND born = ?",
                          (tid, epoch)).fetchone()[0] == 0
    r = v.verify(s["id"])
    assert r["ok"] and r["nodes_checked"] == 1 + 3 + 120, r


def test_random_changes_snapshots_at_any_moment_verify(server: ServerProc,
                                                       client: AIFSClient) -> None:
    """Changes of every kind, snapshots between them at random moments (the keeper's passes
    run when they run: before, after or between the changes), each verified; then the
    live tree's stored hashes, once the keeper caught up, give the last snapshot's root."""
    rng = random.Random(11)
    v = client.versions
    snaps = []
    for i in range(150):
        random_change(client, rng)
        if rng.random() < 0.08:
            snaps.append(v.snapshot(message=f"at {i}"))
        if rng.random() < 0.1:
            time.sleep(rng.choice([0.05, 0.3]))   # let a pass in, or not
    snaps.append(v.snapshot())
    for s in snaps:
        r = v.verify(s["id"])
        assert r["ok"], (s["message"], r)
    _wait_caught_up(server)
    with _db(server) as db:
        tid = db.execute("SELECT tree_id FROM trees WHERE branch = 'main'").fetchone()[0]
        root = db.execute("SELECT hash FROM tree_hashes WHERE tree_id = ? AND ino = ? AND "
                          "died = ?", (tid, ROOT_INO, LIVE)).fetchone()[0]
    assert bytes(root) == bytes(snaps[-1]["root_hash"])


@pytest.fixture
def cluster(pg_dsn: str, s3_bucket: S3Location) -> Iterator[Cluster]:
    with temp_cluster(pg_dsn, s3_bucket) as c:
        yield c


def test_two_servers_on_postgresql_hash_one_tree(cluster: Cluster) -> None:
    """Both servers' keepers checkpoint main while clients of both change it; snapshots taken
    through either server verify, and the same tree snapshotted through each gives one root."""
    a, b = cluster.servers
    rng = random.Random(12)
    with AIFSClient(a.address, token_file=cluster.token_file) as ca, \
            AIFSClient(b.address, token_file=cluster.token_file) as cb:
        snaps = []
        for i in range(120):
            random_change(rng.choice([ca, cb]), rng)
            if rng.random() < 0.08:
                snaps.append(rng.choice([ca, cb]).versions.snapshot(message=f"at {i}"))
            if rng.random() < 0.1:
                time.sleep(rng.choice([0.05, 0.3]))
        sa = ca.versions.snapshot()
        time.sleep(0.6)                 # both keepers pass over the unchanged tree
        sb = cb.versions.snapshot()
        assert bytes(sa["root_hash"]) == bytes(sb["root_hash"])
        for s in [*snaps, sa, sb]:
            r = cb.versions.verify(s["id"])
            assert r["ok"], (s["message"], r)
