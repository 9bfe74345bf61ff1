"""Numbers a request may carry: every uint64 field must fit the store's signed 64 bits.

Interface:
    check_request(msg)              InvalidArgument naming the field when a uint64 (or fixed64)
                                    field anywhere in `msg` is >= 2**63
    checked_stream(requests)        the same for every message of a client stream, lazily

Inodes, sizes, offsets, chunk indices and cookies are uint64 on the wire but signed 64-bit in
the metadata engines (SQLite INTEGER, PostgreSQL BIGINT); a value past 2**63 - 1 used to reach
the engine and fail there with OverflowError (INTERNAL and a traceback in the log). Checking at
the door answers INVALID_ARGUMENT instead. Each message type's plan (which fields, which nested
messages can hold a uint64) is computed once, so a call pays a few attribute reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

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
