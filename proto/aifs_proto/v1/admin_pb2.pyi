from aifs_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NamespaceInfo(_message.Message):
    __slots__ = ("name", "chunk_size", "zstd_level", "kms_key_id", "stored_bytes", "logical_bytes", "chunk_count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ZSTD_LEVEL_FIELD_NUMBER: _ClassVar[int]
    KMS_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    chunk_size: int
    zstd_level: int
    kms_key_id: str
    stored_bytes: int
    logical_bytes: int
    chunk_count: int
    def __init__(self, name: _Optional[str] = ..., chunk_size: _Optional[int] = ..., zstd_level: _Optional[int] = ..., kms_key_id: _Optional[str] = ..., stored_bytes: _Optional[int] = ..., logical_bytes: _Optional[int] = ..., chunk_count: _Optional[int] = ...) -> None: ...

class FormatRequest(_message.Message):
    __slots__ = ("namespace", "chunk_size", "zstd_level", "dry_run")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    ZSTD_LEVEL_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    chunk_size: int
    zstd_level: int
    dry_run: bool
    def __init__(self, namespace: _Optional[str] = ..., chunk_size: _Optional[int] = ..., zstd_level: _Optional[int] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class FormatReply(_message.Message):
    __slots__ = ("created", "message", "namespace", "root_snapshot_id")
    CREATED_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    ROOT_SNAPSHOT_ID_FIELD_NUMBER: _ClassVar[int]
    created: bool
    message: str
    namespace: NamespaceInfo
    root_snapshot_id: str
    def __init__(self, created: _Optional[bool] = ..., message: _Optional[str] = ..., namespace: _Optional[_Union[NamespaceInfo, _Mapping]] = ..., root_snapshot_id: _Optional[str] = ...) -> None: ...

class IntrospectReply(_message.Message):
    __slots__ = ("version", "features", "config_json", "namespaces")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    version: str
    features: _containers.RepeatedScalarFieldContainer[str]
    config_json: str
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceInfo]
    def __init__(self, version: _Optional[str] = ..., features: _Optional[_Iterable[str]] = ..., config_json: _Optional[str] = ..., namespaces: _Optional[_Iterable[_Union[NamespaceInfo, _Mapping]]] = ...) -> None: ...

class ListNamespacesReply(_message.Message):
    __slots__ = ("namespaces",)
    NAMESPACES_FIELD_NUMBER: _ClassVar[int]
    namespaces: _containers.RepeatedCompositeFieldContainer[NamespaceInfo]
    def __init__(self, namespaces: _Optional[_Iterable[_Union[NamespaceInfo, _Mapping]]] = ...) -> None: ...

class FsckRequest(_message.Message):
    __slots__ = ("read_data",)
    READ_DATA_FIELD_NUMBER: _ClassVar[int]
    read_data: bool
    def __init__(self, read_data: _Optional[bool] = ...) -> None: ...

class FsckReply(_message.Message):
    __slots__ = ("ok", "problems", "chunks_checked", "files_checked")
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_CHECKED_FIELD_NUMBER: _ClassVar[int]
    FILES_CHECKED_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    problems: _containers.RepeatedScalarFieldContainer[str]
    chunks_checked: int
    files_checked: int
    def __init__(self, ok: _Optional[bool] = ..., problems: _Optional[_Iterable[str]] = ..., chunks_checked: _Optional[int] = ..., files_checked: _Optional[int] = ...) -> None: ...

class GCRequest(_message.Message):
    __slots__ = ("dry_run", "grace_seconds")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    GRACE_SECONDS_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    grace_seconds: int
    def __init__(self, dry_run: _Optional[bool] = ..., grace_seconds: _Optional[int] = ...) -> None: ...

class GCReply(_message.Message):
    __slots__ = ("chunks_deleted", "bytes_freed", "orphans_deleted", "temp_files_deleted")
    CHUNKS_DELETED_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    ORPHANS_DELETED_FIELD_NUMBER: _ClassVar[int]
    TEMP_FILES_DELETED_FIELD_NUMBER: _ClassVar[int]
    chunks_deleted: int
    bytes_freed: int
    orphans_deleted: int
    temp_files_deleted: int
    def __init__(self, chunks_deleted: _Optional[int] = ..., bytes_freed: _Optional[int] = ..., orphans_deleted: _Optional[int] = ..., temp_files_deleted: _Optional[int] = ...) -> None: ...
