from aifs_proto.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AssetHeader(_message.Message):
    __slots__ = ("kind", "metadata_json", "parents", "size_hint")
    KIND_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    SIZE_HINT_FIELD_NUMBER: _ClassVar[int]
    kind: str
    metadata_json: str
    parents: _containers.RepeatedCompositeFieldContainer[_common_pb2.ParentEdge]
    size_hint: int
    def __init__(self, kind: _Optional[str] = ..., metadata_json: _Optional[str] = ..., parents: _Optional[_Iterable[_Union[_common_pb2.ParentEdge, _Mapping]]] = ..., size_hint: _Optional[int] = ...) -> None: ...

class AssetEnd(_message.Message):
    __slots__ = ("size",)
    SIZE_FIELD_NUMBER: _ClassVar[int]
    size: int
    def __init__(self, size: _Optional[int] = ...) -> None: ...

class PutAssetRequest(_message.Message):
    __slots__ = ("header", "data", "end")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    header: AssetHeader
    data: bytes
    end: AssetEnd
    def __init__(self, header: _Optional[_Union[AssetHeader, _Mapping]] = ..., data: _Optional[bytes] = ..., end: _Optional[_Union[AssetEnd, _Mapping]] = ...) -> None: ...

class AssetInfo(_message.Message):
    __slots__ = ("asset_id", "kind", "size", "stored_bytes", "metadata_json", "parents", "uri", "created_ns", "chunk_count", "chunk_size", "chunks")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    PARENTS_FIELD_NUMBER: _ClassVar[int]
    URI_FIELD_NUMBER: _ClassVar[int]
    CREATED_NS_FIELD_NUMBER: _ClassVar[int]
    CHUNK_COUNT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_SIZE_FIELD_NUMBER: _ClassVar[int]
    CHUNKS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    kind: str
    size: int
    stored_bytes: int
    metadata_json: str
    parents: _containers.RepeatedCompositeFieldContainer[_common_pb2.ParentEdge]
    uri: str
    created_ns: int
    chunk_count: int
    chunk_size: int
    chunks: _containers.RepeatedCompositeFieldContainer[_common_pb2.ChunkRef]
    def __init__(self, asset_id: _Optional[str] = ..., kind: _Optional[str] = ..., size: _Optional[int] = ..., stored_bytes: _Optional[int] = ..., metadata_json: _Optional[str] = ..., parents: _Optional[_Iterable[_Union[_common_pb2.ParentEdge, _Mapping]]] = ..., uri: _Optional[str] = ..., created_ns: _Optional[int] = ..., chunk_count: _Optional[int] = ..., chunk_size: _Optional[int] = ..., chunks: _Optional[_Iterable[_Union[_common_pb2.ChunkRef, _Mapping]]] = ...) -> None: ...

class GetAssetRequest(_message.Message):
    __slots__ = ("asset_id", "info_only", "accept_encodings")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    INFO_ONLY_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    info_only: bool
    accept_encodings: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, asset_id: _Optional[str] = ..., info_only: _Optional[bool] = ..., accept_encodings: _Optional[_Iterable[str]] = ...) -> None: ...

class GetAssetReply(_message.Message):
    __slots__ = ("info", "data")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    info: AssetInfo
    data: bytes
    def __init__(self, info: _Optional[_Union[AssetInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class AssetRequest(_message.Message):
    __slots__ = ("asset_id", "request_id")
    ASSET_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    asset_id: str
    request_id: bytes
    def __init__(self, asset_id: _Optional[str] = ..., request_id: _Optional[bytes] = ...) -> None: ...

class ListAssetsRequest(_message.Message):
    __slots__ = ("kind", "limit", "after")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    AFTER_FIELD_NUMBER: _ClassVar[int]
    kind: str
    limit: int
    after: str
    def __init__(self, kind: _Optional[str] = ..., limit: _Optional[int] = ..., after: _Optional[str] = ...) -> None: ...

class ListAssetsReply(_message.Message):
    __slots__ = ("assets", "next_after")
    ASSETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_AFTER_FIELD_NUMBER: _ClassVar[int]
    assets: _containers.RepeatedCompositeFieldContainer[AssetInfo]
    next_after: str
    def __init__(self, assets: _Optional[_Iterable[_Union[AssetInfo, _Mapping]]] = ..., next_after: _Optional[str] = ...) -> None: ...

class VerifyAssetReply(_message.Message):
    __slots__ = ("ok", "detail")
    OK_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    detail: str
    def __init__(self, ok: _Optional[bool] = ..., detail: _Optional[str] = ...) -> None: ...

class LineageReply(_message.Message):
    __slots__ = ("ancestors",)
    ANCESTORS_FIELD_NUMBER: _ClassVar[int]
    ancestors: _containers.RepeatedCompositeFieldContainer[AssetInfo]
    def __init__(self, ancestors: _Optional[_Iterable[_Union[AssetInfo, _Mapping]]] = ...) -> None: ...
