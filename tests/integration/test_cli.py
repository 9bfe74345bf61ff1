"""The `aifs` command end to end: a real data dir, a real server, `.venv/bin/aifs` subprocesses."""

from __future__ import annotations

import argparse
import json
import os
import pty
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from aifs_cli import main as cli
from tests.helpers import ServerProc, short_tmpdir, start_server, stop_server

AIFS = str(Path(sys.executable).parent / "aifs")
ENV_KEYS = ("AIFS_SERVER", "AIFS_TOKEN_FILE", "AIFS_TOKEN", "AIFS_DATA", "AIFS_NAMESPACE",
            "AIFS_BRANCH")


def run(*args: str, env: dict[str, str] | None = None, stdin: bytes | None = None
        ) -> subprocess.CompletedProcess[bytes]:
    base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
    return subprocess.run([AIFS, *args], capture_output=True, env={**base, **(env or {})},
                          input=stdin, timeout=120)


def err_line(p: subprocess.CompletedProcess[bytes]) -> str:
    """stderr must be exactly one `aifs: error:` line, no traceback."""
    text = p.stderr.decode()
    assert "Traceback" not in text, text
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("aifs: error: "), text
    return lines[0]


@pytest.fixture(scope="module")
def data_dir() -> Iterator[Path]:
    # short, so that <data>/aifs.sock (the embedded default socket) fits a unix socket path
    base = Path(short_tmpdir())
    d = base / "data"
    try:
        p = run("format", "--data", str(d), "--chunk-size", "65536")
        assert p.returncode == 0, p.stderr
        assert b"formatted" in p.stdout
        yield d
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def server(data_dir: Path) -> Iterator[ServerProc]:
    srv = start_server(data_dir, listen=[f"unix:{data_dir / 'aifs.sock'}", "127.0.0.1:0"])
    try:
        yield srv
    finally:
        stop_server(srv)


def tcp(sp: ServerProc) -> str:
    return next(a for a in sp.addresses if not a.startswith("unix:"))


def mint(data_dir: Path, tmp_path: Path, methods: str, name: str) -> Path:
    p = run("token", "create", "--data", str(data_dir), "--namespace", "default",
            "--methods", methods, "--ttl", "1h")
    assert p.returncode == 0, p.stderr
    token = p.stdout.decode().strip()
    assert token and "\n" not in token
    f = tmp_path / name
    f.write_text(token + "\n")
    f.chmod(0o600)
    return f


def test_format_is_idempotent_and_dry_run_writes_nothing(data_dir: Path, tmp_path: Path) -> None:
    p = run("format", "--data", str(data_dir))
    assert p.returncode == 0
    assert b"already formatted" in p.stdout
    fresh = tmp_path / "fresh"
    p = run("format", "--data", str(fresh), "--dry-run")
    assert p.returncode == 0 and b"dry run" in p.stdout
    assert not fresh.exists()
    p = run("format", "--data", str(tmp_path / "bad"), "--chunk-size", "1000")
    assert p.returncode != 0 and "chunk size" in err_line(p)


def test_token_create_validates_input(data_dir: Path, tmp_path: Path) -> None:
    p = run("token", "create", "--data", str(data_dir), "--methods", "get,fly")
    assert p.returncode == 2 and "'fly'" in err_line(p)
    p = run("token", "create", "--data", str(data_dir), "--methods", "get", "--ttl", "5y")
    assert p.returncode == 2 and "--ttl" in err_line(p)
    p = run("token", "create", "--data", str(tmp_path / "none"), "--methods", "get")
    assert p.returncode != 0 and "aifs format" in err_line(p)


def test_put_get_ls_stat_info_health_verify_over_tcp(server: ServerProc, data_dir: Path,
                                                     tmp_path: Path) -> None:
    tok = mint(data_dir, tmp_path, "all", "all.token")
    common = ["--server", tcp(server), "--token-file", str(tok)]
    src = tmp_path / "in.bin"
    data = os.urandom(200_000) + b"x" * 300_000
    src.write_bytes(data)
    p = run("put", str(src), "--kind", "blob", "--metadata", '{"name": "in"}', *common)
    assert p.returncode == 0, p.stderr
    aid = p.stdout.decode().strip()
    assert len(aid) == 64

    out = tmp_path / "out.bin"
    p = run("get", aid, "-o", str(out), *common)
    assert p.returncode == 0, p.stderr
    assert out.read_bytes() == data
    assert not list(tmp_path.glob("*.part"))

    p = run("ls", *common)
    assert p.returncode == 0 and aid.encode() in p.stdout
    p = run("ls", "--kind", "tensor", *common)
    assert p.returncode == 0 and aid.encode() not in p.stdout
    p = run("stat", aid, *common)
    assert p.returncode == 0 and b'"name": "in"' in p.stdout and b'"size": 500000' in p.stdout
    p = run("info", *common)
    assert p.returncode == 0 and b'"namespaces"' in p.stdout
    p = run("health", *common)
    assert p.returncode == 0 and p.stdout.strip() == b"SERVING"
    p = run("verify", aid, *common)
    assert p.returncode == 0 and p.stdout.startswith(b"ok ")
    # flags may also come before the command
    p = run(*common, "health")
    assert p.returncode == 0


def test_env_vars_and_stdin(server: ServerProc, data_dir: Path, tmp_path: Path) -> None:
    tok = mint(data_dir, tmp_path, "get,put,stat,list", "env.token")
    env = {"AIFS_SERVER": server.address, "AIFS_TOKEN_FILE": str(tok)}
    p = run("put", "-", env=env, stdin=b"from stdin")
    assert p.returncode == 0, p.stderr
    aid = p.stdout.decode().strip()
    p = run("get", aid, env=env)
    assert p.returncode == 0 and p.stdout == b"from stdin"
    p = run("ls", env=env)
    assert p.returncode == 0 and aid.encode() in p.stdout
    # more than one upload piece through a pipe (short reads joined into whole pieces)
    big = os.urandom(3 * (1 << 20) + 12345)
    p = run("put", "-", env=env, stdin=big)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode().strip() == blake3(big).hexdigest()
    assert run("get", p.stdout.decode().strip(), env=env).stdout == big


def test_default_socket_from_aifs_data(server: ServerProc, data_dir: Path) -> None:
    # no --server, no token: the embedded default socket and the token file next to it
    p = run("health", env={"AIFS_DATA": str(data_dir)})
    assert p.returncode == 0, p.stderr
    p = run("ls", env={"AIFS_DATA": str(data_dir)})
    assert p.returncode == 0, p.stderr


def test_get_only_token_cannot_put(server: ServerProc, data_dir: Path, tmp_path: Path) -> None:
    tok = mint(data_dir, tmp_path, "get", "get.token")
    src = tmp_path / "f.txt"
    src.write_bytes(b"hello")
    p = run("put", str(src), "--server", server.address, "--token-file", str(tok))
    assert p.returncode != 0
    line = err_line(p)
    assert "put" in line and "aifs token create" in line, line
    assert tok.read_text().strip() not in line


def test_unknown_asset_and_bad_input_give_one_line(server: ServerProc, tmp_path: Path) -> None:
    common = ["--server", server.address]
    p = run("get", "0" * 64, "-o", str(tmp_path / "x"), *common)
    assert p.returncode != 0 and "not found" in err_line(p)
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
    p = run("stat", "f" * 64, *common)
    assert p.returncode != 0 and "not found" in err_line(p)
    p = run("put", str(tmp_path / "missing.bin"), *common)
    assert p.returncode != 0 and "missing.bin" in err_line(p)
    p = run("put", "-", "--metadata", "[1,2]", *common, stdin=b"x")
    assert p.returncode == 2 and "JSON object" in err_line(p)
    p = run("put", "-", "--kind", "weird", *common, stdin=b"x")
    assert p.returncode != 0 and "kind" in err_line(p)
    p = run("ls", *common, "--token-file", str(tmp_path / "no.token"))
    assert p.returncode != 0 and "no.token does not exist" in err_line(p)
    p = run("health", "--server", f"unix:{tmp_path / 'nobody.sock'}", "--retry-for", "0.5")
    assert p.returncode != 0 and "cannot reach" in err_line(p)


def test_help_texts() -> None:
    p = run("--help")
    assert p.returncode == 0
    for name in (b"format", b"server", b"token", b"put", b"get", b"ls", b"stat", b"info",
                 b"health", b"verify", b"fsck", b"gc"):
        assert name in p.stdout
    p = run("token", "create", "--help")
    assert p.returncode == 0 and b"--methods" in p.stdout and b"admin" in p.stdout
    p = run("server", "--help")  # delegated to aifs_server.serve
    assert p.returncode == 0 and b"--listen" in p.stdout


def test_fsck_and_gc(server: ServerProc) -> None:
    p = run("fsck", "--server", server.address)
    assert p.returncode == 0 and p.stdout.startswith(b"ok")
    p = run("gc", "--dry-run", "--server", server.address)
    assert p.returncode == 0 and b"would delete" in p.stdout


def test_fsck_and_gc_offline_need_no_server(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert run("format", "--data", str(data)).returncode == 0
    nowhere = {"AIFS_SERVER": f"unix:{tmp_path / 'no.sock'}"}  # would fail if it were asked
    from blake3 import blake3

    from aifs_server.datadir import open_data_dir

    text = b"left behind by a deleted file " * 100
    with open_data_dir(data) as dd:  # a recorded chunk nothing references
        _, stored = dd.chunks.put("default", blake3(text).digest(), text)
        dd.meta.record_chunk("default", blake3(text).digest(), len(text), stored)
    p = run("fsck", "--data", str(data), "--read-data", env=nowhere)
    assert p.returncode == 0 and p.stdout.startswith(b"ok: 1 chunks checked, 0 problems"), p
    p = run("gc", "--data", str(data), "--dry-run", env=nowhere)
    assert p.returncode == 0, p
    assert p.stdout == b"would delete 0 chunks (0 bytes) and 0 orphan inodes\n"  # the grace
    time.sleep(1.2)  # let a 1-second grace pass (not a timing assertion)
    p = run("gc", "--data", str(data), "--grace", "1", env=nowhere)
    assert p.returncode == 0, p
    assert p.stdout == f"deleted 1 chunks ({stored} bytes) and 0 orphan inodes\n".encode()
    p = run("fsck", "--data", str(data), env=nowhere)
    assert p.returncode == 0 and p.stdout.startswith(b"ok: 0 chunks checked"), p
    p = run("fsck", "--data", str(tmp_path / "not-formatted"), env=nowhere)
    assert p.returncode == 1 and "aifs format --data" in err_line(p)


# --- pure parts -----------------------------------------------------------------------------

def test_parse_ttl_and_methods() -> None:
    assert cli.parse_ttl("90") == 90 and cli.parse_ttl("15m") == 900
    assert cli.parse_ttl("1h") == 3600 and cli.parse_ttl("2d") == 172800
    assert cli.parse_ttl("never") == 0
    for bad in ("", "1w", "-1h", "h", "0h"):
        with pytest.raises(cli.UsageError):
            cli.parse_ttl(bad)
    assert cli.parse_methods("get, put,get") == ["get", "put"]
    assert cli.parse_methods("all") == ["all"]
    with pytest.raises(cli.UsageError):
        cli.parse_methods(",")


def test_default_paths(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("AIFS_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert cli.default_data_dir() == tmp_path / "xdg" / "aifs"
    monkeypatch.setenv("AIFS_DATA", str(tmp_path / "d"))
    assert cli.default_data_dir() == tmp_path / "d"
    assert cli.default_socket(tmp_path / "d") == f"unix:{tmp_path / 'd' / 'aifs.sock'}"


def test_plugins_missing_skipped_broken_propagates(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "aifs_test_good_plugin.py").write_text(
        "def register(sub):\n"
        "    p = sub.add_parser('hello', help='say hello')\n"
        "    p.set_defaults(func=lambda args: 7)\n")
    (tmp_path / "aifs_test_broken_plugin.py").write_text("import aifs_no_such_dependency_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    loaded = cli.load_plugins(sub, ["aifsfs.no_such_plugin", "aifsfs.no_such_pkg.cli",
                                    "aifs_test_good_plugin"])
    assert loaded == ["aifs_test_good_plugin"]
    args = parser.parse_args(["hello"])
    assert args.func(args) == 7
    with pytest.raises(ModuleNotFoundError) as ei:
        cli.load_plugins(sub, ["aifs_test_broken_plugin"])
    assert ei.value.name == "aifs_no_such_dependency_xyz"


def test_progress_bar_only_on_a_terminal(server: ServerProc, tmp_path: Path) -> None:
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(3 << 20))
    master, slave = pty.openpty()
    try:
        base = {k: v for k, v in os.environ.items() if k not in ENV_KEYS}
        p = subprocess.run([AIFS, "put", str(src), "--server", server.address],
                           stdout=subprocess.PIPE, stderr=slave, env=base, timeout=120)
    finally:
        os.close(slave)
    shown = b""
    try:
        while chunk := os.read(master, 65536):
            shown += chunk
    except OSError:  # EIO once the terminal's other side is closed and drained
        pass
    finally:
        os.close(master)
    assert p.returncode == 0 and len(p.stdout.strip()) == 64
    assert b"put big.bin" in shown  # the tqdm bar on the terminal
    quiet = run("put", str(src), "--server", server.address)
    assert quiet.returncode == 0 and quiet.stderr == b""  # no bar into a pipe


def test_watch_prints_each_change(server: ServerProc, data_dir: Path, tmp_path: Path) -> None:
    """`aifs watch PREFIX --count N --json` (a real process) prints the events of changes an
    SDK client makes, and only those under the prefix."""
    from aifs_core.types import ROOT_INO
    from aifsfs.client import AIFSClient
    tok = mint(data_dir, tmp_path, "all", "w.token")
    proc = subprocess.Popen([AIFS, "watch", "/w", "--count", "3", "--json", "--server",
                             tcp(server), "--token-file", str(tok)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        assert b"watching /w" in proc.stderr.readline()     # watched from here on
        with AIFSClient(tcp(server), token_file=str(tok)) as c:
            d = c.mkdir(ROOT_INO, b"w")
            c.create(ROOT_INO, b"not-under-w")
            f = c.create(d.ino, b"f")
            c.unlink(d.ino, b"f")
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        lines = [json.loads(line) for line in out.decode().splitlines()]
        cursor = lines[-1].pop("cursor")        # a batch's last event carries it
        assert [{k: v for k, v in x.items() if k != "cursor"} for x in lines] == [
            {"kind": "created", "path": "/w", "ino": d.ino, "is_dir": True},
            {"kind": "created", "path": "/w/f", "ino": f.ino, "is_dir": False},
            {"kind": "removed", "path": "/w/f", "ino": f.ino, "is_dir": False}]
        # changes while nobody watches, then `--from` the cursor: exactly those, first
        with AIFSClient(tcp(server), token_file=str(tok)) as c:
            g = c.create(d.ino, b"g")
            c.create(ROOT_INO, b"also-not-under-w")
        proc = subprocess.Popen([AIFS, "watch", "/w", "--from", cursor, "--count", "1",
                                 "--json", "--server", tcp(server), "--token-file", str(tok)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        (line,) = [json.loads(x) for x in out.decode().splitlines()]
        line.pop("cursor", None)
        assert line == {"kind": "created", "path": "/w/g", "ino": g.ino, "is_dir": False}
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
