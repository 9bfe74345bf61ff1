"""`aifs migrate` (issue 12): a data dir written through a real server moves to PostgreSQL +
SeaweedFS; the sealed chunks arrive byte for byte, `aifs fsck` on the new deployment is clean,
and a shared server serves the same files, assets and tokens."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from blake3 import blake3

from aifs_core.types import ROOT_INO, ChunkRef
from aifsfs.client import AIFSClient
from tests.cluster import start_shared_server
from tests.helpers import make_data_dir, short_tmpdir, start_server, stop_server
from tests.services import S3Location
from tests.stored_chunks import stored_chunks

CHUNK = 1 << 20


def _aifs(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aifs_cli.main", *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=300)


def _write_deployment(data: Path) -> dict[str, Any]:
    """Files (several chunks, inline, hard link, symlink, xattr), an asset and a token, through
    a real server; what to expect back."""
    sp = start_server(data)
    try:
        with AIFSClient(sp.address, token_file=sp.token_file) as c:
            d = c.mkdir(ROOT_INO, b"dir", 0o750)
            body = os.urandom(2 * CHUNK + 12345)
            pieces = [body[i:i + CHUNK] for i in range(0, len(body), CHUNK)]
            ids = [blake3(p).digest() for p in pieces]
            c.put_chunks(list(zip(ids, pieces, strict=True)))
            f = c.create(d.ino, b"big.bin", 0o100640)
            c.commit_file(f.ino, [ChunkRef(i, cid, len(p))
                                  for i, (cid, p) in enumerate(zip(ids, pieces, strict=True))],
                          len(body), durable=True)
            c.link(f.ino, ROOT_INO, b"big-link")
            c.symlink(d.ino, b"sym", b"big.bin")
            c.setxattr(f.ino, b"user.note", b"kept")
            asset = os.urandom(50_000)
            aid = c.put_asset(asset, metadata={"name": "a"})
            # a file removed again: its chunk is unreferenced, which fsck tolerates
            g = c.create(ROOT_INO, b"gone", 0o100644)
            c.unlink(ROOT_INO, b"gone")
            del g
        return {"body": body, "asset": asset, "aid": aid}
    finally:
        stop_server(sp)


def test_migrate_a_data_dir_then_fsck_and_serve(tmp_path: Path, pg_dsn: str,
                                                s3_bucket: S3Location, seaweedfs: Any) -> None:
    data = make_data_dir(tmp_path / "data")
    want = _write_deployment(data)
    master = tmp_path / "master.key"
    env = {**seaweedfs.env(), "AIFS_MASTER_KEY_FILE": str(master)}
    assert _aifs("master-key", "create", str(master), env=env).returncode == 0

    r = _aifs("migrate", "--from", str(data), "--to-meta", pg_dsn, "--to-store", s3_bucket.url,
              env=env)
    assert r.returncode == 0, r.stderr
    # every sealed chunk arrived as it was: same stored names, same bytes
    src = {c.name: c for c in stored_chunks(data / "chunks")}
    src_names = sorted(src)
    assert f"{len(src_names)} chunks copied" in r.stdout, r.stdout
    dst = s3_bucket.store()
    assert sorted(dst.list_names()) == src_names
    for name in src_names:
        assert dst.get(name) == src[name].read_bytes()

    r = _aifs("fsck", "--meta", pg_dsn, "--store", s3_bucket.url, "--read-data", env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("ok:"), r.stdout

    # migrating again into the same database is refused, and nothing changes
    r = _aifs("migrate", "--from", str(data), "--to-meta", pg_dsn, "--to-store", s3_bucket.url,
              env=env)
    assert r.returncode == 1 and "already holds an AIFS deployment" in r.stderr, r.stderr

    base = short_tmpdir()
    srv = None
    try:
        srv = start_shared_server(pg_dsn, s3_bucket.url, env, [f"unix:{base}/s.sock"],
                                  log_path=Path(base) / "server.log")
        with AIFSClient(srv.address) as c:
            d = c.lookup(ROOT_INO, b"dir")
            f = c.lookup(d.ino, b"big.bin")
            assert f.size == len(want["body"]) and f.nlink == 2
            attr, _gen, refs, _inline = c.open_chunk_map(f.ino)
            got = b"".join(c.get_chunks([(ref.chunk_id, 0, 0) for ref in refs]))
            assert got == want["body"]
            assert c.readlink(c.lookup(d.ino, b"sym").ino) == b"big.bin"
            assert c.getxattr(f.ino, b"user.note") == b"kept"
            assert c.get_asset(want["aid"])["data"] == want["asset"]
            # new inodes and entries after the copied ones (identity sequences moved on)
            n = c.create(d.ino, b"new", 0o100644)
            assert n.ino not in (d.ino, f.ino)
            page, _more = c.readdir(d.ino)
            assert [e.name for e in page][-1] == b"new"
        # the data dir's token still works: the macaroon root key moved too
        tok = _aifs("token", "create", "--data", str(data), "--methods", "get,list,stat",
                    env=env)
        assert tok.returncode == 0, tok.stderr
        with AIFSClient(srv.address, token=tok.stdout.strip()) as c:
            assert c.lookup(ROOT_INO, b"big-link").size == len(want["body"])
    finally:
        if srv is not None:
            srv.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_a_half_migrated_database_is_not_served(tmp_path: Path, pg_dsn: str,
                                                s3_bucket: S3Location, seaweedfs: Any,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A copy that stopped before its end (here: the chunk store cannot be written) leaves
    the database marked; a server refuses to start on it."""
    from aifs_core.errors import AIFSError
    from aifs_server.datadir import DataDirError, open_shared
    from aifs_server.migrate import migrate
    from aifs_server.secrets import load_master_key, write_master_key

    data = make_data_dir(tmp_path / "data")
    _write_deployment(data)
    write_master_key(tmp_path / "m.key")
    master = load_master_key(tmp_path / "m.key")
    # the reader identity may list and read but not write: the chunk copy fails
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.reader_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.reader_secret)
    with pytest.raises(AIFSError):
        migrate(data, pg_dsn, s3_bucket.url, master, log=lambda _line: None)
    with pytest.raises(DataDirError, match="has not finished"):
        open_shared(pg_dsn, s3_bucket.url, master)
