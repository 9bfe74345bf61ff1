"""record_chunks: a PutChunks batch's chunk records in one transaction, on every engine.

It must answer exactly what record_chunk answers chunk by chunk (new / already recorded, the
unreferenced grace clock restarted on a re-record) and record nothing when one entry is bad.
"""

from __future__ import annotations

import time

import pytest

from aifs_core.errors import InvalidArgument
from aifs_server.metadata.base import MetadataEngine
from tests.unit.metadata_engines import Harness, harness_fixture  # noqa: F401 (fixture)
from tests.unit.test_metadata_records import cid, md  # noqa: F401 (md: fixture)


@pytest.fixture
def meta(md: MetadataEngine) -> MetadataEngine:  # noqa: F811 - the imported fixture
    """test_metadata_records' engine: namespaces ns1 and ns2, sqlite and PostgreSQL."""
    return md


def test_record_chunks_new_and_again(meta: MetadataEngine, harness: Harness) -> None:
    assert meta.record_chunks("ns1", []) == []
    meta.record_chunk("ns1", cid(1), 100, 60)
    first = harness.scalar("SELECT recorded_ns FROM chunks WHERE chunk_id = ?", cid(1))
    assert cid(1) in meta.gc_candidates("ns1", first + 1)
    time.sleep(0.002)   # the re-record below must carry a later clock reading than `first`
    got = meta.record_chunks("ns1", [(cid(1), 100, 60), (cid(2), 200, 120), (cid(3), 300, 0)])
    assert got == [False, True, True]
    assert meta.has_chunks("ns1", [cid(1), cid(2), cid(3), cid(4)]) == [True, True, True, False]
    assert meta.has_chunks("ns2", [cid(2)]) == [False]           # per namespace
    stats = meta.chunk_stats("ns1")
    assert (stats.chunks, stats.raw_bytes, stats.stored_bytes) == (3, 600, 180)
    # a re-recorded unreferenced chunk restarts its grace clock, as record_chunk does: a GC
    # pass with a cutoff after its first record no longer takes it
    assert cid(1) not in meta.gc_candidates("ns1", first + 1)
    assert cid(1) in meta.gc_candidates("ns1", 1 << 62)
    assert meta.record_chunks("ns2", [(cid(2), 200, 120)]) == [True]


def test_record_chunks_refuses_a_bad_entry_and_records_nothing(meta: MetadataEngine) -> None:
    with pytest.raises(InvalidArgument, match="32 bytes"):
        meta.record_chunks("ns1", [(cid(5), 10, 5), (b"short", 10, 5)])
    with pytest.raises(InvalidArgument, match="negative"):
        meta.record_chunks("ns1", [(cid(6), -1, 5)])
    assert meta.has_chunks("ns1", [cid(5), cid(6)]) == [False, False]
