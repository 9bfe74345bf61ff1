"""What only the S3 chunk store has, against the session's real SeaweedFS (tests/services.py):
its layout and request counts, credentials, clear errors (missing bucket, wrong credentials,
no access, server gone or hung) and bounded retries (through a real TCP proxy in front of
SeaweedFS that answers 503 to the first connections). The shared behaviour is in
test_chunkstore.py's conformance suite ("s3" in STORES)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import obstore
import pytest
from obstore.store import S3Store

from aifs_core.errors import NotFound, StoreMisconfigured, StoreUnavailable
from aifs_server.chunkstore_s3 import READ_AHEAD, S3ChunkStore
from tests.services import S3Location, SeaweedFS, free_port

NAME = "abcd" + "0123456789abcdef" * 3 + "0123456789ab"
HANG_GUARD = 60.0  # seconds before a call is called hung: a guard, not a speed check


def _raw_keys(loc: S3Location) -> list[str]:
    s3 = S3Store(loc.bucket, endpoint=loc.endpoint, region=loc.sw.region,
                 access_key_id=loc.sw.access_key, secret_access_key=loc.sw.secret_key,
                 client_options={"allow_http": True})
    return sorted(str(m["path"]) for page in obstore.list(s3, loc.prefix + "/") for m in page)


def test_layout_prefix_and_url(s3_bucket: S3Location) -> None:
    store = s3_bucket.store()
    assert store.put(NAME, b"sealed envelope")
    # the local store's fan-out, under the prefix: a store directory copies in as it is
    assert _raw_keys(s3_bucket) == [f"{s3_bucket.prefix}/ab/cd/{NAME}"]
    assert store.url == (f"s3://{s3_bucket.bucket}/{s3_bucket.prefix}?endpoint="
                         f"{s3_bucket.endpoint}&region=us-east-1")
    other = s3_bucket.store(prefix=s3_bucket.prefix + "/elsewhere")
    assert other.has_many([NAME]) == [False]  # a prefix is a separate store
    assert list(other.list_names()) == []


def test_reader_costs_one_request_for_a_header_and_nearby_frames(s3_bucket: S3Location) -> None:
    store = s3_bucket.store()
    blob = os.urandom(3 * READ_AHEAD)
    store.put(NAME, blob)
    before = store.attempts
    with store.reader(NAME) as r:  # one ranged GET: the size and the first READ_AHEAD bytes
        assert r.size == len(blob)
        assert r.read_at(0, 4096) == blob[:4096]  # the envelope header probe
        assert r.read_at(70_000, 65536) == blob[70_000:135_536]  # a frame: no request
        assert store.attempts - before == 1
        assert r.read_at(2 * READ_AHEAD, 1000) == blob[2 * READ_AHEAD:2 * READ_AHEAD + 1000]
        assert store.attempts - before == 2  # past the read-ahead: one ranged GET
    small = "ef" * 32
    store.put(small, b"tiny")
    before = store.attempts
    assert store.get(small, 1, 2) == b"in"
    with store.reader(small) as r:
        assert r.read_at(0, r.size) == b"tiny"  # a whole small chunk: one request
    assert store.attempts - before == 2


def test_an_empty_object_reads_as_empty(s3_bucket: S3Location) -> None:
    store = s3_bucket.store()
    assert store.put(NAME, b"")
    assert store.get(NAME) == b"" and store.size(NAME) == 0
    with store.reader(NAME) as r:
        assert r.size == 0 and r.read_at(0, 10) == b""


def test_missing_bucket_says_which_bucket_and_endpoint(seaweedfs: SeaweedFS) -> None:
    kw = dict(endpoint=seaweedfs.endpoint, access_key=seaweedfs.access_key,
              secret_key=seaweedfs.secret_key)
    with pytest.raises(StoreMisconfigured) as exc:
        S3ChunkStore("no-such-bucket", **kw)  # type: ignore[arg-type]
    msg = str(exc.value)
    assert "'no-such-bucket'" in msg and seaweedfs.endpoint in msg and "does not exist" in msg
    assert exc.value.reason == "STORE_MISCONFIGURED"
    # unchecked at start: the first write or read says the same (not "chunk not found")
    store = S3ChunkStore("no-such-bucket", check=False, **kw)  # type: ignore[arg-type]
    for call in (lambda: store.put(NAME, b"x"), lambda: store.get(NAME),
                 lambda: store.reader(NAME), lambda: list(store.list_names())):
        with pytest.raises(StoreMisconfigured, match="does not exist"):
            call()


@pytest.mark.parametrize("which", ["secret", "key id"])
def test_wrong_credentials_say_so(seaweedfs: SeaweedFS, which: str) -> None:
    key = seaweedfs.access_key if which == "secret" else "AKIDNOSUCHKEY"
    with pytest.raises(StoreMisconfigured) as exc:
        S3ChunkStore(seaweedfs.bucket, endpoint=seaweedfs.endpoint, access_key=key,
                     secret_key="not-the-secret")
    msg = str(exc.value)
    assert "rejected the credentials" in msg and key in msg and seaweedfs.endpoint in msg
    assert ("SignatureDoesNotMatch" if which == "secret" else "InvalidAccessKeyId") in msg


def test_credentials_from_the_environment_or_a_file(
        s3_bucket: S3Location, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    sw = s3_bucket.sw
    monkeypatch.delenv("AWS_SHARED_CREDENTIALS_FILE", raising=False)
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(StoreMisconfigured, match="no S3 credentials"):
        S3ChunkStore(sw.bucket, endpoint=sw.endpoint)
    creds = tmp_path / "credentials"
    creds.write_text(f"[aifs]\naws_access_key_id = {sw.access_key}\n"
                     f"aws_secret_access_key = {sw.secret_key}\n")
    from_file = S3ChunkStore(sw.bucket, endpoint=sw.endpoint, prefix=s3_bucket.prefix,
                             credentials_file=str(creds), profile="aifs")
    assert from_file.put(NAME, b"via file")
    with pytest.raises(StoreMisconfigured, match=r"no \[default\] section"):
        S3ChunkStore(sw.bucket, endpoint=sw.endpoint, credentials_file=str(creds))
    for var, value in sw.env().items():
        monkeypatch.setenv(var, value)
    from_env = S3ChunkStore(sw.bucket, endpoint=sw.endpoint, prefix=s3_bucket.prefix)
    assert from_env.get(NAME) == b"via file"


def test_a_read_only_identity_reads_and_is_refused_writes(s3_bucket: S3Location) -> None:
    s3_bucket.store().put(NAME, b"written by the admin identity")
    sw = s3_bucket.sw
    ro = s3_bucket.store(access_key=sw.reader_key, secret_key=sw.reader_secret)
    assert ro.get(NAME) == b"written by the admin identity"
    with pytest.raises(StoreMisconfigured) as exc:
        ro.put("ef" * 32, b"x")
    assert "denied PUT" in str(exc.value) and sw.reader_key in str(exc.value)
    assert "AccessDenied" in str(exc.value)


def test_server_gone_is_a_clear_error_within_a_bounded_time(seaweedfs: SeaweedFS) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    # bounded by the retry count, not the retry deadline: "failed 4 time(s)" is the count,
    # and the deadline is set far past the hang guard so that waiting it out shows
    t = time.monotonic()
    with pytest.raises(StoreUnavailable) as exc:
        S3ChunkStore("aifs", endpoint=dead, access_key="k", secret_key="s", retries=3,
                     retry_deadline=600)
    took = time.monotonic() - t
    msg = str(exc.value)
    assert dead in msg and "'aifs'" in msg and "failed 4 time(s)" in msg
    assert exc.value.reason == "STORE_UNAVAILABLE"
    assert took < HANG_GUARD, took


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """A TCP port that accepts connections and never answers (a hung server)."""
    srv = socket.create_server(("127.0.0.1", 0))
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except TimeoutError:
                continue
            except OSError:
                return

    th = threading.Thread(target=accept, daemon=True)
    th.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    finally:
        stop.set()
        th.join(5)
        for c in conns:
            c.close()
        srv.close()


def test_a_hung_server_times_out(silent_listener: str) -> None:
    # the 1 s request timeout ends each try; without it a try waits for the default 120 s
    # and the hang guard fails
    t = time.monotonic()
    with pytest.raises(StoreUnavailable, match="failed 2 time"):
        S3ChunkStore("aifs", endpoint=silent_listener, access_key="k", secret_key="s",
                     retries=1, timeout=1.0, retry_deadline=600)
    assert time.monotonic() - t < HANG_GUARD


class FaultProxy:
    """A real TCP proxy in front of SeaweedFS: the first `fail` connections get an S3
    503 SlowDown and are closed; the next `lose` are passed upstream but their answer is
    dropped (the request landed, the client never hears it); later ones are piped both ways."""

    def __init__(self, upstream: str, fail: int, lose: int = 0) -> None:
        host, port = upstream.removeprefix("http://").rsplit(":", 1)
        self.upstream = (host, int(port))
        self.fail, self.lose = fail, lose
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.srv.settimeout(0.2)
        self.endpoint = f"http://127.0.0.1:{self.srv.getsockname()[1]}"
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            if self.connections <= self.fail:
                self._refuse(conn)
            else:
                lose = self.connections <= self.fail + self.lose
                th = threading.Thread(target=self._pipe_pair, args=(conn, lose), daemon=True)
                th.start()
                self.threads.append(th)

    @staticmethod
    def _refuse(conn: socket.socket) -> None:
        conn.settimeout(2)
        try:
            conn.recv(65536)  # the request line and headers (enough to answer after)
            body = (b"<?xml version=\"1.0\"?><Error><Code>SlowDown</Code>"
                    b"<Message>Please reduce your request rate.</Message></Error>")
            conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/xml"
                         b"\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                         + b"\r\n\r\n" + body)
        except OSError:
            pass
        finally:
            conn.close()

    def _pipe_pair(self, conn: socket.socket, lose: bool = False) -> None:
        try:
            up = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            conn.close()
            return
        self.sockets += [conn, up]
        back_to = self._drop_answer if lose else self._pipe
        back = threading.Thread(target=back_to, args=(up, conn), daemon=True)
        back.start()
        self._pipe(conn, up)
        back.join(30)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(30)
        try:
            while not self.stop.is_set():
                data = src.recv(1 << 16)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            src.close()

    @staticmethod
    def _drop_answer(up: socket.socket, conn: socket.socket) -> None:
        """Wait for the server's answer, then cut the client off without it."""
        up.settimeout(30)
        try:
            up.recv(1 << 16)
        except OSError:
            pass
        for s in (conn, up):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self.stop.set()
        self.srv.close()
        for s in self.sockets:  # the client keeps its connections alive: cut them
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for th in self.threads:
            th.join(5)


def test_a_put_whose_answer_was_lost_is_still_reported_as_stored(
        s3_bucket: S3Location) -> None:
    # The first PUT lands but its answer never arrives; the retry meets "already there"
    # (create-only PUT) and must see that the object is its own, not someone else's.
    proxy = FaultProxy(s3_bucket.endpoint, fail=0, lose=1)
    try:
        store = s3_bucket.store(endpoint=proxy.endpoint, retries=4, check=False)
        assert store.put(NAME, b"sealed once") is True
        assert store.attempts >= 2                      # it did retry
        assert store.put(NAME, b"sealed again") is False  # a later, different seal: not ours
        assert store.get(NAME) == b"sealed once"
    finally:
        proxy.close()


def test_throttling_is_retried_with_backoff_then_succeeds(s3_bucket: S3Location) -> None:
    proxy = FaultProxy(s3_bucket.endpoint, fail=2)
    try:
        store = s3_bucket.store(endpoint=proxy.endpoint, retries=4)
        # the constructor's check met the two 503s and went on
        assert store.attempts == 3 and proxy.connections >= 3
        assert store.put(NAME, b"through the proxy")
        assert store.get(NAME) == b"through the proxy"
    finally:
        proxy.close()


def test_retries_are_bounded_and_say_what_failed(s3_bucket: S3Location) -> None:
    proxy = FaultProxy(s3_bucket.endpoint, fail=100)
    try:
        # bounded by the count (three connections), not by time
        with pytest.raises(StoreUnavailable) as exc:
            s3_bucket.store(endpoint=proxy.endpoint, retries=2)
        assert "failed 3 time(s)" in str(exc.value) and "HTTP 503 SlowDown" in str(exc.value)
        assert proxy.connections == 3
    finally:
        proxy.close()


def test_not_found_is_not_a_store_error(s3_bucket: S3Location) -> None:
    store = s3_bucket.store()
    with pytest.raises(NotFound, match=f"chunk {NAME} is not in the chunk store s3://"):
        store.get(NAME)
    assert store.attempts == 2  # the start-up check, then one GET: a 404 is not retried
