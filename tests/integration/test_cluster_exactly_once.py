"""Exactly-once changing calls (server/request_log.py): a call retried after its server committed
and died before answering gets the committed result -- the same inode for a create, success for
an unlink -- not AlreadyExists / NotFound; a different call with the same name still gets
AlreadyExists. Real servers killed by themselves right after the commit (the test hook
AIFS_TEST_KILL_AFTER_COMMIT), restarted on the same data dir (SQLite) or failed over to another
server of a PostgreSQL + SeaweedFS cluster; replays counted from the servers' metrics. Below
them, RequestLog over both real engines: a retry that races its original."""

from __future__ import annotations

import re
import shutil
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from aifs_core.errors import AIFSError, AlreadyExists, InvalidArgument, NotFound
from aifs_core.types import ROOT_INO, Attr, Namespace, TreeRef
from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifs_server.metadata.posix import PosixMeta
from aifs_server.metadata.postgres import PostgresMetadata
from aifs_server.metadata.sqlite import SQLiteMetadata
from aifs_server.request_log import ATTR_OR_NONE, MAX_REQUEST_ID, TABLE, RequestLog
from aifsfs.client import AIFSClient
from tests.cluster import SharedServer, session_cluster, start_shared_server
from tests.helpers import (
    ServerProc,
    call_md,
    make_data_dir,
    short_tmpdir,
    start_server,
    stop_server,
)
from tests.services import Postgres, SeaweedFS

HOOK = "AIFS_TEST_KILL_AFTER_COMMIT"
METRICS = re.compile(r"metrics on http://127\.0\.0\.1:(\d+)/")


def replays(log_text: str) -> dict[str, float]:
    """aifs_request_replays_total by method, scraped from the server whose log is given."""
    m = METRICS.search(log_text)
    assert m, f"no metrics port in the server's output:\n{log_text[-2000:]}"
    text = urllib.request.urlopen(f"http://127.0.0.1:{m.group(1)}/metrics", timeout=10
                                  ).read().decode()
    return {k: float(v) for k, v in re.findall(
        r'^aifs_request_replays_total\{method="(\w+)"\} (\S+)$', text, re.M)}


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - the test reads it
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    return t, out


def joined(t: threading.Thread, out: dict[str, Any]) -> Any:
    t.join(90)
    assert not t.is_alive(), "the retried call did not return"
    if "error" in out:
        raise out["error"]
    return out["result"]


# --- one embedded server (SQLite), killed after the commit and started again -------------------

@pytest.fixture
def restartable(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], ServerProc]]:
    """start(hook) -> a server on one data dir that also listens on one fixed socket (the
    client's address), with AIFS_TEST_KILL_AFTER_COMMIT=hook; every server is stopped at the
    end."""
    base = short_tmpdir()
    data = make_data_dir(Path(base) / "data")
    started: list[ServerProc] = []

    def start(hook: str) -> ServerProc:
        monkeypatch.setenv(HOOK, hook)
        try:
            sp = start_server(data, listen=[f"unix:{base}/fixed.sock"],
                              args=["--metrics-port", "0"])
        finally:
            monkeypatch.delenv(HOOK)
        started.append(sp)
        return sp

    start.address = f"unix:{base}/fixed.sock"  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for sp in started:
            stop_server(sp)
        shutil.rmtree(base, ignore_errors=True)


def _killed_then_restarted(sp: ServerProc, start: Callable[[str], ServerProc], hook: str
                           ) -> ServerProc:
    assert sp.proc.wait(60) == -9, f"the server was not killed after the commit:\n{sp.log()}"
    return start(hook)


def test_retries_after_a_commit_without_reply_happen_once_sqlite(
        restartable: Callable[[str], ServerProc]) -> None:
    sp = restartable("Create")
    address = restartable.address  # type: ignore[attr-defined]
    with AIFSClient(address, token=sp.token, retry_for=90) as client:
        # Create: committed, then the server died before answering; the retry goes to the
        # restarted server, which answers from the request log
        t, out = in_thread(lambda: client.create(ROOT_INO, b"f", 0o100644))
        sp = _killed_then_restarted(sp, restartable, "Unlink")
        made: Attr = joined(t, out)
        assert client.lookup(ROOT_INO, b"f").ino == made.ino
        assert replays(sp.ready_line) == {"Create": 1.0}
        # a new create of the same name is another call: AlreadyExists as ever
        with pytest.raises(AlreadyExists):
            client.create(ROOT_INO, b"f", 0o100644)

        # Unlink: the retry succeeds (not NotFound)
        t, out = in_thread(lambda: client.unlink(ROOT_INO, b"f"))
        sp = _killed_then_restarted(sp, restartable, "CreateBranch")
        joined(t, out)
        with pytest.raises(NotFound):
            client.lookup(ROOT_INO, b"f")
        assert replays(sp.ready_line) == {"Unlink": 1.0}
        with pytest.raises(NotFound):
            client.unlink(ROOT_INO, b"f")

        # a versioning change: the branch is made once and its reply comes back whole
        t, out = in_thread(lambda: client.versions.create_branch("b1"))
        sp = _killed_then_restarted(sp, restartable, "DeleteAsset")
        info = joined(t, out)
        assert info["name"] == "b1"
        assert [b["name"] for b in client.versions.list_branches()].count("b1") == 1
        assert replays(sp.ready_line) == {"CreateBranch": 1.0}
        with pytest.raises(AlreadyExists):
            client.versions.create_branch("b1")

        # DeleteAsset: the retry succeeds (not NotFound)
        aid = client.put_asset(b"an asset")
        t, out = in_thread(lambda: client.assets.delete_asset(aid))
        sp = _killed_then_restarted(sp, restartable, "")
        joined(t, out)
        assert replays(sp.ready_line) == {"DeleteAsset": 1.0}
        with pytest.raises(NotFound):
            client.assets.delete_asset(aid)


def test_a_request_id_is_bounded(restartable: Callable[[str], ServerProc]) -> None:
    sp = restartable("")
    with grpc.insecure_channel(sp.address) as ch:
        stub = filesystem_pb2_grpc.FilesystemStub(ch)
        with pytest.raises(grpc.RpcError) as e:
            stub.Create(filesystem_pb2.CreateRequest(
                parent=ROOT_INO, name=b"x", mode=0o100644,
                request_id=b"r" * (MAX_REQUEST_ID + 1)), metadata=call_md(sp.token), timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        # the same call with an id of the limit's length works; nothing was made before
        stub.Create(filesystem_pb2.CreateRequest(
            parent=ROOT_INO, name=b"x", mode=0o100644, request_id=b"r" * MAX_REQUEST_ID),
            metadata=call_md(sp.token), timeout=10)


# --- a cluster: the retry fails over to another server ------------------------------------------

def test_retries_fail_over_and_happen_once_cluster(postgres: Postgres,
                                                   seaweedfs: SeaweedFS) -> None:
    with session_cluster(postgres, seaweedfs, "exactly_once", n=1,
                         server_args=("--metrics-port", "0")) as c:
        hooked: list[SharedServer] = []
        try:
            for i, hook in enumerate(("Create", "Unlink")):
                hooked.append(start_shared_server(
                    c.meta_url, c.store_url, {**c.env, HOOK: hook}, [f"unix:{c.base}/k{i}.sock"],
                    log_path=c.base / f"hooked{i}.log", extra=("--metrics-port", "0")))
            a, b = hooked
            plain = c.servers[0]
            order = ",".join(s.address for s in (a, b, plain))
            with AIFSClient(order, token_file=c.token_file, retry_for=60) as client:
                made = client.create(ROOT_INO, b"f", 0o100644)   # A commits and dies
                assert a.proc.wait(30) == -9
                assert client.channel.address == b.address
                assert client.lookup(ROOT_INO, b"f").ino == made.ino
                assert replays(b.log_path.read_text()) == {"Create": 1.0}
                with pytest.raises(AlreadyExists):
                    client.create(ROOT_INO, b"f", 0o100644)

                client.unlink(ROOT_INO, b"f")                    # B commits and dies
                assert b.proc.wait(30) == -9
                assert client.channel.address == plain.address
                assert replays(plain.log_path.read_text()) == {"Unlink": 1.0}
                with pytest.raises(NotFound):
                    client.lookup(ROOT_INO, b"f")
        finally:
            for s in hooked:
                s.stop()


# --- RequestLog over both engines: a retry racing its original ---------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PosixMeta]:
    meta: PosixMeta
    if request.param == "sqlite":
        meta = SQLiteMetadata(tmp_path / "meta.db")
    else:
        meta = PostgresMetadata(request.getfixturevalue("pg_dsn"), pool_size=4)
    try:
        meta.create_namespace(Namespace("ns1", 1 << 16, 3, "key-1"))
        meta.ensure_tree(TreeRef("ns1"))
        yield meta
    finally:
        meta.close()


def test_a_retry_racing_its_original_gets_the_original_result(engine: PosixMeta) -> None:
    tree = TreeRef("ns1")
    log = RequestLog(engine.store)
    RequestLog(engine.store)   # a second server on the same database: the table is there
    runs: list[str] = []

    def create() -> Attr:
        runs.append("create")
        return engine.create(tree, ROOT_INO, b"f", 0o100644, 0, 0)

    first = log.once("Create", "ns1", b"id-1", create, ATTR_OR_NONE, retry=False)
    # a retry after the commit (marked as one): answered from the log, nothing runs
    assert log.once("Create", "ns1", b"id-1", create, ATTR_OR_NONE) == first
    assert runs == ["create"]
    # an unmarked one runs, fails (the name exists) and is answered from the log
    assert log.once("Create", "ns1", b"id-1", create, ATTR_OR_NONE, retry=False) == first
    assert runs == ["create", "create"]
    # another call (another id) runs, and fails as it should
    with pytest.raises(AlreadyExists):
        log.once("Create", "ns1", b"id-2", create, ATTR_OR_NONE)
    # ids are per namespace
    assert log.recorded("ns2", b"id-1") is None

    # The retry found nothing recorded, then its original committed while it ran: the change
    # itself fails (the name is gone) and the retry answers with the original's result.
    engine.create(tree, ROOT_INO, b"g", 0o100644, 0, 0)

    def unlink() -> Attr:
        return engine.unlink(tree, ROOT_INO, b"g")

    def racing_unlink() -> Attr:
        original = log.once("Unlink", "ns1", b"id-3", unlink, ATTR_OR_NONE, retry=False)
        assert original is not None and original.nlink == 0
        return unlink()   # NotFound: the original removed it
    got = log.once("Unlink", "ns1", b"id-3", racing_unlink, ATTR_OR_NONE, retry=False)
    assert got is not None and got.nlink == 0

    # A change that would succeed twice (setxattr): the second row for the id fails on the
    # primary key, which rolls the second change back.
    a = engine.lookup(tree, ROOT_INO, b"f")

    def setxattr(value: bytes) -> Callable[[], None]:
        return lambda: engine.setxattr(tree, a.ino, b"user.k", value)

    def racing_setxattr() -> None:
        log.once("SetXattr", "ns1", b"id-4", setxattr(b"first"), ATTR_OR_NONE, retry=False)
        engine.setxattr(tree, a.ino, b"user.k", b"second")
    log.once("SetXattr", "ns1", b"id-4", racing_setxattr, ATTR_OR_NONE, retry=False)
    assert engine.getxattr(tree, a.ino, b"user.k") == b"first"

    # bounded: an over-long id is refused; old rows expire
    with pytest.raises(InvalidArgument):
        log.once("Create", "ns1", b"x" * (MAX_REQUEST_ID + 1), create, ATTR_OR_NONE)
    assert log.expire(before_ns=1 << 62) == 3
    assert log.recorded("ns1", b"id-1") is None
    assert log.once("Create", "ns1", b"", lambda: None, ATTR_OR_NONE) is None  # no id: runs
    assert TABLE == "aifs_request_log"


def test_errors_are_not_recorded(engine: PosixMeta) -> None:
    """A call that failed left nothing: its retry runs again (and fails again, or succeeds
    when what stopped it is gone)."""
    tree = TreeRef("ns1")
    log = RequestLog(engine.store)

    def mkdir() -> Attr:
        return engine.mkdir(tree, 999, b"d", 0o755, 0, 0)   # no such parent
    with pytest.raises(AIFSError):
        log.once("MkDir", "ns1", b"id-9", mkdir, ATTR_OR_NONE)
    assert log.recorded("ns1", b"id-9") is None
