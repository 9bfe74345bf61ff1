"""The chunk store in an S3 bucket (AWS S3, SeaweedFS, MinIO...), through obstore.

Interface:
    S3ChunkStore(bucket, *, endpoint=None, region="us-east-1", prefix="",
                 access_key=None, secret_key=None, session_token=None,
                 credentials_file=None, profile=None, retries=4, retry_deadline=30.0,
                 connect_timeout=5.0, timeout=120.0, workers=16, check=True)
        a ChunkStore (server/chunkstore.py's protocol). Credentials: the arguments, else
        AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (/ AWS_SESSION_TOKEN) from the environment,
        else `credentials_file` (AWS shared-credentials INI, section `profile` or
        AWS_PROFILE or "default"). `check` lists one key at construction, so a missing bucket,
        wrong credentials or an unreachable endpoint fail at start-up with a clear error.
    Objects: <prefix>/ab/cd/<name> (the local store's layout: a store directory can be copied
    into a bucket as it is, and listings can be split by fan-out prefix).

Requests: put_many runs PUTs in parallel (`workers`, no multipart: chunks are <= 64 MiB), each
with If-None-Match: * so that concurrent puts of one name store it once; has_many runs
parallel HEADs; reader() makes one ranged GET of the first READ_AHEAD bytes (the envelope's
header and first frames, and the object's size from Content-Range), then one ranged GET per
read past it. Errors: NotFound (no such name), StoreMisconfigured (no bucket, credentials
refused, access denied: saying which bucket and endpoint), StoreUnavailable (5xx, throttling or
no connection after `retries` retries with exponential backoff, within `retry_deadline` s).
"""

from __future__ import annotations

import configparser
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import timedelta
from typing import Any, TypeVar
from urllib.parse import quote

import obstore
from obstore.exceptions import AlreadyExistsError, PermissionDeniedError, UnauthenticatedError
from obstore.store import S3Store

from aifs_core.errors import (
    InvalidArgument,
    NotFound,
    StoreMisconfigured,
    StoreUnavailable,
)
from aifs_server.chunkstore import Data, StoreUsage, check_range

_NAME = re.compile(r"[0-9a-z]{4,128}")
# The first GET of a reader: an envelope header is 4 KiB for a small chunk and ~40 KiB for a
# 64 MiB one; 256 KiB also holds a few 64 KiB frames, and costs little more than 4 KiB on a
# request that pays a round trip anyway. Chunks up to this size are read in one request.
READ_AHEAD = 256 * 1024
USAGE_TTL = 30.0  # seconds a computed usage() is trusted (other servers write the bucket too)
T = TypeVar("T")

_STATUS = re.compile(r"status code: (\d{3})")
_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>|code: ([A-Za-z]+)\)")
_BAD_CREDENTIALS = {"SignatureDoesNotMatch", "InvalidAccessKeyId", "InvalidToken",
                    "ExpiredToken", "AuthorizationHeaderMalformed"}
_DENIED = _BAD_CREDENTIALS | {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_RETRY_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}


def _summary(exc: BaseException) -> tuple[int | None, str | None, str]:
    """(HTTP status, S3 error code, first line) of an obstore error."""
    text = str(exc)
    status = _STATUS.search(text)
    code = _CODE.search(text)
    first = text.split("\n", 1)[0]
    return (int(status.group(1)) if status else None,
            (code.group(1) or code.group(2)) if code else None, first[:300])


class _Range:
    """One object open for ranged reads: its first READ_AHEAD bytes, fetched at open."""

    __slots__ = ("_store", "_name", "size", "_head")

    def __init__(self, store: S3ChunkStore, name: str) -> None:
        self._store, self._name = store, name
        self.size, self._head = store._get_head(name)

    def read_at(self, offset: int, n: int) -> bytes:
        check_range(offset, n)
        end = min(self.size, offset + n)
        if offset >= end:
            return b""
        if end <= len(self._head):
            return self._head[offset:end]
        return self._store._get_range(self._name, offset, end - offset)

    def close(self) -> None:
        self._head = b""

    def __enter__(self) -> _Range:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _credentials(access_key: str | None, secret_key: str | None, session_token: str | None,
                 credentials_file: str | None, profile: str | None
                 ) -> tuple[str, str, str | None, str]:
    """(key id, secret, token, where they came from)."""
    if access_key and secret_key:
        return access_key, secret_key, session_token, "arguments"
    env = os.environ
    if env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY"):
        return (env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"],
                env.get("AWS_SESSION_TOKEN"), "the environment (AWS_ACCESS_KEY_ID)")
    path = credentials_file or env.get("AWS_SHARED_CREDENTIALS_FILE")
    section = profile or env.get("AWS_PROFILE") or "default"
    if path:
        ini = configparser.ConfigParser()
        try:
            with open(path, encoding="utf-8") as f:
                ini.read_file(f)
        except (OSError, configparser.Error) as exc:
            raise StoreMisconfigured(f"S3 credentials file {path} cannot be read: {exc}") from None
        if not ini.has_section(section):
            raise StoreMisconfigured(f"S3 credentials file {path} has no [{section}] section")
        sec = ini[section]
        key, secret = sec.get("aws_access_key_id"), sec.get("aws_secret_access_key")
        if not key or not secret:
            raise StoreMisconfigured(f"S3 credentials file {path} [{section}] lacks "
                                     f"aws_access_key_id or aws_secret_access_key")
        return key, secret, sec.get("aws_session_token"), f"{path} [{section}]"
    raise StoreMisconfigured(
        "no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or give a "
        "credentials file (AWS_SHARED_CREDENTIALS_FILE)")


class S3ChunkStore:
    """ChunkStore in an S3 bucket under `prefix`, with the local store's two-level fan-out."""

    def __init__(self, bucket: str, *, endpoint: str | None = None, region: str = "us-east-1",
                 prefix: str = "", access_key: str | None = None,
                 secret_key: str | None = None, session_token: str | None = None,
                 credentials_file: str | None = None, profile: str | None = None,
                 retries: int = 4, retry_deadline: float = 30.0, connect_timeout: float = 5.0,
                 timeout: float = 120.0, workers: int = 16, check: bool = True) -> None:
        if not bucket:
            raise InvalidArgument("an S3 chunk store needs a bucket name")
        self.bucket, self.region = bucket, region
        self.endpoint = (endpoint or f"https://s3.{region}.amazonaws.com").rstrip("/")
        self.prefix = prefix.strip("/")
        key, secret, token, self._cred_source = _credentials(
            access_key, secret_key, session_token, credentials_file, profile)
        self._key_id = key
        self.retries, self.retry_deadline = max(0, retries), retry_deadline
        self.workers = max(1, workers)
        query = f"endpoint={quote(self.endpoint, safe=':/')}&region={quote(region)}"
        self.url = f"s3://{bucket}/{self.prefix}?{query}" if self.prefix else \
            f"s3://{bucket}?{query}"
        extra: dict[str, Any] = {"session_token": token} if token else {}
        # obstore's own retries are off: ours (_call) decide what is transient and say so
        self._s3 = S3Store(
            bucket, endpoint=self.endpoint, region=region, access_key_id=key,
            secret_access_key=secret, virtual_hosted_style_request=False, **extra,
            client_options={"allow_http": self.endpoint.startswith("http://"),
                            "connect_timeout": timedelta(seconds=connect_timeout),
                            "timeout": timedelta(seconds=timeout)},
            retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=retry_deadline),
                          "backoff": {"init_backoff": timedelta(milliseconds=100),
                                      "max_backoff": timedelta(seconds=2), "base": 2.0}},
        )
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._used: int | None = None
        self._used_at = 0.0
        self.attempts = 0  # requests sent, retries included (for tests and figures)
        if check:
            self._call("list", self._root, lambda: next(iter(
                obstore.list(self._s3, self._root, chunk_size=1)), None))

    # --- names and errors -----------------------------------------------------------------
    @property
    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _key(self, name: str) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise InvalidArgument(
                f"invalid chunk store name {name!r}: use 4-128 characters of [0-9a-z]")
        return f"{self._root}{name[0:2]}/{name[2:4]}/{name}"

    def _where(self) -> str:
        return f"bucket {self.bucket!r} at {self.endpoint}"

    def _missing(self, name: str) -> NotFound:
        return NotFound(f"chunk {name} is not in the chunk store {self.url}")

    def _refused(self, op: str, key: str, status: int | None,
                 code: str | None) -> StoreMisconfigured:
        if code == "NoSuchBucket":
            return StoreMisconfigured(
                f"S3 {self._where()} does not exist ({op} {key}): create the bucket or fix the "
                f"store URL")
        if code in _BAD_CREDENTIALS or status == 401:
            return StoreMisconfigured(
                f"S3 {self._where()} rejected the credentials (access key {self._key_id} from "
                f"{self._cred_source}: {code or status}) on {op} {key}: check the access key "
                f"and secret")
        return StoreMisconfigured(
            f"S3 {self._where()} denied {op} of {key} to access key {self._key_id} "
            f"({code or status}): grant it read, write, list and delete on the bucket")

    def _call(self, op: str, key: str, fn: Callable[[], T],
              absent: Callable[[], T] | None = None) -> T:
        """Run one request with bounded retries; map failures to reason-only errors. `absent`
        gives the answer for a missing key (None: a missing key is NotFound)."""
        deadline = time.monotonic() + self.retry_deadline
        attempt = 0
        while True:
            attempt += 1
            self.attempts += 1
            try:
                return fn()
            except Exception as exc:  # obstore's own classes, OSError subclasses, or others
                status, code, first = _summary(exc)
                if isinstance(exc, AlreadyExistsError) or code == "PreconditionFailed" \
                        or status == 412:
                    raise _Exists(after_retry=attempt > 1) from None
                if status == 416 or code == "InvalidRange":
                    raise _NoRange() from None
                if code == "NoSuchBucket":
                    raise self._refused(op, key, status, code) from None
                if isinstance(exc, FileNotFoundError) or status == 404:
                    # a HEAD has no body: a missing bucket looks like a missing key there,
                    # which is why the constructor checks the bucket with a LIST
                    if absent is not None:
                        return absent()
                    raise self._missing(key.rsplit("/", 1)[-1]) from None
                if isinstance(exc, PermissionDeniedError | UnauthenticatedError) \
                        or status in (401, 403) or code in _DENIED:
                    raise self._refused(op, key, status, code) from None
                text = str(exc)
                transient = (status in (408, 429, 500, 502, 503, 504) or code in _RETRY_CODES
                             or (status is None and ("error sending request" in text
                                                     or "HTTP error" in text
                                                     or "timed out" in text.lower())))
                if not transient:
                    raise
                wait = min(2.0, 0.1 * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
                if attempt > self.retries or time.monotonic() + wait > deadline:
                    cause = f"HTTP {status} {code or ''}".strip() if status else first
                    spent = self.retry_deadline - (deadline - time.monotonic())
                    raise StoreUnavailable(
                        f"S3 {self._where()} is unavailable: {op} {key} failed {attempt} "
                        f"time(s) in {spent:.1f} s ({cause}); is the S3 server up and "
                        f"reachable?") from None
                time.sleep(wait)

    # --- writes ----------------------------------------------------------------------------
    def _put_one(self, name: str, data: Data) -> bool:
        key = self._key(name)
        body = bytes(data) if not isinstance(data, bytes) else data
        try:
            self._call("PUT", key, lambda: obstore.put(self._s3, key, body, mode="create",
                                                      use_multipart=False))
        except _Exists as there:
            # Sealed envelopes differ at every seal (fresh data key and nonces), so the same
            # bytes there mean our own earlier attempt landed: report it as stored by us.
            if not there.after_retry or self.get(name) != body:
                return False
        with self._lock:
            if self._used is not None:
                self._used += len(body)
        return True

    def _writer_pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="aifs-s3")
            return self._pool

    def put_many(self, items: Iterable[tuple[str, Data]]) -> list[bool]:
        if isinstance(items, list | tuple) and len(items) == 1:
            name, data = items[0]
            return [self._put_one(name, data)]
        pool = self._writer_pool()
        # Bound what is queued: a lazy batch of 64 MiB chunks must not all sit in memory.
        slots = threading.BoundedSemaphore(2 * self.workers)

        def put(name: str, data: Data) -> bool:
            try:
                return self._put_one(name, data)
            finally:
                slots.release()

        futures: list[Future[bool]] = []
        failure: BaseException | None = None
        try:
            for name, data in items:  # may be lazy: PUTs start as items arrive
                self._key(name)  # a bad name fails the batch before anything is queued
                slots.acquire()
                futures.append(pool.submit(put, name, data))
        except BaseException as exc:
            failure = exc
        created: list[bool] = []
        for fut in futures:  # the rest of the batch settles before any failure is raised
            try:
                created.append(fut.result())
            except BaseException as exc:
                failure = failure or exc
                created.append(False)
        if failure is not None:
            raise failure
        return created

    def put(self, name: str, data: Data) -> bool:
        return self.put_many([(name, data)])[0]

    # --- reads -----------------------------------------------------------------------------
    def _get_head(self, name: str) -> tuple[int, bytes]:
        """(object size, its first READ_AHEAD bytes) in one ranged GET."""
        key = self._key(name)

        def get() -> tuple[int, bytes]:
            res = obstore.get(self._s3, key, options={"range": (0, READ_AHEAD)})
            return int(res.meta["size"]), bytes(res.bytes())

        try:
            return self._call("GET", key, get)
        except _NoRange:  # an empty object: no byte range of it exists
            return 0, b""

    def _get_range(self, name: str, offset: int, n: int) -> bytes:
        key = self._key(name)
        try:
            return self._call("GET", key, lambda: bytes(
                obstore.get_range(self._s3, key, start=offset, length=n)))
        except _NoRange:
            return b""

    def get(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        check_range(offset, length)
        key = self._key(name)
        if length == 0:
            self.size(name)  # NotFound if absent
            return b""
        try:
            if length is None:
                opts: Any = {"range": {"offset": offset}} if offset else {}
                return self._call("GET", key, lambda: bytes(
                    obstore.get(self._s3, key, options=opts).bytes()))
            return self._get_range(name, offset, length)
        except _NoRange:
            return b""

    def reader(self, name: str) -> _Range:
        return _Range(self, name)

    def size(self, name: str) -> int:
        key = self._key(name)
        return int(self._call("HEAD", key, lambda: obstore.head(self._s3, key)["size"]))

    def has_many(self, names: Iterable[str]) -> list[bool]:
        keys = [self._key(n) for n in names]

        def exists(key: str) -> bool:
            return self._call("HEAD", key, lambda: (obstore.head(self._s3, key), True)[1],
                              absent=lambda: False)

        if len(keys) <= 1:
            return [exists(k) for k in keys]
        return list(self._writer_pool().map(exists, keys))

    def delete(self, name: str) -> bool:
        # S3 DELETE answers 204 whether or not the key was there: a HEAD says which (and its
        # size, for usage). A race with another deleter may make both report True.
        try:
            size = self.size(name)
        except NotFound:
            return False
        key = self._key(name)
        self._call("DELETE", key, lambda: obstore.delete(self._s3, key))
        with self._lock:
            if self._used is not None:
                self._used -= size
        return True

    def _objects(self) -> Iterator[tuple[str, int]]:
        stream = self._call("LIST", self._root or "/", lambda: obstore.list(
            self._s3, self._root or None, chunk_size=1000))
        it = iter(stream)
        while True:
            page = self._call("LIST", self._root or "/", lambda: next(it, None))
            if page is None:
                return
            for meta in page:
                path = str(meta["path"])
                name = path.rsplit("/", 1)[-1]
                if _NAME.fullmatch(name) and path == self._key(name):
                    yield name, int(meta["size"])

    def list_names(self) -> Iterator[str]:
        for name, _size in self._objects():
            yield name

    def usage(self) -> StoreUsage:
        """Bytes stored (a LIST of the prefix, kept USAGE_TTL s and adjusted by our own puts
        and deletes); free is None: a bucket has no fixed size."""
        with self._lock:
            fresh = self._used is not None and time.monotonic() - self._used_at < USAGE_TTL
            if fresh:
                return StoreUsage(int(self._used or 0), None)
        total = sum(size for _name, size in self._objects())
        with self._lock:
            self._used, self._used_at = total, time.monotonic()
        return StoreUsage(total, None)

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)


class _Exists(Exception):
    """A create-only PUT found the name there already. `after_retry`: an earlier attempt of
    the same PUT failed with its outcome unknown (it may have landed before its answer was
    lost), so "there already" may be our own write."""

    def __init__(self, after_retry: bool = False) -> None:
        super().__init__()
        self.after_retry = after_retry


class _NoRange(Exception):
    """A ranged GET started at or past the end of the object (HTTP 416)."""
