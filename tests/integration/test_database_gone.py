"""A metadata database that goes away holds no call past its deadline (a real server on a real
PostgreSQL and SeaweedFS; the database is dropped under it).

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
from pathlib import Path

import grpc

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


def test_calls_end_at_their_deadline_when_the_database_is_gone(
        tmp_path: Path, postgres: Postgres, pg_dsn: str, s3_bucket: S3Location) -> None:
    c = start_cluster(tmp_path / "c", n=1, meta_url=pg_dsn, s3=s3_bucket,
                      server_args=("--metrics-port", "0"))
    try:
        m = re.search(r"metrics on (\S+)\)", c.servers[0].log())
        assert m, c.servers[0].log()
        url = m.group(1)
        token = c.token_file.read_text().strip()
        with open_channel(c.servers[0].address) as ch:
            fs = filesystem_pb2_grpc.FilesystemStub(ch)
            assert fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(token),
                              timeout=30).attr.ino == 1
            postgres.drop_database(pg_dsn)
            codes = []
            for _ in range(3):
                try:
                    fs.GetAttr(filesystem_pb2.InodeRequest(ino=1), metadata=call_md(token),
                               timeout=CALL_TIMEOUT)
                except grpc.RpcError as e:
                    codes.append(e.code())
            # the database is gone: no call succeeds, each says so or runs out of time
            assert len(codes) == 3, codes
            assert set(codes) <= {grpc.StatusCode.UNAVAILABLE,
                                  grpc.StatusCode.DEADLINE_EXCEEDED}, codes
        # every failed call has ended on the server (the histogram is written at the end),
        # each within its deadline and well short of the pool's timeout
        for _ in range(100):
            spent, n = _getattr_seconds(url)
            if n >= 3:
                break
            time.sleep(0.2)
        assert n == 3, (n, spent)
        assert spent / n < CALL_TIMEOUT + 2.0 < POOL_TIMEOUT, (spent, n)
    finally:
        c.stop()
