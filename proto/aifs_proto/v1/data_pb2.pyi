from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Encoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IDENTITY: _ClassVar[Encoding]
    ZSTD: _ClassVar[Encoding]
IDENTITY: Encoding
ZSTD: Encoding

class HasChunksRequest(_message.Message):
    __slots__ = ("chunk_ids",)
    CHUNK_IDS_FIELD_NUMBER: _ClassVar[int]
    chunk_ids: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, chunk_ids: _Optional[_Iterable[bytes]] = ...) -> None: ...

class HasChunksReply(_message.Message):
    __slots__ = ("present",)
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    present: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, present: _Optional[_Iterable[bool]] = ...) -> None: ...

class PutChunkRequest(_message.Message):
    __slots__ = ("chunk_id", "data", "encoding", "raw_length", "file_offset", "inline_file")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    FILE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    INLINE_FILE_FIELD_NUMBER: _ClassVar[int]
    chunk_id: bytes
    data: bytes
    encoding: Encoding
    raw_length: int
    file_offset: int
    inline_file: str
    def __init__(self, chunk_id: _Optional[bytes] = ..., data: _Optional[bytes] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., raw_length: _Optional[int] = ..., file_offset: _Optional[int] = ..., inline_file: _Optional[str] = ...) -> None: ...

class PutChunksReply(_message.Message):
    __slots__ = ("stored", "deduplicated", "stored_bytes")
    STORED_FIELD_NUMBER: _ClassVar[int]
    DEDUPLICATED_FIELD_NUMBER: _ClassVar[int]
    STORED_BYTES_FIELD_NUMBER: _ClassVar[int]
    stored: int
    deduplicated: int
    stored_bytes: int
    def __init__(self, stored: _Optional[int] = ..., deduplicated: _Optional[int] = ..., stored_bytes: _Optional[int] = ...) -> None: ...

class ChunkRange(_message.Message):
    __slots__ = ("chunk_id", "offset", "length")
    CHUNK_ID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    chunk_id: bytes
    offset: int
    length: int
    def __init__(self, chunk_id: _Optional[bytes] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class GetChunksRequest(_message.Message):
    __slots__ = ("ranges", "accept_encodings", "inline_file")
    RANGES_FIELD_NUMBER: _ClassVar[int]
    ACCEPT_ENCODINGS_FIELD_NUMBER: _ClassVar[int]
    INLINE_FILE_FIELD_NUMBER: _ClassVar[int]
    ranges: _containers.RepeatedCompositeFieldContainer[ChunkRange]
    accept_encodings: _containers.RepeatedScalarFieldContainer[str]
    inline_file: str
    def __init__(self, ranges: _Optional[_Iterable[_Union[ChunkRange, _Mapping]]] = ..., accept_encodings: _Optional[_Iterable[str]] = ..., inline_file: _Optional[str] = ...) -> None: ...

class ChunkPiece(_message.Message):
    __slots__ = ("range_index", "offset", "raw_length", "encoding", "data", "file_offset")
    RANGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    RAW_LENGTH_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    FILE_OFFSET_FIELD_NUMBER: _ClassVar[int]
    range_index: int
    offset: int
    raw_length: int
    encoding: Encoding
    data: bytes
    file_offset: int
    def __init__(self, range_index: _Optional[int] = ..., offset: _Optional[int] = ..., raw_length: _Optional[int] = ..., encoding: _Optional[_Union[Encoding, str]] = ..., data: _Optional[bytes] = ..., file_offset: _Optional[int] = ...) -> None: ...
