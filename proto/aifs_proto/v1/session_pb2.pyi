from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionUp(_message.Message):
    __slots__ = ("hello", "renew", "ack", "release", "watch")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    RENEW_FIELD_NUMBER: _ClassVar[int]
    ACK_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    WATCH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    renew: Renew
    ack: Ack
    release: Release
    watch: Watch
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., renew: _Optional[_Union[Renew, _Mapping]] = ..., ack: _Optional[_Union[Ack, _Mapping]] = ..., release: _Optional[_Union[Release, _Mapping]] = ..., watch: _Optional[_Union[Watch, _Mapping]] = ...) -> None: ...

class Watch(_message.Message):
    __slots__ = ("path_prefix", "resume")
    PATH_PREFIX_FIELD_NUMBER: _ClassVar[int]
    RESUME_FIELD_NUMBER: _ClassVar[int]
    path_prefix: str
    resume: str
    def __init__(self, path_prefix: _Optional[str] = ..., resume: _Optional[str] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Renew(_message.Message):
    __slots__ = ("stamp",)
    STAMP_FIELD_NUMBER: _ClassVar[int]
    stamp: int
    def __init__(self, stamp: _Optional[int] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class Release(_message.Message):
    __slots__ = ("inos",)
    INOS_FIELD_NUMBER: _ClassVar[int]
    inos: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, inos: _Optional[_Iterable[int]] = ...) -> None: ...

class SessionDown(_message.Message):
    __slots__ = ("welcome", "recall", "renew_ok", "events")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    RENEW_OK_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    recall: Recall
    renew_ok: RenewOk
    events: Events
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., recall: _Optional[_Union[Recall, _Mapping]] = ..., renew_ok: _Optional[_Union[RenewOk, _Mapping]] = ..., events: _Optional[_Union[Events, _Mapping]] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("session_id", "term_ms")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TERM_MS_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    term_ms: int
    def __init__(self, session_id: _Optional[str] = ..., term_ms: _Optional[int] = ...) -> None: ...

class Recall(_message.Message):
    __slots__ = ("seq", "inos")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    INOS_FIELD_NUMBER: _ClassVar[int]
    seq: int
    inos: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, seq: _Optional[int] = ..., inos: _Optional[_Iterable[int]] = ...) -> None: ...

class RenewOk(_message.Message):
    __slots__ = ("stamp",)
    STAMP_FIELD_NUMBER: _ClassVar[int]
    stamp: int
    def __init__(self, stamp: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("kind", "path", "ino", "is_dir")
    class Kind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        KIND_UNSPECIFIED: _ClassVar[Event.Kind]
        CREATED: _ClassVar[Event.Kind]
        CHANGED: _ClassVar[Event.Kind]
        REMOVED: _ClassVar[Event.Kind]
    KIND_UNSPECIFIED: Event.Kind
    CREATED: Event.Kind
    CHANGED: Event.Kind
    REMOVED: Event.Kind
    KIND_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    INO_FIELD_NUMBER: _ClassVar[int]
    IS_DIR_FIELD_NUMBER: _ClassVar[int]
    kind: Event.Kind
    path: str
    ino: int
    is_dir: bool
    def __init__(self, kind: _Optional[_Union[Event.Kind, str]] = ..., path: _Optional[str] = ..., ino: _Optional[int] = ..., is_dir: _Optional[bool] = ...) -> None: ...

class Events(_message.Message):
    __slots__ = ("events", "overflow", "cursor")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    OVERFLOW_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    overflow: bool
    cursor: str
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ..., overflow: _Optional[bool] = ..., cursor: _Optional[str] = ...) -> None: ...
