"""GetChunks with several ranges per call, over a real server: the server reads the next ranges
ahead in a pool while it sends one (rpc_data.RANGE_LOOKAHEAD), so what must still hold is that
every range arrives whole and in order, and that a lost chunk in the middle fails the call
naming that chunk (not a neighbour, not a short answer)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

from aifsfs.rpc.channel import Channel
from aifsfs.rpc.data import GrpcData
from tests.helpers import ServerProc
from tests.stored_chunks import StoredChunk, stored_chunks

MiB = 1 << 20


def _chunks(n: int, seed: int) -> list[tuple[bytes, bytes]]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        # odd ones compress (sent as ZSTD frames), even ones do not (IDENTITY)
        b = rnd.randbytes(MiB) if i % 2 == 0 else (b"row %08d;" % i) * (MiB // 13)
        out.append((blake3.blake3(b).digest(), b))
    return out


@pytest.fixture
def data(server: ServerProc) -> Iterator[GrpcData]:
    ch = Channel(server.address, token=server.token, timeout=30, retry_for=5)
    try:
        yield GrpcData(ch)
    finally:
        ch.close()


def _store_files(data_dir: Path) -> set[StoredChunk]:
    return stored_chunks(data_dir / "chunks")


@pytest.mark.parametrize("zstd", [True, False])
def test_many_ranges_in_one_call_arrive_whole_and_in_order(data: GrpcData, zstd: bool) -> None:
    chunks = _chunks(9, seed=1)
    data.put_chunks(chunks)
    ranges = [(cid, 0, len(b)) for cid, b in chunks]
    ranges += [(chunks[3][0], 70_000, 5), (chunks[0][0], 0, 1), (chunks[8][0], MiB - 3, 3)]
    got = data.get_chunks(ranges, accept_zstd=zstd)
    want = [b for _, b in chunks] + [chunks[3][1][70_000:70_005], chunks[0][1][:1],
                                     chunks[8][1][-3:]]
    assert len(got) == len(want)
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        assert bytes(g) == w, f"range {i}"


def test_a_lost_chunk_mid_call_fails_the_call_naming_it(data: GrpcData, server: ServerProc
                                                       ) -> None:
    chunks = _chunks(6, seed=2)
    data.put_chunks(chunks[:3])
    before = _store_files(server.data_dir)
    data.put_chunks(chunks[3:4])
    (lost_file,) = _store_files(server.data_dir) - before
    data.put_chunks(chunks[4:])
    lost_file.unlink()
    lost = chunks[3][0]
    with pytest.raises(Exception, match=lost.hex()) as info:
        data.get_chunks([(cid, 0, len(b)) for cid, b in chunks])
    assert "MissingChunk" in type(info.value).__name__ or "missing" in str(info.value).lower()
    # the other chunks are still served, many to a call
    rest = [c for c in chunks if c[0] != lost]
    got = data.get_chunks([(cid, 0, len(b)) for cid, b in rest])
    assert [bytes(g) for g in got] == [b for _, b in rest]
