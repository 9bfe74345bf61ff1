"""Retries: a client waits for a server that starts late, and gives up on one that never does."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from aifsfs.client import AIFSClient
from aifsfs.errors import ServerUnavailable, errno_for
from tests.helpers import ServerProc, short_tmpdir, start_server, stop_server


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_client_started_before_server_succeeds(tmp_path: Path, transport: str) -> None:
    short = short_tmpdir()  # unix socket paths must stay short
    sock = Path(short) / "late.sock"
    port = _free_port()
    listen = [f"unix:{sock}"] + ([f"127.0.0.1:{port}"] if transport == "tcp" else [])
    started: list[ServerProc] = []
    errors: list[BaseException] = []

    def start_late() -> None:
        time.sleep(1.5)
        try:
            started.append(start_server(tmp_path / "data", listen=listen))
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    t = threading.Thread(target=start_late)
    t.start()
    try:
        if transport == "unix":
            # no token yet either: the server writes it next to the socket when it starts
            client = AIFSClient(f"unix:{sock}", retry_for=60)
        else:
            # the token file appears with the server; the client reads it lazily
            client = AIFSClient(f"127.0.0.1:{port}", token_file=f"{sock}.token", retry_for=60)
        with client:
            # the first call is a one-shot stream: it must wait for the server, not fail
            aid = client.put_asset(iter([b"written before ", b"the server was up"]))
            assert client.get_asset(aid)["data"] == b"written before the server was up"
            assert client.health() == "SERVING"
    finally:
        t.join()
        for s in started:
            stop_server(s)
        shutil.rmtree(short, ignore_errors=True)
    assert not errors, errors
    assert started, "the server thread did not start a server"


def test_server_that_never_comes_up(tmp_path: Path) -> None:
    addr = f"unix:{tmp_path / 'nobody.sock'}"
    retry_for = 1.5
    t0 = time.monotonic()
    with AIFSClient(addr, retry_for=retry_for) as c, pytest.raises(ServerUnavailable) as ei:
        c.list_assets()
    elapsed = time.monotonic() - t0
    assert elapsed >= retry_for
    assert elapsed < retry_for + 30  # a hang guard, not a speed assertion
    msg = str(ei.value)
    assert addr in msg and "aifs up" in msg and "tries" in msg
    assert errno_for(ei.value) == 5  # EIO for the mount

    # a one-shot stream gives the same error instead of hanging
    with AIFSClient(addr, retry_for=retry_for) as c, pytest.raises(ServerUnavailable):
        c.put_asset(iter([b"x"]))


def test_unreachable_tcp_port(tmp_path: Path) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    with AIFSClient(addr, token="unused", retry_for=1.0) as c, \
            pytest.raises(ServerUnavailable) as ei:
        c.stat_asset("0" * 64)
    assert addr in str(ei.value)
    assert "unused" not in str(ei.value)
