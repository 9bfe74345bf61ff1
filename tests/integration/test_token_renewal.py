"""The admin token next to a unix socket (issue 13): it expires, the server renews it, clients
pick up the renewed file; and the SDK sends it only to a socket its own user (or root) owns.

Real server processes (tests/helpers.py); the foreign socket is a real listening unix socket
chowned to another uid (needs root, skipped otherwise).
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path

import grpc
import pytest
from pymacaroons import Macaroon

from aifs_core.types import ROOT_INO
from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifsfs.client import AIFSClient
from aifsfs.errors import LocalError
from tests.helpers import call_md, make_data_dir, short_tmpdir, start_server, stop_server

TTL = 3.0   # the server renews every TTL / 3


def _expiry(token: str) -> int:
    m = Macaroon.deserialize(token)
    ids = [c.caveat_id if isinstance(c.caveat_id, str) else c.caveat_id.decode()
           for c in m.caveats]
    return int(next(c for c in ids if c.startswith("expires = ")).split(" = ")[1])


def test_socket_token_expires_is_renewed_and_clients_follow(tmp_path: Path) -> None:
    sp = start_server(make_data_dir(tmp_path / "data"), args=["--token-ttl", str(TTL)])
    try:
        first = sp.token
        # the file's token carries an expiry at most TTL from now (no longer a permanent
        # token); no lower bound: a slow start between the mint and this read (a loaded
        # machine) only brings the expiry closer, and renewal is checked below
        assert _expiry(first) <= time.time() + TTL + 1
        with AIFSClient(sp.address, timeout=10, retry_for=5) as client:
            assert client.getattr(ROOT_INO).ino == ROOT_INO        # reads the first token
            # the server rewrites the file well before expiry
            deadline = time.monotonic() + 10 * TTL   # a hang guard, not a timing assertion
            while Path(sp.token_file).read_text().strip() == first:
                assert time.monotonic() < deadline, "the token file was never renewed"
                time.sleep(0.1)
            assert (Path(sp.token_file).stat().st_mode & 0o777) == 0o600
            # wait until the first token is past its expiry
            time.sleep(max(0.0, _expiry(first) - time.time()) + 1.1)
            with grpc.insecure_channel(sp.address) as ch:
                stub = filesystem_pb2_grpc.FilesystemStub(ch)
                with pytest.raises(grpc.RpcError) as err:
                    stub.GetAttr(filesystem_pb2.InodeRequest(ino=ROOT_INO),
                                 metadata=call_md(first), timeout=10)
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert "expired" in (err.value.details() or "")
            # the client that cached the first token re-reads the file when told so
            assert client.getattr(ROOT_INO).ino == ROOT_INO
            assert client.channel._token != first
    finally:
        stop_server(sp)
    assert not os.path.exists(sp.token_file)


def test_default_token_not_sent_to_a_socket_of_another_user() -> None:
    if os.geteuid() != 0:
        pytest.skip("chowning a socket to another uid needs root")
    d = short_tmpdir()
    sock_path = os.path.join(d, "s.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    got = bytearray()
    try:
        listener.bind(sock_path)
        listener.listen(4)
        os.chown(sock_path, 65534, 65534)       # as if uid 65534 had bound the path first
        secret = "the-admin-token-" + os.urandom(8).hex()
        Path(sock_path + ".token").write_text(secret + "\n")
        listener.settimeout(0.2)
        stop = threading.Event()

        def collect() -> None:   # what the impostor would receive
            while not stop.is_set():
                try:
                    conn, _ = listener.accept()
                except OSError:
                    continue
                conn.settimeout(0.5)
                try:
                    while chunk := conn.recv(65536):
                        got.extend(chunk)
                except OSError:
                    pass
                finally:
                    conn.close()

        t = threading.Thread(target=collect, daemon=True)
        t.start()
        try:
            with AIFSClient(f"unix:{sock_path}", timeout=2, retry_for=1) as client, \
                    pytest.raises(LocalError) as err:
                client.getattr(ROOT_INO)
        finally:
            stop.set()
            t.join(5)
        assert "belongs to uid 65534" in str(err.value)
        assert secret.encode() not in got
    finally:
        listener.close()
        shutil.rmtree(d, ignore_errors=True)
