"""Change events over a real server (AIFSClient.watch, session.proto Watch/Events): what each
change reports, the prefix, the tree (namespace, branch) a watcher sees, the token it needs,
the bounded queue's overflow, the watcher going away with its stream, and a broken stream
resumed: exactly the missed events after a cut connection, overflow after a server restart."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from aifs_core.types import ROOT_INO, SET_MODE
from aifs_server.auth import mint_token
from aifsfs.client import AIFSClient
from aifsfs.errors import RemoteError, ServerUnavailable
from aifsfs.rpc.transport_cut import cut_connections
from aifsfs.rpc.watch import Event, Watch
from tests.cluster import session_cluster
from tests.helpers import ServerProc, make_data_dir, start_server, stop_server
from tests.services import Postgres, SeaweedFS


@pytest.fixture
def client(server: ServerProc) -> Iterator[AIFSClient]:
    c = AIFSClient(server.address, token_file=server.token_file)
    try:
        yield c
    finally:
        c.close()


def _events(w: Watch, n: int, timeout: float = 10.0) -> list[tuple[str, str]]:
    """The next n events as (kind, path); fails if fewer come within `timeout`."""
    out: list[tuple[str, str]] = []
    end = time.monotonic() + timeout
    while len(out) < n:
        e = w.get(timeout=max(0.0, end - time.monotonic()))
        assert e is not None, f"only {out} of {n} events came"
        out.append((e.kind, e.path))
    return out


def _quiet(w: Watch, wait: float = 0.5) -> None:
    e = w.get(timeout=wait)
    assert e is None, f"an event nobody caused: {e}"


def test_each_change_reports_its_path(client: AIFSClient) -> None:
    with client.watch("/") as w:
        d = client.mkdir(ROOT_INO, b"data")
        f = client.create(d.ino, b"a.bin")
        client.commit_file(f.ino, [], 0)
        client.setattr(f.ino, SET_MODE, mode=0o600)
        client.setxattr(f.ino, b"user.k", b"v")
        client.symlink(d.ino, b"ln", b"a.bin")
        client.link(f.ino, ROOT_INO, b"hard")
        client.rename(d.ino, b"a.bin", ROOT_INO, b"b.bin")
        client.unlink(ROOT_INO, b"b.bin")
        client.unlink(d.ino, b"ln")
        client.rmdir(ROOT_INO, b"data")
        assert _events(w, 12) == [
            ("created", "/data"), ("created", "/data/a.bin"), ("changed", "/data/a.bin"),
            ("changed", "/data/a.bin"), ("changed", "/data/a.bin"), ("created", "/data/ln"),
            ("created", "/hard"), ("removed", "/data/a.bin"), ("created", "/b.bin"),
            ("removed", "/b.bin"), ("removed", "/data/ln"), ("removed", "/data")]
        _quiet(w)


def test_events_carry_the_inode_and_kind_of_entry(client: AIFSClient) -> None:
    with client.watch() as w:
        d = client.mkdir(ROOT_INO, b"d")
        f = client.create(d.ino, b"f")
        assert [w.get(10), w.get(10)] == [Event("created", "/d", d.ino, True),
                                          Event("created", "/d/f", f.ino, False)]


def test_only_paths_under_the_prefix(client: AIFSClient) -> None:
    a = client.mkdir(ROOT_INO, b"a")
    ab = client.mkdir(ROOT_INO, b"ab")
    with client.watch("/a/") as w:
        client.create(ab.ino, b"x")              # "/ab/x": not under "/a"
        client.create(ROOT_INO, b"a.txt")
        sub = client.mkdir(a.ino, b"sub")
        client.create(sub.ino, b"deep")
        client.rename(a.ino, b"sub", ab.ino, b"moved")   # leaves the prefix: removed only
        assert _events(w, 3) == [("created", "/a/sub"), ("created", "/a/sub/deep"),
                                 ("removed", "/a/sub")]
        _quiet(w)


def test_a_watcher_sees_its_own_namespace_only(server: ServerProc,
                                               client: AIFSClient) -> None:
    client.format(namespace="other")
    other = AIFSClient(server.address, token_file=server.token_file, namespace="other")
    try:
        with other.watch() as w_other, client.watch() as w_main:
            client.create(ROOT_INO, b"in-main")
            other.create(ROOT_INO, b"in-other")
            assert _events(w_main, 1) == [("created", "/in-main")]
            assert _events(w_other, 1) == [("created", "/in-other")]
            _quiet(w_main)
            _quiet(w_other, 0.1)
    finally:
        other.close()


def test_watching_needs_the_stat_verb(server: ServerProc) -> None:
    key = (server.data_dir / "macaroon.key").read_bytes()
    c = AIFSClient(server.address, token=mint_token(key, "default", ["put"], 600))
    try:
        with pytest.raises(RemoteError) as ei:
            c.watch()
        assert "stat" in str(ei.value)
    finally:
        c.close()
    ok = AIFSClient(server.address, token=mint_token(key, "default", ["stat"], 600))
    try:
        with ok.watch() as w:
            AIFSClient(server.address, token_file=server.token_file).create(ROOT_INO, b"f")
            assert _events(w, 1) == [("created", "/f")]
    finally:
        ok.close()


def test_no_event_is_lost_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A server keeping 5 events per watcher, a reader that stops reading while 2,048 changes
    happen (1,024 removals in one call): whatever was dropped, the events that come are in
    order and, if any is missing, an overflow was reported (the queue's overflow itself:
    tests/unit/test_events.py)."""
    monkeypatch.setenv("AIFS_WATCH_EVENTS_MAX", "5")
    sp = start_server(make_data_dir(tmp_path / "d"))
    c = AIFSClient(sp.address, token_file=sp.token_file)
    try:
        with c.watch() as w:
            names = [b"file-with-a-longer-name-%06d" % i for i in range(1024)]
            inos = [c.create(ROOT_INO, n).ino for n in names]
            c.fs.unlink_batch(ROOT_INO, list(zip(names, inos, strict=True)))
            want = [("created", "/" + n.decode()) for n in names] + \
                [("removed", "/" + n.decode()) for n in names]
            got: list[tuple[str, str]] = []
            gaps = 0
            while (e := w.get(timeout=5)) is not None:
                if e.kind == "overflow":
                    gaps += 1
                else:
                    got.append((e.kind, e.path))
            at = iter(want)
            assert all(g in at for g in got), "events out of order or unknown"
            assert gaps or got == want, f"{len(want) - len(got)} events lost, no overflow"
    finally:
        c.close()
        stop_server(sp)


def test_the_watcher_goes_with_its_stream(server: ServerProc, client: AIFSClient) -> None:
    w = client.watch()
    w.close()
    assert w.get(0.1) is None
    client.create(ROOT_INO, b"after")      # no watcher left to offer it to: nothing fails
    with client.watch() as w2:
        client.create(ROOT_INO, b"again")
        assert _events(w2, 1) == [("created", "/again")]


def test_a_branch_reset_tells_watchers_to_list_again(server: ServerProc,
                                                     client: AIFSClient) -> None:
    client.create(ROOT_INO, b"kept")
    snap = client.versions.snapshot(message="before")
    with client.watch() as w:
        client.create(ROOT_INO, b"dropped")
        assert _events(w, 1) == [("created", "/dropped")]
        client.versions.reset_branch("main", snap["id"])
        assert _events(w, 1) == [("overflow", "/")]      # no event per path: list again
        _quiet(w)


def test_changes_through_another_server_reach_the_watcher(postgres: Postgres,
                                                          seaweedfs: SeaweedFS) -> None:
    """Two servers on one PostgreSQL: a watcher on server 0 gets the changes an SDK client
    makes through server 1 from the moment watch() returned (server 1 acked the announcement
    before the Watch was answered), a change through server 0 once (not again from the bus),
    a branch reset through server 1 as overflow, and, resumed after its watcher was gone for
    longer than an announcement lasts, exactly the changes made through server 1 meanwhile."""
    with session_cluster(postgres, seaweedfs, "watch", n=2, lease_term=2.0) as c:
        s0, s1 = c.servers
        with AIFSClient(s0.address, token_file=c.token_file) as a, \
                AIFSClient(s1.address, token_file=c.token_file) as b, a.watch("/") as w:
            d = b.mkdir(ROOT_INO, b"x")          # at once: no wait for server 1 to hear
            b.create(d.ino, b"f")
            b.rename(d.ino, b"f", ROOT_INO, b"g")
            a.unlink(ROOT_INO, b"g")                  # through server 0 itself
            snap = a.versions.snapshot(message="s")
            got = _events(w, 5)
            # server 1's events in its order; server 0's own may come before they arrive
            assert [g for g in got if g != ("removed", "/g")] == [
                ("created", "/x"), ("created", "/x/f"), ("removed", "/x/f"), ("created", "/g")]
            assert got.count(("removed", "/g")) == 1, got
            _quiet(w)                                 # nothing twice
            b.versions.reset_branch("main", snap["id"])
            assert _events(w, 1) == [("overflow", "/")]
            _quiet(w)
            cursor = w.cursor
        # nobody watches now: server 0 keeps the tree announced (and recorded) for a resume,
        # so server 1 still forwards its changes past the 3 terms an announcement lasts
        with AIFSClient(s1.address, token_file=c.token_file) as b:
            b.mkdir(ROOT_INO, b"gap1")
            time.sleep(6.5)
            b.mkdir(ROOT_INO, b"gap2")
        with AIFSClient(s0.address, token_file=c.token_file) as a, \
                a.watch("/", resume_from=cursor) as w:
            assert _events(w, 2) == [("created", "/gap1"), ("created", "/gap2")]
            _quiet(w)


def test_a_prefix_longer_than_path_max_is_refused(client: AIFSClient) -> None:
    with pytest.raises(RemoteError) as ei:
        client.watch("/" + "a" * 5000)
    assert "4096" in str(ei.value)
    with client.watch("/ok") as w:                    # the server goes on
        d = client.mkdir(ROOT_INO, b"ok")
        assert w.get(10) == Event("created", "/ok", d.ino, True)


def test_a_server_stopping_ends_the_watch_with_an_error(tmp_path: Path) -> None:
    sp = start_server(make_data_dir(tmp_path / "d"))
    c = AIFSClient(sp.address, token_file=sp.token_file)
    try:
        with c.watch(reconnect_seconds=0) as w:       # no resuming: the error at once
            c.create(ROOT_INO, b"f")
            assert _events(w, 1) == [("created", "/f")]
            stop_server(sp)                           # graceful: it ends the session streams
            with pytest.raises(ServerUnavailable):
                while w.get(timeout=20) is not None:
                    pass
    finally:
        c.close()
        stop_server(sp)


def test_a_cut_stream_resumes_with_exactly_the_missed_events(server: ServerProc,
                                                            client: AIFSClient) -> None:
    """The connection cut under a watch: the SDK opens the stream again from its last cursor
    and the changes made meanwhile come once each, in order, with no overflow."""
    top = client.mkdir(ROOT_INO, b"resume")
    with client.watch("/resume") as w:
        client.create(top.ino, b"before")
        assert _events(w, 1) == [("created", "/resume/before")]
        assert cut_connections(server.address) > 0
        with AIFSClient(server.address, token_file=server.token_file) as other:
            for i in range(20):
                other.create(top.ino, b"gap%02d" % i)
            other.unlink(top.ino, b"before")
        assert _events(w, 21) == [("created", f"/resume/gap{i:02d}") for i in range(20)] + [
            ("removed", "/resume/before")]
        assert w.reconnects >= 1
        client.create(top.ino, b"after")
        assert _events(w, 1) == [("created", "/resume/after")]
        _quiet(w)
        cursor = w.cursor
    # a new Watch from the cursor the caller got to (another process could keep it)
    client.create(top.ino, b"later")
    with client.watch("/resume", resume_from=cursor) as w2:
        assert _events(w2, 1) == [("created", "/resume/later")]
        _quiet(w2)


def test_a_restarted_server_resumes_with_overflow(tmp_path: Path) -> None:
    """A server restarted on the same data dir does not hold the events of the gap: the
    resumed stream says overflow (list again), then reports what comes next."""
    data = make_data_dir(tmp_path / "d")
    sock = f"unix:{tmp_path}/fixed.sock"
    sp = start_server(data, listen=[sock])
    c = AIFSClient(sock, token_file=sp.token_file)
    try:
        with c.watch() as w:
            c.create(ROOT_INO, b"one")
            assert _events(w, 1) == [("created", "/one")]
            stop_server(sp)
            sp = start_server(data, listen=[sock])
            c.create(ROOT_INO, b"two")     # before or after the watch is back: overflow covers it
            got = _events(w, 1, timeout=30)
            assert got == [("overflow", "/")]
            c.create(ROOT_INO, b"three")
            rest = _events(w, 1, timeout=10)
            while rest == [("created", "/two")]:    # made after the resumed watch: reported
                rest = _events(w, 1, timeout=10)
            assert rest == [("created", "/three")]
            assert w.reconnects >= 1
    finally:
        c.close()
        stop_server(sp)
