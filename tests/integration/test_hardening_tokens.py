"""Token attenuation matrix (issue 13) over a real server: caveats a holder adds to a token can
only narrow what it allows, never widen it. Each case is a minted token plus caveats appended
by the holder (pymacaroons, no root key); what the server then allows, probed with real calls
in two namespaces and three verbs, must be exactly the intersection of every caveat: namespaces
("*" is every one), verbs ("all" is every one), the earliest expiry. A caveat the server does
not understand, or a malformed expiry, makes the whole token invalid (fail closed).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from pymacaroons import Macaroon

from aifs_proto.v1 import admin_pb2, admin_pb2_grpc
from aifs_server.auth import mint_token
from tests.helpers import ServerProc, call_md, error_info
from tests.integration.test_server_auth import FAMILIES

NAMESPACES = ("default", "nsb")
# GetAttr of the root, ListAssets, HasChunks
PROBES = {"stat": FAMILIES["fs"], "list": FAMILIES["assets"], "put": FAMILIES["data"]}
EVERY = frozenset(PROBES)
LATER = int(time.time()) + 10 * 365 * 86400       # ten years: later than any base expiry
PAST = int(time.time()) - 60

# (base: namespace, verbs, ttl) x (caveats the holder adds) -> (namespaces, verbs, expired)
BASES = {
    "default-stat": ("default", ["stat"], 600),
    "any-all": ("*", "all", 600),
    "default-stat-list-noexpiry": ("default", ["stat", "list"], None),
    "any-all-expired": ("*", "all", -5),
}
ADDED: dict[str, list[str]] = {
    "nothing": [],
    "widen-namespace": ["namespace = *"],
    "other-namespace": ["namespace = nsb"],
    "widen-verbs": ["methods = all"],
    "narrow-verbs": ["methods = list,put"],
    "later-expiry": [f"expires = {LATER}"],
    "past-expiry": [f"expires = {PAST}"],
    "widen-everything": ["namespace = *", "methods = all", f"expires = {LATER}"],
    "narrow-then-widen": ["methods = stat", "methods = all", "namespace = default",
                          "namespace = *"],
}


def _grant(base: tuple[str, Any, int | None], added: list[str]
           ) -> tuple[frozenset[str], frozenset[str], bool]:
    """The model: what the base plus the added caveats may do (the intersection)."""
    ns_base, verbs_base, ttl = base
    namespaces = frozenset(NAMESPACES) if ns_base == "*" else frozenset({ns_base})
    verbs = EVERY if verbs_base == "all" else frozenset(verbs_base) & EVERY
    expired = ttl is not None and ttl < 0
    for cav in added:
        key, _, value = cav.partition(" = ")
        if key == "namespace" and value != "*":
            namespaces &= {value}
        elif key == "methods" and value != "all":
            verbs &= frozenset(value.split(","))
        elif key == "expires":
            expired = expired or int(value) < time.time()
    return namespaces, verbs, expired


def _attenuate(token: str, added: list[str]) -> str:
    m = Macaroon.deserialize(token)
    for cav in added:
        m.add_first_party_caveat(cav)
    s = m.serialize()
    return s if isinstance(s, str) else s.decode()


@pytest.fixture(scope="module")
def ch(server_module: ServerProc) -> Iterator[grpc.Channel]:
    c = server_module.channel()
    admin_pb2_grpc.AdminStub(c).Format(admin_pb2.FormatRequest(namespace="nsb"),
                                       metadata=call_md(server_module.token))
    yield c
    c.close()


@pytest.fixture(scope="module")
def root_key(server_module: ServerProc) -> bytes:
    return (server_module.data_dir / "macaroon.key").read_bytes()


@pytest.mark.parametrize("added", sorted(ADDED))
@pytest.mark.parametrize("base", sorted(BASES))
def test_added_caveats_only_narrow(base: str, added: str, ch: grpc.Channel,
                                   root_key: bytes) -> None:
    ns, verbs, ttl = BASES[base]
    token = _attenuate(mint_token(root_key, ns, verbs, ttl), ADDED[added])
    namespaces, allowed, expired = _grant(BASES[base], ADDED[added])
    for namespace in NAMESPACES:
        for verb, probe in PROBES.items():
            md = call_md(token, namespace)
            if not expired and namespace in namespaces and verb in allowed:
                probe(ch, md)
                continue
            with pytest.raises(grpc.RpcError) as ei:
                probe(ch, md)
            code, reason, _msg = error_info(ei.value)
            want = ((grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED") if expired
                    else (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED"))
            assert (code, reason) == want, (namespace, verb)


@pytest.mark.parametrize("caveat", [
    "namespace=*", "admin = true", "methods: all", "expires = -99999999999999999999",
    "expires = 99999999999999999999", "expires = soon", "",
])
def test_a_caveat_the_server_does_not_understand_voids_the_token(
        caveat: str, ch: grpc.Channel, root_key: bytes) -> None:
    token = _attenuate(mint_token(root_key, "*", "all", 600), [caveat])
    for probe in PROBES.values():
        with pytest.raises(grpc.RpcError) as ei:
            probe(ch, call_md(token))
        code, reason, msg = error_info(ei.value)
        assert (code, reason) == (grpc.StatusCode.UNAUTHENTICATED, "UNAUTHENTICATED"), msg
        assert "Traceback" not in msg
