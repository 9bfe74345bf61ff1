"""Every RPC of the aifs.v1 services has a verb in server/auth.METHOD_VERBS. The server fails
closed (a method missing there is refused for every token), so a new RPC without a verb would
work in no deployment: this catches it when the RPC is added, not in a user's first call.
(Session/* is the lease stream's: authorized by the session's own checks, listed too.)"""

from __future__ import annotations

from aifs_server.auth import METHOD_VERBS
from tests.helpers import rpc_methods


def test_every_rpc_has_a_verb() -> None:
    names = [f"/{m.containing_service.full_name}/{m.name}" for m in rpc_methods()]
    assert len(names) > 40 and "/aifs.v1.Filesystem/CreateFiles" in names
    missing = [n for n in names if n not in METHOD_VERBS]
    assert missing == [], missing
