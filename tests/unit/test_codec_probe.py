"""compress_or_raw's incompressibility probe: random buffers are kept raw without a whole
compression pass, and anything whose samples compress is still compressed (never inflated)."""

from __future__ import annotations

import os

from aifs_core.codec import FRAME_PROBE, PROBE, PROBE_MIN, CompressionService

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


FRAME = 65536


def test_compress_frames_keeps_a_random_chunk_raw_in_one_probe() -> None:
    """Every frame of a random chunk comes back raw, as a view of the input (not compressed
    frame by frame), and is counted as a raw frame; a short last frame too."""
    svc = CompressionService(1)
    noise = os.urandom(16 * FRAME + 3000)
    out = svc.compress_frames(noise, FRAME)
    assert [c for _, c in out] == [False] * 17
    assert b"".join(bytes(d) for d, _ in out) == noise
    assert all(isinstance(d, memoryview) for d, _ in out)
    assert svc.get_compression_stats()["chunks_stored_raw"] == 17
    assert svc.get_compression_stats()["chunks_compressed"] == 0


def test_compress_frames_compresses_each_frame_that_pays() -> None:
    """A chunk whose samples compress goes frame by frame: compressible frames (also one
    compressible only in its middle) are compressed, random ones kept raw."""
    svc = CompressionService(1)
    frames = [os.urandom(FRAME), TEXT[:FRAME], os.urandom(FRAME),
              os.urandom(FRAME // 2) + TEXT[:FRAME // 2], bytes(FRAME), os.urandom(FRAME)]
    out = svc.compress_frames(b"".join(frames), FRAME)
    assert [c for _, c in out] == [False, True, False, True, True, False]
    for (d, c), want in zip(out, frames, strict=True):
        assert (svc.decompress(bytes(d)) if c else bytes(d)) == want


def test_compress_frames_of_one_frame_or_small_frames_is_compress_or_raw() -> None:
    svc = CompressionService(1)
    assert [c for _, c in svc.compress_frames(TEXT[:FRAME], FRAME)] == [True]
    small = TEXT[:8 * FRAME_PROBE]
    out = svc.compress_frames(small, FRAME_PROBE)   # frames below PROBE_MIN: no chunk probe
    assert all(c for _, c in out)
    assert b"".join(svc.decompress(bytes(d)) for d, _ in out) == small
