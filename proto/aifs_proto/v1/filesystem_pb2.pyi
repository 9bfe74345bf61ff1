from aifs_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LookupRequest(_message.Message):
    __slots__ = ("parent", "name")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ...) -> None: ...

class InodeRequest(_message.Message):
    __slots__ = ("ino",)
    INO_FIELD_NUMBER: _ClassVar[int]
    ino: int
    def __init__(self, ino: _Optional[int] = ...) -> None: ...

class EntryReply(_message.Message):
    __slots__ = ("attr", "parent_attr", "results", "cookie")
    ATTR_FIELD_NUMBER: _ClassVar[int]
    PARENT_ATTR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    attr: _common_pb2.Attr
    parent_attr: _common_pb2.Attr
    results: _containers.RepeatedCompositeFieldContainer[UnlinkResult]
    cookie: int
    def __init__(self, attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., parent_attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., results: _Optional[_Iterable[_Union[UnlinkResult, _Mapping]]] = ..., cookie: _Optional[int] = ...) -> None: ...

class AttrReply(_message.Message):
    __slots__ = ("attr",)
    ATTR_FIELD_NUMBER: _ClassVar[int]
    attr: _common_pb2.Attr
    def __init__(self, attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ...) -> None: ...

class SetAttrRequest(_message.Message):
    __slots__ = ("ino", "fields", "mode", "uid", "gid", "size", "atime_ns", "mtime_ns", "ctime_ns")
    INO_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    ATIME_NS_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    CTIME_NS_FIELD_NUMBER: _ClassVar[int]
    ino: int
    fields: int
    mode: int
    uid: int
    gid: int
    size: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    def __init__(self, ino: _Optional[int] = ..., fields: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., size: _Optional[int] = ..., atime_ns: _Optional[int] = ..., mtime_ns: _Optional[int] = ..., ctime_ns: _Optional[int] = ...) -> None: ...

class ReadDirRequest(_message.Message):
    __slots__ = ("ino", "cookie", "limit", "with_maps", "inline_max", "inline_total", "inline_file")
    INO_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WITH_MAPS_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_FIELD_NUMBER: _ClassVar[int]
    INLINE_TOTAL_FIELD_NUMBER: _ClassVar[int]
    INLINE_FILE_FIELD_NUMBER: _ClassVar[int]
    ino: int
    cookie: int
    limit: int
    with_maps: bool
    inline_max: int
    inline_total: int
    inline_file: str
    def __init__(self, ino: _Optional[int] = ..., cookie: _Optional[int] = ..., limit: _Optional[int] = ..., with_maps: _Optional[bool] = ..., inline_max: _Optional[int] = ..., inline_total: _Optional[int] = ..., inline_file: _Optional[str] = ...) -> None: ...

class FileMap(_message.Message):
    __slots__ = ("chunks", "inline_data", "inline_offset")
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    INLINE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkRef]
    inline_data: bytes
    inline_offset: int
    def __init__(self, chunks: _Optional[_Iterable[_Union[_common_pb2.ChunkRef, _Mapping]]] = ..., inline_data: _Optional[bytes] = ..., inline_offset: _Optional[int] = ...) -> None: ...

class DirEntry(_message.Message):
    __slots__ = ("name", "attr", "cookie", "map")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    COOKIE_FIELD_NUMBER: _ClassVar[int]
    MAP_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    attr: _common_pb2.Attr
    cookie: int
    map: FileMap
    def __init__(self, name: _Optional[bytes] = ..., attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., cookie: _Optional[int] = ..., map: _Optional[_Union[FileMap, _Mapping]] = ...) -> None: ...

class ReadDirReply(_message.Message):
    __slots__ = ("entries", "eof", "chunk_size")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    EOF_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[DirEntry]
    eof: bool
    chunk_size: int
    def __init__(self, entries: _Optional[_Iterable[_Union[DirEntry, _Mapping]]] = ..., eof: _Optional[bool] = ..., chunk_size: _Optional[int] = ...) -> None: ...

class MkDirRequest(_message.Message):
    __slots__ = ("parent", "name", "mode", "uid", "gid", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class CreateRequest(_message.Message):
    __slots__ = ("parent", "name", "mode", "uid", "gid", "rdev", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    RDEV_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    mode: int
    uid: int
    gid: int
    rdev: int
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., rdev: _Optional[int] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class NameRequest(_message.Message):
    __slots__ = ("parent", "name", "forget", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    forget: bool
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ..., forget: _Optional[bool] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class RemoveReply(_message.Message):
    __slots__ = ("attr", "parent_attr")
    ATTR_FIELD_NUMBER: _ClassVar[int]
    PARENT_ATTR_FIELD_NUMBER: _ClassVar[int]
    attr: _common_pb2.Attr
    parent_attr: _common_pb2.Attr
    def __init__(self, attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., parent_attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ...) -> None: ...

class UnlinkItem(_message.Message):
    __slots__ = ("name", "ino", "setattr")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    SETATTR_FIELD_NUMBER: _ClassVar[int]
    name: bytes
    ino: int
    setattr: SetAttrRequest
    def __init__(self, name: _Optional[bytes] = ..., ino: _Optional[int] = ..., setattr: _Optional[_Union[SetAttrRequest, _Mapping]] = ...) -> None: ...

class UnlinkBatchRequest(_message.Message):
    __slots__ = ("parent", "items", "forget", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    items: _containers.RepeatedCompositeFieldContainer[UnlinkItem]
    forget: bool
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., items: _Optional[_Iterable[_Union[UnlinkItem, _Mapping]]] = ..., forget: _Optional[bool] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class UnlinkResult(_message.Message):
    __slots__ = ("errno", "attr")
    ERRNO_FIELD_NUMBER: _ClassVar[int]
    ATTR_FIELD_NUMBER: _ClassVar[int]
    errno: int
    attr: _common_pb2.Attr
    def __init__(self, errno: _Optional[int] = ..., attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ...) -> None: ...

class CreateFileRequest(_message.Message):
    __slots__ = ("parent", "name", "ino", "mode", "uid", "gid", "commit", "setattr", "items", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    SETATTR_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    ino: int
    mode: int
    uid: int
    gid: int
    commit: CommitFileRequest
    setattr: SetAttrRequest
    items: _containers.RepeatedCompositeFieldContainer[UnlinkItem]
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ..., ino: _Optional[int] = ..., mode: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., commit: _Optional[_Union[CommitFileRequest, _Mapping]] = ..., setattr: _Optional[_Union[SetAttrRequest, _Mapping]] = ..., items: _Optional[_Iterable[_Union[UnlinkItem, _Mapping]]] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class CreateFilesRequest(_message.Message):
    __slots__ = ("files",)
    FILES_FIELD_NUMBER: _ClassVar[int]
    files: _containers.RepeatedCompositeFieldContainer[CreateFileRequest]
    def __init__(self, files: _Optional[_Iterable[_Union[CreateFileRequest, _Mapping]]] = ...) -> None: ...

class CreateFilesReply(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[EntryReply]
    def __init__(self, entries: _Optional[_Iterable[_Union[EntryReply, _Mapping]]] = ...) -> None: ...

class UnlinkBatchReply(_message.Message):
    __slots__ = ("results", "parent_attr")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    PARENT_ATTR_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[UnlinkResult]
    parent_attr: _common_pb2.Attr
    def __init__(self, results: _Optional[_Iterable[_Union[UnlinkResult, _Mapping]]] = ..., parent_attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ...) -> None: ...

class RenameRequest(_message.Message):
    __slots__ = ("parent", "name", "new_parent", "new_name", "flags", "forget", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEW_PARENT_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    new_parent: int
    new_name: bytes
    flags: int
    forget: bool
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ..., new_parent: _Optional[int] = ..., new_name: _Optional[bytes] = ..., flags: _Optional[int] = ..., forget: _Optional[bool] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class RenameReply(_message.Message):
    __slots__ = ("replaced", "parent_attr", "new_parent_attr")
    REPLACED_FIELD_NUMBER: _ClassVar[int]
    PARENT_ATTR_FIELD_NUMBER: _ClassVar[int]
    NEW_PARENT_ATTR_FIELD_NUMBER: _ClassVar[int]
    replaced: _common_pb2.Attr
    parent_attr: _common_pb2.Attr
    new_parent_attr: _common_pb2.Attr
    def __init__(self, replaced: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., parent_attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., new_parent_attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ...) -> None: ...

class SymlinkRequest(_message.Message):
    __slots__ = ("parent", "name", "target", "uid", "gid", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: int
    name: bytes
    target: bytes
    uid: int
    gid: int
    request_id: bytes
    def __init__(self, parent: _Optional[int] = ..., name: _Optional[bytes] = ..., target: _Optional[bytes] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class ReadLinkReply(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: bytes
    def __init__(self, target: _Optional[bytes] = ...) -> None: ...

class LinkRequest(_message.Message):
    __slots__ = ("ino", "new_parent", "new_name", "request_id")
    INO_FIELD_NUMBER: _ClassVar[int]
    NEW_PARENT_FIELD_NUMBER: _ClassVar[int]
    NEW_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ino: int
    new_parent: int
    new_name: bytes
    request_id: bytes
    def __init__(self, ino: _Optional[int] = ..., new_parent: _Optional[int] = ..., new_name: _Optional[bytes] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class XattrRequest(_message.Message):
    __slots__ = ("ino", "name", "value", "flags", "request_id")
    INO_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ino: int
    name: bytes
    value: bytes
    flags: int
    request_id: bytes
    def __init__(self, ino: _Optional[int] = ..., name: _Optional[bytes] = ..., value: _Optional[bytes] = ..., flags: _Optional[int] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class XattrReply(_message.Message):
    __slots__ = ("value",)
    VALUE_FIELD_NUMBER: _ClassVar[int]
    value: bytes
    def __init__(self, value: _Optional[bytes] = ...) -> None: ...

class ListXattrReply(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, names: _Optional[_Iterable[bytes]] = ...) -> None: ...

class StatFsReply(_message.Message):
    __slots__ = ("block_size", "blocks", "blocks_free", "blocks_avail", "files", "files_free", "name_max", "stored_bytes", "logical_bytes")
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_FREE_FIELD_NUMBER: _ClassVar[int]
    BLOCKS_AVAIL_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FILES_FREE_FIELD_NUMBER: _ClassVar[int]
    NAME_MAX_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    block_size: int
    blocks: int
    blocks_free: int
    blocks_avail: int
    files: int
    files_free: int
    name_max: int
    stored_bytes: int
    logical_bytes: int
    def __init__(self, block_size: _Optional[int] = ..., blocks: _Optional[int] = ..., blocks_free: _Optional[int] = ..., blocks_avail: _Optional[int] = ..., files: _Optional[int] = ..., files_free: _Optional[int] = ..., name_max: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., logical_bytes: _Optional[int] = ...) -> None: ...

class ChunkMapRequest(_message.Message):
    __slots__ = ("ino", "first_index", "count", "inline_max", "cached_generation")
    INO_FIELD_NUMBER: _ClassVar[int]
    FIRST_INDEX_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    INLINE_MAX_FIELD_NUMBER: _ClassVar[int]
    CACHED_GENERATION_FIELD_NUMBER: _ClassVar[int]
    ino: int
    first_index: int
    count: int
    inline_max: int
    cached_generation: int
    def __init__(self, ino: _Optional[int] = ..., first_index: _Optional[int] = ..., count: _Optional[int] = ..., inline_max: _Optional[int] = ..., cached_generation: _Optional[int] = ...) -> None: ...

class ChunkMapReply(_message.Message):
    __slots__ = ("attr", "chunk_size", "chunks", "inline_data")
    ATTR_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    INLINE_DATA_FIELD_NUMBER: _ClassVar[int]
    attr: _common_pb2.Attr
    chunk_size: int
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkRef]
    inline_data: bytes
    def __init__(self, attr: _Optional[_Union[_common_pb2.Attr, _Mapping]] = ..., chunk_size: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[_common_pb2.ChunkRef, _Mapping]]] = ..., inline_data: _Optional[bytes] = ...) -> None: ...

class CommitFileRequest(_message.Message):
    __slots__ = ("ino", "chunks", "size", "truncated", "mtime_ns", "asset_id", "durable", "inline_chunks")
    INO_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    MTIME_NS_FIELD_NUMBER: _ClassVar[int]
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    DURABLE_FIELD_NUMBER: _ClassVar[int]
    INLINE_CHUNKS_FIELD_NUMBER: _ClassVar[int]
    ino: int
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkRef]
    size: int
    truncated: bool
    mtime_ns: int
    asset_id: str
    durable: bool
    inline_chunks: _containers.RepeatedCompositeFieldContainer[InlineChunk]
    def __init__(self, ino: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[_common_pb2.ChunkRef, _Mapping]]] = ..., size: _Optional[int] = ..., truncated: _Optional[bool] = ..., mtime_ns: _Optional[int] = ..., asset_id: _Optional[str] = ..., durable: _Optional[bool] = ..., inline_chunks: _Optional[_Iterable[_Union[InlineChunk, _Mapping]]] = ...) -> None: ...

class InlineChunk(_message.Message):
    __slots__ = ("chunk_id", "data")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    chunk_id: bytes
    data: bytes
    def __init__(self, chunk_id: _Optional[bytes] = ..., data: _Optional[bytes] = ...) -> None: ...

class FileInfoReply(_message.Message):
    __slots__ = ("asset_id", "uri", "kind", "stored_bytes", "logical_bytes")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    uri: str
    kind: str
    stored_bytes: int
    logical_bytes: int
    def __init__(self, asset_id: _Optional[str] = ..., uri: _Optional[str] = ..., kind: _Optional[str] = ..., stored_bytes: _Optional[int] = ..., logical_bytes: _Optional[int] = ...) -> None: ...
