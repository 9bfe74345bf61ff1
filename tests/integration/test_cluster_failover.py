"""Several stateless servers on one PostgreSQL database and one SeaweedFS bucket (issue 12):
every server sees what another wrote, and a client given all their addresses carries on when
the server it uses is SIGKILLed mid-run. Real processes and services; always stopped."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Iterator

import pytest

from aifs_core.types import ROOT_INO
from aifsfs.client import AIFSClient
from tests.cluster import Cluster, temp_cluster
from tests.services import S3Location


@pytest.fixture
def cluster(pg_dsn: str, s3_bucket: S3Location) -> Iterator[Cluster]:
    with temp_cluster(pg_dsn, s3_bucket) as c:
        yield c


def test_servers_share_one_deployment(cluster: Cluster) -> None:
    a, b = cluster.servers
    with AIFSClient(a.address, token_file=cluster.token_file) as ca, \
            AIFSClient(b.address, token_file=cluster.token_file) as cb:
        d = ca.mkdir(ROOT_INO, b"shared", 0o755)
        data = os.urandom(300_000)
        aid = ca.put_asset(data)
        assert cb.lookup(ROOT_INO, b"shared").ino == d.ino
        assert cb.get_asset(aid)["data"] == data
        # the socket's own token file works too: both servers mint from one root key
        assert [n["name"] for n in cb.list_namespaces()] == ["default"]
    # a server that starts later joins the same deployment
    c = cluster.add_server()
    with AIFSClient(c.address, token_file=cluster.token_file) as cc:
        assert stat.S_ISDIR(cc.lookup(ROOT_INO, b"shared").mode)


def test_client_fails_over_when_its_server_is_killed(cluster: Cluster) -> None:
    blobs: dict[str, bytes] = {}
    errors: list[BaseException] = []
    stop = threading.Event()
    with AIFSClient(cluster.addresses, token_file=cluster.token_file, retry_for=30) as client:
        first = client.channel.address
        assert first == cluster.servers[0].address

        def writer() -> None:
            i = 0
            try:
                while not stop.is_set() and i < 2000:
                    data = os.urandom(20_000 + i) + i.to_bytes(4, "big")
                    blobs[client.put_asset(data)] = data
                    client.create(ROOT_INO, f"f{i}".encode(), 0o100644)
                    i += 1
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)

        t = threading.Thread(target=writer)
        t.start()
        try:
            deadline = time.monotonic() + 30
            while len(blobs) < 20 and time.monotonic() < deadline and t.is_alive():
                time.sleep(0.02)
            cluster.servers[0].kill()                # mid-run: calls are in flight
            before = len(blobs)
            deadline = time.monotonic() + 30
            while len(blobs) < before + 20 and time.monotonic() < deadline and t.is_alive():
                time.sleep(0.02)
        finally:
            stop.set()
            t.join(60)
        assert not errors, errors
        assert len(blobs) >= before + 20, "the client did not carry on after the kill"
        assert client.channel.address == cluster.servers[1].address
        assert client.channel.failovers >= 1
        # everything written (before and after the kill) reads back whole from the survivor
        for aid, data in blobs.items():
            assert client.get_asset(aid)["data"] == data
        names = set()
        cookie = 0
        for _ in range(100):  # pages of 1000: bounded
            page, more = client.readdir(ROOT_INO, cookie)
            names.update(e.name for e in page)
            if not more or not page:
                break
            cookie = page[-1].cookie
        assert {f"f{i}".encode() for i in range(len(blobs))} <= names
        fsck = client.fsck()
        assert fsck["ok"], fsck["problems"]
