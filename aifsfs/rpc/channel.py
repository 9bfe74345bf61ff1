"""One retrying gRPC channel to an AIFS server: what every per-service client shares.

Interface:
    default_data_dir() -> Path           $AIFS_DATA, else ${XDG_DATA_HOME:-~/.local/share}/aifs
    default_socket(data_dir=None) -> str the embedded default server's "unix:<data>/aifs.sock"
    resolve_address(address) -> str     "unix:PATH" | "HOST:PORT" (else $AIFS_SERVER, else the
                                         default socket); LocalError for anything else
    resolve_addresses(address) -> [str] the same for a comma-separated list "A,B,C" (servers
                                         sharing one deployment)
    WireStats                            thread-safe payload byte counters (.add, .reset, .snapshot)
    Channel(address=None, token=None, token_file=None, namespace, branch, timeout=30.0,
            retry_for=30.0, accept_zstd=True, tls_ca=None, compress_uploads=None)
        .address                         the server in use now (changes at a failover)
        .addresses                       every server given, in order
        .namespace .branch .timeout .retry_for .accept_zstd .compress_uploads
        .wire_stats                      shared by every service client of this channel
        .grpc                            a grpc.Channel (stubs are made on it) whose calls go to
                                         the server in use at the time of each call
        .on_failover(callback)           callback(old_address, new_address) after a switch
                                         (e.g. a lease session, which is per server)
        .failovers                       how many switches happened
        .unary(method, request, idempotent=True, timeout=None) -> reply
        .retrying(attempt, idempotent, timeout=None) -> attempt()'s result
        .client_stream(method, make_requests, replayable, timeout=None) -> reply
        .metadata() -> [(key, value)]    namespace, branch and the bearer token of each call
        .explain(RemoteError) -> RemoteError   adds which token was used to auth failures
        .wait_ready(timeout=None) / .health(service="") -> status name / .close()

Every call has a deadline (`timeout`). UNAVAILABLE (and DEADLINE_EXCEEDED for idempotent
calls) is retried with exponential backoff and full jitter for up to `retry_for` seconds, then
`ServerUnavailable` / `DeadlineExceeded`. With several addresses, a call that fails that way
switches the channel to the next server (round robin) before its retry; a full round of
switches costs no backoff, the next round does; the retry budget is the same `retry_for`.
The idempotence rules do not change: what is retried on one server is what may be sent again
to another. The token is read lazily (the server writes its token
file just after it starts serving) and never shown (repr hides it). A token read from a file is
read again when the server answers UNAUTHENTICATED/TOKEN_EXPIRED and the file changed (the
server renews the socket's admin token), and at most every TOKEN_RECHECK seconds if the file's
stamp changed. The default token next to a unix socket is sent only to a socket owned by the
caller's uid or root (another user could have bound the path to collect it).

No call returns later than its deadline plus deadline_watch.GRACE (and a watchdog tick): grpc
cannot end a call whose request sits in a socket write a stopped server never reads, so a
watchdog cuts the connections of a call that outlived its deadline (deadline_watch). A call
that fails after its deadline fails as DEADLINE_EXCEEDED, whatever status the cut gave it.
"""

from __future__ import annotations

import functools
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
from aifs_core.status import reason_of
from aifs_core.verbs import DEFAULT_BRANCH, DEFAULT_NAMESPACE

from ..errors import DeadlineExceeded, LocalError, RemoteError, ServerUnavailable, from_rpc_error
from .deadline_watch import CallWatch

T = TypeVar("T")

TOKEN_RECHECK = 30.0            # seconds between stat()s of a token file (renewal pickup)
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


def resolve_addresses(address: str | None) -> list[str]:
    text = address or os.environ.get("AIFS_SERVER") or default_socket()
    parts = [p.strip() for p in text.split(",")]
    if any(not p for p in parts):
        raise LocalError(f"server address list {text!r} has an empty entry (write A,B,C)")
    return [resolve_address(p) for p in parts]


class _Multi:
    """A method of a stub made on a _FailoverChannel: each call goes to the channel's server
    in use at that moment (the real multi-callable is made once per server)."""

    def __init__(self, owner: _FailoverChannel, kind: str, args: tuple[Any, ...],
                 kw: dict[str, Any]) -> None:
        self._owner, self._kind, self._args, self._kw = owner, kind, args, kw
        self._made: dict[int, Any] = {}

    def _target(self) -> Any:
        i = self._owner.index
        m = self._made.get(i)
        if m is None:
            m = self._made[i] = getattr(self._owner.channels[i], self._kind)(
                *self._args, **self._kw)
        return m

    def __call__(self, *args: Any, **kw: Any) -> Any:
        return self._target()(*args, **kw)

    def __getattr__(self, name: str) -> Any:   # with_call, future
        return getattr(self._target(), name)


class _FailoverChannel(grpc.Channel):
    """grpc.Channel over one real channel per address; `index` is the one in use."""

    def __init__(self, channels: list[grpc.Channel]) -> None:
        self.channels = channels
        self.index = 0

    def unary_unary(self, *a: Any, **kw: Any) -> Any:
        return _Multi(self, "unary_unary", a, kw)

    def unary_stream(self, *a: Any, **kw: Any) -> Any:
        return _Multi(self, "unary_stream", a, kw)

    def stream_unary(self, *a: Any, **kw: Any) -> Any:
        return _Multi(self, "stream_unary", a, kw)

    def stream_stream(self, *a: Any, **kw: Any) -> Any:
        return _Multi(self, "stream_stream", a, kw)

    def subscribe(self, callback: Any, try_to_connect: bool = False) -> None:
        self.channels[self.index].subscribe(callback, try_to_connect)

    def unsubscribe(self, callback: Any) -> None:
        for ch in self.channels:
            ch.unsubscribe(callback)

    def close(self) -> None:
        for ch in self.channels:
            ch.close()

    def __enter__(self) -> _FailoverChannel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
        self.addresses = resolve_addresses(address)
        self.address = self.addresses[0]
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
        # where the token in use came from (None: a literal) and that file's stamp when read
        self._token_path: Path | None = None
        self._token_stamp: tuple[int, int, int] | None = None
        self._token_checked = 0.0
        self._socket_token_path: Path | None = None   # set when the token is a socket's default
        self.closed = False
        self._seen_server = False   # a call succeeded once: streams need not wait for ready
        self.failovers = 0
        self._failover_lock = threading.Lock()
        self._failover_listeners: list[Callable[[str, str], None]] = []
        self._watch = CallWatch()

        creds = None
        if tls_ca is not None:
            if not all(is_tcp(a) for a in self.addresses):
                raise LocalError("tls_ca is for TCP addresses; a unix socket needs no TLS")
            try:
                ca = Path(tls_ca).read_bytes()
            except OSError as e:
                raise LocalError(f"cannot read the TLS CA file {tls_ca}: {e.strerror}") from e
            creds = grpc.ssl_channel_credentials(root_certificates=ca)

        def make(addr: str) -> grpc.Channel:
            if creds is not None:
                return grpc.secure_channel(addr, creds, options=_CHANNEL_OPTIONS)
            return grpc.insecure_channel(addr, options=_CHANNEL_OPTIONS)

        if len(self.addresses) == 1:
            self.grpc: grpc.Channel = make(self.address)
            self._fail: _FailoverChannel | None = None
        else:
            self._fail = _FailoverChannel([make(a) for a in self.addresses])
            self.grpc = self._fail
        self._health = health_pb2_grpc.HealthStub(self.grpc)

    def on_failover(self, callback: Callable[[str, str], None]) -> None:
        self._failover_listeners.append(callback)

    def _switch_from(self, index: int) -> bool:
        """Move to the server after `index` unless another thread already moved on; True if
        the channel now points elsewhere than `index`."""
        if self._fail is None:
            return False
        with self._failover_lock:
            if self._fail.index != index:
                return True
            old = self.address
            self._fail.index = (index + 1) % len(self.addresses)
            self.address = self.addresses[self._fail.index]
            self.failovers += 1
            new = self.address
        for cb in list(self._failover_listeners):
            cb(old, new)
        return True

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
        # servers of one deployment share the root key: any one's token file serves for all
        for addr in [self.address] + [a for a in self.addresses if a != self.address]:
            if addr.startswith("unix:"):
                p = Path(addr[len("unix:"):] + ".token")
                out.append((f"token file {p} (next to the socket)", p, None))
        return out

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int, int] | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    @staticmethod
    def _check_socket_owner(path: Path) -> None:
        """The socket next to a default token file must be ours (or root's): anyone else who
        bound that path would collect an admin token."""
        sock = Path(str(path)[:-len(".token")])
        try:
            st = os.stat(sock)
        except FileNotFoundError:
            return   # nothing listens there yet: the call fails (and is retried) unsent
        except OSError as e:
            raise LocalError(f"cannot check the owner of the socket {sock}: {e.strerror}") from e
        if st.st_uid not in (os.getuid(), 0):
            raise LocalError(
                f"the socket {sock} belongs to uid {st.st_uid}, not to you (uid {os.getuid()}) "
                f"or root: not sending it the admin token from {path} (another user may have "
                f"bound that path); pass --token-file or AIFS_TOKEN_FILE to send a token anyway")

    def _read_token_file(self, source: str, path: Path, default: bool) -> str | None:
        """The token in `path` (None if the file is not there yet); remembers its stamp."""
        stamp = self._stamp(path)
        try:
            text = path.read_text().strip()
        except FileNotFoundError:
            return None  # may appear when the server starts: look again next call
        except OSError as e:
            raise LocalError(f"cannot read the {source}: {e.strerror}") from e
        if not text:
            raise LocalError(f"the {source} is empty; write a token into it "
                             f"(`aifs token create ... > FILE`)")
        if default:
            self._check_socket_owner(path)
        self._token, self._token_source = text, source
        self._token_path, self._token_stamp = path, stamp
        self._socket_token_path = path if default else None
        self._token_checked = time.monotonic()
        return text

    def _current_token(self) -> str | None:
        tok = self._token
        if tok is not None:
            if (self._token_path is not None
                    and time.monotonic() - self._token_checked > TOKEN_RECHECK):
                self.reload_token()
            return self._token
        with self._token_lock:
            if self._token is not None:
                return self._token
            for source, path, literal in self._token_candidates():
                if literal is not None:
                    self._token, self._token_source = literal.strip(), source
                    return self._token
                assert path is not None
                default = source.endswith("(next to the socket)")
                if self._read_token_file(source, path, default) is not None:
                    return self._token
        return None

    def reload_token(self) -> bool:
        """Read the token file again if it changed since it was read; True if the token did."""
        path = self._token_path
        if path is None:
            return False
        with self._token_lock:
            self._token_checked = time.monotonic()
            stamp = self._stamp(path)
            if stamp is None or stamp == self._token_stamp:
                return False
            old = self._token
            self._read_token_file(self._token_source, path,
                                  default=self._socket_token_path is not None)
            return self._token != old

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
        where = (self.address if len(self.addresses) == 1
                 else f"any of {', '.join(self.addresses)}")
        took = (f"after {tries} {'try' if tries == 1 else 'tries'} for "
                f"{time.monotonic() - started:.1f} s")
        if last is not None and reason_of(last) == "STORE_UNAVAILABLE":
            # the server answered: it is its database or chunk store that is away
            return ServerUnavailable(
                f"the AIFS server at {where} is running but its storage is unavailable "
                f"({took}){detail}", address=self.address)
        return ServerUnavailable(
            f"cannot reach the AIFS server at {where} {took}: is it running? start it with "
            f"`aifs up` or `aifs server`{detail}", address=self.address)

    def retrying(self, attempt: Callable[[], T], idempotent: bool,
                 timeout: float | None = None) -> T:
        """Run `attempt` (which makes one gRPC call) with backoff on transient failures."""
        if self.closed:
            raise LocalError("this AIFSClient is closed")
        started = time.monotonic()
        give_up = started + self.retry_for
        delay = 0.05
        tries = 0
        free_switches = len(self.addresses) - 1   # one round of servers without a pause
        reloads = 2    # token re-reads after UNAUTHENTICATED (the server renewed the file)
        while True:
            tries += 1
            used = self._fail.index if self._fail is not None else 0
            expiry = time.monotonic() + (timeout or self.timeout)
            try:
                result = self._watched(attempt, expiry)
                self._seen_server = True
                return result
            except grpc.RpcError as err:
                code = self._code_of(err, expiry)
                retry = code == grpc.StatusCode.UNAVAILABLE or (
                    idempotent and code == grpc.StatusCode.DEADLINE_EXCEEDED)
                now = time.monotonic()
                if (code == grpc.StatusCode.UNAUTHENTICATED and self._token is None
                        and now < give_up and self._await_token(min(give_up, now + 1.0))):
                    continue  # the server writes its token file just after it starts serving
                if (code == grpc.StatusCode.UNAUTHENTICATED and reloads > 0
                        and self.reload_token()):
                    reloads -= 1
                    continue  # an expired token: the file holds the renewed one
                if not retry:
                    raise self._past_deadline(err, expiry) from None
                if now >= give_up:
                    if code == grpc.StatusCode.UNAVAILABLE:
                        raise self._unavailable(tries, started, err) from None
                    raise DeadlineExceeded(
                        f"the AIFS server at {self.address} did not answer within "
                        f"{timeout or self.timeout:.1f} s ({tries} tries for "
                        f"{now - started:.1f} s)", address=self.address) from None
                if self._switch_from(used) and free_switches > 0:
                    free_switches -= 1
                    continue  # another server: try it now
                free_switches = len(self.addresses) - 1
                # full jitter keeps many mount threads from retrying in lockstep
                time.sleep(min(random.uniform(delay / 2, delay), max(0.0, give_up - now)))
                delay = min(delay * 2, 2.0)

    def _watched(self, call: Callable[[], T], expiry: float) -> T:
        """call() (one gRPC call whose deadline is `expiry`), in the watchdog's sight."""
        key = self._watch.begin(expiry, self.address)
        try:
            return call()
        finally:
            self._watch.end(key)

    @staticmethod
    def _code_of(err: grpc.RpcError, expiry: float) -> grpc.StatusCode | None:
        """The status of a failed call; one that failed after its deadline (its connection
        cut by the watchdog: UNAVAILABLE or CANCELLED) counts as past its deadline."""
        code = err.code() if hasattr(err, "code") else None
        if (code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
                and time.monotonic() > expiry):
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return code

    def _past_deadline(self, err: grpc.RpcError, expiry: float) -> RemoteError:
        """remote_error(err), or DeadlineExceeded for a call cut after its deadline."""
        code = err.code() if hasattr(err, "code") else None
        if (code != grpc.StatusCode.DEADLINE_EXCEEDED
                and self._code_of(err, expiry) == grpc.StatusCode.DEADLINE_EXCEEDED):
            return DeadlineExceeded(
                f"the AIFS server at {self.address} did not answer within the call's "
                f"deadline", address=self.address)
        return self.remote_error(err)

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
        """Block until a server answers (or raise ServerUnavailable after `timeout`, default
        `retry_for`). A health check with wait_for_ready: no token needed. With several
        servers, each is asked in turn (briefly) and the first that answers is used."""
        started = time.monotonic()
        limit = max(self.retry_for if timeout is None else timeout, 0.01)
        while True:
            used = self._fail.index if self._fail is not None else 0
            left = limit - (time.monotonic() - started)
            per_try = left if self._fail is None else min(left, 1.0)
            per_try = max(per_try, 0.01)
            expiry = time.monotonic() + per_try
            try:
                self._watched(functools.partial(
                    self._health.Check, health_pb2.HealthCheckRequest(), timeout=per_try,
                    wait_for_ready=True), expiry)
            except grpc.RpcError as err:
                if self._code_of(err, expiry) in (grpc.StatusCode.UNAVAILABLE,
                                                  grpc.StatusCode.DEADLINE_EXCEEDED):
                    if time.monotonic() - started >= limit or self._fail is None:
                        raise self._unavailable(1, started, None) from None
                    self._switch_from(used)
                    continue
                # any other answer (e.g. health not served) still proves the server is up
            self._seen_server = True
            return

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
            expiry = time.monotonic() + t
            try:
                return self._watched(
                    lambda: method(make_requests(), metadata=self.metadata(), timeout=t), expiry)
            except grpc.RpcError as err:
                raise self._past_deadline(err, expiry) from None
        return self.retrying(
            lambda: method(make_requests(), metadata=self.metadata(), timeout=t), True, t)
