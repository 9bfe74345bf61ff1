"""What only the PostgreSQL engine has: several servers (engines, each with its own connection
pool) on one database at once, migrate-on-open racing, a newer schema, a database that goes away
-- on the session's real PostgreSQL 15, a fresh database per test. Everything every engine must
do is in the conformance suite (metadata_engines.py)."""

from __future__ import annotations

import random
import stat
import threading
from collections.abc import Callable, Iterator

import blake3
import psycopg
import pytest

from aifs_core.errors import AlreadyExists, InvalidArgument, NotFound, StoreUnavailable
from aifs_core.types import ROOT_INO, ChunkRef, Namespace, TreeRef
from aifs_server.metadata.postgres import PostgresMetadata
from aifs_server.metadata.postgres_schema import SCHEMA_VERSION
from tests.services import Postgres

CS = 1 << 16
T = TreeRef("ns1")


def cid(n: int) -> bytes:
    return blake3.blake3(b"chunk %d" % n).digest()


def scalar(dsn: str, sql: str, *args: object) -> object:
    with psycopg.connect(dsn, autocommit=True) as c:
        r = c.execute(sql, args).fetchone()
    return None if r is None else r[0]


@pytest.fixture
def two(pg_dsn: str) -> Iterator[tuple[PostgresMetadata, PostgresMetadata]]:
    """Two engines ("servers") on one database, the namespace and tree made by the first."""
    a = PostgresMetadata(pg_dsn, pool_size=4)
    b = PostgresMetadata(pg_dsn, pool_size=4)
    try:
        a.create_namespace(Namespace("ns1", CS, 3, "key-1"))
        a.ensure_tree(T)
        yield a, b
    finally:
        a.close()
        b.close()


def run_threads(n: int, work: Callable[[int], None]) -> list[BaseException]:
    errors: list[BaseException] = []
    barrier = threading.Barrier(n)

    def run(k: int) -> None:
        try:
            barrier.wait()
            work(k)
        except BaseException as e:  # surfaced by the caller
            errors.append(e)

    ts = [threading.Thread(target=run, args=(k,)) for k in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(timeout=300)
    assert not any(t.is_alive() for t in ts), "a worker hung"
    return errors


def check_tree(dsn: str) -> None:
    """Every dentry names an inode, every inode's nlink counts its names (directories: 2 +
    subdirectories), no inode is left unlinked, and every chunk's refcount counts its slots."""
    with psycopg.connect(dsn, autocommit=True) as c:
        dangling = c.execute("SELECT COUNT(*) FROM dentries d LEFT JOIN inodes i ON "
                             "i.tree_id = d.tree_id AND i.ino = d.ino WHERE i.ino IS NULL"
                             ).fetchone()
        assert dangling == (0,)
        bad_files = c.execute(
            "SELECT i.ino, i.nlink, (SELECT COUNT(*) FROM dentries d WHERE d.tree_id = i.tree_id "
            "AND d.ino = i.ino) AS names FROM inodes i WHERE (i.mode & 61440) != 16384"
        ).fetchall()
        assert [r for r in bad_files if r[1] != r[2]] == []
        assert all(r[1] >= 1 for r in bad_files), "an unlinked inode was left behind"
        bad_dirs = c.execute(
            "SELECT i.ino, i.nlink, 2 + (SELECT COUNT(*) FROM dentries d JOIN inodes s ON "
            "s.tree_id = d.tree_id AND s.ino = d.ino WHERE d.tree_id = i.tree_id AND "
            "d.parent = i.ino AND (s.mode & 61440) = 16384) FROM inodes i "
            "WHERE (i.mode & 61440) = 16384").fetchall()
        assert [r for r in bad_dirs if r[1] != r[2]] == []
        refs = c.execute(
            "SELECT c.chunk_id, c.refcount, (SELECT COUNT(*) FROM chunk_maps m WHERE "
            "m.chunk_id = c.chunk_id) FROM chunks c").fetchall()
        assert [r for r in refs if r[1] != r[2]] == []


def test_two_servers_create_rename_unlink_commit_in_one_directory(
        two: tuple[PostgresMetadata, PostgresMetadata], pg_dsn: str) -> None:
    a, b = two
    d = a.mkdir(T, ROOT_INO, b"shared", 0o755, 0, 0)
    chunks = 6
    for n in range(chunks):
        a.record_chunk("ns1", cid(n), CS, CS // 2)
    names = [b"n%d" % i for i in range(12)]  # few names: the operations collide often
    subs = [b"s%d" % i for i in range(3)]
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def work(k: int) -> None:
        md = (a, b)[k % 2]
        rnd = random.Random(k)
        for _ in range(60):
            op = rnd.choice(("create", "create", "rename", "unlink", "commit", "mkdir", "rmdir"))
            try:
                if op == "create":
                    md.create(T, d.ino, rnd.choice(names), 0o644, 0, 0)
                elif op == "rename":
                    md.rename(T, d.ino, rnd.choice(names), d.ino, rnd.choice(names),
                              forget=True)
                elif op == "unlink":
                    md.unlink(T, d.ino, rnd.choice(names), forget=True)
                elif op == "commit":
                    f = md.lookup(T, d.ino, rnd.choice(names)).ino
                    refs = [ChunkRef(i, cid(rnd.randrange(chunks)), CS) for i in range(3)]
                    md.commit_file(T, f, refs, 3 * CS)
                elif op == "mkdir":
                    md.mkdir(T, d.ino, rnd.choice(subs), 0o755, 0, 0)
                else:
                    md.rmdir(T, d.ino, rnd.choice(subs), forget=True)
                outcome = "ok"
            except (AlreadyExists, NotFound) as e:  # what the race allows
                outcome = type(e).__name__
            with lock:
                counts[f"{op}:{outcome}"] = counts.get(f"{op}:{outcome}", 0) + 1

    assert run_threads(8, work) == []
    # every kind of operation got through many times, not only its races' errors
    assert all(counts.get(f"{op}:ok", 0) >= 10 for op in ("create", "rename", "unlink",
                                                            "commit", "mkdir", "rmdir")), counts
    check_tree(pg_dsn)
    # the two engines agree with each other and with the rows
    ents, eof = b.readdir(T, d.ino, 0, 0)
    assert eof and sorted(e.name for e in ents) == sorted(e.name for e in a.readdir(T, d.ino,
                                                                                      0, 0)[0])
    subdirs = sum(1 for e in ents if stat.S_ISDIR(e.attr.mode))
    assert a.getattr(T, d.ino).nlink == 2 + subdirs


def test_two_servers_moving_directories_into_each_other_never_make_a_cycle(
        two: tuple[PostgresMetadata, PostgresMetadata], pg_dsn: str) -> None:
    a, b = two
    for round_ in range(15):
        c = a.mkdir(T, ROOT_INO, b"c%d" % round_, 0o755, 0, 0)
        e = a.mkdir(T, ROOT_INO, b"e%d" % round_, 0o755, 0, 0)
        x = a.mkdir(T, c.ino, b"A", 0o755, 0, 0)   # c/A
        y = a.mkdir(T, e.ino, b"B", 0o755, 0, 0)   # e/B
        inner_a = a.mkdir(T, x.ino, b"x", 0o755, 0, 0)  # c/A/x
        inner_b = a.mkdir(T, y.ino, b"y", 0o755, 0, 0)  # e/B/y
        moves = [(a, c.ino, b"A", inner_b.ino), (b, e.ino, b"B", inner_a.ino)]
        results: list[str] = []

        def work(k: int, moves: list[tuple[PostgresMetadata, int, bytes, int]] = moves,
                 results: list[str] = results) -> None:
            md, parent, name, dest = moves[k]
            try:  # A into B/y and B into A/x at once: both would close a cycle A -> B -> A
                md.rename(T, parent, name, dest, name)
                results.append("moved")
            except InvalidArgument:  # "into its own subtree"
                results.append("refused")

        assert run_threads(2, work) == []
        assert sorted(results) == ["moved", "refused"]
    # every directory still reaches the root
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        stuck = conn.execute(
            "WITH RECURSIVE up(start, ino, depth) AS (SELECT ino, ino, 0 FROM inodes "
            "WHERE (mode & 61440) = 16384 UNION ALL SELECT up.start, i.parent, up.depth + 1 "
            "FROM inodes i JOIN up ON i.ino = up.ino WHERE up.ino != 1 AND up.depth < 100) "
            "SELECT COUNT(DISTINCT start) FROM up WHERE depth = 100").fetchone()
    assert stuck == (0,)
    check_tree(pg_dsn)


def test_put_asset_of_one_id_by_two_servers_at_once_stores_it_once(
        two: tuple[PostgresMetadata, PostgresMetadata], pg_dsn: str) -> None:
    from aifs_core.types import AssetRecord
    a, b = two
    a.record_chunk("ns1", cid(1), CS, 10)
    rec = AssetRecord(asset_id="same", kind="blob", size=CS, chunks=[ChunkRef(0, cid(1), CS)])
    got: list[AssetRecord] = []
    assert run_threads(6, lambda k: got.append((a, b)[k % 2].put_asset("ns1", rec))) == []
    assert len({(g.asset_id, g.created_ns) for g in got}) == 1  # one stored asset, returned
    assert scalar(pg_dsn, "SELECT refcount FROM chunks") == 1


def test_migrate_on_open_by_several_servers_at_once(pg_dsn: str) -> None:
    opened: list[PostgresMetadata] = []
    try:
        assert run_threads(6, lambda k: opened.append(PostgresMetadata(pg_dsn, pool_size=1))) == []
        assert scalar(pg_dsn, "SELECT array_agg(version) FROM aifs_schema") == [SCHEMA_VERSION]
        opened[0].create_namespace(Namespace("ns1", CS, 3, "k"))
        assert [n.name for n in opened[-1].list_namespaces()] == ["ns1"]
    finally:
        for m in opened:
            m.close()


def test_newer_schema_is_refused(pg_dsn: str) -> None:
    PostgresMetadata(pg_dsn).close()
    with psycopg.connect(pg_dsn, autocommit=True) as c:
        c.execute("UPDATE aifs_schema SET version = %s", (SCHEMA_VERSION + 1,))
    with pytest.raises(InvalidArgument, match="newer"):
        PostgresMetadata(pg_dsn)


def test_lost_connections_are_replaced_and_a_dropped_database_is_unavailable(
        pg_dsn: str, postgres: Postgres) -> None:
    md = PostgresMetadata(pg_dsn, pool_size=2, timeout=2.0)  # 2 s: how long a call waits
    try:
        md.create_namespace(Namespace("ns1", CS, 3, "k"))
        md.ensure_tree(T)
        dbname = psycopg.conninfo.conninfo_to_dict(pg_dsn)["dbname"]
        admin = pg_dsn.replace(f"/{dbname}?", "/postgres?")
        kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s"
        with psycopg.connect(admin, autocommit=True) as c:
            assert c.execute(kill, (dbname,)).fetchall()  # like a database restart
        # reads and transactions cut off before COMMIT run again on fresh connections
        assert md.getattr(T, ROOT_INO).ino == ROOT_INO
        with psycopg.connect(admin, autocommit=True) as c:
            c.execute(kill, (dbname,)).fetchall()
        assert md.mkdir(T, ROOT_INO, b"after", 0o755, 0, 0).nlink == 2
        postgres.drop_database(pg_dsn)
        with pytest.raises(StoreUnavailable, match="metadata database .* cannot be reached"):
            md.mkdir(T, ROOT_INO, b"gone", 0o755, 0, 0)
        with pytest.raises(StoreUnavailable, match="cannot be reached"):
            md.getattr(T, ROOT_INO)
    finally:
        md.close()
    with pytest.raises(StoreUnavailable, match="cannot be reached"):
        PostgresMetadata(pg_dsn)


def test_durable_commit_is_synchronous_even_where_the_server_says_off(pg_dsn: str) -> None:
    md = PostgresMetadata(pg_dsn, pool_size=1)
    try:
        # the session's server runs with synchronous_commit=off (tests/services.py: speed)
        with md._pg.write() as tx:
            assert tx._c.execute("SHOW synchronous_commit").fetchone() == ("off",)
        with md._pg.write(durable=True) as tx:
            assert tx._c.execute("SHOW synchronous_commit").fetchone() == ("on",)
        with md._pg.write() as tx:  # SET LOCAL: the pooled connection did not keep it
            assert tx._c.execute("SHOW synchronous_commit").fetchone() == ("off",)
        md.create_namespace(Namespace("ns1", CS, 3, "k"))
        md.ensure_tree(T)
        f = md.create(T, ROOT_INO, b"f", 0o644, 0, 0)
        md.record_chunk("ns1", cid(1), CS, 10)
        a = md.commit_file(T, f.ino, [ChunkRef(0, cid(1), CS)], CS, durable=True)
        assert md.get_chunk_map(T, f.ino) == (a, [ChunkRef(0, cid(1), CS)])
    finally:
        md.close()
