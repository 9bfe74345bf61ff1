"""The AIFS client SDK: one gRPC channel to an AIFS server, plain Python objects out.

Interface:
    AIFSClient(address=None, token=None, token_file=None, namespace="default", branch="main",
               timeout=30.0, retry_for=30.0, accept_zstd=True, tls_ca=None,
               compress_uploads=None)
        address   "unix:PATH", "HOST:PORT", else $AIFS_SERVER, else the embedded default socket
                  `default_socket(default_data_dir())`.
        token     token=, else the file token_file=, else $AIFS_TOKEN_FILE, else $AIFS_TOKEN,
                  else PATH + ".token" next to a unix socket. Read lazily (the server writes its
                  token file when it starts) and never logged (repr hides it).
        Every call has a deadline (`timeout`); UNAVAILABLE (and DEADLINE_EXCEEDED for reads) is
        retried with exponential backoff + jitter for up to `retry_for` seconds, then
        `ServerUnavailable` / `DeadlineExceeded`. Server errors arrive as `aifsfs.errors`
        classes that are also the `aifs_core.errors` class of their reason.
        Thread-safe: one channel, stubs shared, per-thread zstd contexts. Context manager.

    Assets (the seed's names): put_asset(data, kind="blob", metadata=None, parents=None) -> id;
        get_asset(id) -> dict(data, kind, size, metadata, parents, uri, asset_id, ...);
        get_asset_stream(id) -> (info dict, iterator of bytes); download(id, fileobj) -> info;
        stat_asset(id) -> info dict; list_assets(kind=None) -> [info]; delete_asset(id);
        verify_asset(id) -> {"ok", "detail"}; get_lineage(id) -> [info of ancestors];
        put_tensor(TensorData) / get_tensor(id) -> TensorData; put_embedding(EmbeddingData) /
        get_embedding(id); put_artifact(files | dir) / get_artifact(id) -> {name: bytes}.
    Filesystem (Attr, DirEntry, ChunkRef of aifs_server.metadata.base):
        lookup, getattr, setattr, readdir -> (entries, eof), mkdir, create, unlink, rmdir,
        rename, symlink, readlink, link, getxattr, setxattr, listxattr, removexattr, statfs,
        get_chunk_map -> (attr, chunk_size, chunks), commit_file -> Attr, forget, file_info.
        Fast paths the mount uses (one round trip each): create_entry / mkdir_entry /
        symlink_entry / link_entry -> (attr, parent attr | None); remove(parent, name,
        directory=, forget=) -> Removed(attr, parent); rename_entry(..., forget=) ->
        Renamed(replaced, parent, new_parent); open_chunk_map(ino, inline_max,
        cached_generation) -> (attr, chunk_size, chunks, inline bytes of slot 0 or b"");
        commit_file(..., inline=[(id, data)]) stores small chunks with the commit.
    Data: has_chunks(ids) -> [bool]; put_chunks(iterable of (id, data)) -> PutChunksResult;
        get_chunks([(id, offset, length)]) -> [bytes] (exact; length 0 = to the chunk's end).
        `wire_stats` counts payload bytes sent/received (zstd vs identity).
    Admin: format, introspect, health, list_namespaces, fsck, gc.
    default_data_dir(), default_socket(data_dir) — where the embedded default server lives.
"""

from __future__ import annotations

import io
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import grpc
import zstandard
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aifs_core.codec import decompress_bounded, thread_compressor, thread_decompressor
from aifs_core.errors import PermissionDenied, Unauthenticated
from aifs_core.types import Attr, ChunkRef, DirEntry, ParentEdge
from aifs_core.verbs import DEFAULT_BRANCH, DEFAULT_NAMESPACE
from aifs_core.wire import (
    asset_info_from_pb,
    attr_from_pb,
    chunkref_from_pb,
    chunkref_to_pb,
    namespace_from_pb,
    opt_attr,
    parent_to_pb,
)
from aifs_proto.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    assets_pb2,
    assets_pb2_grpc,
    common_pb2,
    data_pb2,
    data_pb2_grpc,
    filesystem_pb2,
    filesystem_pb2_grpc,
)

from .errors import (
    DeadlineExceeded,
    IncompleteRead,
    LocalError,
    RemoteError,
    ServerUnavailable,
    from_rpc_error,
)

T = TypeVar("T")

PIECE_SIZE = 1 << 20            # PutAsset data pieces
MAX_MESSAGE = 72 << 20          # room for a 64 MiB chunk plus framing

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    # We retry ourselves (with the deadline we want); a short reconnect backoff lets a
    # client started before its server connect within about a second of the server's start.
    ("grpc.enable_retries", 0),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def default_data_dir() -> Path:
    """$AIFS_DATA, else ${XDG_DATA_HOME:-~/.local/share}/aifs."""
    env = os.environ.get("AIFS_DATA")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "aifs"


def default_socket(data_dir: str | os.PathLike[str] | None = None) -> str:
    """The embedded default server's address: unix:<data>/aifs.sock."""
    d = Path(data_dir) if data_dir is not None else default_data_dir()
    return f"unix:{d / 'aifs.sock'}"


def resolve_address(address: str | None) -> str:
    addr = address or os.environ.get("AIFS_SERVER") or default_socket()
    if addr.startswith("unix://"):
        addr = "unix:" + addr[len("unix://"):]
    if addr.startswith("unix:"):
        if len(addr) == len("unix:"):
            raise LocalError("server address 'unix:' names no socket path (use unix:/path/to.sock)")
        return addr
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise LocalError(
            f"server address {addr!r} is neither unix:PATH nor HOST:PORT "
            f"(set --server or AIFS_SERVER)")
    return addr


# --- plain results --------------------------------------------------------------------------

@dataclass
class PutChunksResult:
    stored: int = 0
    deduplicated: int = 0
    stored_bytes: int = 0
    sent_bytes: int = 0      # payload bytes on the wire (after optional zstd)
    raw_bytes: int = 0       # plaintext bytes of the chunks sent


@dataclass
class FileInfo:
    asset_id: str
    uri: str
    kind: str
    stored_bytes: int
    logical_bytes: int


@dataclass
class Removed:
    """What Unlink/RmDir removed: the inode after the call (nlink decremented; None from a
    server too old to say) and its parent directory after it."""

    attr: Attr | None
    parent: Attr | None


@dataclass
class Renamed:
    """What a Rename changed: the inode it unlinked from the new name (None when none) and
    both directories after it."""

    replaced: Attr | None
    parent: Attr | None
    new_parent: Attr | None


@dataclass
class StatFs:
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int
    stored_bytes: int
    logical_bytes: int


@dataclass
class WireStats:
    """Payload bytes moved by this client (thread-safe counters)."""

    received_bytes: int = 0           # chunk payload bytes received, as on the wire
    received_raw_bytes: int = 0       # the same pieces after decompression
    zstd_pieces: int = 0
    identity_pieces: int = 0
    sent_bytes: int = 0               # chunk payload bytes sent, as on the wire
    sent_raw_bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **kw: int) -> None:
        with self._lock:
            for k, v in kw.items():
                setattr(self, k, getattr(self, k) + v)

    _FIELDS = ("received_bytes", "received_raw_bytes", "zstd_pieces", "identity_pieces",
               "sent_bytes", "sent_raw_bytes")

    def reset(self) -> None:
        with self._lock:
            for k in self._FIELDS:
                setattr(self, k, 0)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: int(getattr(self, k)) for k in self._FIELDS}


def _is_tcp(address: str) -> bool:
    return not address.startswith("unix:")


def _pieces(data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
            size: int = PIECE_SIZE) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray, memoryview)):
        mv = memoryview(data)
        for i in range(0, len(mv), size):
            yield bytes(mv[i:i + size])
        return
    read = getattr(data, "read", None)
    if callable(read):
        while True:
            piece = read(size)
            if not piece:
                return
            yield bytes(piece)
    else:
        for piece in data:  # type: ignore[union-attr]
            mv = memoryview(piece)
            for i in range(0, len(mv), size):
                yield bytes(mv[i:i + size])


def _unzstd(data: bytes, raw_length: int) -> bytes:
    """A GetChunks ZSTD piece: one zstd frame, or (we accept "zstd-frames") several back to
    back, `raw_length` bytes in all. Never more than raw_length + 1 bytes are produced."""
    if zstandard.frame_content_size(data) == raw_length:
        return thread_decompressor().decompress(data, max_output_size=raw_length)
    return decompress_bounded(data, raw_length)


class AIFSClient:
    """A thread-safe client of one AIFS server (one namespace and branch)."""

    def __init__(self, address: str | None = None, token: str | None = None,
                 token_file: str | os.PathLike[str] | None = None,
                 namespace: str = DEFAULT_NAMESPACE, branch: str = DEFAULT_BRANCH,
                 timeout: float = 30.0, retry_for: float = 30.0, accept_zstd: bool = True,
                 tls_ca: str | os.PathLike[str] | None = None,
                 compress_uploads: bool | None = None) -> None:
        self.address = resolve_address(address)
        self.namespace = namespace or DEFAULT_NAMESPACE
        self.branch = branch or DEFAULT_BRANCH
        self.timeout = float(timeout)
        self.retry_for = float(retry_for)
        self.accept_zstd = accept_zstd
        # zstd on uploads pays on a network link, not on a unix socket (CPU bound there)
        self.compress_uploads = (_is_tcp(self.address) and accept_zstd
                                 if compress_uploads is None else compress_uploads)
        self.wire_stats = WireStats()
        self._token_lock = threading.Lock()
        self._token: str | None = token.strip() if token else None
        self._token_source = "token=" if token else ""
        self._token_file = Path(token_file) if token_file else None
        self._closed = False
        self._seen_server = False   # a call succeeded once: streams need not wait for ready

        if tls_ca is not None:
            if not _is_tcp(self.address):
                raise LocalError("tls_ca is for TCP addresses; a unix socket needs no TLS")
            try:
                ca = Path(tls_ca).read_bytes()
            except OSError as e:
                raise LocalError(f"cannot read the TLS CA file {tls_ca}: {e.strerror}") from e
            creds = grpc.ssl_channel_credentials(root_certificates=ca)
            self._channel = grpc.secure_channel(self.address, creds, options=_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        self._fs = filesystem_pb2_grpc.FilesystemStub(self._channel)
        self._data = data_pb2_grpc.DataStub(self._channel)
        self._assets = assets_pb2_grpc.AssetsStub(self._channel)
        self._admin = admin_pb2_grpc.AdminStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    # --- plumbing ---------------------------------------------------------------------------

    def __repr__(self) -> str:  # never the token
        return (f"AIFSClient(address={self.address!r}, namespace={self.namespace!r}, "
                f"branch={self.branch!r}, token={'<set>' if self._token else '<none>'})")

    def __enter__(self) -> AIFSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._channel.close()

    def _token_candidates(self) -> list[tuple[str, Path | None, str | None]]:
        """(source description, file, literal) in priority order."""
        out: list[tuple[str, Path | None, str | None]] = []
        if self._token_file is not None:
            out.append((f"token file {self._token_file}", self._token_file, None))
            return out  # an explicit file is the only source: no silent fallback
        env_file = os.environ.get("AIFS_TOKEN_FILE")
        if env_file:
            return [(f"token file {env_file} (AIFS_TOKEN_FILE)", Path(env_file), None)]
        env_tok = os.environ.get("AIFS_TOKEN")
        if env_tok:
            return [("AIFS_TOKEN", None, env_tok)]
        if self.address.startswith("unix:"):
            p = Path(self.address[len("unix:"):] + ".token")
            out.append((f"token file {p} (next to the socket)", p, None))
        return out

    def _current_token(self) -> str | None:
        if self._token is not None:
            return self._token
        with self._token_lock:
            if self._token is not None:
                return self._token
            for source, path, literal in self._token_candidates():
                if literal is not None:
                    self._token, self._token_source = literal.strip(), source
                    return self._token
                assert path is not None
                try:
                    text = path.read_text().strip()
                except FileNotFoundError:
                    continue  # may appear when the server starts: look again next call
                except OSError as e:
                    raise LocalError(f"cannot read the {source}: {e.strerror}") from e
                if not text:
                    raise LocalError(f"the {source} is empty; write a token into it "
                                     f"(`aifs token create ... > FILE`)")
                self._token, self._token_source = text, source
                return self._token
        return None

    def _metadata(self) -> list[tuple[str, str]]:
        md = [("aifs-namespace", self.namespace), ("aifs-branch", self.branch)]
        tok = self._current_token()
        if tok:
            md.append(("authorization", f"Bearer {tok}"))
        return md

    def _explain(self, exc: RemoteError) -> RemoteError:
        """Add what the client knows to an authentication failure (which token it used)."""
        if isinstance(exc, Unauthenticated):
            if self._token is None:
                where = ", ".join(s for s, _, _ in self._token_candidates()) or "none configured"
                exc.message = (f"{exc.message} (no token was sent: looked for {where}; pass "
                               f"--token-file or set AIFS_TOKEN_FILE)")
            else:
                exc.message = f"{exc.message} (token from {self._token_source})"
            exc.args = (exc.message,)
        elif isinstance(exc, PermissionDenied) and self._token is not None:
            exc.message = (f"{exc.message} (token from {self._token_source}; mint one that "
                           f"allows it with `aifs token create --methods ...`)")
            exc.args = (exc.message,)
        return exc

    def _unavailable(self, tries: int, started: float, last: grpc.RpcError | None
                     ) -> ServerUnavailable:
        detail = ""
        if last is not None:
            d = last.details() if hasattr(last, "details") else ""
            detail = f" (last error: {d})" if d else ""
        return ServerUnavailable(
            f"cannot reach the AIFS server at {self.address} after {tries} "
            f"{'try' if tries == 1 else 'tries'} for "
            f"{time.monotonic() - started:.1f} s: is it running? start it with `aifs up` or "
            f"`aifs server`{detail}", address=self.address)

    def _retrying(self, attempt: Callable[[], T], idempotent: bool,
                  timeout: float | None = None) -> T:
        """Run `attempt` (which makes one gRPC call) with backoff on transient failures."""
        if self._closed:
            raise LocalError("this AIFSClient is closed")
        started = time.monotonic()
        give_up = started + self.retry_for
        delay = 0.05
        tries = 0
        while True:
            tries += 1
            try:
                result = attempt()
                self._seen_server = True
                return result
            except grpc.RpcError as err:
                code = err.code() if hasattr(err, "code") else None
                retry = code == grpc.StatusCode.UNAVAILABLE or (
                    idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED)
                now = time.monotonic()
                if (code == grpc.StatusCode.UNAUTHENTICATED and self._token is None
                        and now < give_up and self._await_token(min(give_up, now + 1.0))):
                    continue  # the server writes its token file just after it starts serving
                if not retry:
                    raise self._explain(from_rpc_error(err, self.address)) from None
                if now >= give_up:
                    if code == grpc.StatusCode.UNAVAILABLE:
                        raise self._unavailable(tries, started, err) from None
                    raise DeadlineExceeded(
                        f"the AIFS server at {self.address} did not answer within "
                        f"{timeout or self.timeout:.1f} s ({tries} tries for "
                        f"{now - started:.1f} s)", address=self.address) from None
                # full jitter keeps many mount threads from retrying in lockstep
                time.sleep(min(random.uniform(delay / 2, delay), max(0.0, give_up - now)))
                delay = min(delay * 2, 2.0)

    def _await_token(self, until: float) -> bool:
        while True:
            if self._current_token() is not None:
                return True
            if time.monotonic() >= until:
                return False
            time.sleep(0.05)

    def _unary(self, method: Any, request: Any, idempotent: bool = True,
               timeout: float | None = None) -> Any:
        t = timeout or self.timeout
        return self._retrying(
            lambda: method(request, metadata=self._metadata(), timeout=t), idempotent, t)

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server answers (or raise ServerUnavailable after `timeout`,
        default `retry_for`). A health check with wait_for_ready: no token needed."""
        started = time.monotonic()
        limit = max(self.retry_for if timeout is None else timeout, 0.01)
        try:
            self._health.Check(health_pb2.HealthCheckRequest(), timeout=limit,
                               wait_for_ready=True)
        except grpc.RpcError as err:
            if err.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise self._unavailable(1, started, None) from None
            # any other answer (e.g. health not served) still proves the server is up
        self._seen_server = True

    def _client_stream(self, method: Any, make_requests: Callable[[], Iterator[Any]],
                       replayable: bool, timeout: float | None = None) -> Any:
        """A client-streaming call. Only a replayable request stream is retried; otherwise we
        wait for the channel first, so that a server still starting does not eat the stream."""
        t = timeout or self.timeout
        if not replayable:
            if not self._seen_server:
                self.wait_ready()
            try:
                return method(make_requests(), metadata=self._metadata(), timeout=t)
            except grpc.RpcError as err:
                raise self._explain(from_rpc_error(err, self.address)) from None
        return self._retrying(
            lambda: method(make_requests(), metadata=self._metadata(), timeout=t), True, t)

    # --- health and admin -------------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """Status name of grpc.health.v1 Check: SERVING, NOT_SERVING, SERVICE_UNKNOWN..."""
        reply = self._unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def format(self, namespace: str | None = None, chunk_size: int = 0, zstd_level: int = 0,
               dry_run: bool = False) -> dict[str, Any]:
        reply = self._unary(self._admin.Format, admin_pb2.FormatRequest(
            namespace=namespace or self.namespace, chunk_size=chunk_size,
            zstd_level=zstd_level, dry_run=dry_run), idempotent=True)
        return {"created": reply.created, "message": reply.message,
                "namespace": namespace_from_pb(reply.namespace),
                "root_snapshot_id": reply.root_snapshot_id}

    def introspect(self) -> dict[str, Any]:
        reply = self._unary(self._admin.Introspect, common_pb2.Empty())
        try:
            config = json.loads(reply.config_json) if reply.config_json else {}
        except ValueError:
            config = {"_raw": reply.config_json}
        return {"version": reply.version, "features": list(reply.features), "config": config,
                "namespaces": [namespace_from_pb(n) for n in reply.namespaces]}

    def list_namespaces(self) -> list[dict[str, Any]]:
        reply = self._unary(self._admin.ListNamespaces, common_pb2.Empty())
        return [namespace_from_pb(n) for n in reply.namespaces]

    def fsck(self, read_data: bool = False, timeout: float | None = None) -> dict[str, Any]:
        reply = self._unary(self._admin.Fsck, admin_pb2.FsckRequest(read_data=read_data),
                            timeout=timeout or max(self.timeout, 600.0))
        return {"ok": reply.ok, "problems": list(reply.problems),
                "chunks_checked": reply.chunks_checked}

    def gc(self, dry_run: bool = False, grace_seconds: int = 0,
           timeout: float | None = None) -> dict[str, Any]:
        reply = self._unary(self._admin.GC, admin_pb2.GCRequest(
            dry_run=dry_run, grace_seconds=grace_seconds),
            idempotent=False, timeout=timeout or max(self.timeout, 600.0))
        return {"chunks_deleted": reply.chunks_deleted, "bytes_freed": reply.bytes_freed,
                "orphans_deleted": reply.orphans_deleted}

    # --- assets -----------------------------------------------------------------------------

    def put_asset(self, data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
                  kind: str = "blob", metadata: Mapping[str, Any] | None = None,
                  parents: Iterable[str | ParentEdge | Mapping[str, Any]] | None = None,
                  size_hint: int = 0, on_progress: Callable[[int], None] | None = None,
                  timeout: float | None = None) -> str:
        """Store an immutable asset; returns its AssetID (BLAKE3-256 hex of the bytes)."""
        try:
            metadata_json = json.dumps(dict(metadata or {}), sort_keys=True)
        except (TypeError, ValueError) as e:
            raise LocalError(f"asset metadata must be JSON-serialisable: {e}") from e
        header = assets_pb2.AssetHeader(
            kind=kind, metadata_json=metadata_json,
            parents=[parent_to_pb(p) for p in (parents or [])],
            size_hint=size_hint or (len(data) if isinstance(
                data, (bytes, bytearray, memoryview)) else 0))
        replayable = isinstance(data, (bytes, bytearray, memoryview))

        def requests() -> Iterator[assets_pb2.PutAssetRequest]:
            yield assets_pb2.PutAssetRequest(header=header)
            for piece in _pieces(data):
                yield assets_pb2.PutAssetRequest(data=piece)
                if on_progress is not None:
                    on_progress(len(piece))

        # big uploads need more than the default deadline: the whole stream shares it
        t = timeout or max(self.timeout, 3600.0)
        info = self._client_stream(self._assets.PutAsset, requests, replayable, t)
        return str(info.asset_id)

    def _get_asset_call(self, asset_id: str, info_only: bool, timeout: float
                        ) -> tuple[dict[str, Any], Iterator[Any]]:
        req = assets_pb2.GetAssetRequest(asset_id=asset_id, info_only=info_only)
        call = self._assets.GetAsset(req, metadata=self._metadata(), timeout=timeout)
        first = next(call, None)
        if first is None or not first.HasField("info"):
            raise RemoteError(f"the server answered GetAsset({asset_id}) without the asset info",
                              grpc.StatusCode.INTERNAL, "PROTOCOL", self.address)
        return asset_info_from_pb(first.info), call

    def stat_asset(self, asset_id: str) -> dict[str, Any]:
        """Asset info without its bytes."""
        def attempt() -> dict[str, Any]:
            info, call = self._get_asset_call(asset_id, True, self.timeout)
            for _ in call:  # drain: info_only sends nothing more
                pass
            return info
        return self._retrying(attempt, True)

    def get_asset_stream(self, asset_id: str, timeout: float | None = None
                         ) -> tuple[dict[str, Any], Iterator[bytes]]:
        """(info, iterator of data pieces). Retried until the info arrived, not after."""
        t = timeout or max(self.timeout, 3600.0)
        info, call = self._retrying(lambda: self._get_asset_call(asset_id, False, t), True)

        def pieces() -> Iterator[bytes]:
            got = 0
            try:
                for msg in call:
                    if msg.HasField("data"):
                        got += len(msg.data)
                        yield msg.data
            except grpc.RpcError as err:
                raise self._explain(from_rpc_error(err, self.address)) from None
            if got != info["size"]:
                raise IncompleteRead(
                    f"asset {asset_id}: received {got} of {info['size']} bytes",
                    address=self.address)
        return info, pieces()

    def download(self, asset_id: str, fileobj: BinaryIO,
                 on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        info, pieces = self.get_asset_stream(asset_id)
        for piece in pieces:
            fileobj.write(piece)
            if on_progress is not None:
                on_progress(len(piece))
        return info

    def get_asset(self, asset_id: str) -> dict[str, Any]:
        """The asset's info plus its bytes under "data" (the seed's shape)."""
        t = max(self.timeout, 3600.0)

        def attempt() -> dict[str, Any]:
            # the whole download is one attempt: a stream cut by UNAVAILABLE starts over
            info, call = self._get_asset_call(asset_id, False, t)
            buf = io.BytesIO()
            for msg in call:
                if msg.HasField("data"):
                    buf.write(msg.data)
            info["data"] = buf.getvalue()
            if len(info["data"]) != info["size"]:
                raise IncompleteRead(
                    f"asset {asset_id}: received {len(info['data'])} of {info['size']} bytes",
                    address=self.address)
            return info
        return self._retrying(attempt, True)

    def list_assets(self, kind: str | None = None, limit: int | None = None
                    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        after = ""
        while True:
            page = 1000 if limit is None else min(1000, limit - len(out))
            reply = self._unary(self._assets.ListAssets, assets_pb2.ListAssetsRequest(
                kind=kind or "", limit=page, after=after))
            out.extend(asset_info_from_pb(a) for a in reply.assets)
            after = reply.next_after
            if not after or not reply.assets or (limit is not None and len(out) >= limit):
                return out

    def delete_asset(self, asset_id: str) -> None:
        self._unary(self._assets.DeleteAsset, assets_pb2.AssetRequest(asset_id=asset_id),
                    idempotent=False)

    def verify_asset(self, asset_id: str) -> dict[str, Any]:
        reply = self._unary(self._assets.VerifyAsset, assets_pb2.AssetRequest(asset_id=asset_id),
                            timeout=max(self.timeout, 600.0))
        return {"ok": reply.ok, "detail": reply.detail}

    def get_lineage(self, asset_id: str) -> list[dict[str, Any]]:
        reply = self._unary(self._assets.GetLineage, assets_pb2.AssetRequest(asset_id=asset_id))
        return [asset_info_from_pb(a) for a in reply.ancestors]

    # kinds: the payload encoders are shared with the server (aifs_core.kinds)

    def put_tensor(self, tensor: Any, parents: Iterable[Any] | None = None,
                   metadata: Mapping[str, Any] | None = None) -> str:
        from aifs_core import kinds
        if not isinstance(tensor, kinds.TensorData):
            tensor = kinds.TensorData(data=tensor)
        meta = dict(tensor.metadata or {})
        meta.update(metadata or {})
        return self.put_asset(kinds.encode_tensor(tensor), kind="tensor", metadata=meta,
                              parents=parents)

    def get_tensor(self, asset_id: str) -> Any:
        from aifs_core import kinds
        a = self.get_asset(asset_id)
        self._expect_kind(a, "tensor")
        return kinds.decode_tensor(a["data"], a["metadata"])

    def put_embedding(self, embedding: Any, parents: Iterable[Any] | None = None,
                      metadata: Mapping[str, Any] | None = None) -> str:
        from aifs_core import kinds
        meta = dict(embedding.metadata or {})
        meta.update(metadata or {})
        return self.put_asset(kinds.encode_embedding(embedding), kind="embed", metadata=meta,
                              parents=parents)

    def get_embedding(self, asset_id: str) -> Any:
        from aifs_core import kinds
        a = self.get_asset(asset_id)
        self._expect_kind(a, "embed")
        return kinds.decode_embedding(a["data"], a["metadata"])

    def put_artifact(self, files: Mapping[str, bytes] | str | os.PathLike[str],
                     parents: Iterable[Any] | None = None,
                     metadata: Mapping[str, Any] | None = None) -> str:
        from aifs_core import kinds
        return self.put_asset(kinds.encode_artifact(files), kind="artifact",
                              metadata=metadata, parents=parents)

    def get_artifact(self, asset_id: str) -> dict[str, bytes]:
        from aifs_core import kinds
        a = self.get_asset(asset_id)
        self._expect_kind(a, "artifact")
        return dict(kinds.decode_artifact(a["data"]))

    def _expect_kind(self, asset: dict[str, Any], kind: str) -> None:
        if asset["kind"] != kind:
            raise LocalError(f"asset {asset['asset_id']} is a {asset['kind']!r}, not a {kind!r}; "
                             f"read it with get_asset()")

    # --- filesystem -------------------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Attr:
        r = self._unary(self._fs.Lookup, filesystem_pb2.LookupRequest(parent=parent, name=name))
        return attr_from_pb(r.attr)

    def getattr(self, ino: int) -> Attr:
        return attr_from_pb(self._unary(self._fs.GetAttr,
                                        filesystem_pb2.InodeRequest(ino=ino)).attr)

    def setattr(self, ino: int, fields: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
                size: int = 0, atime_ns: int = 0, mtime_ns: int = 0, ctime_ns: int = 0) -> Attr:
        r = self._unary(self._fs.SetAttr, filesystem_pb2.SetAttrRequest(
            ino=ino, fields=fields, mode=mode, uid=uid, gid=gid, size=size, atime_ns=atime_ns,
            mtime_ns=mtime_ns, ctime_ns=ctime_ns))
        return attr_from_pb(r.attr)

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000
                ) -> tuple[list[DirEntry], bool]:
        r = self._unary(self._fs.ReadDir, filesystem_pb2.ReadDirRequest(
            ino=ino, cookie=cookie, limit=limit))
        return [DirEntry(name=bytes(e.name), attr=attr_from_pb(e.attr), cookie=e.cookie)
                for e in r.entries], r.eof

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0
              ) -> Attr:
        return self.mkdir_entry(parent, name, mode, uid, gid)[0]

    def mkdir_entry(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
                    gid: int = 0) -> tuple[Attr, Attr | None]:
        r = self._unary(self._fs.MkDir, filesystem_pb2.MkDirRequest(
            parent=parent, name=name, mode=mode, uid=uid, gid=gid), idempotent=False)
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr")

    def create(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
               gid: int = 0, rdev: int = 0) -> Attr:
        return self.create_entry(parent, name, mode, uid, gid, rdev)[0]

    def create_entry(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> tuple[Attr, Attr | None]:
        r = self._unary(self._fs.Create, filesystem_pb2.CreateRequest(
            parent=parent, name=name, mode=mode, uid=uid, gid=gid, rdev=rdev), idempotent=False)
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr")

    def unlink(self, parent: int, name: bytes) -> None:
        self.remove(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self.remove(parent, name, directory=True)

    def remove(self, parent: int, name: bytes, *, directory: bool = False,
               forget: bool = False) -> Removed:
        """Unlink (or RmDir with directory=True). forget: drop the inode at once if this was
        its last link -- only when the caller holds no handle of it."""
        method = self._fs.RmDir if directory else self._fs.Unlink
        r = self._unary(method, filesystem_pb2.NameRequest(parent=parent, name=name,
                                                           forget=forget), idempotent=False)
        return Removed(opt_attr(r, "attr"), opt_attr(r, "parent_attr"))

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        self.rename_entry(parent, name, new_parent, new_name, flags)

    def rename_entry(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0, forget: bool = False) -> Renamed:
        r = self._unary(self._fs.Rename, filesystem_pb2.RenameRequest(
            parent=parent, name=name, new_parent=new_parent, new_name=new_name, flags=flags,
            forget=forget), idempotent=False)
        return Renamed(opt_attr(r, "replaced"), opt_attr(r, "parent_attr"),
                       opt_attr(r, "new_parent_attr"))

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int = 0, gid: int = 0
                ) -> Attr:
        return self.symlink_entry(parent, name, target, uid, gid)[0]

    def symlink_entry(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                      gid: int = 0) -> tuple[Attr, Attr | None]:
        r = self._unary(self._fs.Symlink, filesystem_pb2.SymlinkRequest(
            parent=parent, name=name, target=target, uid=uid, gid=gid), idempotent=False)
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr")

    def readlink(self, ino: int) -> bytes:
        return bytes(self._unary(self._fs.ReadLink, filesystem_pb2.InodeRequest(ino=ino)).target)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        return self.link_entry(ino, new_parent, new_name)[0]

    def link_entry(self, ino: int, new_parent: int, new_name: bytes
                   ) -> tuple[Attr, Attr | None]:
        r = self._unary(self._fs.Link, filesystem_pb2.LinkRequest(
            ino=ino, new_parent=new_parent, new_name=new_name), idempotent=False)
        return attr_from_pb(r.attr), opt_attr(r, "parent_attr")

    def getxattr(self, ino: int, name: bytes) -> bytes:
        r = self._unary(self._fs.GetXattr, filesystem_pb2.XattrRequest(ino=ino, name=name))
        return bytes(r.value)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self._unary(self._fs.SetXattr, filesystem_pb2.XattrRequest(
            ino=ino, name=name, value=value, flags=flags), idempotent=False)

    def listxattr(self, ino: int) -> list[bytes]:
        r = self._unary(self._fs.ListXattr, filesystem_pb2.InodeRequest(ino=ino))
        return [bytes(n) for n in r.names]

    def removexattr(self, ino: int, name: bytes) -> None:
        self._unary(self._fs.RemoveXattr, filesystem_pb2.XattrRequest(ino=ino, name=name),
                    idempotent=False)

    def statfs(self) -> StatFs:
        r = self._unary(self._fs.StatFs, common_pb2.Empty())
        return StatFs(block_size=r.block_size, blocks=r.blocks, blocks_free=r.blocks_free,
                      blocks_avail=r.blocks_avail, files=r.files, files_free=r.files_free,
                      name_max=r.name_max, stored_bytes=r.stored_bytes,
                      logical_bytes=r.logical_bytes)

    def get_chunk_map(self, ino: int, first: int = 0, count: int = 0
                      ) -> tuple[Attr, int, list[ChunkRef]]:
        r = self._unary(self._fs.GetChunkMap, filesystem_pb2.ChunkMapRequest(
            ino=ino, first_index=first, count=count))
        return attr_from_pb(r.attr), r.chunk_size, [chunkref_from_pb(c) for c in r.chunks]

    def open_chunk_map(self, ino: int, inline_max: int = 0,
                       cached_generation: int | None = None
                       ) -> tuple[Attr, int, list[ChunkRef], bytes]:
        """The whole chunk map, plus slot 0's bytes when the file is at most `inline_max`
        bytes in slot 0 alone and not still at `cached_generation` (else b"")."""
        req = filesystem_pb2.ChunkMapRequest(ino=ino, inline_max=inline_max)
        if cached_generation is not None:
            req.cached_generation = cached_generation
        r = self._unary(self._fs.GetChunkMap, req)
        if r.inline_data:
            self.wire_stats.add(received_bytes=len(r.inline_data),
                                received_raw_bytes=len(r.inline_data))
        return (attr_from_pb(r.attr), r.chunk_size, [chunkref_from_pb(c) for c in r.chunks],
                bytes(r.inline_data))

    def commit_file(self, ino: int, chunks: Iterable[ChunkRef | tuple[int, bytes, int]],
                    size: int, truncated: bool = False, mtime_ns: int = 0,
                    asset_id: str = "", durable: bool = False,
                    inline: Sequence[tuple[bytes, bytes]] = ()) -> Attr:
        """Apply changed slots. `inline`: (chunk id, data) of small chunks to store with this
        commit instead of by put_chunks (at most 16 MiB in all)."""
        # Idempotent: the same slots and size applied twice give the same file (and storing a
        # chunk twice is a no-op), so a retry after a lost reply is safe.
        # durable=True (fsync) returns only once the commit is on the server's stable storage.
        r = self._unary(self._fs.CommitFile, filesystem_pb2.CommitFileRequest(
            ino=ino, chunks=[chunkref_to_pb(c) for c in chunks], size=size,
            truncated=truncated, mtime_ns=mtime_ns, asset_id=asset_id, durable=durable,
            inline_chunks=[filesystem_pb2.InlineChunk(chunk_id=bytes(c), data=bytes(d))
                           for c, d in inline]))
        if inline:
            n = sum(len(d) for _, d in inline)
            self.wire_stats.add(sent_bytes=n, sent_raw_bytes=n)
        return attr_from_pb(r.attr)

    def forget(self, ino: int) -> None:
        self._unary(self._fs.Forget, filesystem_pb2.InodeRequest(ino=ino))

    def file_info(self, ino: int) -> FileInfo:
        r = self._unary(self._fs.GetFileInfo, filesystem_pb2.InodeRequest(ino=ino))
        return FileInfo(asset_id=r.asset_id, uri=r.uri, kind=r.kind,
                        stored_bytes=r.stored_bytes, logical_bytes=r.logical_bytes)

    # --- data -------------------------------------------------------------------------------

    def has_chunks(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        if not chunk_ids:
            return []
        r = self._unary(self._data.HasChunks,
                        data_pb2.HasChunksRequest(chunk_ids=list(chunk_ids)))
        present = list(r.present)
        if len(present) != len(chunk_ids):
            raise RemoteError(f"HasChunks answered {len(present)} flags for {len(chunk_ids)} ids",
                              grpc.StatusCode.INTERNAL, "PROTOCOL", self.address)
        return present

    def put_chunks(self, chunks: Iterable[tuple[bytes, bytes | bytearray | memoryview]],
                   compress: bool | None = None, timeout: float | None = None
                   ) -> PutChunksResult:
        """Upload whole chunks (id = BLAKE3 of the data). A list is retried on UNAVAILABLE; a
        one-shot iterator is sent once the channel is up."""
        zstd = self.compress_uploads if compress is None else compress
        result = PutChunksResult()
        replayable = isinstance(chunks, Sequence)

        def requests() -> Iterator[data_pb2.PutChunkRequest]:
            result.sent_bytes = result.raw_bytes = 0
            for chunk_id, data in chunks:
                raw = bytes(data)
                payload, enc = raw, data_pb2.IDENTITY
                if zstd and raw:
                    packed = thread_compressor(1).compress(raw)
                    if len(packed) < len(raw):  # only when it pays
                        payload, enc = packed, data_pb2.ZSTD
                result.sent_bytes += len(payload)
                result.raw_bytes += len(raw)
                yield data_pb2.PutChunkRequest(chunk_id=bytes(chunk_id), data=payload,
                                               encoding=enc, raw_length=len(raw))

        r = self._client_stream(self._data.PutChunks, requests, replayable,
                                timeout or max(self.timeout, 600.0))
        self.wire_stats.add(sent_bytes=result.sent_bytes, sent_raw_bytes=result.raw_bytes)
        result.stored, result.deduplicated, result.stored_bytes = (
            r.stored, r.deduplicated, r.stored_bytes)
        return result

    def get_chunks(self, ranges: Sequence[tuple[bytes, int, int]],
                   accept_zstd: bool | None = None, timeout: float | None = None
                   ) -> list[bytes]:
        """Bytes of each (chunk_id, offset, length) range, in order; length 0 = to the end."""
        if not ranges:
            return []
        zstd = self.accept_zstd if accept_zstd is None else accept_zstd
        req = data_pb2.GetChunksRequest(
            ranges=[data_pb2.ChunkRange(chunk_id=bytes(c), offset=o, length=n)
                    for c, o, n in ranges],
            accept_encodings=["zstd", "zstd-frames"] if zstd else [])
        t = timeout or self.timeout
        return self._retrying(lambda: self._get_chunks_once(req, ranges, t), True, t)

    def _get_chunks_once(self, req: data_pb2.GetChunksRequest,
                         ranges: Sequence[tuple[bytes, int, int]], timeout: float
                         ) -> list[bytes]:
        # Pieces are kept as received and joined once per range at the end (one copy); a range
        # that arrives as a single exact piece (a whole 1 MiB chunk, a 64 KiB frame) is
        # returned as that very object: no copy at all.
        parts: list[list[bytes | memoryview]] = [[] for _ in ranges]
        sizes = [0] * len(ranges)
        # where the next byte of each range must start (chunk offset)
        nexts = [int(o) for _, o, _ in ranges]
        ends = [int(o) + int(n) if n else None for _, o, n in ranges]
        received = raw_received = zpieces = ipieces = 0
        for piece in self._data.GetChunks(req, metadata=self._metadata(), timeout=timeout):
            i = piece.range_index
            if i >= len(ranges):
                raise RemoteError(f"GetChunks sent a piece for range {i} of {len(ranges)}",
                                  grpc.StatusCode.INTERNAL, "PROTOCOL", self.address)
            data = piece.data  # each access of a bytes field copies it: once only
            received += len(data)
            if piece.encoding == data_pb2.ZSTD:
                zpieces += 1
                raw = _unzstd(data, piece.raw_length)
                if len(raw) != piece.raw_length:
                    raise IncompleteRead(
                        f"chunk {bytes(ranges[i][0]).hex()}: a zstd frame at offset "
                        f"{piece.offset} gave {len(raw)} bytes, expected {piece.raw_length}",
                        address=self.address)
            else:
                ipieces += 1
                raw = data
            raw_received += len(raw)
            start, end = piece.offset, piece.offset + len(raw)
            want_end = ends[i]
            lo = max(start, nexts[i])
            hi = end if want_end is None else min(end, want_end)
            if lo > nexts[i]:
                raise IncompleteRead(
                    f"chunk {bytes(ranges[i][0]).hex()}: GetChunks skipped bytes "
                    f"{nexts[i]}..{lo}", address=self.address)
            if hi > lo:
                parts[i].append(raw if (lo, hi) == (start, end)
                                else memoryview(raw)[lo - start:hi - start])
                sizes[i] += hi - lo
                nexts[i] = hi
        self.wire_stats.add(received_bytes=received, received_raw_bytes=raw_received,
                            zstd_pieces=zpieces, identity_pieces=ipieces)
        out: list[bytes] = []
        for i, (cid, off, n) in enumerate(ranges):
            if n and sizes[i] != n:
                raise IncompleteRead(
                    f"chunk {bytes(cid).hex()}: asked for {n} bytes at offset {off}, got "
                    f"{sizes[i]} (is the range past the chunk's end?)", address=self.address)
            got = parts[i]
            one = got[0] if len(got) == 1 else None
            out.append(one if isinstance(one, bytes) else b"".join(got))
        return out


__all__ = [
    "AIFSClient", "FileInfo", "PutChunksResult", "StatFs", "WireStats", "attr_from_pb",
    "default_data_dir", "default_socket", "resolve_address",
]
