"""`aifs server`: the gRPC server process.

Interface:
    build_server(datadir, listen, *, tls=None, max_workers=32, metrics=None) -> Server
        listen: addresses "unix:PATH" or "HOST:PORT"; tls: (cert_pem, key_pem) for TCP.
        Server.start() binds and serves; .addresses (actual, TCP port 0 resolved);
        .token_files; .stop(grace) -> None (idempotent; closes nothing it does not own).
    main(argv=None) -> int / run(args) -> int
        aifs server --data DIR --listen ADDR [--listen ADDR2] [--tls-cert F --tls-key F]
                    [--metrics-port N] [--max-workers N] [--format-if-needed] [--grace S]
                    [--insecure] [--token-ttl S] [--collect-interval S] [--upload-grace S]
                    [--hash-interval S] [--listing-cache-mb MB]
        aifs server --meta postgresql://... --store s3://BUCKET?endpoint=... --listen ADDR
                    [--master-key-file F] [--chunk-size N --zstd-level N --namespace NS]
        aifs server --config FILE     the same in JSON ({"meta", "store", "master_key_file",
                    "listen"}); any number of these servers share one database and bucket
    max_message_bytes() -> int    MAX_CHUNK + 1 MiB (at least 8 MiB)

Unix sockets: created 0600 (a parent directory the server creates is 0700; one that other users
can write is refused, since they could bind the path first and collect the token clients send);
a stale socket file (nothing answering) is removed, a live one is an error. Next to each socket the server writes
PATH.token (0600): an admin token for ALL namespaces and all methods — the embedded default,
so a local user never handles tokens. Whoever can read that file could already connect to the
0600 socket, so it grants nothing the file mode does not. It expires after --token-ttl (1 h)
and the server re-mints and rewrites it every third of that (clients re-read the file when
told TOKEN_EXPIRED), so a copy that leaks is worth an hour at most; it is removed at shutdown;
rotate the data dir's macaroon key to revoke old ones at once. TCP without TLS: loopback only (with a warning), unless --insecure.

Shutdown (SIGTERM/SIGINT): stop accepting, let in-flight calls finish within the grace (10 s),
close the metadata engine, remove the socket and token files. Calls cut at the grace commit nothing.
Keys and tokens never reach logs or argv.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import logging
import os
import signal
import socket
import stat as stat_mod
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from prometheus_client import Counter

from aifs_core.fileutil import write_file_atomic
from aifs_proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    assets_pb2,
    assets_pb2_grpc,
    data_pb2,
    filesystem_pb2,
)
from aifs_server import listing_cache
from aifs_server.auth import AuthInterceptor, mint_token
from aifs_server.collector import Collector
from aifs_server.grpc_errors import IN_FLIGHT
from aifs_server.hash_keeper import INTERVAL as HASH_INTERVAL
from aifs_server.hash_keeper import HashKeeper
from aifs_server.metrics import ListingCacheCollector, Metrics
from aifs_server.request_limits import SizeLimitInterceptor
from aifs_server.rpc_admin import AdminServicer
from aifs_server.rpc_assets import AssetsServicer
from aifs_server.rpc_data import DataServicer, add_data_service
from aifs_server.rpc_filesystem import Backend, FilesystemServicer, add_filesystem_service
from aifs_server.rpc_session import register_session
from aifs_server.rpc_versioning import register as register_versioning
from aifs_server.upload_pins import UploadPins
from aifs_server.versions import Versions

log = logging.getLogger("aifs.server")

MAX_CHUNK = 64 << 20
DEFAULT_WORKERS = 32
DEFAULT_GRACE = 10.0
STOP_DRAIN_SECONDS = 5.0
TOKEN_TTL = 3600.0          # the socket's admin token: renewed every TOKEN_TTL / 3
COLLECT_INTERVAL = 2.0      # seconds between background collection passes (0: off)
UPLOAD_GRACE = 3600.0       # an upload without a session is kept this long uncommitted
SERVICE_NAMES = tuple(
    mod.DESCRIPTOR.services_by_name[name].full_name
    for mod, name in ((filesystem_pb2, "Filesystem"), (data_pb2, "Data"),
                      (assets_pb2, "Assets"), (admin_pb2, "Admin")))


def max_message_bytes(max_chunk: int = MAX_CHUNK) -> int:
    return max(8 << 20, max_chunk + (1 << 20))


def _unix_path(addr: str) -> str | None:
    if addr.startswith("unix://"):
        return addr[len("unix://"):]
    if addr.startswith("unix:"):
        return addr[len("unix:"):]
    return None


def _check_socket_dir(parent: Path) -> None:
    """Refuse a socket directory another user could write to: they could bind the socket path
    first (or swap it later) and collect the admin token our clients send to it."""
    st = os.stat(parent)
    others_write = st.st_mode & (stat_mod.S_IWGRP | stat_mod.S_IWOTH)
    if st.st_uid not in (os.getuid(), 0) or others_write:
        raise SystemExit(
            f"aifs server: the socket directory {parent} can be written by other users "
            f"(mode {stat_mod.S_IMODE(st.st_mode):o}, owner uid {st.st_uid}); choose a "
            f"directory only you can write, e.g. --listen unix:<data dir>/aifs.sock")


def _is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _prepare_unix_socket(path: str) -> None:
    if len(path.encode()) >= 108:
        raise SystemExit(f"aifs server: unix socket path {path!r} is {len(path.encode())} bytes; "
                         f"the limit is 107: choose a shorter path")
    parent = Path(path).parent
    if not parent.exists():
        parent.mkdir(parents=True, mode=0o700)
        os.chmod(parent, 0o700)
    _check_socket_dir(parent)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat_mod.S_ISSOCK(st.st_mode):
        raise SystemExit(f"aifs server: {path} exists and is not a socket; move it away or "
                         f"choose another --listen path")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(1.0)
        s.connect(path)
    except OSError:
        os.unlink(path)  # stale: nothing answers
        log.info("removed stale socket %s", path)
        return
    finally:
        s.close()
    raise SystemExit(f"aifs server: another server is already listening on {path}; stop it "
                     f"first (or choose another --listen path)")


def _open_asset_store(datadir: Any) -> Any:
    from aifs_server.asset_store import AssetStore

    return AssetStore(datadir)


@dataclass
class Server:
    datadir: Any
    grpc_server: grpc.Server
    health: health.HealthServicer
    metrics: Metrics
    listen: list[str]
    addresses: list[str] = field(default_factory=list)
    token_files: list[str] = field(default_factory=list)
    socket_paths: list[str] = field(default_factory=list)
    tls: tuple[bytes, bytes] | None = None
    insecure: bool = False          # allow plain TCP on non-loopback addresses
    idle: bool = True               # after stop(): no call was still running
    lock_fd: int | None = None      # the data dir's server.lock, held while serving
    leases: Any = None              # the LeaseManager whose session streams stop() ends
    collector: Any = None           # collector.Collector (None: background collection off)
    hash_keeper: Any = None         # hash_keeper.HashKeeper (None: node hashes at snapshots)
    token_ttl: float = TOKEN_TTL
    _stopped: bool = False
    _renewer: threading.Thread | None = None
    _stop_renew: threading.Event = field(default_factory=threading.Event)

    def write_tokens(self) -> None:
        """Mint a fresh admin token (expiring after token_ttl) into every token file."""
        root_key = self.datadir.root_key
        for tok_path in self.token_files:
            write_file_atomic(tok_path, (mint_token(root_key, "*", "all", self.token_ttl)
                                         + "\n").encode())

    def _renew_tokens(self) -> None:
        # a third of the lifetime: a client that read the file just before a renewal still
        # has two thirds left, and a missed renewal (a stalled disk) is caught by the next one
        period = max(self.token_ttl / 3, 0.1)
        while not self._stop_renew.wait(period):
            try:
                self.write_tokens()
            except OSError as e:   # a full disk: keep serving; the old token is still valid
                log.warning("cannot renew the admin token files: %s", e)

    def start(self) -> None:
        for addr in self.listen:
            upath = _unix_path(addr)
            if upath is not None:
                upath = os.path.abspath(upath)
                _prepare_unix_socket(upath)
                old = os.umask(0o177)  # the socket file is born 0600
                try:
                    self.grpc_server.add_insecure_port(f"unix:{upath}")
                finally:
                    os.umask(old)
                self.socket_paths.append(upath)
                self.addresses.append(f"unix:{upath}")
                continue
            if self.tls is not None:
                creds = grpc.ssl_server_credentials([(self.tls[1], self.tls[0])])
                port = self.grpc_server.add_secure_port(addr, creds)
            else:
                host = addr.rsplit(":", 1)[0]
                if not _is_loopback(host) and not self.insecure:
                    raise SystemExit(
                        f"aifs server: {addr} would carry tokens and data in the clear to other "
                        f"machines: give --tls-cert/--tls-key, or --insecure if the network "
                        f"is trusted")
                log.warning("listening on %s without TLS: tokens and data travel in the "
                            "clear%s", addr, "" if _is_loopback(host) else " (--insecure)")
                port = self.grpc_server.add_insecure_port(addr)
            if port == 0:
                raise SystemExit(f"aifs server: cannot listen on {addr} (in use or not "
                                 f"allowed)")
            host = addr.rsplit(":", 1)[0]
            self.addresses.append(f"{host}:{port}")
        # The token file exists before the first call can arrive, so a client that connects
        # the moment the socket appears always finds it.
        self.token_files.extend(upath + ".token" for upath in self.socket_paths)
        self.write_tokens()
        if self.token_files:
            self._renewer = threading.Thread(target=self._renew_tokens, name="aifs-token-renew",
                                             daemon=True)
            self._renewer.start()
        self.grpc_server.start()
        for upath in self.socket_paths:
            os.chmod(upath, 0o600)
        self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in SERVICE_NAMES:
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if self.collector is not None:
            self.collector.start()
        if self.hash_keeper is not None:
            self.hash_keeper.start()
        if self.leases is not None and self.leases.bus is not None:
            self.leases.bus.start()

    def stop(self, grace: float = DEFAULT_GRACE) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._stop_renew.set()
        if self._renewer is not None:
            self._renewer.join(5.0)   # before the files are removed: a late renewal recreates
        self.health.enter_graceful_shutdown()
        if self.collector is not None:
            self.collector.stop()     # within one store delete: it checks before each chunk
        if self.hash_keeper is not None:
            self.hash_keeper.stop()   # after its checkpoint in progress (one transaction)
        if self.leases is not None:
            self.leases.close_all()  # mounts' session streams never end by themselves
        done = self.grpc_server.stop(grace)
        done.wait(grace + 5)
        if self.leases is not None and self.leases.bus is not None:
            self.leases.bus.stop()   # after the calls: a change still running recalls first
        # Cancelled calls may still be unwinding in their threads: the storage must outlive
        # them (bounded: every handler loop checks its deadline or its cancelled stream).
        self.idle = IN_FLIGHT.wait_idle(STOP_DRAIN_SECONDS)
        if self.lock_fd is not None:
            os.close(self.lock_fd)   # releases the flock: another server may take over
            self.lock_fd = None
        self.metrics.stop()
        # the admin token too: left behind, it would be handed to whoever binds the path next
        for path in (*self.socket_paths, *self.token_files):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def sole_server(datadir: Any) -> tuple[bool, int | None]:
    """(True, fd of a held lock) when this server is the only one changing its metadata: a
    SQLite data dir whose `server.lock` it could flock. On SQLite, leases are granted only
    then: a second server on one data dir would not hear of the first one's changes. PostgreSQL
    servers grant them once their lease bus has joined (lease_bus.py, build_server)."""
    from aifs_server.metadata.sqlite import SQLiteMetadata

    if datadir.path is None or not isinstance(datadir.meta, SQLiteMetadata):
        log.info("not the sole server of its metadata: leases need the lease bus")
        return False, None
    fd = os.open(os.path.join(datadir.path, "server.lock"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        log.warning("leases off: another server is running on %s", datadir.path)
        return False, None
    return True, fd


def _space_reserve(datadir: Any) -> Any:
    """A data dir whose metadata is SQLite on its own disk holds a space reserve, released when
    that database finds the disk full (space_reserve.py). None elsewhere."""
    from aifs_server.chunkstore import LocalChunkStore
    from aifs_server.metadata.sqlite import SQLiteMetadata
    from aifs_server.space_reserve import SpaceReserve

    if datadir.path is None or not isinstance(datadir.meta, SQLiteMetadata):
        return None
    reserve = SpaceReserve(Path(datadir.path) / "reserve")
    reserve.restore()
    datadir.meta.on_full(reserve.release)
    store = datadir.chunks.store
    if isinstance(store, LocalChunkStore) and \
            os.stat(datadir.path).st_dev == os.stat(store.root).st_dev:
        store.min_free = reserve.size   # data never takes what deletions need
    return reserve


def _keeper_metrics(metrics: Metrics) -> Any:
    checkpoints = Counter("aifs_hash_checkpoints", "Branches whose node hashes background "
                          "hashing brought up to date", registry=metrics.registry)
    nodes = Counter("aifs_hash_checkpoint_nodes", "Nodes background hashing rehashed",
                    registry=metrics.registry)
    seconds = Counter("aifs_hash_checkpoint_seconds", "Time background hashing worked",
                      registry=metrics.registry)

    def on_pass(trees: int, n: int, t: float) -> None:
        checkpoints.inc(trees)
        nodes.inc(n)
        seconds.inc(t)
    return on_pass


def _collector_metrics(metrics: Metrics) -> Any:
    passes = Counter("aifs_collector_passes", "Background collection passes completed",
                     registry=metrics.registry)
    deleted = Counter("aifs_collector_chunks_deleted", "Chunks deleted by background "
                      "collection", registry=metrics.registry)
    freed = Counter("aifs_collector_bytes_freed", "Stored bytes freed by background "
                    "collection", registry=metrics.registry)

    def on_pass(r: Any) -> None:
        passes.inc()
        deleted.inc(r.chunks_deleted)
        freed.inc(r.bytes_freed)
    return on_pass


def build_server(datadir: Any, listen: list[str], *, tls: tuple[bytes, bytes] | None = None,
                 max_workers: int = DEFAULT_WORKERS, metrics: Metrics | None = None,
                 assets: Any = None, collect_interval: float = COLLECT_INTERVAL,
                 upload_grace: float = UPLOAD_GRACE,
                 hash_interval: float = HASH_INTERVAL) -> Server:
    """A configured, not yet started server over an opened data dir. collect_interval 0: no
    background collection (uploads are still pinned, so an online `aifs gc` honours them).
    hash_interval 0: no background hashing (a snapshot hashes what changed since the last)."""
    meta = datadir.meta

    def stats() -> dict[str, tuple[int, int]]:
        out = {}
        for ns in meta.list_namespaces():
            cs = meta.chunk_stats(ns.name)
            out[ns.name] = (cs.stored_bytes, cs.raw_bytes)
        return out

    metrics = metrics or Metrics(stats)
    metrics.registry.register(ListingCacheCollector(lambda: listing_cache.of(meta.store)))
    if assets is None:
        assets = _open_asset_store(datadir)
    sole, lock_fd = sole_server(datadir)
    # PostgreSQL: leases across servers (lease_bus.py); AIFS_LEASE_BUS=0: none granted
    dsn = getattr(meta, "dsn", None) if os.environ.get("AIFS_LEASE_BUS") != "0" else None
    backend = Backend(datadir, assets=assets, metrics=metrics, lease_grants=sole or bool(dsn))
    if dsn:
        from aifs_server.lease_bus import LeaseBus

        # grants once it has joined the other servers; forwards watchers' change events
        LeaseBus(dsn, backend.leases, events=backend.events)
    pins = UploadPins(sdk_grace=upload_grace)
    datadir.chunks.pins = pins
    on_pass = _collector_metrics(metrics)
    reserve = _space_reserve(datadir)
    if reserve is not None:
        count_pass = on_pass

        def on_pass(r: Any) -> None:
            count_pass(r)
            reserve.restore()   # taken back once the collection made room
    collector = None
    if collect_interval > 0:
        # precise only where every upload and session is this server's (as leases)
        collector = Collector(backend, pins, precise=sole, interval=collect_interval,
                              sdk_grace=upload_grace, on_pass=on_pass)
    keeper = None
    if hash_interval > 0:
        keeper = HashKeeper(Versions(meta, datadir.signing_key), interval=hash_interval,
                            on_pass=_keeper_metrics(metrics))
    limit = max_message_bytes()
    gserver = grpc.server(
        futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="aifs-rpc"),
        # auth first: a refused call is answered before its body is read (auth.py); then each
        # message is held to its method's size (request_limits.py)
        interceptors=[metrics.interceptor(), AuthInterceptor(datadir.root_key),
                      SizeLimitInterceptor(limit)],
        options=[
            ("grpc.max_send_message_length", limit),
            ("grpc.max_receive_message_length", limit),
            ("grpc.so_reuseport", 0),
        ],
    )
    add_filesystem_service(FilesystemServicer(backend), gserver)   # ReadDir: pre-encoded
    add_data_service(DataServicer(backend), gserver)   # GetChunks: pre-encoded messages
    assets_pb2_grpc.add_AssetsServicer_to_server(AssetsServicer(backend), gserver)
    admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(backend), gserver)
    register_versioning(backend, gserver)
    register_session(backend, gserver)   # lease stream (docs/LEASES.md)
    health_servicer = health.HealthServicer(experimental_non_blocking=True)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, gserver)
    reflection.enable_server_reflection(
        (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), gserver)
    return Server(datadir=datadir, grpc_server=gserver, health=health_servicer, metrics=metrics,
                  listen=list(listen), tls=tls, lock_fd=lock_fd, leases=backend.leases,
                  collector=collector, hash_keeper=keeper)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="aifs server", description="Run the AIFS gRPC server: over a data directory "
        "(--data), or as one of any number of stateless servers sharing a PostgreSQL database "
        "and a chunk store (--meta and --store, or --config FILE).")
    p.add_argument("--data", help="the data directory (see `aifs format`)")
    shared = p.add_argument_group(
        "shared deployment", "no data dir: the keys live in the database, sealed by the master "
        "key; the first server on an empty database formats it")
    shared.add_argument("--meta", metavar="URL", help="metadata database: postgresql://...")
    shared.add_argument("--store", metavar="URL",
                        help="chunk store: s3://BUCKET[/PREFIX]?endpoint=URL&region=R "
                             "(credentials from AWS_* variables)")
    shared.add_argument("--config", metavar="FILE",
                        help='JSON file: {"meta": URL, "store": URL, "master_key_file": F, '
                             '"listen": [...]} (flags given override it)')
    shared.add_argument("--master-key-file", metavar="FILE",
                        help="the deployment's master key (else $AIFS_MASTER_KEY_FILE or "
                             "$AIFS_MASTER_KEY; `aifs master-key create FILE` makes one)")
    shared.add_argument("--chunk-size", type=int, default=1 << 20,
                        help="at format only: chunk size of the first namespace")
    shared.add_argument("--zstd-level", type=int, default=1, help="at format only")
    shared.add_argument("--namespace", default="default",
                        help="at format only: the first namespace")
    p.add_argument("--listen", action="append", default=[],
                   help="unix:PATH or HOST:PORT; repeatable (default unix:<data>/aifs.sock)")
    p.add_argument("--tls-cert", help="PEM certificate for TCP listeners")
    p.add_argument("--tls-key", help="PEM private key for TCP listeners")
    p.add_argument("--insecure", action="store_true",
                   help="allow a TCP listener without TLS on a non-loopback address")
    p.add_argument("--token-ttl", type=float, default=TOKEN_TTL,
                   help="seconds the admin token next to a unix socket is valid; the server "
                        "rewrites it every third of that (default 3600)")
    p.add_argument("--metrics-port", type=int, default=None,
                   help="serve Prometheus metrics on 127.0.0.1:N (0 = any free port)")
    p.add_argument("--max-workers", type=int, default=DEFAULT_WORKERS)
    p.add_argument("--format-if-needed", action="store_true",
                   help="format --data first when it is not an AIFS data directory yet")
    p.add_argument("--collect-interval", type=float, default=COLLECT_INTERVAL, metavar="S",
                   help="seconds between background collection passes, which free the space "
                        "of removed files without `aifs gc` (0 = off; default 2)")
    p.add_argument("--hash-interval", type=float, default=HASH_INTERVAL, metavar="S",
                   help="seconds between background hashing passes, which keep the branches' "
                        "node hashes current so that a snapshot rehashes only what changed "
                        "since (at most a tenth of the time; 0 = off; default 0.25)")
    p.add_argument("--upload-grace", type=float, default=UPLOAD_GRACE, metavar="S",
                   help="how long a chunk uploaded without a mount session (SDK) is kept "
                        "before it is committed (default 3600)")
    p.add_argument("--grace", type=float, default=DEFAULT_GRACE,
                   help="seconds in-flight calls get to finish at shutdown")
    p.add_argument("--listing-cache-mb", type=float, metavar="MB",
                   default=float(os.environ.get("AIFS_LISTING_CACHE_MB", "64")),
                   help="memory for large directories' listings kept between hashings, so a "
                   "snapshot after a few changes in a directory of 100k entries costs O(changes) "
                   "(default 64, or $AIFS_LISTING_CACHE_MB; 0 = off)")
    p.add_argument("--log-level", default=os.environ.get("AIFS_LOG_LEVEL", "INFO"))
    args = p.parse_args(argv)
    if not 0 <= args.listing_cache_mb <= 1 << 20:
        p.error(f"--listing-cache-mb {args.listing_cache_mb:g}: give 0 (off) to 1048576 MB")
    return args


def _apply_config_file(args: argparse.Namespace) -> None:
    """Fill what the flags left out from --config (a small JSON file, no secrets in it)."""
    import json

    try:
        cfg = json.loads(Path(args.config).read_text())
    except (OSError, ValueError) as e:
        raise SystemExit(f"aifs server: cannot read --config {args.config}: {e}") from None
    if not isinstance(cfg, dict):
        raise SystemExit(f"aifs server: --config {args.config} is not a JSON object")
    known = {"meta", "store", "master_key_file", "listen", "chunk_size", "zstd_level",
             "namespace"}
    unknown = set(cfg) - known
    if unknown:
        raise SystemExit(f"aifs server: --config {args.config}: unknown key(s) "
                         f"{', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    for key in ("meta", "store", "master_key_file"):
        if getattr(args, key) is None and cfg.get(key):
            setattr(args, key, str(cfg[key]))
    if not args.listen and cfg.get("listen"):
        args.listen = [str(a) for a in cfg["listen"]]
    for key in ("chunk_size", "zstd_level", "namespace"):
        if key in cfg:
            setattr(args, key, cfg[key])


def _open_backing(args: argparse.Namespace) -> tuple[Any, str | None]:
    """(the opened DataDir or shared deployment, the data dir path or None). SystemExit with a
    message for anything the operator must fix."""
    from aifs_core.errors import AIFSError
    from aifs_server import datadir as dd

    if args.config:
        _apply_config_file(args)
    if args.data and (args.meta or args.store):
        raise SystemExit("aifs server: give --data DIR, or --meta and --store, not both")
    if args.meta or args.store:
        if not (args.meta and args.store):
            raise SystemExit("aifs server: --meta and --store go together")
        if not args.listen:
            raise SystemExit("aifs server: a shared server has no data dir for its socket: "
                             "give --listen (unix:PATH or 127.0.0.1:PORT)")
        from aifs_server.secrets import load_master_key

        try:
            master = load_master_key(args.master_key_file)
            return dd.open_shared(args.meta, args.store, master, chunk_size=args.chunk_size,
                                  zstd_level=args.zstd_level, namespace=args.namespace), None
        except AIFSError as e:
            raise SystemExit(f"aifs server: {e.message}") from None
    if not args.data:
        raise SystemExit("aifs server: give --data DIR (a data directory), or --meta URL and "
                         "--store URL (a shared deployment)")
    data = os.path.abspath(args.data)
    if not dd.is_formatted(data):
        if args.format_if_needed:
            res = dd.format_data_dir(data)
            print(f"aifs server: {res.message}", file=sys.stderr, flush=True)
        else:
            raise SystemExit(
                f"aifs server: {data} is not a formatted AIFS data directory; run "
                f"`aifs format --data {data}` first (or start with --format-if-needed)")
    try:
        return dd.open_data_dir(data), data
    except dd.DataDirError as e:
        raise SystemExit(f"aifs server: {e.message}") from None


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        stream=sys.stderr)
    from aifs_core.malloc_tuning import tune_malloc

    tune_malloc()  # every chunk sent or received is a MiB-sized message: keep them off mmap
    listing_cache.configure(int(args.listing_cache_mb * (1 << 20)))
    if (args.tls_cert is None) != (args.tls_key is None):
        print("aifs server: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    try:
        datadir, data = _open_backing(args)
    except SystemExit as e:
        print(str(e.code), file=sys.stderr)
        return 2
    tls = None
    if args.tls_cert:
        tls = (Path(args.tls_cert).read_bytes(), Path(args.tls_key).read_bytes())
    listen = args.listen or [f"unix:{os.path.join(str(data), 'aifs.sock')}"]
    stopping: list[int] = []     # the signals received: appended by the handler, no lock

    def on_signal(signum: int, _frame: Any) -> None:
        # Only a list append here. The handler runs in the main thread between two bytecodes,
        # possibly while that thread holds a lock: an Event's inside Event.wait, logging's
        # inside a log call. Event.set() (and log.info) from here then waited for the main
        # thread itself, forever: a SIGTERM hung the server (py-spy: on_signal -> Event.set ->
        # Condition.__enter__, under Event.wait in the loop below).
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        srv = build_server(datadir, listen, tls=tls, max_workers=args.max_workers,
                           collect_interval=args.collect_interval,
                           upload_grace=args.upload_grace,
                           hash_interval=args.hash_interval)
        srv.insecure = args.insecure
        if not args.token_ttl > 0:
            raise SystemExit("aifs server: --token-ttl must be a positive number of seconds")
        srv.token_ttl = args.token_ttl
        srv.start()
    except SystemExit as e:
        datadir.close()
        print(str(e.code), file=sys.stderr)
        return 1
    except Exception as e:
        datadir.close()
        log.exception("cannot start")
        print(f"aifs server: cannot start: {e}", file=sys.stderr)
        return 1
    extra = ""
    if args.metrics_port is not None:
        mport = srv.metrics.serve(args.metrics_port)
        extra = f" (metrics on http://127.0.0.1:{mport}/metrics)"
    # one write: with an unbuffered stdout, print() writes the line and its newline apart,
    # and a log line of another thread could land between them (tools parse this line)
    sys.stdout.write(f"aifs server: listening on {', '.join(srv.addresses)}{extra}\n")
    sys.stdout.flush()
    from aifs_core.gc_tuning import tune_gc

    # started: freeze what start-up built and collect cycles less often (gc_tuning.py: the
    # collector was a fifth of a listing's CPU per entry)
    tune_gc()
    for tok in srv.token_files:
        log.info("admin token for local clients written to %s", tok)
    while not stopping:
        time.sleep(0.2)             # a signal interrupts it; the handler has run on return
    log.info("received %s: shutting down", signal.Signals(stopping[0]).name)
    srv.stop(args.grace)
    if srv.idle:
        datadir.close()
    else:  # closing the database under a running call could crash; exiting is safe
        log.warning("calls still running %.0f s after the grace; exiting without closing the "
                    "metadata engine (committed data is safe)", STOP_DRAIN_SECONDS)
    log.info("stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
