"""client.open("aifs-snap://NS/ID/path") over a real server (issue 11 item 7): the snapshot's
bytes after the live file changed or went away, seeks and ranged reads (a file of several
chunks), a small read fetches a small part (the server's metrics count it), clear errors, and
another namespace's token cannot open it."""

from __future__ import annotations

import io
import os
import sqlite3
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from aifs_core import merkle
from aifs_core.errors import (
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotFound,
    ParentNotCommitted,
)
from aifs_core.errors import PermissionDenied as Denied
from aifs_core.types import ROOT_INO
from aifs_server.auth import mint_token
from aifsfs.client import AIFSClient
from aifsfs.rpc.versioning import BadSignature
from tests.helpers import ServerProc, start_server, stop_server

MiB = 1 << 20


@pytest.fixture
def metered(data_dir: Path) -> Iterator[ServerProc]:
    sp = start_server(data_dir, args=["--metrics-port", "0"])
    try:
        yield sp
    finally:
        stop_server(sp)


@pytest.fixture
def client(metered: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(metered.address, token=metered.token, timeout=30) as c:
        yield c


def metric(sp: ServerProc, name: str, label: str) -> float:
    """Sum of the server's Prometheus samples of `name` with `label` (k="v")."""
    text = urllib.request.urlopen(sp.ready_line.split("metrics on ", 1)[1].rstrip(")"),
                                  timeout=10).read().decode()
    return sum(float(ln.split()[-1]) for ln in text.splitlines()
               if ln.startswith(name + "{") and label in ln)


def put_file(c: AIFSClient, parent: int, name: str, data: bytes, chunk: int = MiB) -> int:
    """Create or overwrite `name` with `data`, cut into `chunk`-sized chunks; its inode."""
    pieces = [data[i:i + chunk] for i in range(0, len(data), chunk)]
    ids = [blake3.blake3(p).digest() for p in pieces]
    c.data.put_chunks(list(zip(ids, pieces, strict=True)))
    try:
        ino = c.fs.lookup(parent, name.encode()).ino
    except NotFound:
        ino = c.fs.create(parent, name.encode()).ino
    c.fs.commit_file(ino, [(i, cid, len(p)) for i, (cid, p) in enumerate(zip(ids, pieces,
                                                                             strict=True))],
                     len(data), truncated=True)
    return ino


def test_open_reads_the_snapshot_after_the_live_file_changed(metered: ServerProc,
                                                             client: AIFSClient) -> None:
    d = client.fs.mkdir(ROOT_INO, b"data").ino
    big = os.urandom(3 * MiB + 12345)            # four chunks, the last one short
    small = b"hello, snapshot\nsecond line\n"
    put_file(client, d, "big.bin", big)
    put_file(client, ROOT_INO, "small.txt", small)
    snap = client.versions.snapshot(message="v1")
    client.versions.create_tag("v1", snap["id"])
    put_file(client, d, "big.bin", os.urandom(100))            # the live file changes
    client.fs.unlink(ROOT_INO, b"small.txt")                     # and one goes away

    with client.open(merkle.snap_uri("default", snap["id"], "small.txt")) as f:
        assert f.readable() and f.seekable() and not f.writable()
        assert f.size == len(small) and f.snapshot["id"] == snap["id"]
        assert f.readline() == b"hello, snapshot\n" and f.read() == b"second line\n"
        assert f.read() == b""
    with pytest.raises(ValueError):
        f.read()                                                  # closed

    uri = f"aifs-snap://default/{snap['id']}/data/big.bin"
    with client.open(uri) as f:
        assert f.read() == big
        for off, n in [(0, 10), (MiB - 5, 10), (2 * MiB + 7, MiB + 3), (len(big) - 3, 10),
                       (len(big) + 5, 10), (123, 0)]:
            assert f.seek(off) == off
            got = f.read(n)
            assert got == big[off:off + n] and f.tell() == off + len(got), (off, n)
        f.seek(-4, io.SEEK_END)
        assert f.read() == big[-4:]
        f.seek(MiB)
        f.seek(10, io.SEEK_CUR)
        buf = bytearray(2 * MiB)
        assert f.readinto(buf) == 2 * MiB and bytes(buf) == big[MiB + 10:3 * MiB + 10]
    # a tag where the id is expected
    with client.open("aifs-snap://default/v1/data/big.bin") as f:
        f.seek(3 * MiB)
        assert f.read(100) == big[3 * MiB:3 * MiB + 100]

    # a small read at the end of the file fetches one call and one frame, not the file
    with client.open(uri) as f:
        calls = metric(metered, "aifs_rpc_total", 'method="GetChunks"')
        sent = metric(metered, "aifs_data_bytes_total", 'direction="out"')
        f.seek(2 * MiB + 100)
        assert f.read(1000) == big[2 * MiB + 100:2 * MiB + 1100]
        assert metric(metered, "aifs_rpc_total", 'method="GetChunks"') == calls + 1
        # one 64 KiB buffer's worth (FRAME_SIZE), not the 3 MiB file
        fetched = metric(metered, "aifs_data_bytes_total", 'direction="out"') - sent
        assert 1000 <= fetched <= 80 << 10, fetched


def test_open_errors_are_clear(metered: ServerProc, client: AIFSClient) -> None:
    d = client.fs.mkdir(ROOT_INO, b"dir").ino
    put_file(client, d, "f", b"x")
    client.fs.symlink(ROOT_INO, b"link", b"dir/f")
    sid = client.versions.snapshot()["id"]
    cases: list[tuple[str, type[Exception], str]] = [
        ("aifs://default/abc", InvalidArgument, "not an aifs-snap://"),
        ("aifs-snap://default", InvalidArgument, "expected aifs-snap://NS/ID"),
        (f"aifs-snap://default/{sid}", IsADirectory, "root directory"),
        (f"aifs-snap://default/{sid}/dir", IsADirectory, "/dir is a directory"),
        (f"aifs-snap://default/{sid}/dir/f/g", NotADirectory, "/dir/f is not a directory"),
        (f"aifs-snap://default/{sid}/dir/missing", NotFound, "/dir/missing does not exist"),
        (f"aifs-snap://default/{sid}/link", InvalidArgument, "symbolic link"),
        (f"aifs-snap://default/{sid}/dir/../dir/f", InvalidArgument, "'..'"),
        (f"aifs-snap://default/{'0' * 32}/dir/f", NotFound, "does not exist"),
        ("aifs-snap://default/no-such-tag/dir/f", NotFound, "no-such-tag"),
    ]
    for uri, kind, text in cases:
        with pytest.raises(kind, match=text):
            client.open(uri)
    with client.open(f"aifs-snap://default/{sid.upper()}/dir/f") as f:
        assert f.read() == b"x"
    # a value changed in the database under the snapshot: refused, never served
    db = sqlite3.connect(Path(metered.data_dir) / "meta.db")
    with db:
        # the rows the snapshot reads: main's at its epoch (FORMAT.md §6.4), changed under
        # the engine (epoch 0: its triggers keep no history of the change)
        main = db.execute("SELECT t.base_tree FROM snapshots s JOIN trees t ON "
                          "t.tree_id = s.tree_id WHERE s.snap_id = ?", (sid,)).fetchone()[0]
        db.execute("UPDATE trees SET epoch = 0 WHERE tree_id = ?", (main,))
        db.execute("UPDATE chunk_maps SET length = 2 WHERE tree_id = ?", (main,))
    db.close()
    with pytest.raises(BadSignature, match="metadata was altered"):
        client.open(f"aifs-snap://default/{sid}/dir/f")


def test_another_namespaces_token_cannot_open_it(metered: ServerProc, client: AIFSClient) -> None:
    put_file(client, ROOT_INO, "secret", b"only for default")
    uri = merkle.snap_uri("default", client.versions.snapshot()["id"], "secret")
    client.format("other")   # the server's own token is for every namespace
    root_key = (Path(metered.data_dir) / "macaroon.key").read_bytes()
    for token, ns in [(mint_token(root_key, "other", "all", 600), "other"),
                      (mint_token(root_key, "default", ["stat", "list"], 600), "default")]:
        with AIFSClient(metered.address, token=token, namespace=ns, timeout=30) as c, \
                pytest.raises(Denied):
            c.open(uri)
    # a token with only `get` reads it, from a client of any namespace
    reader = mint_token(root_key, "default", ["get"], 600)
    with AIFSClient(metered.address, token=reader, namespace="other", timeout=30) as c, \
            c.open(uri) as f:
        assert f.read() == b"only for default"


def test_aifs_get_writes_a_snapshot_file(metered: ServerProc, client: AIFSClient,
                                         tmp_path: Path) -> None:
    data = os.urandom(MiB + 7)
    put_file(client, ROOT_INO, "model.bin", data)
    uri = merkle.snap_uri("default", client.versions.snapshot()["id"], "model.bin")
    put_file(client, ROOT_INO, "model.bin", b"changed")
    env = {**os.environ, "AIFS_SERVER": metered.address, "AIFS_TOKEN_FILE": metered.token_file}
    aifs = str(Path(sys.executable).with_name("aifs"))
    out = subprocess.run([aifs, "get", uri], env=env, capture_output=True, timeout=60)
    assert out.returncode == 0 and out.stdout == data, out.stderr
    r = subprocess.run([aifs, "get", uri, "-o", str(tmp_path / "m")], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and (tmp_path / "m").read_bytes() == data, r.stderr
    r = subprocess.run([aifs, "get", uri + "x"], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode != 0 and "/model.binx does not exist" in r.stderr, r.stderr


def test_lineage_names_a_snapshot_that_exists(client: AIFSClient) -> None:
    put_file(client, ROOT_INO, "train.csv", b"x,y\n1,2\n")
    snap = client.versions.snapshot(message="training set")
    client.versions.create_tag("train-v1", snap["id"])
    prep = client.put_asset(b"preprocessing code", parents=[snap["uri"]])
    model = client.put_asset(b"model weights", parents=[
        prep, {"parent_id": "aifs-snap://default/train-v1", "transform": "train"}])
    info = client.stat_asset(model)
    assert [p["parent_id"] for p in info["parents"]] == [prep, snap["uri"]]  # the tag's id
    lineage = client.get_lineage(model)
    assert [(a["kind"], a["uri"]) for a in lineage] == [
        ("blob", f"aifs://default/{prep}"), ("snapshot", snap["uri"])]
    assert lineage[1]["metadata"]["message"] == "training set"
    assert lineage[1]["metadata"]["root_hash"] == snap["root_hash"].hex()

    # strong causality: a snapshot that does not exist is refused and nothing is stored
    before = {a["asset_id"] for a in client.list_assets()}
    for parent, kind, text in [
            (f"aifs-snap://default/{'0' * 32}", ParentNotCommitted, "does not exist"),
            ("aifs-snap://default/no-such-tag", ParentNotCommitted, "does not exist"),
            (f"aifs-snap://other/{snap['id']}", InvalidArgument, "namespace 'other'"),
            (snap["uri"] + "/train.csv", InvalidArgument, "whole snapshot"),
            ("aifs-snap://default", InvalidArgument, "expected aifs-snap://NS/ID")]:
        with pytest.raises(kind, match=text):
            client.put_asset(b"orphan model", parents=[parent])
    assert {a["asset_id"] for a in client.list_assets()} == before
    # a cited parent is reachable: prune keeps it though no tag or head names it any more
    client.versions.delete_tag("train-v1")
    client.versions.snapshot()
    assert client.versions.prune(keep_last=1)["removed"] == []
    assert [a["kind"] for a in client.get_lineage(model)] == ["blob", "snapshot"]


def test_holes_and_short_slots_read_as_zeros(client: AIFSClient) -> None:
    a, c = os.urandom(MiB), os.urandom(1000)
    ids = [blake3.blake3(x).digest() for x in (a, c)]
    client.data.put_chunks(list(zip(ids, (a, c), strict=True)))
    ino = client.fs.create(ROOT_INO, b"sparse").ino
    # slot 0 whole, slot 1 a hole, slot 2 holds 1000 bytes of a 1 MiB slot, then 5 bytes more
    client.fs.commit_file(ino, [(0, ids[0], MiB), (2, ids[1], 1000)], 3 * MiB + 5)
    want = a + bytes(MiB) + c + bytes(MiB - 1000 + 5)
    uri = merkle.snap_uri("default", client.versions.snapshot()["id"], "sparse")
    with client.open(uri) as f:
        assert f.size == len(want) and f.read() == want
        f.seek(MiB - 3)
        assert f.read(2 * MiB + 10) == want[MiB - 3:3 * MiB + 7]
