"""What only the SQLite engine has: the schema version in the file, WAL mode, one connection per
thread, and a durable commit that fsyncs its own transaction alone -- on real SQLite files under
tmp_path. Everything every engine must do is in the conformance suite (metadata_engines.py)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from aifs_core.errors import InvalidArgument
from aifs_core.types import ROOT_INO, ChunkRef, Namespace, TreeRef
from aifs_server.metadata.sqlite import SQLiteMetadata
from aifs_server.metadata.sqlite_schema import SCHEMA_VERSION

CS = 1 << 20  # chunk size of the test namespace
T = TreeRef("ns1")


def cid(n: int) -> bytes:
    return blake3.blake3(b"chunk %d" % n).digest()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "meta.db"


@pytest.fixture
def md(db: Path) -> Iterator[SQLiteMetadata]:
    m = SQLiteMetadata(db)
    m.create_namespace(Namespace("ns1", CS, 3, "key-1"))
    m.ensure_tree(T)
    yield m
    m.close()


def test_schema_version_and_newer_database(db: Path) -> None:
    SQLiteMetadata(db).close()
    with sqlite3.connect(db) as c:
        assert c.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        c.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(InvalidArgument, match="newer"):
        SQLiteMetadata(db)


def test_connection_per_thread(md: SQLiteMetadata) -> None:
    seen: list[int] = []
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            for i in range(20):
                md.create(T, ROOT_INO, b"t%d-%d" % (k, i), 0o644, 0, 0)
            seen.append(id(md._sqlite._conn()))
        except BaseException as e:  # surfaced below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert errors == [] and len(set(seen)) == 4
    ents, eof = md.readdir(T, ROOT_INO, 0, 1000)
    assert eof and len(ents) == 80 and len({e.attr.ino for e in ents}) == 80


def test_durable_commit_syncs_that_transaction_only(md: SQLiteMetadata, db: Path) -> None:
    f = md.create(T, ROOT_INO, b"f", 0o644, 0, 0).ino
    md.record_chunk("ns1", cid(1), CS, CS // 2)
    conn = md._sqlite._conn()
    seen: list[int] = []
    # observe the connection's synchronous level while the durable transaction runs
    conn.set_trace_callback(lambda sql: seen.append(conn.execute("PRAGMA synchronous")
                                                    .fetchone()[0]) if sql == "COMMIT" else None)
    md.commit_file(T, f, [ChunkRef(0, cid(1), CS)], CS, durable=True)
    md.commit_file(T, f, [ChunkRef(0, cid(1), CS)], CS)
    conn.set_trace_callback(None)
    assert seen == [2, 1]  # FULL for the durable commit, NORMAL again afterwards
    assert md.get_chunk_map(T, f)[1] == [ChunkRef(0, cid(1), CS)]
