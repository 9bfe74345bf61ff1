"""Data types and constants shared by the server, the client SDK and the mount.

Interface:
    ROOT_INO, NAME_MAX                      root inode of every tree; longest name in bytes
    SET_MODE ... SET_CTIME                  SetAttr field bits (the wire's SetAttrRequest.fields)
    RENAME_NOREPLACE, RENAME_EXCHANGE       rename flags (Linux values)
    XATTR_CREATE, XATTR_REPLACE             setxattr flags
    TreeRef(namespace, branch="main")       one tree: a branch of a namespace
    Namespace, Attr, DirEntry, ChunkRef, ParentEdge, AssetRecord, TreeStats, ChunkStats

Plain dataclasses with no behaviour; `aifs_core.wire` converts them to and from protobuf.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ROOT_INO = 1
NAME_MAX = 255

# SetAttr field bits (same values as the wire's SetAttrRequest.fields)
SET_MODE, SET_UID, SET_GID, SET_SIZE, SET_ATIME, SET_MTIME, SET_CTIME = 1, 2, 4, 8, 16, 32, 64
# rename flags (Linux values)
RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2
# setxattr flags
XATTR_CREATE, XATTR_REPLACE = 1, 2


@dataclass(frozen=True)
class TreeRef:
    namespace: str
    branch: str = "main"


@dataclass
class Namespace:
    name: str
    chunk_size: int
    zstd_level: int
    kms_key_id: str
    created_ns: int = 0


@dataclass
class Attr:
    ino: int
    mode: int
    nlink: int
    uid: int
    gid: int
    rdev: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    blocks: int = 0       # 512-byte blocks of stored logical data (holes excluded)
    generation: int = 0   # bumps on every content change


@dataclass
class DirEntry:
    name: bytes
    attr: Attr
    cookie: int           # pass back to readdir to continue after this entry


@dataclass
class ChunkRef:
    index: int
    chunk_id: bytes       # 32-byte BLAKE3 of the plaintext; b"" in a commit clears the slot
    length: int


@dataclass
class ParentEdge:
    parent_id: str
    transform: str = ""
    transform_digest: str = ""


@dataclass
class AssetRecord:
    asset_id: str
    kind: str
    size: int
    chunks: list[ChunkRef]
    metadata_json: str = "{}"
    parents: list[ParentEdge] = field(default_factory=list)
    stored_bytes: int = 0
    created_ns: int = 0


@dataclass
class TreeStats:
    files: int            # inodes in the tree
    logical_bytes: int    # sum of file sizes


@dataclass
class ChunkStats:
    chunks: int
    raw_bytes: int        # plaintext bytes of recorded chunks
    stored_bytes: int     # envelope bytes on the chunk store
