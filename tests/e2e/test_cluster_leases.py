"""Leases across servers (docs/LEASES.md, "Across servers"; server/lease_bus.py): servers on
one PostgreSQL grant leases, and a change through one server recalls the leases held through
the others before it commits.

One cluster for the module (a fresh database of the session PostgreSQL, a fresh prefix of the
session SeaweedFS bucket, servers with a 2 s lease term and metrics), mount A on server 0 and
mount B on server 1:
- warm stat/open on A of a file nobody changes cost zero calls on server 0 (counted from its
  Prometheus metrics): leases are granted in the cluster;
- write+close on B then open+read on A, 120 rounds of in-place rewrites, os.replace and
  unlink/recreate: zero stale reads;
- a third server SIGKILLed while its mount holds a lease: a writer through server 1 completes
  (it waits for the dead server's registration to expire, then one term);
- server 0's LISTEN connection terminated (pg_terminate_backend): it recalls its leases and
  grants none until it has joined again, reads stay fresh, and leases come back;
- a branch reset through server 1 (a whole-tree recall) reaches mount A's lease (last: it
  resets the tree the other tests wrote in).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.cluster import READY, Cluster, SharedServer, session_cluster
from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.e2e.test_cluster_mount import Endpoint
from tests.e2e.test_leases import _check_round, _wait_leased, calls, total
from tests.services import Postgres, SeaweedFS

TERM = 2.0      # seconds: the servers' lease term


@dataclass
class Metered:
    """What test_leases.calls() reads of a server: its ready line (with the metrics URL)."""
    ready_line: str


def metered(srv: SharedServer) -> Metered:
    for line in srv.log_path.read_text(errors="replace").splitlines():
        if line.startswith(READY) and "metrics on " in line:
            return Metered(line)
    raise AssertionError(f"no metrics URL in the server's log:\n{srv.log()}")


@pytest.fixture(scope="module")
def cluster(postgres: Postgres, seaweedfs: SeaweedFS) -> Iterator[Cluster]:
    with session_cluster(postgres, seaweedfs, "e2e_cleases", lease_term=TERM,
                         server_args=("--metrics-port", "0")) as c:
        yield c


def mount_on(c: Cluster, srv: SharedServer) -> Mount:
    # attr/entry timeout 0: every stat and open reaches the mount (then its leases answer)
    return start_mount(Endpoint(srv.address, str(c.token_file)),  # type: ignore[arg-type]
                       "--attr-timeout", "0", "--entry-timeout", "0")


@pytest.fixture(scope="module")
def two_mounts(cluster: Cluster) -> Iterator[tuple[Mount, Mount]]:
    made: list[Mount] = []
    try:
        for srv in cluster.servers[:2]:
            made.append(mount_on(cluster, srv))
        yield made[0], made[1]
    finally:
        for m in reversed(made):
            teardown_mount(m)


def test_warm_stat_open_cost_zero_calls_on_a_cluster(cluster: Cluster,
                                                     two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    s0 = metered(cluster.servers[0])
    (b.path / "still.bin").write_bytes(b"s" * 5000)
    f = a.path / "still.bin"
    _wait_leased(a, f, s0)            # type: ignore[arg-type]
    before = calls(s0)                # type: ignore[arg-type]
    for _ in range(300):
        assert os.stat(f).st_size == 5000
        with open(f, "rb") as fh:
            assert fh.read() == b"s" * 5000
    after = calls(s0)                 # type: ignore[arg-type]
    assert total(after) == total(before), {k: after[k] - before.get(k, 0) for k in after}


def test_close_to_open_between_mounts_on_two_servers_120_rounds(
        cluster: Cluster, two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    (a.path / "c2o").mkdir()
    sub_a, sub_b = _Sub(a, "c2o"), _Sub(b, "c2o")
    (sub_b.path / "f.txt").write_bytes(b"start")
    _wait_leased(sub_a, sub_a.path / "f.txt", metered(cluster.servers[0]))  # type: ignore[arg-type]
    for i in range(120):
        _check_round(sub_a, sub_b, i)  # type: ignore[arg-type]


@dataclass
class _Sub:
    """A directory of a mount, shaped as the Mount _check_round and _wait_leased use."""
    m: Mount
    name: str

    @property
    def path(self) -> Path:
        return self.m.path / self.name

    def log(self) -> str:
        return self.m.log()


def test_a_sigkilled_server_delays_a_writer_on_another_server_boundedly(
        cluster: Cluster, two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    c = cluster.add_server()
    mc = mount_on(cluster, c)
    try:
        (b.path / "held.txt").write_bytes(b"v1")
        _wait_leased(mc, mc.path / "held.txt", metered(c))  # type: ignore[arg-type]
        c.kill()                       # its registration stays until it expires
        # succeeds within the mount's 30 s call deadline (its retry budget is no longer): it
        # waits the registration's life (one term) + one term; a writer that waited for the
        # dead server's answer until its deadline fails here
        (b.path / "held.txt").write_bytes(b"v2")
        assert (a.path / "held.txt").read_bytes() == b"v2"
    finally:
        teardown_mount(mc)


def _terminate_listener(cluster: Cluster, srv: SharedServer) -> int:
    """pg_terminate_backend on the server's LISTEN connection (named after its bus id, which
    the server logs when it joins). On a loaded machine a lapsed heartbeat may have the server
    rejoining under a new id right now: try again (for a bounded time) until one is there."""
    until = time.monotonic() + 20
    while True:
        bus_id = srv.log_path.read_text(errors="replace").rsplit("lease bus joined as ", 1)[1]
        with psycopg.connect(cluster.meta_url, autocommit=True) as conn:
            rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE "
                                "application_name = %s",
                                (f"aifs-lease-{bus_id.split()[0]}",)).fetchall()
        if rows or time.monotonic() > until:
            return len(rows)
        time.sleep(0.2)


def _log_count(srv: SharedServer, text: str) -> int:
    return srv.log_path.read_text(errors="replace").count(text)


def test_a_broken_listen_connection_stops_grants_until_joined_again(
        cluster: Cluster, two_mounts: tuple[Mount, Mount]) -> None:
    a, b = two_mounts
    s0, srv0 = metered(cluster.servers[0]), cluster.servers[0]
    (a.path / "brk").mkdir()
    sub_a, sub_b = _Sub(a, "brk"), _Sub(b, "brk")
    (sub_b.path / "f.txt").write_bytes(b"start")
    f = sub_a.path / "f.txt"
    _wait_leased(sub_a, f, s0)  # type: ignore[arg-type]
    joined = _log_count(srv0, "lease bus joined")
    assert _terminate_listener(cluster, srv0) == 1
    until = time.monotonic() + 30
    while _log_count(srv0, "leases suspended") == 0:
        assert time.monotonic() < until, srv0.log()
        time.sleep(0.05)
    # its leases are recalled: A asks again (whether or not the bus is back by now)
    until = time.monotonic() + 10
    while True:
        before = total(calls(s0))  # type: ignore[arg-type]
        os.stat(f)
        if total(calls(s0)) > before:  # type: ignore[arg-type]
            break
        assert time.monotonic() < until, "the lease on f outlived the broken bus"
        time.sleep(0.05)
    for i in range(60):                # correctness across the break and the rejoin
        _check_round(sub_a, sub_b, i)  # type: ignore[arg-type]
    until = time.monotonic() + 30
    while _log_count(srv0, "lease bus joined") == joined:
        assert time.monotonic() < until, srv0.log()
        time.sleep(0.05)
    # grants come back (a loaded machine may lapse a 2 s registration once more and join again
    # meanwhile: the wait spans that too)
    try:
        _wait_leased(sub_a, f, s0, timeout=30)  # type: ignore[arg-type]
    except AssertionError as e:
        raise AssertionError(f"{e}\nserver 0:\n{srv0.log()}") from None


def test_a_branch_reset_through_one_server_recalls_leases_held_through_another(
        cluster: Cluster, two_mounts: tuple[Mount, Mount]) -> None:
    """A whole-tree change (recall with no inode list) crosses servers too."""
    from aifsfs.client import AIFSClient

    a, _ = two_mounts
    s0 = metered(cluster.servers[0])
    f = a.path / "reset.bin"
    f.write_bytes(b"1" * 5000)
    with AIFSClient(cluster.servers[1].address, token_file=cluster.token_file) as sdk:
        snap = sdk.versions.snapshot("main", "before")
        f.write_bytes(b"2" * 5000)          # same size: only the content tells
        _wait_leased(a, f, s0)              # type: ignore[arg-type]
        sdk.versions.reset_branch("main", snap["id"])
    assert f.read_bytes() == b"1" * 5000
