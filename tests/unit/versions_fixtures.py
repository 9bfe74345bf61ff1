"""Shared pieces of the versions tests on every metadata engine (test_versions_*.py).

Interface:
    T                   the tree of branch main of namespace ns1
    versions_fixture    the pytest fixture `v`: Versions over a fresh engine of the `harness`
                        (metadata_engines.py) with namespace ns1 and its main tree
    chunk(m, data)      a recorded chunk of `data` as slot 0 of a chunk map
"""

from __future__ import annotations

from collections.abc import Iterator

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifs_core.types import ChunkRef, Namespace, TreeRef
from aifs_server.metadata.posix import PosixMeta
from aifs_server.versions import Versions
from tests.unit.metadata_engines import Harness

T = TreeRef("ns1")


@pytest.fixture(name="v")
def versions_fixture(harness: Harness) -> Iterator[Versions]:
    m = harness.open()
    assert isinstance(m, PosixMeta)
    m.create_namespace(Namespace("ns1", 1 << 20, 3, "key-1"))
    m.ensure_tree(T)
    try:
        yield Versions(m, Ed25519PrivateKey.generate())
    finally:
        m.close()


def chunk(m: PosixMeta, data: bytes) -> ChunkRef:
    cid = blake3.blake3(data).digest()
    m.record_chunk("ns1", cid, len(data), len(data) + 40)
    return ChunkRef(0, cid, len(data))
