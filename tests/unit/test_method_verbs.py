"""Every RPC of the aifs.v1 services has a verb in server/auth.METHOD_VERBS. The server fails
closed (a method missing there is refused for every token), so a new RPC without a verb would
work in no deployment: this catches it when the RPC is added, not in a user's first call.
(Session/* is the lease stream's: authorized by the session's own checks, listed too.)"""

from __future__ import annotations

from aifs_proto.v1 import (
    admin_pb2,
    assets_pb2,
    data_pb2,
    filesystem_pb2,
    session_pb2,
    versioning_pb2,
)
from aifs_server.auth import METHOD_VERBS


def test_every_rpc_has_a_verb() -> None:
    names = [f"/{s.full_name}/{m.name}"
             for mod in (admin_pb2, assets_pb2, data_pb2, filesystem_pb2, session_pb2,
                         versioning_pb2)
             for s in mod.DESCRIPTOR.services_by_name.values() for m in s.methods]
    assert len(names) > 40 and "/aifs.v1.Filesystem/CreateFiles" in names
    missing = [n for n in names if n not in METHOD_VERBS]
    assert missing == [], missing
