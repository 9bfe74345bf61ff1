"""One retrying gRPC channel to an AIFS server: what every per-service client shares.

Interface:
    default_data_dir() -> Path           $AIFS_DATA, else ${XDG_DATA_HOME:-~/.local/share}/aifs
    default_socket(data_dir=None) -> str the embedded default server's "unix:<data>/aifs.sock"
    resolve_address(address) -> str     "unix:PATH" | "HOST:PORT" (else $AIFS_SERVER, else the
                                         default socket); LocalError for anything else
    WireStats                            thread-safe payload byte counters (.add, .reset, .snapshot)
    Channel(address=None, token=None, token_file=None, namespace, branch, timeout=30.0,
            retry_for=30.0, accept_zstd=True, tls_ca=None, compress_uploads=None)
        .address .namespace .branch .timeout .retry_for .accept_zstd .compress_uploads
        .wire_stats                      shared by every service client of this channel
        .grpc                            the grpc.Channel (stubs are made on it)
        .unary(method, request, idempotent=True, timeout=None) -> reply
        .retrying(attempt, idempotent, timeout=None) -> attempt()'s result
        .client_stream(method, make_requests, replayable, timeout=None) -> reply
        .metadata() -> [(key, value)]    namespace, branch and the bearer token of each call
        .explain(RemoteError) -> RemoteError   adds which token was used to auth failures
        .wait_ready(timeout=None) / .health(service="") -> status name / .close()

Every call has a deadline (`timeout`). UNAVAILABLE (and DEADLINE_EXCEEDED for idempotent
calls) is retried with exponential backoff and full jitter for up to `retry_for` seconds, then
`ServerUnavailable` / `DeadlineExceeded`. The token is read lazily (the server writes its token
file just after it starts serving) and never shown (repr hides it).
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aifs_core.errors import PermissionDenied, Unauthenticated
from aifs_core.verbs import DEFAULT_BRANCH, DEFAULT_NAMESPACE

from ..errors import DeadlineExceeded, LocalError, RemoteError, ServerUnavailable, from_rpc_error

T = TypeVar("T")

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


def is_tcp(address: str) -> bool:
    return not address.startswith("unix:")


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


class Channel:
    """A thread-safe channel to one AIFS server (one namespace and branch)."""

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
        self.compress_uploads = (is_tcp(self.address) and accept_zstd
                                 if compress_uploads is None else compress_uploads)
        self.wire_stats = WireStats()
        self._token_lock = threading.Lock()
        self._token: str | None = token.strip() if token else None
        self._token_source = "token=" if token else ""
        self._token_file = Path(token_file) if token_file else None
        self.closed = False
        self._seen_server = False   # a call succeeded once: streams need not wait for ready

        if tls_ca is not None:
            if not is_tcp(self.address):
                raise LocalError("tls_ca is for TCP addresses; a unix socket needs no TLS")
            try:
                ca = Path(tls_ca).read_bytes()
            except OSError as e:
                raise LocalError(f"cannot read the TLS CA file {tls_ca}: {e.strerror}") from e
            creds = grpc.ssl_channel_credentials(root_certificates=ca)
            self.grpc = grpc.secure_channel(self.address, creds, options=_CHANNEL_OPTIONS)
        else:
            self.grpc = grpc.insecure_channel(self.address, options=_CHANNEL_OPTIONS)
        self._health = health_pb2_grpc.HealthStub(self.grpc)

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.grpc.close()

    # --- the token ----------------------------------------------------------------------------

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

    def metadata(self) -> list[tuple[str, str]]:
        md = [("aifs-namespace", self.namespace), ("aifs-branch", self.branch)]
        tok = self._current_token()
        if tok:
            md.append(("authorization", f"Bearer {tok}"))
        return md

    def explain(self, exc: RemoteError) -> RemoteError:
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

    def remote_error(self, err: grpc.RpcError) -> RemoteError:
        """A gRPC failure as the aifsfs.errors class of its reason, explained."""
        return self.explain(from_rpc_error(err, self.address))

    # --- calls --------------------------------------------------------------------------------

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

    def retrying(self, attempt: Callable[[], T], idempotent: bool,
                 timeout: float | None = None) -> T:
        """Run `attempt` (which makes one gRPC call) with backoff on transient failures."""
        if self.closed:
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
                    raise self.remote_error(err) from None
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

    def unary(self, method: Any, request: Any, idempotent: bool = True,
              timeout: float | None = None) -> Any:
        t = timeout or self.timeout
        return self.retrying(
            lambda: method(request, metadata=self.metadata(), timeout=t), idempotent, t)

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

    def health(self, service: str = "") -> str:
        """Status name of grpc.health.v1 Check: SERVING, NOT_SERVING, SERVICE_UNKNOWN..."""
        reply = self.unary(self._health.Check, health_pb2.HealthCheckRequest(service=service))
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def client_stream(self, method: Any, make_requests: Callable[[], Iterator[Any]],
                      replayable: bool, timeout: float | None = None) -> Any:
        """A client-streaming call. Only a replayable request stream is retried; otherwise we
        wait for the channel first, so that a server still starting does not eat the stream."""
        t = timeout or self.timeout
        if not replayable:
            if not self._seen_server:
                self.wait_ready()
            try:
                return method(make_requests(), metadata=self.metadata(), timeout=t)
            except grpc.RpcError as err:
                raise self.remote_error(err) from None
        return self.retrying(
            lambda: method(make_requests(), metadata=self.metadata(), timeout=t), True, t)
