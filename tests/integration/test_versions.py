"""Versions over a real server (issue 11): snapshots stay byte-exact while the branch changes,
branches diverge without touching main, tags never move, diff/merge incl. conflicts, verify
catches a value changed in the database and a foreign signature, tokens need the right verbs,
prune + GC reclaim exactly what only pruned snapshots held."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifs_core import merkle
from aifs_core.errors import AlreadyExists, NotFound, PermissionDenied
from aifs_core.types import ROOT_INO
from aifs_server.auth import mint_token
from aifsfs.client import AIFSClient
from aifsfs.rpc.versioning import verify_signature
from tests.helpers import ServerProc


@pytest.fixture
def client(server: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(server.address, token=server.token, timeout=30) as c:
        yield c


def write(c: AIFSClient, name: str, data: bytes, parent: int = ROOT_INO) -> bytes:
    """Create or overwrite `name` with `data` (one chunk); returns the chunk id."""
    cid = blake3.blake3(data).digest()
    c.data.put_chunks([(cid, data)])
    try:
        ino = c.fs.lookup(parent, name.encode()).ino
    except NotFound:
        ino = c.fs.create(parent, name.encode()).ino
    c.fs.commit_file(ino, [(0, cid, len(data))], len(data), truncated=True)
    return cid


def read(c: AIFSClient, name: str, branch: str) -> bytes:
    old, c.branch = c.branch, branch
    try:
        ino = c.fs.lookup(ROOT_INO, name.encode()).ino
        _, _, refs = c.fs.get_chunk_map(ino)
        return b"".join(c.data.get_chunks([(r.chunk_id, 0, r.length) for r in refs]))
    finally:
        c.branch = old


def names(c: AIFSClient, branch: str) -> list[str]:
    old, c.branch = c.branch, branch
    try:
        return sorted(e.name.decode() for e in c.fs.readdir(ROOT_INO)[0])
    finally:
        c.branch = old


def test_snapshot_stays_exact_and_is_read_only(client: AIFSClient) -> None:
    v = client.versions
    write(client, "a.txt", b"one")
    s1 = v.snapshot(message="first")
    assert s1["uri"] == merkle.snap_uri("default", s1["id"]) and len(s1["id"]) == 32
    assert verify_signature(s1, v.signing_key())
    write(client, "a.txt", b"two, longer")
    write(client, "b.txt", b"new")
    assert read(client, "a.txt", s1["tree_branch"]) == b"one"
    assert names(client, s1["tree_branch"]) == ["a.txt"]
    client.branch = s1["tree_branch"]
    with pytest.raises(PermissionDenied, match="read-only"):
        client.fs.create(ROOT_INO, b"c.txt")
    client.branch = "main"
    assert v.verify(s1["id"]) == {"ok": True, "problems": [], "nodes_checked": 2}
    s2 = v.snapshot()
    assert s2["parents"] == [s1["id"]]
    d = v.diff(s1["id"], s2["id"])
    assert (d["added"], d["removed"], d["changed"]) == (["/b.txt"], [], ["/a.txt"])
    assert v.diff(s2["id"], s2["id"])["nodes_visited"] == 0  # equal roots: nothing opened


def test_branch_diverges_without_touching_main_and_resets(client: AIFSClient) -> None:
    v = client.versions
    write(client, "a.txt", b"main")
    base = v.snapshot()
    v.create_branch("exp", base["id"])
    client.branch = "exp"
    write(client, "a.txt", b"experiment")
    write(client, "e.txt", b"only here")
    client.branch = "main"
    assert read(client, "a.txt", "main") == b"main" and names(client, "main") == ["a.txt"]
    assert read(client, "a.txt", "exp") == b"experiment"
    assert {b["name"] for b in v.list_branches()} == {"main", "exp"}
    with pytest.raises(AlreadyExists):
        v.create_branch("exp")
    v.reset_branch("exp", base["id"])
    assert read(client, "a.txt", "exp") == b"main" and names(client, "exp") == ["a.txt"]
    assert [e["action"] for e in v.branch_log("exp")] == [f"create from {base['id']}",
                                                           f"reset to {base['id']}"]
    v.delete_branch("exp")
    assert [b["name"] for b in v.list_branches()] == ["main"]
    with pytest.raises(PermissionDenied):
        v.delete_branch("main")


def test_tags_never_move_and_delete_needs_the_delete_verb(server: ServerProc,
                                                          client: AIFSClient) -> None:
    v = client.versions
    write(client, "x", b"x")
    s1, s2 = v.snapshot(), v.snapshot()
    v.create_tag("v1", s1["id"])
    with pytest.raises(AlreadyExists, match="never move"):
        v.create_tag("v1", s2["id"])
    assert v.get_snapshot("v1")["id"] == s1["id"] == v.get_snapshot("tag:v1")["id"]
    assert v.get_snapshot("branch:main")["id"] == s2["id"]
    root_key = (Path(server.data_dir) / "macaroon.key").read_bytes()
    snap_only = mint_token(root_key, "default", ["snapshot", "get", "list"], 600)
    with AIFSClient(server.address, token=snap_only, timeout=30) as limited:
        assert [t["name"] for t in limited.versions.list_tags()] == ["v1"]
        limited.versions.create_tag("v2", s2["id"])
        with pytest.raises(PermissionDenied, match="delete"):
            limited.versions.delete_tag("v1")
    get_only = mint_token(root_key, "default", ["get"], 600)
    with AIFSClient(server.address, token=get_only, timeout=30) as reader:
        assert reader.versions.verify("v1")["ok"]
        with pytest.raises(PermissionDenied, match="snapshot"):
            reader.versions.snapshot()
    other_ns = mint_token(root_key, "other", "all", 600)
    with AIFSClient(server.address, token=other_ns, timeout=30) as stranger, \
            pytest.raises(PermissionDenied):
        stranger.versions.list_tags()
    v.delete_tag("v1")
    assert [t["name"] for t in v.list_tags()] == ["v2"]


def test_merge_applies_the_other_side_or_lists_conflicts(client: AIFSClient) -> None:
    v = client.versions
    write(client, "shared.txt", b"base")
    write(client, "keep.txt", b"keep")
    base = v.snapshot()
    v.create_branch("feature", base["id"])
    client.branch = "feature"
    write(client, "new.txt", b"from feature")
    client.fs.unlink(ROOT_INO, b"keep.txt")
    client.branch = "main"
    write(client, "main-only.txt", b"main")
    r = v.merge("feature", "main")
    assert r["merged"] and r["base"] == base["id"] and r["conflicts"] == []
    assert sorted(r["applied"]) == ["/keep.txt", "/new.txt"]
    assert names(client, "main") == ["main-only.txt", "new.txt", "shared.txt"]
    assert read(client, "new.txt", "main") == b"from feature"
    merged = v.get_snapshot(r["snapshot"])
    assert len(merged["parents"]) == 2

    # both sides change one path: nothing is written, the path is listed
    client.branch = "feature"
    write(client, "shared.txt", b"feature's")
    client.branch = "main"
    write(client, "shared.txt", b"main's")
    before = names(client, "main")
    r = v.merge("feature", "main")
    assert not r["merged"] and r["conflicts"] == ["/shared.txt"]
    assert read(client, "shared.txt", "main") == b"main's" and names(client, "main") == before


def _db(server: ServerProc) -> sqlite3.Connection:
    return sqlite3.connect(Path(server.data_dir) / "meta.db")


def test_verify_names_a_tampered_path_and_refuses_a_foreign_signature(
        server: ServerProc, client: AIFSClient) -> None:
    v = client.versions
    d = client.fs.mkdir(ROOT_INO, b"dir")
    write(client, "data.bin", b"0123456789", parent=d.ino)
    s = v.snapshot()
    ino = client.fs.lookup(d.ino, b"data.bin").ino
    # the rows the snapshot reads: main's, at the snapshot's epoch (nothing changed since)
    tree = int(_db(server).execute("SELECT t.base_tree FROM snapshots s JOIN trees t ON "
                                   "t.tree_id = s.tree_id WHERE s.snap_id = ?",
                                   (s["id"],)).fetchone()[0])
    with _db(server) as db:   # under the engine: no history kept (epoch 0 turns it off)
        epoch = db.execute("SELECT epoch FROM trees WHERE tree_id = ?", (tree,)).fetchone()[0]
        db.execute("UPDATE trees SET epoch = 0 WHERE tree_id = ?", (tree,))
        db.execute("UPDATE inodes SET size = 11 WHERE tree_id = ? AND ino = ?", (tree, ino))
    r = v.verify(s["id"])
    assert not r["ok"] and len(r["problems"]) == 1 and r["problems"][0].startswith(
        "/dir/data.bin:"), r
    with _db(server) as db:
        db.execute("UPDATE inodes SET size = 10 WHERE tree_id = ? AND ino = ?", (tree, ino))
        db.execute("UPDATE trees SET epoch = ? WHERE tree_id = ?", (epoch, tree))
    assert v.verify(s["id"])["ok"]

    foreign = Ed25519PrivateKey.generate()
    info = v.get_snapshot(s["id"])
    stmt = merkle.statement(bytes.fromhex(s["id"]), "default", "main", info["created_ns"],
                            info["root_hash"], [], info["message"])
    with _db(server) as db:
        db.execute("UPDATE snapshots SET signature = ? WHERE snap_id = ?",
                   (foreign.sign(stmt), s["id"]))
    r = v.verify(s["id"])
    assert not r["ok"] and "signature does not verify" in r["problems"][0]
    assert not verify_signature(v.get_snapshot(s["id"]), v.signing_key())


def test_prune_then_gc_frees_exactly_what_pruned_snapshots_held(server: ServerProc,
                                                                client: AIFSClient) -> None:
    v = client.versions
    old = write(client, "f", os.urandom(5000))
    s_old = v.snapshot()
    kept = write(client, "f", os.urandom(5000))
    tagged_only = write(client, "t", os.urandom(5000))
    s_tagged = v.snapshot()
    v.create_tag("release", s_tagged["id"])
    client.fs.unlink(ROOT_INO, b"t")
    s_new = v.snapshot()

    def present(cid: bytes) -> bool:
        return bool(client.data.has_chunks([cid])[0])

    client.gc(grace_seconds=0)
    assert present(old) and present(kept) and present(tagged_only)  # snapshots reach them
    plan = v.prune(keep_last=1, dry_run=True)
    assert plan["removed"] == [s_old["id"]] and set(plan["kept"]) == {s_tagged["id"],
                                                                      s_new["id"]}
    assert present(old)
    assert v.prune(keep_last=1)["removed"] == [s_old["id"]]
    client.gc(grace_seconds=0)
    assert not present(old)          # only the pruned snapshot held it
    assert present(kept) and present(tagged_only)
    with pytest.raises(NotFound):
        v.get_snapshot(s_old["id"])


def test_cli_snapshot_tag_diff_verify(server: ServerProc, client: AIFSClient) -> None:
    import subprocess
    import sys
    aifs = str(Path(sys.executable).with_name("aifs"))
    env = {**os.environ, "AIFS_SERVER": server.address, "AIFS_TOKEN_FILE": server.token_file}

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([aifs, *argv], env=env, capture_output=True, text=True,
                              timeout=60)

    write(client, "a", b"1")
    out = run("snapshot", "create", "-m", "first")
    assert out.returncode == 0, out.stderr
    sid = out.stdout.split()[1]
    write(client, "b", b"2")
    assert run("tag", "create", "v1", sid).returncode == 0
    moved = run("tag", "create", "v1", "main")  # a tag never moves
    assert moved.returncode == 1 and "never move" in moved.stderr, moved.stderr
    assert run("snapshot", "create").returncode == 0
    diff = run("diff", "v1", "branch:main")
    assert diff.stdout.split("\n")[0] == "+ /b", diff.stdout + diff.stderr
    v = run("snapshot", "verify", "v1")
    assert v.returncode == 0 and v.stdout.startswith("ok: 2 nodes"), v.stdout + v.stderr
    assert "v1" in run("snapshot", "list").stdout
