"""The mount's PutBatcher over a real server process: uploads that queue behind the calls in
flight share PutChunks calls (counted from the server's Prometheus metrics), every chunk is
stored when its upload returns, and a refused batch fails each of its uploads."""

from __future__ import annotations

import os

import blake3
import trio
import trio.testing

from aifs_core.errors import InvalidArgument
from aifsfs.client import AIFSClient
from aifsfs.fuse.write_buffer import PUT_BATCH_CHUNKS, PUT_CALLS_MAX, PutBatcher
from tests.helpers import ServerProc
from tests.integration.test_snapshot_open import metric

MiB = 1 << 20


def _put_calls(sp: ServerProc) -> float:
    return metric(sp, "aifs_rpc_total", 'method="PutChunks"')


def test_queued_uploads_share_calls_and_are_stored(metered: ServerProc) -> None:
    chunks = [os.urandom(MiB) for _ in range(20)]
    ids = [blake3.blake3(c).digest() for c in chunks]
    with AIFSClient(metered.address, token=metered.token, timeout=60) as c:
        batcher = PutBatcher(c.data, trio.CapacityLimiter(32))
        before = _put_calls(metered)

        async def main() -> None:
            async with trio.open_nursery() as n:
                for cid, data in zip(ids, chunks, strict=True):
                    n.start_soon(batcher.put, cid, data)

        trio.run(main)
        # all 20 asked at once: PUT_CALLS_MAX go alone, the 17 queued leave in batches of 8
        queued = len(chunks) - PUT_CALLS_MAX
        expected = PUT_CALLS_MAX + -(-queued // PUT_BATCH_CHUNKS)
        assert batcher.calls == expected
        assert _put_calls(metered) - before == expected
        assert c.data.has_chunks(ids) == [True] * len(ids)


def test_a_refused_batch_fails_each_of_its_uploads(metered: ServerProc) -> None:
    good = [os.urandom(4096) for _ in range(6)]
    ids = [blake3.blake3(d).digest() for d in good]
    ids[-1] = bytes(32)                      # not the BLAKE3 of its bytes: the server refuses
    with AIFSClient(metered.address, token=metered.token, timeout=60, retry_for=5) as c:
        batcher = PutBatcher(c.data, trio.CapacityLimiter(32), calls_max=1)
        errors: list[BaseException] = []

        async def one(cid: bytes, data: bytes) -> None:
            try:
                await batcher.put(cid, data)
            except Exception as exc:  # noqa: BLE001 - collected for the assertions
                errors.append(exc)

        async def main() -> None:
            async with trio.open_nursery() as n:
                n.start_soon(one, ids[0], good[0])
                await trio.testing.wait_all_tasks_blocked()   # its call is out: the rest queue
                for cid, data in zip(ids[1:], good[1:], strict=True):
                    n.start_soon(one, cid, data)

        trio.run(main)
        # the first went alone and was stored; the other five shared the refused call
        assert len(errors) == 5 and all(isinstance(e, InvalidArgument) for e in errors)
        assert c.data.has_chunks(ids[:1]) == [True]
