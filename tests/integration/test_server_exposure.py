"""What the server exposes to other local users and to the network (issue 13): the admin token
file does not outlive the server, a socket directory others can write is refused, and plain TCP
is for loopback only unless --insecure says otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.helpers import short_tmpdir, start_server, stop_server


def _serve(data_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "aifs_server.serve", "--data", str(data_dir),
                           *extra], capture_output=True, text=True, timeout=60)


def test_token_file_is_removed_at_shutdown(data_dir: Path) -> None:
    sp = start_server(data_dir)
    try:
        token_file = Path(sp.token_file)
        assert token_file.read_text().strip() == sp.token
        assert (token_file.stat().st_mode & 0o777) == 0o600
        sp.proc.send_signal(signal.SIGTERM)
        assert sp.proc.wait(timeout=30) == 0
        assert not token_file.exists()
        assert not Path(sp.address[len("unix:"):]).exists()
    finally:
        stop_server(sp)


def test_socket_in_a_directory_others_can_write_is_refused(data_dir: Path) -> None:
    shared = Path(short_tmpdir()) / "shared"
    shared.mkdir()
    os.chmod(shared, 0o1777)  # like /tmp
    out = _serve(data_dir, "--listen", f"unix:{shared / 's.sock'}")
    assert out.returncode != 0
    assert "can be written by other users" in out.stderr
    assert not (shared / "s.sock").exists() and not (shared / "s.sock.token").exists()


def test_plain_tcp_beyond_loopback_needs_insecure(data_dir: Path) -> None:
    # refused before anything is bound, so no port is ever opened beyond loopback here
    out = _serve(data_dir, "--listen", "0.0.0.0:0")
    assert out.returncode != 0
    assert "in the clear" in out.stderr and "--insecure" in out.stderr


def test_plain_tcp_on_loopback_is_served_with_a_warning(data_dir: Path) -> None:
    sp = start_server(data_dir, listen=["127.0.0.1:0"])
    try:
        assert "without TLS" in sp.log()
    finally:
        stop_server(sp)
