"""What the mount needs of a server, as small typed interfaces (structural: any object with
these methods will do -- the gRPC clients of aifsfs/rpc, or an in-memory fake in tests).

Interface:
    FsClient       the Filesystem-service calls the mount makes (lookups, attributes, entries,
                   xattrs, chunk maps, commits)
    DataClient     chunk calls: has_chunks, put_chunks, get_chunks; .address (over TCP the
                   write buffer asks which chunks exist before sending)
    AssetReader    the Assets calls of the synthetic /.aifs tree: stat_asset, list_assets,
                   get_asset_stream
    MountClient    .fs, .data, .assets: what AIFSOperations takes (AIFSClient is one)
    FileInfo, Removed, Renamed, StatFs, PutChunksResult   the plain results of those calls

Every method blocks (the mount runs them in worker threads) and raises aifs_core.errors
classes (by reason) for server-side failures.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from aifs_core.types import Attr, ChunkRef, DirEntry


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
class PutChunksResult:
    stored: int = 0
    deduplicated: int = 0
    stored_bytes: int = 0
    sent_bytes: int = 0      # payload bytes on the wire (after optional zstd)
    raw_bytes: int = 0       # plaintext bytes of the chunks sent


class FsClient(Protocol):
    def lookup(self, parent: int, name: bytes) -> Attr: ...

    def getattr(self, ino: int) -> Attr: ...

    def setattr(self, ino: int, fields: int, *, mode: int = 0, uid: int = 0, gid: int = 0,
                size: int = 0, atime_ns: int = 0, mtime_ns: int = 0, ctime_ns: int = 0
                ) -> Attr: ...

    def readdir(self, ino: int, cookie: int = 0, limit: int = 1000
                ) -> tuple[list[DirEntry], bool]: ...

    # (attrs, the parent's, the listing cookie: nonzero while the parent is held alone)
    def mkdir_entry(self, parent: int, name: bytes, mode: int = 0o755, uid: int = 0,
                    gid: int = 0) -> tuple[Attr, Attr | None, int]: ...

    def create_entry(self, parent: int, name: bytes, mode: int = 0o100644, uid: int = 0,
                     gid: int = 0, rdev: int = 0) -> tuple[Attr, Attr | None, int]: ...

    def symlink_entry(self, parent: int, name: bytes, target: bytes, uid: int = 0,
                      gid: int = 0) -> tuple[Attr, Attr | None]: ...

    def link_entry(self, ino: int, new_parent: int, new_name: bytes
                   ) -> tuple[Attr, Attr | None]: ...

    def remove(self, parent: int, name: bytes, *, directory: bool = False,
               forget: bool = False) -> Removed: ...

    def rename_entry(self, parent: int, name: bytes, new_parent: int, new_name: bytes,
                     flags: int = 0, forget: bool = False) -> Renamed: ...

    def readlink(self, ino: int) -> bytes: ...

    def getxattr(self, ino: int, name: bytes) -> bytes: ...

    def setxattr(self, ino: int, name: bytes, value: bytes, flags: int = 0) -> None: ...

    def listxattr(self, ino: int) -> list[bytes]: ...

    def removexattr(self, ino: int, name: bytes) -> None: ...

    def statfs(self) -> StatFs: ...

    def get_chunk_map(self, ino: int, first: int = 0, count: int = 0
                      ) -> tuple[Attr, int, list[ChunkRef]]: ...

    def open_chunk_map(self, ino: int, inline_max: int = 0,
                       cached_generation: int | None = None
                       ) -> tuple[Attr, int, list[ChunkRef], bytes]: ...

    def commit_file(self, ino: int, chunks: Iterable[ChunkRef | tuple[int, bytes, int]],
                    size: int, truncated: bool = False, mtime_ns: int = 0,
                    asset_id: str = "", durable: bool = False,
                    inline: Sequence[tuple[bytes, bytes]] = ()) -> Attr: ...

    def forget(self, ino: int) -> None: ...

    def file_info(self, ino: int) -> FileInfo: ...


class DataClient(Protocol):
    @property
    def address(self) -> str: ...

    def has_chunks(self, chunk_ids: Sequence[bytes]) -> list[bool]: ...

    def put_chunks(self, chunks: Iterable[tuple[bytes, bytes | bytearray | memoryview]],
                   compress: bool | None = None, timeout: float | None = None
                   ) -> PutChunksResult: ...

    def get_chunks(self, ranges: Sequence[tuple[bytes, int, int]],
                   accept_zstd: bool | None = None, timeout: float | None = None
                   ) -> list[bytes]: ...


class AssetReader(Protocol):
    def stat_asset(self, asset_id: str) -> dict[str, Any]: ...

    def list_assets(self, kind: str | None = None, limit: int | None = None
                    ) -> list[dict[str, Any]]: ...

    def get_asset_stream(self, asset_id: str, timeout: float | None = None
                         ) -> tuple[dict[str, Any], Iterator[bytes]]: ...


class MountClient(Protocol):
    @property
    def fs(self) -> FsClient: ...

    @property
    def data(self) -> DataClient: ...

    @property
    def assets(self) -> AssetReader: ...
