"""Capability tokens (macaroons) and the interceptor that checks one on every RPC.

Interface:
    (VERBS, normalise_methods: `aifs_core.verbs`, shared with the CLI)
    mint_token(root_key, namespace, methods, ttl_seconds, location="aifs") -> str
        `namespace` is a name or "*" (every namespace); `methods` an iterable of verbs or "all";
        `ttl_seconds` None/0 = no expiry caveat. Caveats are first-party and plain text:
        "namespace = X", "methods = get,put", "expires = <unix seconds>".
    verify_token(root_key, token, namespace, verb) -> Grant
        raises Unauthenticated (no token, garbage, tampered, unknown caveat), TokenExpired,
        PermissionDenied (namespace or verb not allowed).
    Grant(namespaces, methods, expires)     what a verified token allows; .allows_namespace(ns)
    METHOD_VERBS: full RPC name -> verb     RPCs missing from it are denied (fail closed)
    UNAUTHENTICATED_METHODS                 health and reflection: no token needed
    GrantCache(ttl=30.0, max_entries=1024)  verified grants by token bytes, for a short time
    AuthInterceptor(root_key, cache=None)   grpc.ServerInterceptor (a GrantCache by default);
                                            refusals are logged at WARNING, rate-limited
    call_scope(context) -> (namespace, branch)   from call metadata, defaults "default"/"main"
    current_grant() -> Grant | None         the grant of the RPC running in this context

Call metadata: `authorization: Bearer <token>`, `aifs-namespace`, `aifs-branch`.

Verification (HMAC chain + caveat parsing, ~80 us) is cached per token for `ttl` seconds: the
signature and caveats of a token's bytes cannot change, and the expiry, namespace and verb are
still checked exactly on every call against the cached grant.

Attenuation: a holder may add caveats to a token (pymacaroons `add_first_party_caveat`); every
caveat must hold, so two `namespace` caveats allow only their intersection.
"""

from __future__ import annotations

import contextvars
import datetime as _dt
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from pymacaroons import Macaroon, Verifier
from pymacaroons.exceptions import MacaroonException

from aifs_core.errors import AIFSError, PermissionDenied, TokenExpired, Unauthenticated
from aifs_core.status import status_for
from aifs_core.verbs import ALL, DEFAULT_BRANCH, DEFAULT_NAMESPACE, normalise_methods
from aifs_server.grpc_errors import log_limited

LOCATION = "aifs"

_FS = "/aifs.v1.Filesystem/"
_DATA = "/aifs.v1.Data/"
_ASSETS = "/aifs.v1.Assets/"
_ADMIN = "/aifs.v1.Admin/"
_VERSIONING = "/aifs.v1.Versioning/"

METHOD_VERBS: dict[str, str] = {
    # Filesystem: reads of metadata are `stat`, changes `put`, removals `delete`
    **{_FS + m: "stat" for m in (
        "Lookup", "GetAttr", "ReadDir", "ReadLink", "GetXattr", "ListXattr", "StatFs")},
    **{_FS + m: "put" for m in (
        "SetAttr", "MkDir", "Create", "CreateFile", "CreateFiles", "Rename", "Symlink", "Link",
        "SetXattr", "CommitFile")},
    **{_FS + m: "delete" for m in ("Unlink", "UnlinkBatch", "RmDir", "RemoveXattr", "Forget")},
    _FS + "GetChunkMap": "get",
    # the content hash answers "is this the file I guess?": as much a read as the bytes are
    _FS + "GetFileInfo": "get",
    # Data: HasChunks is part of the upload protocol (dedup check), so it is `put`
    _DATA + "HasChunks": "put",
    _DATA + "PutChunks": "put",
    _DATA + "GetChunks": "get",
    # Assets
    _ASSETS + "PutAsset": "put",
    _ASSETS + "GetAsset": "get",
    _ASSETS + "VerifyAsset": "get",
    _ASSETS + "GetLineage": "get",
    _ASSETS + "ListAssets": "list",
    _ASSETS + "DeleteAsset": "delete",
    # Admin
    _ADMIN + "Format": "admin",
    _ADMIN + "Introspect": "admin",
    _ADMIN + "Fsck": "admin",
    _ADMIN + "GC": "admin",
    _ADMIN + "ListNamespaces": "list",
    # Session (docs/LEASES.md): the lease stream grants only what `stat` reads may cache
    "/aifs.v1.Session/Open": "stat",
    # Versioning (when that service lands): reads are `get`/`list`, changes `snapshot`
    **{_VERSIONING + m: "snapshot" for m in (
        "CreateSnapshot", "CreateBranch", "DeleteBranch", "CreateTag", "MoveBranch", "Merge",
        "PruneSnapshots")},
    _VERSIONING + "DeleteTag": "delete",  # a tag is a citation: removing one is a deletion
    **{_VERSIONING + m: "get" for m in (
        "GetSnapshot", "VerifySnapshot", "Diff", "ListTree", "SigningKey")},
    **{_VERSIONING + m: "list" for m in (
        "ListSnapshots", "ListBranches", "ListTags", "BranchLog")},
}

UNAUTHENTICATED_METHODS = frozenset({
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
})

_RENEW = "mint a new one with `aifs token create`"


@dataclass(frozen=True)
class Grant:
    """What a verified token allows. `namespaces` None = every namespace."""

    namespaces: frozenset[str] | None
    methods: frozenset[str]
    expires: int | None  # unix seconds

    def allows_namespace(self, namespace: str) -> bool:
        return self.namespaces is None or namespace in self.namespaces

    def allows_verb(self, verb: str) -> bool:
        return ALL in self.methods or verb in self.methods


def mint_token(root_key: bytes, namespace: str, methods: Iterable[str] | str,
               ttl_seconds: float | None, location: str = LOCATION) -> str:
    """A serialized macaroon for `namespace` ("*" = all) allowing `methods` for `ttl_seconds`."""
    if not root_key:
        raise ValueError("root key is empty: the data dir is not formatted")
    if not namespace or any(c in namespace for c in ", \n"):
        raise ValueError(f"bad namespace {namespace!r} for a token: use a name or '*'")
    verbs = normalise_methods(methods)
    m = Macaroon(location=location, identifier=secrets.token_hex(16), key=root_key)
    m.add_first_party_caveat(f"namespace = {namespace}")
    m.add_first_party_caveat(f"methods = {','.join(verbs)}")
    if ttl_seconds:
        m.add_first_party_caveat(f"expires = {int(time.time() + ttl_seconds)}")
    token = m.serialize()
    return token if isinstance(token, str) else token.decode("ascii")


def _parse_caveat(caveat: str) -> tuple[str, str] | None:
    key, sep, value = caveat.partition(" = ")
    if not sep or key not in ("namespace", "methods", "expires"):
        return None
    return key, value.strip()


def _utc(ts: int) -> str:
    return _dt.datetime.fromtimestamp(ts, _dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


# An expiry must be a time a datetime can show: year 1970 to 9999 (a larger or negative value
# is no token we minted, and formatting it would raise inside the interceptor).
_EXPIRY_MAX = 253402300799


def parse_grant(root_key: bytes, token: str) -> Grant:
    """Check the token's signature and caveat syntax; return what it allows (expiry unchecked)."""
    if not token:
        raise Unauthenticated(
            "no token: send `authorization: Bearer <token>` (the unix socket's token is in "
            "<socket>.token; or mint one with `aifs token create`)")
    try:
        m = Macaroon.deserialize(token)
    except (MacaroonException, ValueError, TypeError, UnicodeError, IndexError) as e:
        raise Unauthenticated(f"token is not a valid macaroon ({type(e).__name__}); "
                              f"{_RENEW}") from None
    # Every caveat must be one we understand (fail closed on unknown ones)
    verifier = Verifier()
    verifier.satisfy_general(lambda c: _parse_caveat(c) is not None)
    try:
        verifier.verify(m, root_key)
    except MacaroonException:
        raise Unauthenticated(
            f"token signature or caveats are invalid (tampered, or minted for another server); "
            f"{_RENEW}") from None
    except Exception:  # pymacaroons raises odd things on malformed input
        raise Unauthenticated(f"token could not be verified; {_RENEW}") from None
    namespaces: frozenset[str] | None = None
    methods: frozenset[str] | None = None
    expires: int | None = None
    saw_namespace = False
    for cav in m.caveats:
        cid = cav.caveat_id
        parsed = _parse_caveat(cid if isinstance(cid, str) else cid.decode("utf-8", "replace"))
        assert parsed is not None  # the verifier accepted it
        key, value = parsed
        if key == "namespace":
            saw_namespace = True
            allowed = None if value == "*" else frozenset({value})
            if namespaces is None:
                namespaces = allowed
            elif allowed is not None:
                namespaces = namespaces & allowed
        elif key == "methods":
            verbs = frozenset(v.strip() for v in value.split(",") if v.strip())
            methods = verbs if methods is None else (
                verbs if ALL in methods else methods if ALL in verbs else methods & verbs)
        else:
            try:
                ts = int(value)
            except ValueError:
                ts = -1
            if not 0 <= ts <= _EXPIRY_MAX:
                raise Unauthenticated(f"token has a malformed expiry {value[:40]!r}; {_RENEW}")
            expires = ts if expires is None else min(expires, ts)
    if not saw_namespace:
        # a token with no namespace caveat is not one we minted: refuse rather than allow all
        raise Unauthenticated(f"token names no namespace; {_RENEW}")
    return Grant(namespaces=namespaces, methods=methods or frozenset(), expires=expires)


class GrantCache:
    """Grants of tokens whose signature and caveats were verified, by token bytes, kept for
    `ttl` seconds (LRU, bounded). Only successful verifications are cached; failures are
    re-checked every time (they are cheap to repeat and must report precisely)."""

    def __init__(self, ttl: float = 30.0, max_entries: int = 1024) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[bytes, str], tuple[float, Grant]] = OrderedDict()

    def grant(self, root_key: bytes, token: str) -> Grant:
        key = (root_key, token)
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and hit[0] > now:
                self._items.move_to_end(key)
                return hit[1]
        grant = parse_grant(root_key, token)
        with self._lock:
            self._items[key] = (now + self.ttl, grant)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)
        return grant

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


def verify_token(root_key: bytes, token: str | None, namespace: str, verb: str,
                 now: float | None = None, cache: GrantCache | None = None) -> Grant:
    """Raise unless `token` allows `verb` on `namespace` right now; return the grant.
    `cache` skips re-verifying the signature of a token seen recently (expiry, namespace and
    verb are always checked here)."""
    if cache is not None and token:
        grant = cache.grant(root_key, token)
    else:
        grant = parse_grant(root_key, token or "")
    t = time.time() if now is None else now
    if grant.expires is not None and t >= grant.expires:
        raise TokenExpired(f"token expired at {_utc(grant.expires)}; {_RENEW}")
    if not grant.allows_namespace(namespace) or not grant.allows_verb(verb):
        raise PermissionDenied(f"token does not allow {verb} on namespace {namespace}")
    return grant


# --- per-call scope ------------------------------------------------------------------------

_GRANT: contextvars.ContextVar[Grant | None] = contextvars.ContextVar("aifs_grant", default=None)


def current_grant() -> Grant | None:
    """The grant of the RPC running in this context (grpc runs each RPC in its own context)."""
    return _GRANT.get()


def _metadata_value(metadata: Iterable[Any] | None, key: str) -> str | None:
    for item in metadata or ():
        k, v = item[0], item[1]
        if k == key:
            return v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
    return None


def scope_from_metadata(metadata: Iterable[Any] | None) -> tuple[str, str]:
    md = list(metadata or ())
    ns = _metadata_value(md, "aifs-namespace") or DEFAULT_NAMESPACE
    br = _metadata_value(md, "aifs-branch") or DEFAULT_BRANCH
    return ns, br


def call_scope(context: grpc.ServicerContext) -> tuple[str, str]:
    """(namespace, branch) of this call from its metadata."""
    return scope_from_metadata(context.invocation_metadata())


def _bearer(metadata: Iterable[Any] | None) -> str | None:
    value = _metadata_value(metadata, "authorization")
    if value is None:
        return None
    scheme, _, tok = value.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return tok.strip() or None


def _denying_handler(handler: grpc.RpcMethodHandler, err: AIFSError) -> grpc.RpcMethodHandler:
    """A handler that fails the call with `err` without reading its request: always shaped
    as a client stream, which grpc reads only when the handler asks (a unary handler would
    have the whole request message, up to the receive limit, read and parsed first: 48
    refused 60 MiB calls took the server from 694 MiB to 2.8 GiB)."""
    status = status_for(err)

    def deny(_requests: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(status)

    def deny_stream(_requests: Any, context: grpc.ServicerContext) -> Any:
        context.abort_with_status(status)
        yield  # pragma: no cover - makes this a generator

    if handler.response_streaming:
        return grpc.stream_stream_rpc_method_handler(
            deny_stream, handler.request_deserializer, handler.response_serializer)
    return grpc.stream_unary_rpc_method_handler(
        deny, handler.request_deserializer, handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):
    """Checks the caller's macaroon on every RPC except health and reflection."""

    def __init__(self, root_key: bytes, on_denied: Callable[[str, AIFSError], None] | None = None,
                 cache: GrantCache | None = None) -> None:
        self._root_key = root_key
        self._on_denied = on_denied
        self._cache = cache if cache is not None else GrantCache()

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        handler = continuation(handler_call_details)
        if method in UNAUTHENTICATED_METHODS or handler is None:
            return handler  # None: grpc answers UNIMPLEMENTED
        md = handler_call_details.invocation_metadata
        namespace, _branch = scope_from_metadata(md)
        try:
            verb = METHOD_VERBS.get(method)
            if verb is None:
                raise PermissionDenied(f"method {method} has no access rule; refused")
            grant = verify_token(self._root_key, _bearer(md), namespace, verb,
                                 cache=self._cache)
        except AIFSError as err:
            # an operator should see refusals, but a caller can send thousands a second:
            # rate-limited per reason (the next line that gets through counts the rest)
            log_limited(logging.WARNING, f"denied:{err.reason}", "refused %s: %s: %s",
                        method, err.reason, err.message)
            if self._on_denied is not None:
                self._on_denied(method, err)
            return _denying_handler(handler, err)
        # interceptors run inside the RPC's own contextvars.Context, as does its handler
        _GRANT.set(grant)
        return handler
