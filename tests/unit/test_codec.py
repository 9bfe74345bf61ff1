"""CompressionService: levels, round trips, streams with bounded memory, stats, thread safety."""

from __future__ import annotations

import hashlib
import io
import os
import random
import threading
import tracemalloc
from collections.abc import Iterator

import pytest
import zstandard

from aifs_core import codec as codec_mod
from aifs_core.codec import CompressionService, decompress_exact, is_zstd_frame

TEXT = b"".join(
    b"line %d: the quick brown fox jumps over the lazy dog %d times\n" % (i, i * 7)
    for i in range(4000)
)
_rng = random.Random(7)
_VOCAB = [bytes(_rng.choices(b"etaoinshrdlucmfw", k=_rng.randint(2, 9))) for _ in range(800)]
WORDS = b" ".join(_rng.choices(_VOCAB, k=40_000))  # prose-like: higher levels really pay


@pytest.mark.parametrize("level", range(1, 23))
def test_round_trip_every_level(level: int) -> None:
    svc = CompressionService(level)
    assert svc.compression_level == level
    packed = svc.compress(TEXT)
    assert is_zstd_frame(packed)
    assert len(packed) < len(TEXT) // 4
    assert svc.decompress(packed) == TEXT
    assert svc.get_compression_stats()["compression_level"] == level


@pytest.mark.parametrize("bad", [0, 23, -1, 100, 1.5, "3", None, True])
def test_invalid_levels_name_the_range(bad: object) -> None:
    with pytest.raises(ValueError, match="1-22"):
        CompressionService(bad)  # type: ignore[arg-type]
    svc = CompressionService()
    with pytest.raises(ValueError, match="1-22"):
        svc.set_compression_level(bad)  # type: ignore[arg-type]
    assert svc.compression_level == 1  # unchanged by the refused call
    if bad is not None:  # None means "the service's level"
        with pytest.raises(ValueError, match="1-22"):
            svc.compress(b"abc", level=bad)  # type: ignore[arg-type]


def test_default_level_and_runtime_change() -> None:
    svc = CompressionService()
    assert svc.compression_level == 1
    fast = svc.compress(WORDS)
    svc.set_compression_level(19)
    assert svc.compression_level == 19
    small = svc.compress(WORDS)
    assert len(small) < len(fast)
    assert svc.decompress(small) == svc.decompress(fast) == WORDS
    assert svc.get_compression_stats()["compression_level"] == 19


def test_empty_and_tiny_inputs() -> None:
    svc = CompressionService()
    for data in (b"", b"x", b"ab"):
        assert svc.decompress(svc.compress(data)) == data
        assert b"".join(svc.decompress_iter(svc.compress_iter([data]))) == data


def test_frame_without_content_size_and_multiple_frames() -> None:
    svc = CompressionService()
    no_size = zstandard.ZstdCompressor(write_content_size=False).compress(TEXT)
    assert zstandard.frame_content_size(no_size) == -1
    assert svc.decompress(no_size) == TEXT
    two = svc.compress(b"first ") + svc.compress(b"second")
    assert svc.decompress(two) == b"first second"
    # with a checksum and a skippable frame in front, fed one byte at a time
    skippable = b"\x50\x2a\x4d\x18" + (3).to_bytes(4, "little") + b"xyz"
    checked = zstandard.ZstdCompressor(write_checksum=True).compress(b"hello")
    stream = skippable + checked
    assert b"".join(svc.decompress_iter(stream[i : i + 1] for i in range(len(stream)))) == b"hello"


@pytest.mark.parametrize(
    "bad, what",
    [
        (b"", "zstd"),
        (b"plain text, not zstd", "zstd"),
        (b"\x28\xb5\x2f\xfd", "truncated"),
    ],
)
def test_non_zstd_input_is_a_clear_value_error(bad: bytes, what: str) -> None:
    svc = CompressionService()
    with pytest.raises(ValueError, match=what):
        svc.decompress(bad)
    with pytest.raises(ValueError, match=what):
        b"".join(svc.decompress_iter([bad]))


def test_truncated_and_corrupt_streams_are_errors_not_short_output() -> None:
    svc = CompressionService()
    packed = svc.compress(TEXT)
    for cut in (5, len(packed) // 2, len(packed) - 1):
        with pytest.raises(ValueError, match="truncated|corrupt"):
            svc.decompress(packed[:cut])
        with pytest.raises(ValueError, match="truncated|corrupt"):
            svc.decompress_stream(io.BytesIO(packed[:cut]), io.BytesIO())
    with pytest.raises(ValueError):
        svc.decompress(packed + b"trailing garbage")


def test_is_zstd_frame() -> None:
    assert is_zstd_frame(b"\x28\xb5\x2f\xfd rest")
    assert CompressionService.is_zstd_frame(CompressionService().compress(b"a"))
    assert not is_zstd_frame(b"\x28\xb5\x2f")
    assert not is_zstd_frame(b"PK\x03\x04")


def test_compress_or_raw_never_inflates() -> None:
    svc = CompressionService()
    noise = os.urandom(65536)
    out, compressed = svc.compress_or_raw(noise)
    assert compressed is False and out == noise
    out, compressed = svc.compress_or_raw(TEXT)
    assert compressed is True and len(out) < len(TEXT) and svc.decompress(out) == TEXT
    out, compressed = svc.compress_or_raw(b"")
    assert compressed is False and out == b""
    stats = svc.get_compression_stats()
    assert stats["chunks_stored_raw"] == 2 and stats["chunks_compressed"] == 1


def test_stats_and_info() -> None:
    svc = CompressionService()
    packed = svc.compress(TEXT)
    svc.decompress(packed)
    stats = svc.get_compression_stats()
    assert set(stats) == {
        "algorithm", "compression_level", "bytes_in", "bytes_out", "chunks_compressed",
        "chunks_decompressed", "chunks_stored_raw", "compression_ratio",
    }
    assert stats["algorithm"] == "zstd"
    assert stats["bytes_in"] == len(TEXT) and stats["bytes_out"] == len(packed)
    assert stats["chunks_compressed"] == 1 and stats["chunks_decompressed"] == 1
    assert stats["compression_ratio"] == pytest.approx(len(packed) / len(TEXT), abs=1e-3)

    info = svc.get_compression_info(original_size=1000, compressed_size=300)
    assert info == {"original_size": 1000, "compressed_size": 300,
                    "compression_ratio": 0.3, "space_saved_percent": 70.0}
    empty = svc.get_compression_info(0, 0)
    assert empty["compression_ratio"] == 1.0 and empty["space_saved_percent"] == 0.0
    with pytest.raises(ValueError, match=">= 0"):
        svc.get_compression_info(-1, 5)


def test_stream_round_trip_with_real_files(tmp_path) -> None:
    svc = CompressionService(3)
    src, packed, back = tmp_path / "src", tmp_path / "src.zst", tmp_path / "back"
    src.write_bytes(TEXT * 20 + os.urandom(100_000))
    with open(src, "rb") as fin, open(packed, "wb") as fout:
        written = svc.compress_stream(fin, fout)
    assert written == packed.stat().st_size < src.stat().st_size
    with open(packed, "rb") as fin, open(back, "wb") as fout:
        assert svc.decompress_stream(fin, fout) == src.stat().st_size
    assert back.read_bytes() == src.read_bytes()
    # a file compressed by the stream API is an ordinary zstd file
    assert zstandard.ZstdDecompressor().stream_reader(io.BytesIO(packed.read_bytes())).read() \
        == src.read_bytes()


def _generated(total: int, piece: int = 1 << 20) -> Iterator[bytes]:
    """`total` bytes of half-compressible data, made piece by piece (never held whole)."""
    seed = random.Random(total).randbytes(piece // 2)
    for i in range(total // piece):
        yield seed + (b"%08d" % i) * (piece // 16)


def test_64mib_stream_through_generators_keeps_memory_small() -> None:
    svc = CompressionService()
    total = 64 << 20
    h_in, h_out = hashlib.blake2b(), hashlib.blake2b()

    def source() -> Iterator[bytes]:
        for p in _generated(total):
            h_in.update(p)
            yield p

    tracemalloc.start()
    try:
        out_bytes = 0
        for piece in svc.decompress_iter(svc.compress_iter(source())):
            assert len(piece) <= codec_mod.STREAM_WRITE_SIZE
            h_out.update(piece)
            out_bytes += len(piece)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out_bytes == total
    assert h_in.digest() == h_out.digest()
    # one 1 MiB input piece, its half-size seed, and a few 128 KiB output pieces at most
    assert peak < 8 << 20, f"peak traced memory {peak} bytes for a {total}-byte stream"


class _GenFile(io.RawIOBase):
    """A readable file producing generated bytes, so the stream test holds no whole input."""

    def __init__(self, total: int) -> None:
        self._it = _generated(total)
        self._buf = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:  # type: ignore[no-untyped-def]
        if not self._buf:
            self._buf = memoryview(next(self._it, b""))
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


class _HashSink(io.RawIOBase):
    def __init__(self) -> None:
        self.h, self.n = hashlib.blake2b(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # type: ignore[no-untyped-def]
        self.h.update(b)
        self.n += len(b)
        return len(b)


def test_file_streams_keep_memory_small(tmp_path) -> None:
    svc = CompressionService()
    total = 32 << 20
    packed = tmp_path / "big.zst"
    tracemalloc.start()
    try:
        with open(packed, "wb") as f:
            svc.compress_stream(_GenFile(total), f)
        sink = _HashSink()
        with open(packed, "rb") as f:
            assert svc.decompress_stream(f, sink) == total
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    expected = hashlib.blake2b()
    for p in _generated(total):
        expected.update(p)
    assert sink.h.digest() == expected.digest()
    assert peak < 8 << 20


def test_threads_use_their_own_contexts_and_agree() -> None:
    svc = CompressionService()
    errors: list[BaseException] = []
    contexts: dict[int, object] = {}
    barrier = threading.Barrier(6)

    def work(n: int) -> None:
        try:
            barrier.wait()
            contexts[n] = codec_mod.thread_compressor(1)
            for i in range(30):
                data = TEXT[i * 100 :] + bytes([n]) * i
                level = 1 + (n + i) % 5
                assert svc.decompress(svc.compress(data, level=level)) == data
                assert decompress_exact(svc.compress(data), len(data)) == data
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len({id(c) for c in contexts.values()}) == 6  # one compressor per thread
    assert svc.get_compression_stats()["chunks_compressed"] == 6 * 30 * 2


def test_decompress_exact_checks_the_declared_size() -> None:
    svc = CompressionService()
    frame = svc.compress(b"12345")
    assert decompress_exact(frame, 5) == b"12345"
    with pytest.raises(ValueError, match="declares 5 bytes, expected 6"):
        decompress_exact(frame, 6)
    with pytest.raises(ValueError):
        decompress_exact(b"not zstd at all", 5)


def test_lying_content_size_is_not_believed() -> None:
    svc = CompressionService()
    frame = bytearray(svc.compress(b"tiny"))
    # rewrite the header to claim 2**40 bytes (8-byte content size field)
    fhd = 0xE0  # single segment, 8-byte frame content size
    forged = bytes(frame[:4]) + bytes([fhd]) + (2**40).to_bytes(8, "little") + bytes(frame[6:])
    tracemalloc.start()
    try:
        with pytest.raises(ValueError):
            svc.decompress(forged)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20


def test_decompress_bounded_reads_across_frames_and_stops_one_past_the_limit() -> None:
    import zstandard

    from aifs_core.codec import decompress_bounded

    two = zstandard.ZstdCompressor(write_content_size=False).compress(b"a" * 1000) * 2
    assert decompress_bounded(two, 2000) == b"a" * 2000
    assert decompress_bounded(two, 1500) == b"a" * 1501     # "more than allowed", no more
    with pytest.raises(ValueError, match="corrupt zstd"):
        decompress_bounded(b"\x28\xb5\x2f\xfd" + b"\xff" * 20, 100)
