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

    The per-service clients (aifsfs/rpc), all over that one channel; the methods below are
    theirs, also reachable on the client itself:
    .assets (the seed's names): put_asset(data, kind="blob", metadata=None, parents=None) -> id;
        get_asset(id) -> dict(data, kind, size, metadata, parents, uri, asset_id, ...);
        get_asset_stream(id) -> (info dict, iterator of bytes); download(id, fileobj) -> info
        (id: also an aifs-snap:// URI: a snapshot's file);
        stat_asset(id) -> info dict; list_assets(kind=None) -> [info]; delete_asset(id);
        verify_asset(id) -> {"ok", "detail"}; get_lineage(id) -> [info of ancestors];
        put_tensor(TensorData) / get_tensor(id) -> TensorData; put_embedding(EmbeddingData) /
        get_embedding(id); put_artifact(files | dir) / get_artifact(id) -> {name: bytes}.
    .fs (Attr, DirEntry, ChunkRef of aifs_core.types): lookup, getattr, setattr, readdir ->
        (entries, eof), mkdir, create, unlink, rmdir, rename, symlink, readlink, link,
        getxattr, setxattr, listxattr, removexattr, statfs, get_chunk_map -> (attr, chunk_size,
        chunks), commit_file -> Attr, forget, file_info; the mount's one-round-trip fast paths
        (create_entry, remove, rename_entry, open_chunk_map, ...): see rpc/filesystem.py.
    .data: has_chunks(ids) -> [bool]; put_chunks(iterable of (id, data)) -> PutChunksResult;
        get_chunks([(id, offset, length)]) -> [bytes] (exact; length 0 = to the chunk's end).
        `wire_stats` counts payload bytes sent/received (zstd vs identity).
    .admin: format, introspect, health, list_namespaces, fsck, gc.
    .versions: snapshots, branches, tags, diff, merge (rpc/versioning.py).
    open(uri) -> SnapshotFile   "aifs-snap://NS/ID/path/in/tree" (ID: a snapshot id or a tag):
        a read-only, seekable file object (read, readinto, readline, seek, tell, context
        manager; .size, .uri, .snapshot) that fetches only the chunk ranges a read touches,
        verified from the snapshot's signed Merkle root down to the file's chunk map.
    watch(path_prefix="/", ready_timeout=None, resume_from="", reconnect_seconds=30) -> Watch
        change events of the tree's paths under the prefix (created / changed / removed;
        rpc/watch.py): `for e in w` blocks, `w.get(timeout)` waits at most that long,
        `w.close()` (or `with`) ends it; a broken stream resumes from `w.cursor`.
    wait_ready(timeout=None), close().
    default_data_dir(), default_socket(data_dir) — where the embedded default server lives.

The mount uses `.fs`, `.data` and `.assets` directly (typed by aifsfs.protocols): the methods
here are one plain delegation each, for SDK users.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, BinaryIO

from aifs_core.merkle import SNAP_SCHEME
from aifs_core.types import Attr, ChunkRef, DirEntry, ParentEdge
from aifs_core.verbs import DEFAULT_BRANCH, DEFAULT_NAMESPACE
from aifs_core.wire import attr_from_pb

from .rpc.admin import GrpcAdmin
from .rpc.assets import PIECE_SIZE, GrpcAssets
from .rpc.channel import (
    MAX_MESSAGE,
    Channel,
    WireStats,
    default_data_dir,
    default_socket,
    resolve_address,
)
from .rpc.data import GrpcData, PutChunksResult
from .rpc.data import unzstd as _unzstd
from .rpc.filesystem import FileInfo, GrpcFilesystem, Removed, Renamed, StatFs
from .rpc.snapshot_file import SnapshotFile
from .rpc.versioning import GrpcVersioning
from .rpc.watch import RECONNECT_SECONDS, Watch


class AIFSClient:
    """A thread-safe client of one AIFS server (one namespace and branch)."""

    def __init__(self, address: str | None = None, token: str | None = None,
                 token_file: str | os.PathLike[str] | None = None,
                 namespace: str = DEFAULT_NAMESPACE, branch: str = DEFAULT_BRANCH,
                 timeout: float = 30.0, retry_for: float = 30.0, accept_zstd: bool = True,
                 tls_ca: str | os.PathLike[str] | None = None,
                 compress_uploads: bool | None = None) -> None:
        self.channel = Channel(address, token, token_file, namespace, branch, timeout,
                               retry_for, accept_zstd, tls_ca, compress_uploads)
        self.fs = GrpcFilesystem(self.channel)
        self.data = GrpcData(self.channel)
        self.assets = GrpcAssets(self.channel)
        self.admin = GrpcAdmin(self.channel)
        self.versions = GrpcVersioning(self.channel)  # snapshots, branches, tags, diff, merge

    # --- the channel's settings (read through, so that changing one changes every service) --

    @property
    def address(self) -> str:
        return self.channel.address

    @property
    def namespace(self) -> str:
        return self.channel.namespace

    @namespace.setter
    def namespace(self, value: str) -> None:
        self.channel.namespace = value

    @property
    def branch(self) -> str:
        return self.channel.branch

    @branch.setter
    def branch(self, value: str) -> None:
        self.channel.branch = value

    @property
    def timeout(self) -> float:
        return self.channel.timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self.channel.timeout = float(value)

    @property
    def retry_for(self) -> float:
        return self.channel.retry_for

    @retry_for.setter
    def retry_for(self, value: float) -> None:
        self.channel.retry_for = float(value)

    @property
    def accept_zstd(self) -> bool:
        return self.channel.accept_zstd

    @accept_zstd.setter
    def accept_zstd(self, value: bool) -> None:
        self.channel.accept_zstd = value

    @property
    def compress_uploads(self) -> bool:
        return self.channel.compress_uploads

    @compress_uploads.setter
    def compress_uploads(self, value: bool) -> None:
        self.channel.compress_uploads = value

    @property
    def wire_stats(self) -> WireStats:
        return self.channel.wire_stats

    # --- plumbing ---------------------------------------------------------------------------

    def __repr__(self) -> str:  # never the token
        return (f"AIFSClient(address={self.address!r}, namespace={self.namespace!r}, "
                f"branch={self.branch!r}, token={'<set>' if self.channel.has_token else '<none>'})")

    def __enter__(self) -> AIFSClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float | None = None) -> None:
        """Block until the server answers (or raise ServerUnavailable after `timeout`,
        default `retry_for`). A health check with wait_for_ready: no token needed."""
        self.channel.wait_ready(timeout)

    def watch(self, path_prefix: str = "/", ready_timeout: float | None = None,
              resume_from: str = "", reconnect_seconds: float = RECONNECT_SECONDS) -> Watch:
        """Change events of paths under `path_prefix` from now on, or after an earlier
        Watch's `.cursor` (rpc/watch.py); a broken stream is resumed for reconnect_seconds."""
        return Watch(self.channel, path_prefix, ready_timeout, resume_from, reconnect_seconds)

    def open(self, uri: str) -> SnapshotFile:
        """A file of a snapshot, `aifs-snap://NS/ID/path/in/tree`, read-only and seekable."""
        return self.versions.open(uri)

    # --- admin (client.admin) -----------------------------------------------------------------

    def health(self, service: str = "") -> str:
        """Status name of grpc.health.v1 Check: SERVING, NOT_SERVING, SERVICE_UNKNOWN..."""
        return self.admin.health(service)

    def format(self, namespace: str | None = None, chunk_size: int = 0, zstd_level: int = 0,
               dry_run: bool = False) -> dict[str, Any]:
        return self.admin.format(namespace, chunk_size, zstd_level, dry_run)

    def introspect(self) -> dict[str, Any]:
        return self.admin.introspect()

    def list_namespaces(self) -> list[dict[str, Any]]:
        return self.admin.list_namespaces()

    def fsck(self, read_data: bool = False, timeout: float | None = None) -> dict[str, Any]:
        return self.admin.fsck(read_data, timeout)

    def gc(self, dry_run: bool = False, grace_seconds: int | None = None,
           timeout: float | None = None) -> dict[str, Any]:
        return self.admin.gc(dry_run, grace_seconds, timeout)

    # --- assets (client.assets) ---------------------------------------------------------------

    def put_asset(self, data: bytes | bytearray | memoryview | BinaryIO | Iterable[bytes],
                  kind: str = "blob", metadata: Mapping[str, Any] | None = None,
                  parents: Iterable[str | ParentEdge | Mapping[str, Any]] | None = None,
                  size_hint: int = 0, on_progress: Callable[[int], None] | None = None,
                  timeout: float | None = None) -> str:
        """Store an immutable asset; returns its AssetID (BLAKE3-256 hex of the bytes)."""
        return self.assets.put_asset(data, kind, metadata, parents, size_hint, on_progress,
                                     timeout)

    def stat_asset(self, asset_id: str) -> dict[str, Any]:
        """Asset info without its bytes."""
        return self.assets.stat_asset(asset_id)

    def get_asset_stream(self, asset_id: str, timeout: float | None = None
                         ) -> tuple[dict[str, Any], Iterator[bytes]]:
        """(info, iterator of data pieces). Retried until the info arrived, not after."""
        return self.assets.get_asset_stream(asset_id, timeout)

    def download(self, asset_id: str, fileobj: BinaryIO,
                 on_progress: Callable[[int], None] | None = None) -> dict[str, Any]:
        """Write an asset's bytes, or a snapshot file's (an aifs-snap:// URI), to `fileobj`."""
        if not asset_id.startswith(SNAP_SCHEME):
            return self.assets.download(asset_id, fileobj, on_progress)
        with self.open(asset_id) as f:
            while piece := f.read(PIECE_SIZE):
                fileobj.write(piece)
                if on_progress is not None:
                    on_progress(len(piece))
            return {"uri": f.uri, "size": f.size, "snapshot": f.snapshot}

    def get_asset(self, asset_id: str) -> dict[str, Any]:
        """The asset's info plus its bytes under "data" (the seed's shape)."""
        return self.assets.get_asset(asset_id)

    def list_assets(self, kind: str | None = None, limit: int | None = None
                    ) -> list[dict[str, Any]]:
        return self.assets.list_assets(kind, limit)

    def delete_asset(self, asset_id: str) -> None:
        self.assets.delete_asset(asset_id)

    def verify_asset(self, asset_id: str) -> dict[str, Any]:
        return self.assets.verify_asset(asset_id)

    def get_lineage(self, asset_id: str) -> list[dict[str, Any]]:
        return self.assets.get_lineage(asset_id)

    def put_tensor(self, tensor: Any, parents: Iterable[Any] | None = None,
                   metadata: Mapping[str, Any] | None = None) -> str:
        return self.assets.put_tensor(tensor, parents, metadata)

    def get_tensor(self, asset_id: str) -> Any:
        return self.assets.get_tensor(asset_id)

    def put_embedding(self, embedding: Any, parents: Iterable[Any] | None = None,
                      metadata: Mapping[str, Any] | None = None) -> str:
        return self.assets.put_embedding(embedding, parents, metadata)

    def get_embedding(self, asset_id: str) -> Any:
        return self.assets.get_embedding(asset_id)

    def put_artifact(self, files: Mapping[str, bytes] | str | os.PathLike[str],
                     parents: Iterable[Any] | None = None,
                     metadata: Mapping[str, Any] | None = None) -> str:
        return self.assets.put_artifact(files, parents, metadata)

    def get_artifact(self, asset_id: str) -> dict[str, bytes]:
        return self.assets.get_artifact(asset_id)

    # --- filesystem (client.fs) ---------------------------------------------------------------

    def lookup(self, parent: int, name: bytes) -> Attr:
        return self.fs.lookup(parent, name)

    def getattr(self, ino: int) -> Attr:
        return self.fs.getattr(ino)

    def setattr(self, ino: int, fields: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
                size: int = 0, atime_ns: int = 0, mtime_ns: int = 0, ctime_ns: int = 0) -> Attr:
        return self.fs.setattr(ino, fields, mode=mode, uid=uid, gid=gid, size=size,
                               atime_ns=atime_ns, mtime_ns=mtime_ns, ctime_ns=ctime_ns)

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000
                ) -> tuple[list[DirEntry], bool]:
        return self.fs.readdir(ino, cookie, limit)

    def mkdir(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0, gid: int = 0
              ) -> Attr:
        return self.fs.mkdir(parent, name, mode, uid, gid)

    def mkdir_entry(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
                    gid: int = 0) -> tuple[Attr, Attr | None]:
        return self.fs.mkdir_entry(parent, name, mode, uid, gid)[:2]

    def create(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
               gid: int = 0, rdev: int = 0) -> Attr:
        return self.fs.create(parent, name, mode, uid, gid, rdev)

    def create_entry(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> tuple[Attr, Attr | None]:
        return self.fs.create_entry(parent, name, mode, uid, gid, rdev)[:2]

    def unlink(self, parent: int, name: bytes) -> None:
        self.fs.unlink(parent, name)

    def rmdir(self, parent: int, name: bytes) -> None:
        self.fs.rmdir(parent, name)

    def remove(self, parent: int, name: bytes, *, directory: bool = False,
               forget: bool = False) -> Removed:
        """Unlink (or RmDir with directory=True). forget: drop the inode at once if this was
        its last link -- only when the caller holds no handle of it."""
        return self.fs.remove(parent, name, directory=directory, forget=forget)

    def rename(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
               flags: int = 0) -> None:
        self.fs.rename(parent, name, new_parent, new_name, flags)

    def rename_entry(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0, forget: bool = False) -> Renamed:
        return self.fs.rename_entry(parent, name, new_parent, new_name, flags, forget)

    def symlink(self, parent: int, name: bytes, target: bytes, uid: int = 0, gid: int = 0
                ) -> Attr:
        return self.fs.symlink(parent, name, target, uid, gid)

    def symlink_entry(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                      gid: int = 0) -> tuple[Attr, Attr | None]:
        return self.fs.symlink_entry(parent, name, target, uid, gid)

    def readlink(self, ino: int) -> bytes:
        return self.fs.readlink(ino)

    def link(self, ino: int, new_parent: int, new_name: bytes) -> Attr:
        return self.fs.link(ino, new_parent, new_name)

    def link_entry(self, ino: int, new_parent: int, new_name: bytes
                   ) -> tuple[Attr, Attr | None]:
        return self.fs.link_entry(ino, new_parent, new_name)

    def getxattr(self, ino: int, name: bytes) -> bytes:
        return self.fs.getxattr(ino, name)

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None:
        self.fs.setxattr(ino, name, value, flags)

    def listxattr(self, ino: int) -> list[bytes]:
        return self.fs.listxattr(ino)

    def removexattr(self, ino: int, name: bytes) -> None:
        self.fs.removexattr(ino, name)

    def statfs(self) -> StatFs:
        return self.fs.statfs()

    def get_chunk_map(self, ino: int, first: int = 0, count: int = 0
                      ) -> tuple[Attr, int, list[ChunkRef]]:
        return self.fs.get_chunk_map(ino, first, count)

    def open_chunk_map(self, ino: int, inline_max: int = 0,
                       cached_generation: int | None = None
                       ) -> tuple[Attr, int, list[ChunkRef], bytes]:
        """The whole chunk map, plus slot 0's bytes when the file is at most `inline_max`
        bytes in slot 0 alone and not still at `cached_generation` (else b"")."""
        return self.fs.open_chunk_map(ino, inline_max, cached_generation)

    def commit_file(self, ino: int, chunks: Iterable[ChunkRef | tuple[int, bytes, int]],
                    size: int, truncated: bool = False, mtime_ns: int = 0,
                    asset_id: str = "", durable: bool = False,
                    inline: Sequence[tuple[bytes, bytes]] = ()) -> Attr:
        """Apply changed slots. `inline`: (chunk id, data) of small chunks to store with this
        commit instead of by put_chunks (at most 16 MiB in all)."""
        return self.fs.commit_file(ino, chunks, size, truncated, mtime_ns, asset_id, durable,
                                   inline)

    def forget(self, ino: int) -> None:
        self.fs.forget(ino)

    def file_info(self, ino: int) -> FileInfo:
        return self.fs.file_info(ino)

    # --- data (client.data) -------------------------------------------------------------------

    def has_chunks(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        return self.data.has_chunks(chunk_ids)

    def put_chunks(self, chunks: Iterable[tuple[bytes, bytes | bytearray | memoryview]],
                   compress: bool | None = None, timeout: float | None = None
                   ) -> PutChunksResult:
        """Upload whole chunks (id = BLAKE3 of the data). A list is retried on UNAVAILABLE; a
        one-shot iterator is sent once the channel is up."""
        return self.data.put_chunks(chunks, compress, timeout)

    def get_chunks(self, ranges: Sequence[tuple[bytes, int, int]],
                   accept_zstd: bool | None = None, timeout: float | None = None
                   ) -> list[bytes]:
        """Bytes of each (chunk_id, offset, length) range, in order; length 0 = to the end."""
        return self.data.get_chunks(ranges, accept_zstd, timeout)


__all__ = [
    "MAX_MESSAGE", "PIECE_SIZE", "AIFSClient", "FileInfo", "PutChunksResult", "Removed", "Renamed", "StatFs", "WireStats",
    "_unzstd", "attr_from_pb", "default_data_dir", "default_socket", "resolve_address",
]
