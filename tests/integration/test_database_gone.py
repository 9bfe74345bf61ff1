"""A metadata database that goes away, or stops answering, holds no call past its deadline (a
real server on a real PostgreSQL and SeaweedFS; the database is dropped under it, or a table
the call reads is locked by another session).

The server waits for a pooled connection at most the pool's timeout (10 s by default); a call
whose client gave it less must end at its own deadline, or each such call keeps one of the
server's worker threads for the whole pool timeout (the Standards: every server-side loop is
bounded by the call's deadline). The time a call took on the server is read from its own
latency histogram (`aifs_rpc_seconds`), not guessed from the client's side, which gives up at
its deadline either way.
"""

from __future__ import annotations

import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest

from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from tests.cluster import start_cluster
from tests.helpers import call_md, open_channel
from tests.services import Postgres, S3Location

CALL_TIMEOUT = 1.5   # seconds the client gives each call
POOL_TIMEOUT = 10.0  # server/metadata/postgres.POOL_TIMEOUT, the wait before this change


def _getattr_seconds(url: str) -> tuple[float, int]:
    """(seconds spent, calls) in GetAttr calls that failed, from the server's histogram."""
    text = urllib.request.urlopen(url, timeout=30).read().decode()
    got = {"sum": 0.0, "count": 0.0}
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        for kind in got:
            if series.startswith(f"aifs_rpc_seconds_{kind}{{") \
                    and 'method="GetAttr"' in series and 'code="OK"' not in series:
                got[kind] += float(value)
    return got["sum"], int(got["count"])


class _Server:
    """One server of a real cluster on PostgreSQL + SeaweedFS, with its metrics URL and a
    GetAttr of the root as the client gives it `timeout` seconds."""

    def __init__(self, tmp_path: Path, pg_dsn: str, s3_bucket: S3Location) -> None:
        self.cluster = start_cluster(tmp_path / "c", n=1, meta_url=pg_dsn, s3=s3_bucket,
                                     server_args=("--metrics-port", "0"))
        log = self.cluster.servers[0].log()
        m = re.search(r"metrics on (\S+)\)", log)
        assert m, log
        self.url = m.group(1)
        self.token = self.cluster.token_file.read_text().strip()

    def getattr_root(self, fs: Any, timeout: float) -> int:
        return int(fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(self.token),
                              timeout=timeout).attr.ino)

    def failed_getattrs(self, n: int) -> tuple[float, int]:
        """(seconds, calls) of the failed GetAttrs once `n` have ended (or after ~20 s)."""
        for _ in range(100):
            spent, got = _getattr_seconds(self.url)
            if got >= n:
                break
            time.sleep(0.2)
        return spent, got


@pytest.fixture
def server(tmp_path: Path, pg_dsn: str, s3_bucket: S3Location) -> Iterator[_Server]:
    s = _Server(tmp_path, pg_dsn, s3_bucket)
    try:
        yield s
    finally:
        s.cluster.stop()


def test_calls_end_at_their_deadline_when_the_database_is_gone(
        server: _Server, postgres: Postgres, pg_dsn: str) -> None:
    with open_channel(server.cluster.servers[0].address) as ch:
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        assert server.getattr_root(fs, 30) == 1
        postgres.drop_database(pg_dsn)
        codes = []
        for _ in range(3):
            try:
                server.getattr_root(fs, CALL_TIMEOUT)
            except grpc.RpcError as e:
                codes.append(e.code())
        # the database is gone: no call succeeds, each says so or runs out of time
        assert len(codes) == 3, codes
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE,
                              grpc.StatusCode.DEADLINE_EXCEEDED}, codes
    # every failed call has ended on the server (the histogram is written at the end),
    # each within its deadline and well short of the pool's timeout
    spent, n = server.failed_getattrs(3)
    assert n == 3, (n, spent)
    assert spent / n < CALL_TIMEOUT + 2.0 < POOL_TIMEOUT, (spent, n)


def test_a_statement_the_database_does_not_answer_ends_at_the_calls_deadline(
        server: _Server, pg_dsn: str) -> None:
    """A statement already sent waits for the database as long as it takes (a lock another
    session holds, a host that stopped answering): the server cuts the connection at the
    call's deadline (server/metadata/pg_cut.py), and the database is used again after."""
    with open_channel(server.cluster.servers[0].address) as ch:
        fs = filesystem_pb2_grpc.FilesystemStub(ch)
        assert server.getattr_root(fs, 30) == 1
        with psycopg.connect(pg_dsn) as locker:
            # held until the block ends: every statement on `inodes` waits for it
            locker.execute("LOCK TABLE inodes IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(grpc.RpcError) as e:
                server.getattr_root(fs, CALL_TIMEOUT)
            assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, e.value
            # the call ended on the server while the lock is still held (its latency is
            # written when it ends), within its deadline and a margin
            spent, n = server.failed_getattrs(1)
            assert n == 1, f"the call still waits for the database after {spent} s"
            assert spent < CALL_TIMEOUT + 2.0, spent
        # the lock is gone: the server answers again on a fresh connection
        assert server.getattr_root(fs, 30) == 1
