from aifs_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SnapshotInfo(_message.Message):
    __slots__ = ("id", "branch", "parents", "created_ns", "message", "root_hash", "signature", "tree_branch", "uri", "namespace", "tags")
    ID_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROOT_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    TREE_BRANCH_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    id: str
    branch: str
    parents: _containers.RepeatedScalarFieldContainer[str]
    created_ns: int
    message: str
    root_hash: bytes
    signature: bytes
    tree_branch: str
    uri: str
    namespace: str
    tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., branch: _Optional[str] = ..., parents: _Optional[_Iterable[str]] = ..., created_ns: _Optional[int] = ..., message: _Optional[str] = ..., root_hash: _Optional[bytes] = ..., signature: _Optional[bytes] = ..., tree_branch: _Optional[str] = ..., uri: _Optional[str] = ..., namespace: _Optional[str] = ..., tags: _Optional[_Iterable[str]] = ...) -> None: ...

class CreateSnapshotRequest(_message.Message):
    __slots__ = ("branch", "message", "request_id")
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    branch: str
    message: str
    request_id: bytes
    def __init__(self, branch: _Optional[str] = ..., message: _Optional[str] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class RefRequest(_message.Message):
    __slots__ = ("ref",)
    REF_FIELD_NUMBER: _ClassVar[int]
    ref: str
    def __init__(self, ref: _Optional[str] = ...) -> None: ...

class ListSnapshotsRequest(_message.Message):
    __slots__ = ("branch",)
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    branch: str
    def __init__(self, branch: _Optional[str] = ...) -> None: ...

class SnapshotList(_message.Message):
    __slots__ = ("snapshots",)
    SNAPSHOTS_FIELD_NUMBER: _ClassVar[int]
    snapshots: _containers.RepeatedCompositeFieldContainer[SnapshotInfo]
    def __init__(self, snapshots: _Optional[_Iterable[_Union[SnapshotInfo, _Mapping]]] = ...) -> None: ...

class VerifySnapshotReply(_message.Message):
    __slots__ = ("ok", "problems", "nodes_checked")
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    NODES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    nodes_checked: int
    def __init__(self, ok: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., nodes_checked: _Optional[int] = ...) -> None: ...

class PruneRequest(_message.Message):
    __slots__ = ("keep_last", "keep_daily", "keep_within_seconds", "dry_run", "branch")
    KEEP_LAST_FIELD_NUMBER: _ClassVar[int]
    KEEP_DAILY_FIELD_NUMBER: _ClassVar[int]
    KEEP_WITHIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    BRANCH_FIELD_NUMBER: _ClassVar[int]
    keep_last: int
    keep_daily: int
    keep_within_seconds: int
    dry_run: bool
    branch: str
    def __init__(self, keep_last: _Optional[int] = ..., keep_daily: _Optional[int] = ..., keep_within_seconds: _Optional[int] = ..., dry_run: _Optional[bool] = ..., branch: _Optional[str] = ...) -> None: ...

class PruneReply(_message.Message):
    __slots__ = ("removed", "kept")
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    removed: _containers.RepeatedScalarFieldContainer[str]
    kept: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, removed: _Optional[_Iterable[str]] = ..., kept: _Optional[_Iterable[str]] = ...) -> None: ...

class BranchInfo(_message.Message):
    __slots__ = ("name", "head", "created_ns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    HEAD_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    head: str
    created_ns: int
    def __init__(self, name: _Optional[str] = ..., head: _Optional[str] = ..., created_ns: _Optional[int] = ...) -> None: ...

class CreateBranchRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FROM_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: bytes
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[bytes] = ..., **kwargs) -> None: ...

class VersionNameRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: bytes
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class BranchList(_message.Message):
    __slots__ = ("branches",)
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    branches: _containers.RepeatedCompositeFieldContainer[BranchInfo]
    def __init__(self, branches: _Optional[_Iterable[_Union[BranchInfo, _Mapping]]] = ...) -> None: ...

class MoveBranchRequest(_message.Message):
    __slots__ = ("name", "to", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    to: str
    request_id: bytes
    def __init__(self, name: _Optional[str] = ..., to: _Optional[str] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class BranchLogEntry(_message.Message):
    __slots__ = ("seq", "action", "snapshot", "at_ns")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    AT_NS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    action: str
    snapshot: str
    at_ns: int
    def __init__(self, seq: _Optional[int] = ..., action: _Optional[str] = ..., snapshot: _Optional[str] = ..., at_ns: _Optional[int] = ...) -> None: ...

class BranchLogReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[BranchLogEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[BranchLogEntry, _Mapping]]] = ...) -> None: ...

class TagInfo(_message.Message):
    __slots__ = ("name", "snapshot", "created_ns")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    name: str
    snapshot: str
    created_ns: int
    def __init__(self, name: _Optional[str] = ..., snapshot: _Optional[str] = ..., created_ns: _Optional[int] = ...) -> None: ...

class CreateTagRequest(_message.Message):
    __slots__ = ("name", "snapshot", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    snapshot: str
    request_id: bytes
    def __init__(self, name: _Optional[str] = ..., snapshot: _Optional[str] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class TagList(_message.Message):
    __slots__ = ("tags",)
    TAGS_FIELD_NUMBER: _ClassVar[int]
    tags: _containers.RepeatedCompositeFieldContainer[TagInfo]
    def __init__(self, tags: _Optional[_Iterable[_Union[TagInfo, _Mapping]]] = ...) -> None: ...

class DiffRequest(_message.Message):
    __slots__ = ("a", "b")
    A_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    a: str
    b: str
    def __init__(self, a: _Optional[str] = ..., b: _Optional[str] = ...) -> None: ...

class DiffReply(_message.Message):
    __slots__ = ("added", "removed", "changed", "nodes_visited")
    ADDED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CHANGED_FIELD_NUMBER: _ClassVar[int]
    NODES_VISITED_FIELD_NUMBER: _ClassVar[int]
    added: _containers.RepeatedScalarFieldContainer[str]
    removed: _containers.RepeatedScalarFieldContainer[str]
    changed: _containers.RepeatedScalarFieldContainer[str]
    nodes_visited: int
    def __init__(self, added: _Optional[_Iterable[str]] = ..., removed: _Optional[_Iterable[str]] = ..., changed: _Optional[_Iterable[str]] = ..., nodes_visited: _Optional[int] = ...) -> None: ...

class MergeRequest(_message.Message):
    __slots__ = ("source", "into", "message", "dry_run")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INTO_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    source: str
    into: str
    message: str
    dry_run: bool
    def __init__(self, source: _Optional[str] = ..., into: _Optional[str] = ..., message: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class MergeReply(_message.Message):
    __slots__ = ("merged", "conflicts", "snapshot", "base", "applied")
    MERGED_FIELD_NUMBER: _ClassVar[int]
    CONFLICTS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BASE_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    merged: bool
    conflicts: _containers.RepeatedScalarFieldContainer[str]
    snapshot: str
    base: str
    applied: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, merged: _Optional[bool] = ..., conflicts: _Optional[_Iterable[str]] = ..., snapshot: _Optional[str] = ..., base: _Optional[str] = ..., applied: _Optional[_Iterable[str]] = ...) -> None: ...

class TreeEntry(_message.Message):
    __slots__ = ("name", "attr", "hash", "symlink", "xattr_names", "xattr_values", "content_hash", "chunks")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    SYMLINK_FIELD_NUMBER: _ClassVar[int]
    XATTR_NAMES_FIELD_NUMBER: _ClassVar[int]
    XATTR_VALUES_FIELD_NUMBER: _ClassVar[int]
    CONTENT_HASH_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    attr: _common_pb2.Attr
    hash: bytes
    symlink: bytes
    xattr_names: _containers.RepeatedScalarFieldContainer[bytes]
    xattr_values: _containers.RepeatedScalarFieldContainer[bytes]
    content_hash: bytes
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkRef]
    def __init__(self, name: _Optional[bytes] = ..., attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., hash: _Optional[bytes] = ..., symlink: _Optional[bytes] = ..., xattr_names: _Optional[_Iterable[bytes]] = ..., xattr_values: _Optional[_Iterable[bytes]] = ..., content_hash: _Optional[bytes] = ..., chunks: _Optional[_Iterable[_Union[_common_pb2.ChunkRef, _Mapping]]] = ...) -> None: ...

class ListTreeRequest(_message.Message):
    __slots__ = ("snapshot", "ino")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    snapshot: str
    ino: int
    def __init__(self, snapshot: _Optional[str] = ..., ino: _Optional[int] = ...) -> None: ...

class ListTreeReply(_message.Message):
    __slots__ = ("entries", "hash", "attr", "xattr_names", "xattr_values", "chunk_size")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    XATTR_NAMES_FIELD_NUMBER: _ClassVar[int]
    XATTR_VALUES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[TreeEntry]
    hash: bytes
    attr: _common_pb2.Attr
    xattr_names: _containers.RepeatedScalarFieldContainer[bytes]
    xattr_values: _containers.RepeatedScalarFieldContainer[bytes]
    chunk_size: int
    def __init__(self, entries: _Optional[_Iterable[_Union[TreeEntry, _Mapping]]] = ..., hash: _Optional[bytes] = ..., attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., xattr_names: _Optional[_Iterable[bytes]] = ..., xattr_values: _Optional[_Iterable[bytes]] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class SigningKeyReply(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    def __init__(self, public_key: _Optional[bytes] = ...) -> None: ...
