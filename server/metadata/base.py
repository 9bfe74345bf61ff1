"""The metadata engine interface: namespaces, branch trees, chunk records and assets.

Implementations: `sqlite.SQLiteMetadata` (embedded default); a PostgreSQL one is planned. Every
engine is `posix.PosixMeta` (the rules below) over its own `store.Store` (transactions of row
primitives; `sql.SQLTx` + a `sql.Dialect` for SQL databases), so the rules are written once.
The servicers and `AssetManager` use only what is declared here.

Rules every implementation keeps:
- Every call that changes more than one row runs in one transaction.
- A tree is one (namespace, branch); its root directory is inode 1 (`ROOT_INO`), created by
  `ensure_tree`. Inode numbers are unique within a tree and never reused.
- Names are bytes, at most `NAME_MAX` (255) bytes, never empty, never containing b"/" or NUL,
  never b"." or b".." -> `NameTooLong` / `InvalidArgument`.
- Chunk records are per namespace (dedup within a namespace: no cross-tenant "is this content
  stored?" oracle). A chunk map or an asset may only name chunks recorded in its namespace
  (`MissingChunk` otherwise). Reference counts count chunk-map slots and asset chunk-list
  entries; a chunk whose count drops to 0 stays recorded until `gc_candidates` + `forget_chunk`
  remove it (so a commit racing a GC never loses data: GC only takes chunks unreferenced for
  longer than a grace period).
- An unlinked inode that is still open stays (nlink 0) until `forget` is called for it.
- Errors are `aifs_core.errors` classes: NotFound, AlreadyExists, NotEmpty, NotADirectory,
  IsADirectory, NameTooLong, InvalidArgument, MissingChunk, ParentNotCommitted.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol

from aifs_core.types import (
    AssetRecord,
    Attr,
    ChunkRef,
    ChunkStats,
    DirEntry,
    Namespace,
    TreeRef,
    TreeStats,
)


class MetadataEngine(Protocol):
    # --- namespaces -------------------------------------------------------------------------
    def create_namespace(self, ns: Namespace) -> Namespace: ...          # AlreadyExists
    def get_namespace(self, name: str) -> Namespace: ...                 # NotFound
    def list_namespaces(self) -> list[Namespace]: ...

    # --- trees ------------------------------------------------------------------------------
    def ensure_tree(self, tree: TreeRef, uid: int = 0, gid: int = 0) -> Attr: ...  # root attr
    def list_trees(self, namespace: str) -> list[TreeRef]: ...   # every branch, by name; NotFound
    def lookup(self, tree: TreeRef, parent: int, name: bytes) -> Attr: ...
    def getattr(self, tree: TreeRef, ino: int) -> Attr: ...
    def listing_cookie(self, tree: TreeRef, parent: int, name: bytes) -> int: ...
    def path_of(self, tree: TreeRef, ino: int) -> bytes | None: ...
    def setattr(self, tree: TreeRef, ino: int, fields: int, *, mode: int = 0, uid: int = 0,
                gid: int = 0, size: int = 0, atime_ns: int = 0, mtime_ns: int = 0,
                ctime_ns: int = 0) -> Attr: ...
    def readdir(self, tree: TreeRef, ino: int, cookie: int, limit: int
                ) -> tuple[list[DirEntry], bool]: ...                      # (entries, eof)
    def readdir_maps(self, tree: TreeRef, ino: int, cookie: int, limit: int
                     ) -> tuple[list[DirEntry], bool, dict[int, list[ChunkRef]]]: ...
    # readdir and, read with it, each listed regular file's whole chunk map (absent: no slots)
    def mkdir(self, tree: TreeRef, parent: int, name: bytes, mode: int, uid: int, gid: int
              ) -> Attr: ...
    def create(self, tree: TreeRef, parent: int, name: bytes, mode: int, uid: int, gid: int,
               rdev: int = 0) -> Attr: ...
    def unlink(self, tree: TreeRef, parent: int, name: bytes, forget: bool = False
               ) -> Attr: ...  # attr after unlink; forget: drop it now if that was its last link
    def rmdir(self, tree: TreeRef, parent: int, name: bytes, forget: bool = False
              ) -> Attr: ...  # the removed directory's attr after rmdir (nlink 0); forget: drop it now
    def rename(self, tree: TreeRef, parent: int, name: bytes, new_parent: int,
               new_name: bytes, flags: int = 0, forget: bool = False) -> Attr | None: ...
    # rename returns the attr (after it) of the inode a replace unlinked, None when nothing was;
    # forget: drop that inode now if it has no link left
    def symlink(self, tree: TreeRef, parent: int, name: bytes, target: bytes, uid: int,
                gid: int) -> Attr: ...
    def readlink(self, tree: TreeRef, ino: int) -> bytes: ...
    def link(self, tree: TreeRef, ino: int, new_parent: int, new_name: bytes) -> Attr: ...
    def getxattr(self, tree: TreeRef, ino: int, name: bytes) -> bytes: ...  # NotFound (ENODATA)
    def setxattr(self, tree: TreeRef, ino: int, name: bytes, value: bytes, flags: int = 0
                 ) -> None: ...
    def listxattr(self, tree: TreeRef, ino: int) -> list[bytes]: ...
    def removexattr(self, tree: TreeRef, ino: int, name: bytes) -> None: ...
    def forget(self, tree: TreeRef, ino: int) -> None: ...   # drop an unlinked (nlink 0) inode
    def tree_stats(self, tree: TreeRef) -> TreeStats: ...

    # --- file contents ----------------------------------------------------------------------
    def get_chunk_map(self, tree: TreeRef, ino: int, first_index: int = 0, count: int = 0
                      ) -> tuple[Attr, list[ChunkRef]]: ...               # count 0 = all
    def commit_file(self, tree: TreeRef, ino: int, changed: list[ChunkRef], size: int,
                    truncated: bool = False, mtime_ns: int = 0, asset_id: str = "",
                    durable: bool = False) -> Attr: ...
    # durable: on stable storage (not only safe from a process crash) when it returns
    def get_file_asset_id(self, tree: TreeRef, ino: int) -> tuple[str, int]: ...  # (id or "", generation)
    def set_file_asset_id(self, tree: TreeRef, ino: int, generation: int, asset_id: str
                          ) -> None: ...   # ignored when the generation moved on meanwhile

    # --- chunk records ----------------------------------------------------------------------
    def record_chunk(self, namespace: str, chunk_id: bytes, raw_len: int, stored_len: int
                     ) -> bool: ...        # True when new, False when already recorded
    def record_chunks(self, namespace: str, chunks: Sequence[tuple[bytes, int, int]]
                      ) -> list[bool]: ...  # (id, raw_len, stored_len) each; one transaction
    def has_chunks(self, namespace: str, chunk_ids: list[bytes]) -> list[bool]: ...
    def chunk_stats(self, namespace: str) -> ChunkStats: ...
    def iter_chunks(self, namespace: str) -> Iterator[bytes]: ...   # every recorded chunk id
    def gc_candidates(self, namespace: str, unreferenced_before_ns: int) -> list[bytes]: ...
    def gc_candidate_times(self, namespace: str, from_ns: int, before_ns: int, limit: int
                           ) -> list[tuple[bytes, int]]: ...  # (id, since) oldest first
    def forget_chunk(self, namespace: str, chunk_id: bytes) -> bool: ...  # only if still unreferenced
    def orphan_inodes(self, tree: TreeRef) -> list[int]: ...   # nlink 0 (for GC after a crash)

    # --- assets -----------------------------------------------------------------------------
    def put_asset(self, namespace: str, asset: AssetRecord) -> AssetRecord: ...  # idempotent
    def get_asset(self, namespace: str, asset_id: str) -> AssetRecord: ...
    def list_assets(self, namespace: str, kind: str = "", limit: int = 100, after: str = ""
                    ) -> list[AssetRecord]: ...
    def delete_asset(self, namespace: str, asset_id: str) -> None: ...
    def lineage(self, namespace: str, asset_id: str) -> list[AssetRecord]: ...  # ancestors, nearest first

    def close(self) -> None: ...
