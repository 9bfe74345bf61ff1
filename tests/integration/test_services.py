"""The session services of tests/services.py are what they claim: loopback or unix sockets only,
PostgreSQL not running as root, a fresh database per test."""

from __future__ import annotations

import os

import psycopg
import pytest

from tests.services import Postgres, SeaweedFS


def _listening_ports(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket in LISTEN state owned by `pid` (from /proc)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = set()
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as f:
            for line in f.readlines()[1:]:
                parts = line.split()
                local, state, inode = parts[1], parts[3], parts[9]
                if state == "0A" and inode in inodes:  # 0A: LISTEN
                    addr, port = local.rsplit(":", 1)
                    found.add((addr, int(port, 16)))
    return found


def test_seaweedfs_listens_on_loopback_only(seaweedfs: SeaweedFS) -> None:
    ports = _listening_ports(seaweedfs.proc.pid)
    assert ports, "SeaweedFS listens nowhere?"
    # 0100007F is 127.0.0.1 in /proc's little-endian hex
    assert {addr for addr, _ in ports} == {"0100007F"}, ports
    assert int(seaweedfs.endpoint.rsplit(":", 1)[1]) in {p for _, p in ports}


def test_postgres_is_a_unix_socket_only_and_not_root(postgres: Postgres, pg_dsn: str) -> None:
    assert _listening_ports(postgres.proc.pid) == set()  # listen_addresses=''
    if os.geteuid() == 0:
        assert os.stat(f"/proc/{postgres.proc.pid}").st_uid != 0
    with psycopg.connect(pg_dsn, connect_timeout=10) as conn:
        conn.execute("CREATE TABLE t (k int PRIMARY KEY, v text)")
        conn.execute("INSERT INTO t VALUES (1, 'one')")
        row = conn.execute("SELECT v, current_database(), current_setting('fsync') "
                           "FROM t").fetchone()
    assert row is not None and row[0] == "one" and f"/{row[1]}?" in pg_dsn
    assert row[2] == "off"


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_a_fresh_database(pg_dsn: str, attempt: int) -> None:
    with psycopg.connect(pg_dsn, connect_timeout=10) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname='public'"
                              ).fetchone()
        assert tables == (0,)
        conn.execute("CREATE TABLE only_here (x int)")
