"""Failures on a real mount: the server SIGKILLed during writes and restarted on the same socket
(nothing closed or fsync'ed is lost, the mount carries on without a remount, calls while it is
down fail with EIO within the retry bound instead of hanging), a server that is not there at
mount time, and `aifs up` / `aifs down` with a temporary HOME."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from aifsfs.client import AIFSClient
from aifsfs.fuse.mounter import pid_alive
from tests.e2e.conftest import Mount
from tests.helpers import ServerProc, wait_healthy

AIFS = str(Path(sys.executable).with_name("aifs"))


def _restart_server(sp: ServerProc) -> None:
    """Start a new server process on the same data dir and socket (fixture teardown stops it)."""
    logf = open(sp.log_path, "a")  # noqa: SIM115 - the child holds it
    proc = subprocess.Popen(
        [sys.executable, "-m", "aifs_server.serve", "--data", str(sp.data_dir), "--listen",
         sp.address], stdout=logf, stderr=logf, text=True, start_new_session=True)
    logf.close()
    sp.proc = proc  # type: ignore[assignment]
    wait_healthy(sp.address, 30)


def _server_file(sp: ServerProc, name: str) -> bytes:
    with AIFSClient(sp.address, token_file=sp.token_file) as c:
        a = c.lookup(1, name.encode())
        _, _, chunks = c.get_chunk_map(a.ino)
        buf = bytearray(a.size)
        cs = 1 << 20
        for r, data in zip(chunks, c.get_chunks([(r.chunk_id, 0, r.length) for r in chunks]),
                           strict=True):
            end = min(a.size, r.index * cs + len(data))
            buf[r.index * cs:end] = data[:end - r.index * cs]
        return bytes(buf)


def _in_child(code: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=timeout)


def test_server_killed_during_writes(mount_factory: Callable[..., Mount],
                                     server: ServerProc) -> None:
    m = mount_factory(server, "--retry-for", "3", "--timeout", "5")
    done: dict[str, bytes] = {}      # files whose close() (or fsync) succeeded
    stop = threading.Event()
    errors: list[OSError] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            data = os.urandom(700_000 + i * 4099)
            name = f"w{i:04d}"
            try:
                with open(m.path / name, "wb") as f:
                    f.write(data[:300_000])
                    f.flush()
                    os.fsync(f.fileno())
                    done[name + ".partial"] = data[:300_000]
                    f.write(data[300_000:])
                done[name] = data
                done.pop(name + ".partial", None)
            except OSError as exc:
                errors.append(exc)
            i += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        while len(done) < 5:
            time.sleep(0.05)
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        # until the writer has hit the dead server (its first EIO, after the 3 s retry
        # budget); the 60 s bound is a hang guard, the assertions below tell what happened
        until = time.monotonic() + 60
        while not errors and time.monotonic() < until and t.is_alive():
            time.sleep(0.1)
    finally:
        stop.set()
        t.join(120)
    assert not t.is_alive(), "a writer hung on a dead server"
    assert errors and all(e.errno == errno.EIO for e in errors), errors

    # While it is down: a call that needs the server gives EIO within the retry bound.
    time.sleep(1.5)   # let cached entries expire
    r = _in_child(f"import os\ntry:\n os.stat({str(m.path / 'never-there')!r})\n"
                  f"except OSError as e:\n print(e.errno)\n", timeout=60)
    assert r.stdout.strip() == str(errno.EIO), r

    _restart_server(server)
    # The same mount carries on: no remount.
    (m.path / "after").write_bytes(b"back again")
    assert (m.path / "after").read_bytes() == b"back again"
    for name, data in done.items():
        real = name.removesuffix(".partial")
        if name.endswith(".partial"):     # fsync'ed prefix is durable
            assert _server_file(server, real)[:len(data)] == data, name
        else:
            assert _server_file(server, real) == data, name
            assert (m.path / real).read_bytes() == data, name


def test_eio_not_hang_when_server_down(mount_factory: Callable[..., Mount],
                                       server: ServerProc) -> None:
    m = mount_factory(server, "--retry-for", "2", "--timeout", "3", "--attr-timeout", "0")
    (m.path / "f").write_bytes(b"x" * 1000)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(10)
    code = (f"import os\np={str(m.path / 'g')!r}\n"
            f"try:\n with open(p,'wb') as f: f.write(b'data')\n"
            f"except OSError as e:\n print(e.errno)\n")
    r = _in_child(code, timeout=60)
    assert r.stdout.strip() == str(errno.EIO), r
    r = _in_child(f"import os\ntry:\n os.listdir({str(m.path)!r})\n"
                  f"except OSError as e:\n print(e.errno)\n", timeout=60)
    assert r.stdout.strip() == str(errno.EIO), r
    _restart_server(server)
    assert (m.path / "f").read_bytes() == b"x" * 1000
    (m.path / "g").write_bytes(b"now it works")
    assert (m.path / "g").read_bytes() == b"now it works"


def test_mount_refuses_without_server(tmp_path: Path) -> None:
    mp = tmp_path / "mp"
    mp.mkdir()
    r = subprocess.run([AIFS, "mount", f"unix:{tmp_path}/nothing.sock", str(mp)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0
    assert "did not answer" in r.stderr or "cannot" in r.stderr, r.stderr
    assert not os.path.ismount(mp)


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("XDG_", "AIFS_"))}
    env["HOME"] = str(home)
    return env


def test_up_down(tmp_path: Path) -> None:
    home = tmp_path / "h"
    home.mkdir()
    data = home / "d"
    mp = home / "mnt"
    env = _env(home)

    def aifs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AIFS, *args], capture_output=True, text=True, env=env,
                              timeout=180)

    try:
        r = aifs("up", str(mp), "--data", str(data))
        assert r.returncode == 0, r.stderr + r.stdout
        assert "aifs down" in r.stdout
        assert os.path.ismount(mp)
        server_pid = int((data / "server.pid").read_text())
        (mp / "keep.bin").write_bytes(b"survives" * 100_000)
        r = aifs("down", str(mp))
        assert r.returncode == 0, r.stderr + r.stdout
        assert not os.path.ismount(mp)
        assert not pid_alive(server_pid)     # exited (init may not have reaped it yet)
        r = aifs("up", str(mp), "--data", str(data))
        assert r.returncode == 0, r.stderr + r.stdout
        assert (mp / "keep.bin").read_bytes() == b"survives" * 100_000
        r = aifs("down", str(mp))
        assert r.returncode == 0, r.stderr + r.stdout
        assert not os.path.ismount(mp)
    finally:
        if os.path.ismount(mp):
            subprocess.run(["fusermount3", "-u", str(mp)], capture_output=True)
            if os.path.ismount(mp):
                subprocess.run(["fusermount3", "-uz", str(mp)], capture_output=True)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int((data / "server.pid").read_text()), signal.SIGKILL)
