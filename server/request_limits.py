"""What a request may carry: numbers that fit the store, and messages no larger than the
method needs.

Interface:
    check_request(msg)              InvalidArgument naming the field when a uint64 (or fixed64)
                                    field anywhere in `msg` is >= 2**63
    checked_stream(requests)        the same for every message of a client stream, lazily
    message_limit(method) -> int    the largest request message `method` takes (bytes):
                                    MESSAGE_LIMITS, else METADATA_LIMIT (1 MiB)
    SizeLimitInterceptor(big)       grpc.ServerInterceptor: a request message over its method's
                                    limit is answered RESOURCE_EXHAUSTED before it is parsed;
                                    `big` is the server's receive limit (the data calls' bound)

Message sizes: grpc python has one receive limit per server, and the data calls need ~65 MiB
(a whole chunk per PutChunks message). Every other call needs KiBs, so each message is
measured as it arrives, before any protobuf is built from it. (A call refused for its token
never reads its body at all: auth._denying_handler.)

Inodes, sizes, offsets, chunk indices and cookies are uint64 on the wire but signed 64-bit in
the metadata engines (SQLite INTEGER, PostgreSQL BIGINT); a value past 2**63 - 1 used to reach
the engine and fail there with OverflowError (INTERNAL and a traceback in the log). Checking at
the door answers INVALID_ARGUMENT instead. Each message type's plan (which fields, which nested
messages can hold a uint64) is computed once, so a call pays a few attribute reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import grpc
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from aifs_core.errors import InvalidArgument

LIMIT = 1 << 63
_U64 = (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64)

# descriptor full name -> [(field name, repeated, nested descriptor or None for a uint64)]
_PLANS: dict[str, list[tuple[str, bool, Descriptor | None]]] = {}


def _is_repeated(f: FieldDescriptor) -> bool:
    return bool(f.is_repeated)


def _plan(desc: Descriptor, visiting: frozenset[str] = frozenset()
          ) -> list[tuple[str, bool, Descriptor | None]]:
    plan = _PLANS.get(desc.full_name)
    if plan is not None:
        return plan
    plan = []
    for f in desc.fields:
        if f.type in _U64:
            plan.append((f.name, _is_repeated(f), None))
        elif (f.type == FieldDescriptor.TYPE_MESSAGE and f.message_type is not None
              and not f.message_type.GetOptions().map_entry
              and f.message_type.full_name not in visiting
              and _plan(f.message_type, visiting | {desc.full_name})):
            plan.append((f.name, _is_repeated(f), f.message_type))
    _PLANS[desc.full_name] = plan
    return plan


def _check(msg: Any, path: str) -> None:
    for name, repeated, nested in _plan(msg.DESCRIPTOR):
        if nested is None:
            values = getattr(msg, name) if repeated else (getattr(msg, name),)
            for v in values:
                if v >= LIMIT:
                    raise InvalidArgument(
                        f"{path}{name} = {v} is out of range (at most {LIMIT - 1})")
        elif repeated:
            for i, item in enumerate(getattr(msg, name)):
                _check(item, f"{path}{name}[{i}].")
        elif msg.HasField(name):
            _check(getattr(msg, name), f"{path}{name}.")


def check_request(msg: Any) -> None:
    if hasattr(msg, "DESCRIPTOR"):
        _check(msg, "")


def checked_stream(requests: Iterable[Any]) -> Iterator[Any]:
    for msg in requests:
        check_request(msg)
        yield msg


METADATA_LIMIT = 1 << 20
# methods whose messages carry data (or many ids); 0 = the server's receive limit
MESSAGE_LIMITS = {
    "/aifs.v1.Data/PutChunks": 0,           # one whole chunk per message
    "/aifs.v1.Assets/PutAsset": 0,          # data pieces (1 MiB from our SDK)
    "/aifs.v1.Filesystem/CommitFile": 0,    # inline chunks, up to 16 MiB, and a chunk map
    "/aifs.v1.Filesystem/CreateFile": 0,    # a CommitFile's, with the create
    "/aifs.v1.Filesystem/CreateFiles": 0,   # several CreateFiles' (a mount sends <= 4 MiB)
    "/aifs.v1.Data/HasChunks": 8 << 20,     # up to 100,000 ids
    "/aifs.v1.Data/GetChunks": 8 << 20,     # ranges
    "/aifs.v1.Session/Open": 8 << 20,       # a release of many inodes
}


def message_limit(method: str, big: int) -> int:
    limit = MESSAGE_LIMITS.get(method, METADATA_LIMIT)
    return big if limit == 0 else min(limit, big)


class _TooLarge:
    __slots__ = ("size",)

    def __init__(self, size: int) -> None:
        self.size = size


def _refuse(context: grpc.ServicerContext, method: str, size: int, limit: int) -> None:
    context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                  f"{method}: a request message of {size} bytes is over this method's limit "
                  f"of {limit} bytes")


class SizeLimitInterceptor(grpc.ServerInterceptor):
    def __init__(self, big: int) -> None:
        self.big = big

    def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Any],
                          details: grpc.HandlerCallDetails) -> Any:
        handler = continuation(details)
        method = details.method
        limit = message_limit(method, self.big)
        if handler is None or limit >= self.big:
            return handler
        parse = handler.request_deserializer

        def measured(raw: bytes) -> Any:
            # the bytes are here already (grpc read them); what is saved is the parsed copy,
            # and the call is answered at once
            if len(raw) > limit:
                return _TooLarge(len(raw))
            return parse(raw) if parse is not None else raw

        if handler.request_streaming:
            def checked(requests: Iterator[Any], context: grpc.ServicerContext
                        ) -> Iterator[Any]:
                for r in requests:
                    if isinstance(r, _TooLarge):
                        _refuse(context, method, r.size, limit)
                    yield r
            inner = handler.stream_stream or handler.stream_unary

            def behaviour(requests: Any, context: grpc.ServicerContext) -> Any:
                return inner(checked(requests, context), context)
            make = (grpc.stream_stream_rpc_method_handler if handler.response_streaming
                    else grpc.stream_unary_rpc_method_handler)
        else:
            inner = handler.unary_stream or handler.unary_unary

            def behaviour(requests: Any, context: grpc.ServicerContext) -> Any:
                if isinstance(requests, _TooLarge):    # one request, not a stream
                    _refuse(context, method, requests.size, limit)
                return inner(requests, context)
            make = (grpc.unary_stream_rpc_method_handler if handler.response_streaming
                    else grpc.unary_unary_rpc_method_handler)
        return make(behaviour, measured, handler.response_serializer)
