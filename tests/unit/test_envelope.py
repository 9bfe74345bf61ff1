"""The chunk envelope: round trips, range reads touching one frame, tampering of every kind.

The layout is parsed here independently, from docs/FORMAT.md, so these tests also check that
the document matches the code.
"""

from __future__ import annotations

import os
import random
import struct
from dataclasses import dataclass

import pytest
from blake3 import blake3

from aifs_core.codec import CompressionService, is_zstd_frame
from aifs_core.errors import CorruptChunk, InvalidArgument, KeyUnavailable
from aifs_server.envelope import (
    ENVELOPE_STATS,
    HEADER_PROBE,
    MAGIC,
    decode_frame,
    iter_frames,
    iter_frames_at,
    open_chunk,
    open_chunk_at,
    open_chunk_buffer_at,
    seal_chunk,
)
from aifs_server.kms import LocalKeyring, NamespaceKeyCache

MiB = 1 << 20
FRAME = 65536
_rng = random.Random(42)
_VOCAB = [bytes(_rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=_rng.randint(2, 10)))
          for _ in range(2000)]


def prose(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    out = bytearray()
    while len(out) < n:
        out += b" ".join(rng.choices(_VOCAB, k=64)) + b".\n"
    return bytes(out[:n])


@pytest.fixture
def keys(tmp_path):
    kr = LocalKeyring.create(tmp_path / "keyring.json")
    return NamespaceKeyCache(kr, tmp_path / "nskeys.json").for_namespace("default")


@pytest.fixture
def codec() -> CompressionService:
    return CompressionService()


def cid(data: bytes) -> bytes:
    return blake3(data).digest()


@dataclass
class Layout:
    """Offsets of an envelope's parts, parsed per docs/FORMAT.md."""

    key_id: tuple[int, int]
    wrapped: tuple[int, int]
    sizes: tuple[int, int]  # nonce base .. frame count
    table: tuple[int, int]
    digest: tuple[int, int]
    frames: list[tuple[int, int]]  # each frame's ciphertext+tag
    frame_count: int


def layout(env: bytes) -> Layout:
    assert env[:8] == MAGIC == b"\x89AIFSCK\n"
    assert env[8] == 1 and env[9] in (0, 1)  # flags bit 0: the frame table keeps no digests
    klen = env[10]
    pos = 11
    key_id = (pos, pos + klen)
    pos += klen
    (wlen,) = struct.unpack_from("<H", env, pos)
    pos += 2
    wrapped = (pos, pos + wlen)
    pos += wlen
    sizes = (pos, pos + 28)
    _nb, _fs, _total, count = struct.unpack_from("<12sIQI", env, pos)
    pos += 28
    table = (pos, pos + 37 * count)
    entries = [struct.unpack_from("<IB32s", env, pos + 37 * i) for i in range(count)]
    lens = [e[0] for e in entries]
    if env[9]:
        assert all(e[2] == bytes(32) for e in entries)
    pos += 37 * count
    digest = (pos, pos + 32)
    assert blake3(env[:pos]).digest() == env[pos : pos + 32]
    pos += 32
    frames = []
    for n in lens:
        frames.append((pos, pos + n))
        pos += n
    assert pos == len(env)
    return Layout(key_id, wrapped, sizes, table, digest, frames, count)


def redigest(header_without_digest: bytes) -> bytes:
    return header_without_digest + blake3(header_without_digest).digest()


SIZES = [0, 1, FRAME - 1, FRAME, FRAME + 1, 3 * FRAME + 5, MiB - 1, MiB, MiB + 1]


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["prose", "random"])
def test_round_trip_sizes(size: int, kind: str, keys, codec) -> None:
    data = prose(size) if kind == "prose" else os.urandom(size)
    env = seal_chunk(cid(data), data, keys, codec)
    assert open_chunk(cid(data), env, keys) == data
    if kind == "random" and size:
        # incompressible frames are stored raw: never inflated beyond fixed overhead
        lay = layout(env)
        assert len(env) == size + lay.digest[1] + 16 * lay.frame_count
    if kind == "prose" and size > 4096:
        assert len(env) < size * 0.7


@pytest.mark.parametrize("level", range(1, 23))
def test_round_trip_every_level(level: int, keys, codec) -> None:
    data = prose(3 * FRAME + 100, seed=level)
    env = seal_chunk(cid(data), data, keys, codec, level=level)
    assert open_chunk(cid(data), env, keys) == data


def test_frame_sizes(keys, codec) -> None:
    data = prose(10_000)
    for fs in (1, 7, 1000, 4096, 9_999, 10_000, 10_001):
        env = seal_chunk(cid(data), data, keys, codec, frame_size=fs)
        assert layout(env).frame_count == -(-len(data) // fs)
        assert open_chunk(cid(data), env, keys, 4321, 1234) == data[4321:5555]
    with pytest.raises(InvalidArgument):
        seal_chunk(cid(data), data, keys, codec, frame_size=0)


def test_ranges_match_slices(keys, codec) -> None:
    data = prose(MiB // 2) + os.urandom(MiB // 2)
    env = seal_chunk(cid(data), data, keys, codec)
    rng = random.Random(1)
    cases = [(0, None), (0, 0), (FRAME - 1, 2), (FRAME, FRAME), (MiB - 3, 10), (MiB, 5),
             (MiB + 100, None), (5, MiB * 4)]
    cases += [(rng.randrange(MiB), rng.randrange(3 * FRAME)) for _ in range(40)]
    for off, ln in cases:
        want = data[off:] if ln is None else data[off : off + ln]
        assert open_chunk(cid(data), env, keys, off, ln) == want, (off, ln)
    for off, ln in [(-1, 5), (0, -1)]:
        with pytest.raises(InvalidArgument):
            open_chunk(cid(data), env, keys, off, ln)


def test_4kib_read_of_1mib_chunk_decrypts_one_frame(keys, codec) -> None:
    data = prose(MiB)
    env = seal_chunk(cid(data), data, keys, codec)
    for off, frames in [(0, 1), (5 * FRAME + 100, 1), (MiB - 4096, 1), (2 * FRAME - 2048, 2)]:
        ENVELOPE_STATS.reset()
        assert open_chunk(cid(data), env, keys, off, 4096) == data[off : off + 4096]
        assert ENVELOPE_STATS.frames_decrypted == frames
    ENVELOPE_STATS.reset()
    open_chunk(cid(data), env, keys)
    assert ENVELOPE_STATS.frames_decrypted == 16


def test_plaintext_is_not_in_the_envelope(keys, codec) -> None:
    marker = b"AIFS-DISTINCTIVE-MARKER-7f3a9c"
    data = (b"x" * 1000 + marker + b"raw-ish") * 40 + os.urandom(FRAME)  # both frame kinds
    env = seal_chunk(cid(data), data, keys, codec)
    assert marker not in env
    assert data[-2000:] not in env  # the raw (incompressible) frame is encrypted too
    # and neither is the data key nor the namespace key in clear
    assert b"default" not in env


def test_iter_frames_gives_stored_zstd_frames(keys, codec) -> None:
    data = prose(3 * FRAME) + os.urandom(FRAME // 2)
    env = seal_chunk(cid(data), data, keys, codec)
    ENVELOPE_STATS.reset()
    frames = list(iter_frames(cid(data), env, keys))
    assert ENVELOPE_STATS.frames_decrypted == 4
    assert [f.offset for f in frames] == [0, FRAME, 2 * FRAME, 3 * FRAME]
    assert [f.compressed for f in frames] == [True, True, True, False]
    assert all(is_zstd_frame(f.data) for f in frames[:3])
    assert all(len(f.data) < f.raw_length for f in frames[:3])
    assert b"".join(decode_frame(f) for f in frames) == data
    part = list(iter_frames(cid(data), env, keys, FRAME + 10, 100))
    assert len(part) == 1 and part[0].offset == FRAME
    assert part[0].digest is None  # sealed without frame digests (the default)
    with_digests = seal_chunk(cid(data), data, keys, codec, frame_digests=True)
    part = list(iter_frames(cid(data), with_digests, keys, FRAME + 10, 100))
    assert part[0].digest == blake3(data[FRAME:2 * FRAME]).digest()
    assert decode_frame(part[0]) == data[FRAME:2 * FRAME]
    bad = part[0]._replace(digest=bytes(32))
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        decode_frame(bad)


def _expect_corrupt(chunk: bytes, env: bytes, keys) -> None:
    with pytest.raises(CorruptChunk) as exc:
        open_chunk(chunk, env, keys)
    assert chunk.hex() in str(exc.value)
    assert exc.value.reason == "CORRUPT_CHUNK"


def test_every_flipped_byte_is_detected(keys, codec) -> None:
    # small frames so a few KiB hold several compressed and raw frames: flip EVERY byte
    data = prose(3000) + os.urandom(1500)
    chunk = cid(data)
    env = seal_chunk(chunk, data, keys, codec, frame_size=1024)
    lay = layout(env)
    assert lay.frame_count == 5
    for pos in range(len(env)):
        bad = bytearray(env)
        bad[pos] ^= 0x01 << (pos % 8)
        _expect_corrupt(chunk, bytes(bad), keys)
    # and a range read of a flipped frame (no full read) is caught too
    start, _ = lay.frames[2]
    bad = bytearray(env)
    bad[start + 3] ^= 0xFF
    with pytest.raises(CorruptChunk, match=chunk.hex()):
        open_chunk(chunk, bytes(bad), keys, 2 * 1024 + 5, 10)


def test_flips_in_every_region_of_a_1mib_envelope(keys, codec) -> None:
    data = prose(MiB // 2) + os.urandom(MiB // 2)
    chunk = cid(data)
    env = seal_chunk(chunk, data, keys, codec)
    lay = layout(env)
    positions = {0, 7, 8, 9, 10, len(env) - 1}
    for a, b in [lay.key_id, lay.wrapped, lay.sizes, lay.table, lay.digest, *lay.frames]:
        positions |= {a, (a + b) // 2, b - 1}  # first, middle, last byte (the tag) of each
    positions |= set(range(0, len(env), 9973))
    for pos in sorted(positions):
        bad = bytearray(env)
        bad[pos] ^= 0x80
        _expect_corrupt(chunk, bytes(bad), keys)


def test_swapped_dropped_and_truncated_frames(keys, codec) -> None:
    data = os.urandom(4 * FRAME)  # raw frames: all the same stored length
    chunk = cid(data)
    env = seal_chunk(chunk, data, keys, codec)
    lay = layout(env)
    f = [env[a:b] for a, b in lay.frames]
    head = env[: lay.frames[0][0]]
    # swapped ciphertexts
    _expect_corrupt(chunk, head + f[1] + f[0] + f[2] + f[3], keys)
    # swapped ciphertexts and table entries, header digest recomputed: still caught (index
    # is in the nonce and the associated data)
    t0, t1 = lay.table[0], lay.table[0] + 37
    table = bytearray(env[lay.table[0] : lay.table[1]])
    table[0:37], table[37:74] = table[37:74], table[0:37]
    head2 = redigest(env[:t0] + bytes(table) + env[lay.table[1] : lay.digest[0]])
    assert len(head2) == len(head) and t1 > t0
    _expect_corrupt(chunk, head2 + f[1] + f[0] + f[2] + f[3], keys)
    # dropped last frame, with the header rewritten to 3 frames and a fresh digest
    nb, fs, _total, _count = struct.unpack_from("<12sIQI", env, lay.sizes[0])
    sizes = struct.pack("<12sIQI", nb, fs, 3 * FRAME, 3)
    head3 = redigest(env[: lay.sizes[0]] + sizes + env[lay.table[0] : lay.table[1] - 37])
    _expect_corrupt(chunk, head3 + f[0] + f[1] + f[2], keys)
    # dropped frame, header untouched
    _expect_corrupt(chunk, head + f[0] + f[1] + f[2], keys)
    _expect_corrupt(chunk, head + f[0] + f[2] + f[3], keys)
    # truncation anywhere
    for cut in [0, 1, 8, 11, lay.wrapped[0] + 3, lay.table[0] + 5, lay.digest[1] - 1,
                lay.digest[1], lay.frames[0][0] + 100, len(env) - 16, len(env) - 1]:
        _expect_corrupt(chunk, env[:cut], keys)
    # appended bytes
    _expect_corrupt(chunk, env + b"\x00", keys)


def test_header_edit_with_recomputed_digest_is_caught_by_gcm(keys, codec) -> None:
    data = prose(3 * FRAME)
    chunk = cid(data)
    env = seal_chunk(chunk, data, keys, codec)
    lay = layout(env)
    body = env[lay.digest[1] :]
    # a different nonce base, digest fixed up: every frame fails authentication
    hdr = bytearray(env[: lay.digest[0]])
    hdr[lay.sizes[0]] ^= 1
    _expect_corrupt(chunk, redigest(bytes(hdr)) + body, keys)
    # a frame's recorded BLAKE3 changed, digest fixed up
    hdr = bytearray(env[: lay.digest[0]])
    hdr[lay.table[0] + 10] ^= 1
    _expect_corrupt(chunk, redigest(bytes(hdr)) + body, keys)


def test_envelope_of_another_chunk_is_corrupt(keys, codec) -> None:
    a, b = prose(5000, 1), prose(5000, 2)
    env_a = seal_chunk(cid(a), a, keys, codec)
    _expect_corrupt(cid(b), env_a, keys)


def test_absurd_sizes_are_refused_before_allocation(keys, codec) -> None:
    data = prose(5000)
    chunk = cid(data)
    env = seal_chunk(chunk, data, keys, codec)
    lay = layout(env)
    nb, fs, _t, _c = struct.unpack_from("<12sIQI", env, lay.sizes[0])
    for total, count, frame_size in [(2**40, 2**32 - 1, 256), (2**26, 2**20, 64),
                                     (100, 1, 2**31)]:
        sizes = struct.pack("<12sIQI", nb, frame_size, total, count)
        hdr = redigest(env[: lay.sizes[0]] + sizes + env[lay.table[0] : lay.table[1]])
        _expect_corrupt(chunk, hdr + env[lay.digest[1] :], keys)
    # a huge wrapped-key length
    edited = bytearray(env)
    struct.pack_into("<H", edited, lay.wrapped[0] - 2, 65535)
    _expect_corrupt(chunk, bytes(edited), keys)


def test_garbage_is_corrupt(keys) -> None:
    chunk = cid(b"something else")
    for garbage in (b"", b"hello world", os.urandom(5000), MAGIC, MAGIC + os.urandom(200),
                    b"\x28\xb5\x2f\xfd" + os.urandom(100)):
        _expect_corrupt(chunk, garbage, keys)
        with pytest.raises(CorruptChunk, match=chunk.hex()):
            list(iter_frames(chunk, garbage, keys))


def test_wrong_or_missing_key_is_key_unavailable(tmp_path, keys, codec) -> None:
    data = prose(10_000)
    env = seal_chunk(cid(data), data, keys, codec)
    other_kr = LocalKeyring.create(tmp_path / "other-keyring.json")
    stranger = NamespaceKeyCache(other_kr, tmp_path / "other-ns.json").for_namespace("default")
    with pytest.raises(KeyUnavailable, match="'nsk:1'.*restore"):
        open_chunk(cid(data), env, stranger)  # its namespace key file lacks nsk:1
    stranger.wrap_data_key(os.urandom(32))  # now it has an nsk:1, but a different one
    with pytest.raises(KeyUnavailable, match="does not unwrap.*restore"):
        open_chunk(cid(data), env, stranger)
    # the same namespace-key file under the wrong keyring
    impostor = NamespaceKeyCache(other_kr, tmp_path / "nskeys.json").for_namespace("default")
    with pytest.raises(KeyUnavailable, match="local:1"):
        open_chunk(cid(data), env, impostor)
    # a key id edited (digest fixed up) names a key nobody has
    lay = layout(env)
    hdr = bytearray(env[: lay.digest[0]])
    hdr[lay.key_id[1] - 1] = ord("7")
    with pytest.raises(KeyUnavailable, match="nsk:7"):
        open_chunk(cid(data), redigest(bytes(hdr)) + env[lay.digest[1] :], keys)


def test_legacy_chunks_read_as_plaintext(keys, codec) -> None:
    raw = prose(200_000)
    assert open_chunk(cid(raw), raw, keys) == raw
    assert open_chunk(cid(raw), raw, keys, 1000, 50) == raw[1000:1050]
    frames = list(iter_frames(cid(raw), raw, keys, 1000, 50))
    assert [(f.offset, f.raw_length, f.compressed) for f in frames] == [(1000, 50, False)]
    assert decode_frame(frames[0]) == raw[1000:1050]
    # plaintext that happens to start with the envelope magic is still legacy plaintext
    tricky = MAGIC + b"\x01\x00" + os.urandom(300)
    assert open_chunk(cid(tricky), tricky, keys) == tricky
    # a zstd-compressed chunk as the reference implementation stored it
    legacy_zstd = codec.compress(raw)
    assert open_chunk(cid(raw), legacy_zstd, keys) == raw
    # a legacy chunk whose bytes do not hash to its id is corrupt, not returned
    damaged = bytearray(raw)
    damaged[7] ^= 1
    _expect_corrupt(cid(raw), bytes(damaged), keys)
    assert open_chunk(cid(b""), b"", keys) == b""


# -- ranged reads (open_chunk_at / iter_frames_at): only the header and covered frames ---------


class CountingSource:
    """An envelope behind a pread-like read_at that records every read (offset, length)."""

    def __init__(self, env: bytes) -> None:
        self.env = env
        self.reads: list[tuple[int, int]] = []

    def read_at(self, offset: int, n: int) -> bytes:
        self.reads.append((offset, n))
        return self.env[offset : offset + n]

    @property
    def bytes_read(self) -> int:
        return sum(n for _, n in self.reads)


def test_ranged_reads_match_open_chunk(keys, codec) -> None:
    data = prose(MiB // 2) + os.urandom(MiB // 2)  # compressed and raw frames
    env = seal_chunk(cid(data), data, keys, codec)
    rng = random.Random(7)
    cases = [(0, None), (0, 0), (FRAME - 1, 2), (FRAME, FRAME), (MiB - 3, 10), (MiB, 5),
             (MiB + 100, None), (5, MiB * 4), (0, MiB // 2 + 1)]
    cases += [(rng.randrange(MiB), rng.randrange(1, 3 * FRAME)) for _ in range(40)]
    for off, ln in cases:
        want = data[off:] if ln is None else data[off : off + ln]
        src = CountingSource(env)
        assert open_chunk_at(cid(data), src.read_at, len(env), keys, off, ln) == want, (off, ln)
        frames = list(iter_frames_at(cid(data), src.read_at, len(env), keys, off, ln))
        assert frames == list(iter_frames(cid(data), env, keys, off, ln))
    with pytest.raises(InvalidArgument):
        open_chunk_at(cid(data), CountingSource(env).read_at, len(env), keys, -1, 5)


def test_4kib_ranged_read_reads_the_header_and_one_frame(keys, codec) -> None:
    data = os.urandom(MiB)  # raw frames: each is FRAME + 16 bytes on disk
    env = seal_chunk(cid(data), data, keys, codec)
    for off in (0, 5 * FRAME + 100, MiB - 4096):
        src = CountingSource(env)
        ENVELOPE_STATS.reset()
        assert open_chunk_at(cid(data), src.read_at, len(env), keys, off, 4096) == \
            data[off : off + 4096]
        # one read for the header, one for the frame: 4 KiB + 64 KiB of a ~1 MiB envelope
        assert len(src.reads) == 2, src.reads
        assert src.bytes_read == HEADER_PROBE + FRAME + 16
        assert ENVELOPE_STATS.bytes_read == src.bytes_read
        assert ENVELOPE_STATS.frames_decrypted == 1
    # a read of most of the chunk is one read of the whole envelope
    src = CountingSource(env)
    assert open_chunk_at(cid(data), src.read_at, len(env), keys, 0, MiB) == data
    assert src.reads == [(0, len(env))]


def test_long_header_takes_a_second_header_read(keys, codec) -> None:
    data = os.urandom(300 * 1024)
    env = seal_chunk(cid(data), data, keys, codec, frame_size=1024)  # 300 frames: ~11 KiB header
    src = CountingSource(env)
    assert open_chunk_at(cid(data), src.read_at, len(env), keys, 200_000, 100) == \
        data[200_000:200_100]
    assert len(src.reads) == 3 and src.reads[0] == (0, HEADER_PROBE)
    assert src.bytes_read < 40 * 1024  # header (~2 reads) + one 1 KiB frame, not 300 KiB


def test_ranged_reads_catch_damage_like_whole_reads(keys, codec) -> None:
    data = os.urandom(MiB)
    env = seal_chunk(cid(data), data, keys, codec)
    lay = layout(env)
    # a flipped frame byte fails that frame's tag
    bad = bytearray(env)
    bad[len(env) - 10] ^= 1
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        open_chunk_at(cid(data), CountingSource(bytes(bad)).read_at, len(bad), keys,
                      MiB - 4096, 4096)
    # frames before it are still readable on their own (nothing else was read)
    assert open_chunk_at(cid(data), CountingSource(bytes(bad)).read_at, len(bad), keys,
                         0, 4096) == data[:4096]
    # a flipped header byte is caught by the header digest
    bad = bytearray(env)
    bad[lay.digest[0] - 5] ^= 1
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        open_chunk_at(cid(data), CountingSource(bytes(bad)).read_at, len(bad), keys, 0, 4096)
    # truncated (size from the file) or a source that returns fewer bytes than it should
    short = env[:-100]
    with pytest.raises(CorruptChunk, match=cid(data).hex()):
        open_chunk_at(cid(data), CountingSource(short).read_at, len(short), keys, 0, 4096)
    with pytest.raises(CorruptChunk, match="ended early"):
        open_chunk_at(cid(data), CountingSource(short).read_at, len(env), keys,
                      MiB - 4096, 4096)


def test_ranged_reads_of_legacy_chunks(keys, codec) -> None:
    raw = prose(200_000)
    src = CountingSource(raw)
    assert open_chunk_at(cid(raw), src.read_at, len(raw), keys, 1000, 50) == raw[1000:1050]
    legacy_zstd = codec.compress(raw)
    assert open_chunk_at(cid(raw), CountingSource(legacy_zstd).read_at, len(legacy_zstd),
                         keys) == raw
    tricky = MAGIC + b"\x01\x00" + os.urandom(300)
    assert open_chunk_at(cid(tricky), CountingSource(tricky).read_at, len(tricky), keys,
                         5, 10) == tricky[5:15]
    damaged = bytearray(raw)
    damaged[7] ^= 1
    with pytest.raises(CorruptChunk, match=cid(raw).hex()):
        open_chunk_at(cid(raw), CountingSource(bytes(damaged)).read_at, len(damaged), keys)
    assert open_chunk_at(cid(b""), CountingSource(b"").read_at, 0, keys) == b""


def test_frame_digests_are_zeros_and_flagged_unless_asked_for(keys, codec) -> None:
    """Sealing hashes each byte once: the table's digests are zeros, header flag bit 0 says
    so; an envelope sealed with frame digests (as before 2026-12-06) still reads, and each
    frame's BLAKE3 is still checked."""
    data = prose(2 * FRAME) + os.urandom(FRAME + 7)
    new = seal_chunk(cid(data), data, keys, codec)
    old = seal_chunk(cid(data), data, keys, codec, frame_digests=True)
    assert new[9] == 1 and old[9] == 0
    for env in (new, old):
        lay = layout(env)
        digests = [env[lay.table[0] + 37 * i + 5:lay.table[0] + 37 * (i + 1)]
                   for i in range(lay.frame_count)]
        if env is new:
            assert digests == [bytes(32)] * 4
        else:
            assert digests == [blake3(data[i * FRAME:(i + 1) * FRAME]).digest()
                               for i in range(4)]
        assert open_chunk(cid(data), env, keys) == data
        assert open_chunk(cid(data), env, keys, FRAME - 3, FRAME + 9) == \
            data[FRAME - 3:2 * FRAME + 6]


def test_flag_and_table_must_agree(keys, codec) -> None:
    """A digest in the table of an envelope flagged as keeping none, or an unknown header flag,
    is CorruptChunk (even with the header digest recomputed), before any frame is opened."""
    data = os.urandom(FRAME + 1)
    env = bytearray(seal_chunk(cid(data), data, keys, codec))
    lay = layout(bytes(env))
    forged = bytearray(env)
    forged[lay.table[0] + 5] = 1  # frame 0's digest, first byte
    forged[lay.digest[0]:lay.digest[1]] = blake3(bytes(forged[:lay.digest[0]])).digest()
    with pytest.raises(CorruptChunk, match="keeps none"):
        open_chunk(cid(data), bytes(forged), keys)
    forged = bytearray(env)
    forged[9] = 3
    forged[lay.digest[0]:lay.digest[1]] = blake3(bytes(forged[:lay.digest[0]])).digest()
    with pytest.raises(CorruptChunk, match="reserved header flags"):
        open_chunk(cid(data), bytes(forged), keys)


@pytest.mark.parametrize("digests", [False, True])
def test_buffer_reads_match_open_chunk_and_check_every_frame(keys, codec, digests) -> None:
    """open_chunk_buffer_at: raw frames decrypted into one bytearray, anything else as
    open_chunk_at; the same bytes for every range, a damaged frame still CorruptChunk."""
    raw = os.urandom(2 * FRAME + 1000)                       # 3 raw frames, the last short
    mixed = os.urandom(FRAME) + prose(FRAME) + os.urandom(10)  # a compressed one among them
    for data, compressed in ((raw, set()), (mixed, {1})):     # frame indices
        env = seal_chunk(cid(data), data, keys, codec, frame_digests=digests)
        for off, ln in [(0, None), (0, len(data)), (0, FRAME), (0, 100), (0, 0),
                        (0, FRAME + 1), (0, 2 * FRAME), (0, 5 * FRAME)]:
            want = data[off:] if ln is None else data[off : off + ln]
            got = open_chunk_buffer_at(cid(data), CountingSource(env).read_at, len(env), keys,
                                       ln)
            assert got == want, (off, ln)
            # whole raw frames are the bytearray they were decrypted into, nothing else is
            end = len(data) if ln is None else min(len(data), off + ln)
            whole = off < end and off % FRAME == 0 and (end == len(data) or end % FRAME == 0)
            covered = set(range(off // FRAME, (end - 1) // FRAME + 1))
            assert isinstance(got, bytearray) == (whole and not covered & compressed), (off, ln)
        for at in (len(env) - 5, len(env) - FRAME - 40):           # a tag, a ciphertext byte
            bad = bytearray(env)
            bad[at] ^= 1
            with pytest.raises(CorruptChunk, match="failed authentication"):
                open_chunk_buffer_at(cid(data), CountingSource(bytes(bad)).read_at, len(bad),
                                     keys, len(data))
