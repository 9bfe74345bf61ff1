"""A local shared deployment: PostgreSQL, SeaweedFS and N stateless `aifs server`s on one
database and bucket. The cluster tests and `scripts/cluster.sh` both use this module (the
services themselves come from tests/services.py, not a copy).

Interface:
    start_shared_server(meta_url, store_url, env, listen, *, log_path, wait=60.0) -> SharedServer
        `python -m aifs_server.serve --meta --store --listen ...` with `env` (AWS_* and
        AIFS_MASTER_KEY_FILE: never argv); returns once it prints its listening line.
    SharedServer: .address (the first listener, TCP ports resolved), .addresses, .proc,
        .log_path, .log(), .kill() (SIGKILL), .stop() (SIGTERM, then SIGKILL)
    start_cluster(base, n=2, *, meta_url=None, s3=None, tcp=False, server_args=()) -> Cluster
        base: a short directory (unix socket paths <= 107 bytes). meta_url / s3: an existing
        database and S3Location (the tests' session services); without them a PostgreSQL and a
        SeaweedFS are started under base. Writes base/master.key and base/token (an admin
        token for every namespace, minted from the root key the database holds).
    session_cluster(postgres, seaweedfs, name, n=2, **kw) -> context manager of a Cluster
        on a fresh database of the session PostgreSQL and a fresh prefix of the session
        SeaweedFS bucket (`name` + random tag); stopped and its directory removed at exit
    Cluster: .servers, .addresses ("A,B,..." for --server), .meta_url, .store_url, .env,
        .token_file, .master_key_file, .add_server() -> SharedServer, .stop()
    stop_service(svc) / start_again(svc, wait=60.0)   stop a Postgres or SeaweedFS this module
        (or tests/services.py) started, then start it again with the same argv: the same data
        dir, ports and socket, so servers and stores pointed at it find it again (the restart
        tests; never on the session services, which other tests share)
    main(["up", DIR, N] | ["down", DIR])   what scripts/cluster.sh runs; `up` stays running
                                           (SIGTERM/`down` stop everything it started;
                                           `down` then removes DIR and its data)
Every wait here is bounded in time.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifsfs.fuse.mounter import wait_pid_exit
from tests.services import (
    PG_BIN,
    Postgres,
    S3Location,
    SeaweedFS,
    _bucket_ready,
    _s3_answers,
    _service_user,
    _tail,
    _wait_for,
    start_postgres,
    start_seaweedfs,
    stop_process,
)

READY = "aifs server: listening on "


@dataclass
class SharedServer:
    addresses: list[str]
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def address(self) -> str:
        return self.addresses[0]

    def log(self) -> str:
        return _tail(self.log_path, 80)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int | None:
        return stop_process(self.proc, grace=15.0)


def start_shared_server(meta_url: str, store_url: str, env: dict[str, str], listen: list[str],
                        *, log_path: Path, wait: float = 60.0,
                        extra: tuple[str, ...] = ()) -> SharedServer:
    args = [sys.executable, "-m", "aifs_server.serve", "--meta", meta_url, "--store", store_url,
            *extra]
    for addr in listen:
        args += ["--listen", addr]
    full_env = {**os.environ, **env}
    with open(log_path, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=full_env,
                                start_new_session=True)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            text = log_path.read_text(errors="replace")
            for line in text.splitlines():
                if line.startswith(READY):
                    addrs = line[len(READY):].split(" (")[0]
                    return SharedServer([a.strip() for a in addrs.split(",")], proc, log_path)
            if proc.poll() is not None:
                raise RuntimeError(f"aifs server exited with {proc.returncode}:\n"
                                   f"{_tail(log_path)}")
            time.sleep(0.05)
        raise RuntimeError(f"aifs server did not start within {wait:.0f} s:\n{_tail(log_path)}")
    except BaseException:
        stop_process(proc)
        raise


@dataclass
class Cluster:
    base: Path
    meta_url: str
    store_url: str
    env: dict[str, str]
    master_key_file: Path
    token_file: Path
    tcp: bool = False
    servers: list[SharedServer] = field(default_factory=list)
    server_args: tuple[str, ...] = ()   # more `aifs server` flags (e.g. --metrics-port 0)
    postgres: Postgres | None = None
    seaweedfs: SeaweedFS | None = None

    @property
    def addresses(self) -> str:
        return ",".join(s.address for s in self.servers)

    def add_server(self) -> SharedServer:
        i = len(self.servers)
        listen = ["127.0.0.1:0"] if self.tcp else [f"unix:{self.base}/s{i}.sock"]
        srv = start_shared_server(self.meta_url, self.store_url, self.env, listen,
                                  log_path=self.base / f"server{i}.log", extra=self.server_args)
        self.servers.append(srv)
        return srv

    def stop(self) -> None:
        """Stop every server, then the services this cluster started (errors of one stop do
        not keep the others running)."""
        for srv in self.servers:
            with contextlib.suppress(Exception):
                srv.stop()
        for svc in (self.seaweedfs, self.postgres):
            if svc is not None:
                with contextlib.suppress(Exception):
                    svc.stop()


def _write_token(meta_url: str, master_key_file: Path, path: Path) -> None:
    from aifs_core.fileutil import write_file_atomic
    from aifs_server.auth import mint_token
    from aifs_server.secrets import SecretsDB, load_master_key

    shared = SecretsDB(meta_url).load(load_master_key(master_key_file))
    write_file_atomic(path, (mint_token(shared.root_key, "*", "all", None) + "\n").encode())


def start_cluster(base: str | os.PathLike[str], n: int = 2, *, meta_url: str | None = None,
                  s3: S3Location | None = None, tcp: bool = False,
                  server_args: tuple[str, ...] = ()) -> Cluster:
    from aifs_server.secrets import MASTER_KEY_FILE_ENV, write_master_key

    root = Path(base)
    root.mkdir(parents=True, exist_ok=True, mode=0o700)
    pg = sw = None
    try:
        if meta_url is None:
            pg = start_postgres(root / "pg")
            meta_url = pg.create_database("aifs")
        if s3 is None:
            sw = start_seaweedfs(root / "s3", bucket="aifs")
            s3 = S3Location(sw, "cluster")
        master = root / "master.key"
        if not master.exists():
            write_master_key(master)
        env = {**s3.sw.env(), MASTER_KEY_FILE_ENV: str(master)}
        cluster = Cluster(base=root, meta_url=meta_url, store_url=s3.url, env=env,
                          master_key_file=master, token_file=root / "token", tcp=tcp,
                          server_args=server_args, postgres=pg, seaweedfs=sw)
    except BaseException:
        for svc in (sw, pg):
            if svc is not None:
                svc.stop()
        raise
    try:
        for _ in range(n):
            cluster.add_server()
        _write_token(meta_url, master, cluster.token_file)
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def temp_cluster(meta_url: str, s3: S3Location, n: int = 2) -> Iterator[Cluster]:
    """`n` servers on that database and bucket, in a temporary directory: stopped and removed
    however the block ends."""
    from tests.helpers import short_tmpdir

    base = short_tmpdir()
    c = None
    try:
        c = start_cluster(base, n, meta_url=meta_url, s3=s3)
        yield c
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(base, ignore_errors=True)


@contextlib.contextmanager
def session_cluster(postgres: Postgres, seaweedfs: SeaweedFS, name: str, n: int = 2,
                    lease_term: float | None = None, **kw: Any) -> Iterator[Cluster]:
    """lease_term: the servers' AIFS_LEASE_TERM_SECONDS (also for servers added later); a
    short one keeps the waits for a killed server (one term) short in tests."""
    from tests.helpers import short_tmpdir

    base = short_tmpdir()
    c = None
    saved = os.environ.get("AIFS_LEASE_TERM_SECONDS")
    try:
        tag = os.urandom(4).hex()
        if lease_term is not None:
            os.environ["AIFS_LEASE_TERM_SECONDS"] = str(lease_term)   # the servers inherit it
        try:
            c = start_cluster(base, n, meta_url=postgres.create_database(f"{name}_{tag}"),
                              s3=S3Location(seaweedfs, f"{name.replace('_', '-')}-{tag}"), **kw)
        finally:
            if lease_term is not None:
                if saved is None:
                    os.environ.pop("AIFS_LEASE_TERM_SECONDS", None)
                else:
                    os.environ["AIFS_LEASE_TERM_SECONDS"] = saved
        if lease_term is not None:
            c.env["AIFS_LEASE_TERM_SECONDS"] = str(lease_term)
        yield c
    finally:
        if c is not None:
            c.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- restarting a service ---------------------------------------------------------------------

def stop_service(svc: Postgres | SeaweedFS) -> None:
    svc.stop()


def start_again(svc: Postgres | SeaweedFS, wait: float = 60.0) -> None:
    """Start a stopped service with the argv it first ran with (Popen keeps it): same data
    dir, same ports and socket. PostgreSQL runs as the account it ran as before (it refuses
    root), with the environment start_postgres gives it."""
    if svc.proc.poll() is None:
        raise RuntimeError("start_again: the service is still running; stop it first")
    args = list(svc.proc.args)  # type: ignore[arg-type]
    preexec = None
    env: dict[str, str] | None = None
    if isinstance(svc, Postgres):
        account = _service_user()
        env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"}
        if account:
            _, uid, gid = account

            def preexec() -> None:
                os.setgid(gid)
                os.setuid(uid)
    with open(svc.log_path, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=preexec, env=env, cwd=svc.base_dir)
    svc.proc = proc
    try:
        if isinstance(svc, Postgres):
            sock, port = str(svc.socket_dir), str(svc.port)

            def pg_ready() -> bool:
                r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", sock, "-p", port],
                                   capture_output=True, timeout=10)
                return r.returncode == 0

            _wait_for("PostgreSQL (restart)", proc, svc.log_path, pg_ready, wait)
        else:
            sw = svc
            _wait_for("SeaweedFS (restart)", proc, sw.log_path,
                      lambda: _s3_answers(sw.endpoint) and _bucket_ready(sw), wait)
    except BaseException:
        svc.stop()
        raise


# --- scripts/cluster.sh -----------------------------------------------------------------------

def _up(base: Path, n: int) -> int:
    if (base / "cluster.json").exists():
        print(f"a cluster already runs in {base} (stop it with `cluster.sh down {base}`)",
              file=sys.stderr)
        return 1
    cluster = start_cluster(base, n, tcp=True)
    info = {"pid": os.getpid(), "servers": cluster.addresses, "meta": cluster.meta_url,
            "store": cluster.store_url, "token_file": str(cluster.token_file),
            "master_key_file": str(cluster.master_key_file),
            "env_file": str(base / "env")}
    env_file = base / "env"  # AWS_* and AIFS_MASTER_KEY_FILE, for more servers by hand
    env_file.write_text("".join(f"export {k}={v}\n" for k, v in cluster.env.items()))
    env_file.chmod(0o600)
    (base / "cluster.json").write_text(json.dumps(info, indent=1) + "\n")
    print(f"servers:    {cluster.addresses}")
    print(f"metadata:   {cluster.meta_url}")
    print(f"chunks:     {cluster.store_url}")
    print(f"token file: {cluster.token_file}")
    print(f"try:        aifs --server {cluster.addresses} --token-file {cluster.token_file} "
          f"info")
    print(f"more servers: source {env_file}; aifs server --meta '{cluster.meta_url}' "
          f"--store '{cluster.store_url}' --listen 127.0.0.1:0", flush=True)
    stop = [False]

    def on_signal(signum: int, _frame: Any) -> None:
        stop[0] = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        while not stop[0]:
            time.sleep(0.5)
    finally:
        cluster.stop()
        (base / "cluster.json").unlink(missing_ok=True)
    return 0


def _processes_under(base: Path) -> list[int]:
    """Pids whose command line names `base` (what `up` started there)."""
    needle, found = os.fsencode(str(base)), []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            with contextlib.suppress(OSError):
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
    return found


def _down(base: Path) -> int:
    try:
        info = json.loads((base / "cluster.json").read_text())
    except FileNotFoundError:
        print(f"no cluster runs in {base}", file=sys.stderr)
        return 1
    pid = int(info["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (base / "cluster.json").exists():
        time.sleep(0.2)
    if (base / "cluster.json").exists():
        print(f"the cluster (pid {pid}) did not stop within 60 s", file=sys.stderr)
        return 1
    # cluster.json goes before the keeper and the services' last children have exited
    wait_pid_exit(pid, max(0.0, deadline - time.monotonic()))
    while time.monotonic() < deadline and _processes_under(base):
        time.sleep(0.1)
    shutil.rmtree(base, ignore_errors=True)  # a cluster for trying: its data goes with it
    print(f"stopped the cluster in {base} and removed its data")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) >= 2 and args[0] == "up":
        return _up(Path(args[1]).absolute(), int(args[2]) if len(args) > 2 else 2)
    if len(args) == 2 and args[0] == "down":
        return _down(Path(args[1]).absolute())
    print("usage: python -m tests.cluster up DIR [N] | down DIR", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
