"""compress_or_raw's incompressibility probe: random buffers are kept raw without a whole
compression pass, and anything whose samples compress is still compressed (never inflated)."""

from __future__ import annotations

import os

from aifs_core.codec import PROBE, PROBE_MIN, CompressionService

TEXT = b"".join(b"%d,%d,sensor-%d,ok\n" % (i, i * 7 % 1000, i % 13) for i in range(20000))


def test_random_is_kept_raw() -> None:
    svc = CompressionService(1)
    noise = os.urandom(65536)
    out, compressed = svc.compress_or_raw(noise)
    assert out is noise and not compressed
    assert svc.get_compression_stats()["chunks_stored_raw"] == 1


def test_compressible_parts_are_still_compressed() -> None:
    svc = CompressionService(1)
    for data in (TEXT[:65536],
                 TEXT[:PROBE] + os.urandom(65536 - PROBE),     # start compresses
                 os.urandom(32768) + TEXT[:32768],             # middle compresses
                 bytes(65536)):
        out, compressed = svc.compress_or_raw(data)
        assert compressed and len(out) < len(data)
        assert svc.decompress(bytes(out)) == data


def test_small_buffers_are_not_probed() -> None:
    svc = CompressionService(1)
    data = os.urandom(PROBE_MIN - 1)
    out, compressed = svc.compress_or_raw(data)
    assert not compressed and out == data
    out, compressed = svc.compress_or_raw(TEXT[:PROBE_MIN - 1])
    assert compressed
