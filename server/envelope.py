"""The chunk envelope: how one chunk is kept on disk (byte layout in docs/FORMAT.md).

Interface:
    seal_chunk(chunk_id, plaintext, keys, codec, frame_size=65536, level=None,
               frame_digests=False) -> bytearray
        A fresh random 256-bit data key per chunk, wrapped by `keys` (kms.ChunkKeys). The
        plaintext is cut into frames of `frame_size` bytes; each frame is zstd-compressed on
        its own (stored raw when that does not make it smaller) and AES-256-GCM-sealed on its
        own. The header (key id, wrapped key, nonce base, sizes, frame table with each frame's
        stored length, flags and BLAKE3 — zeros unless `frame_digests`, header flag
        HFLAG_NO_FRAME_DIGESTS) ends with its BLAKE3 digest, which is in every frame's
        associated data: editing, swapping, dropping or truncating anything is detected.
        The caller checks BLAKE3(plaintext) == chunk_id (ChunkService does, once per byte).
    open_chunk(chunk_id, envelope, keys, offset=0, length=None) -> bytes
        The plaintext range; decrypts only the frames the range covers.
    iter_frames(chunk_id, envelope, keys, offset=0, length=None) -> Iterator[Frame]
        Frames covering the range, decrypted (tag checked) but NOT decompressed: `data` is the
        stored zstd frame when `compressed`, to send on the wire as-is.
    open_chunk_at(chunk_id, read_at, size, keys, offset=0, length=None) -> bytes
    open_chunk_buffer_at(chunk_id, read_at, size, keys, length=None) -> bytes | bytearray
        open_chunk_at from offset 0, whole raw frames decrypted straight into one bytearray
        (for a caller that only joins or writes the bytes)
    iter_frames_at(chunk_id, read_at, size, keys, offset=0, length=None) -> Iterator[Frame]
        The same from an envelope of `size` bytes read through `read_at(offset, n) -> bytes`
        (a pread): only the header (one HEADER_PROBE read, one more if it is longer) and the
        covered frames (one read) are read, so a 4 KiB read of a 1 MiB chunk reads ~70 KiB.
        Legacy or malformed envelopes are read whole and handled as above.
    decode_frame(frame) -> bytes        decompress a Frame and check its BLAKE3 (if it has one)
    Frame(offset, raw_length, compressed, data, digest, chunk_id)
    ENVELOPE_STATS                      counters (frames_decrypted, frames_sealed, bytes_read,
                                        ...); .reset()
    is_envelope(data) -> bool

Legacy chunks (no envelope magic) are raw plaintext, or a zstd frame as the reference
implementation wrote them; they are returned only if their BLAKE3 equals the chunk id.

Errors: anything malformed -> errors.CorruptChunk naming the chunk (hex id); a key that cannot
be unwrapped -> errors.KeyUnavailable (from `keys`). Lengths are checked against the envelope's
size before anything is allocated; no path returns unverified bytes.
"""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Callable, Iterator
from typing import NamedTuple

from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from aifs_core.codec import CompressionService, decompress_exact, is_zstd_frame
from aifs_core.errors import CorruptChunk, InvalidArgument
from aifs_server.kms import ChunkKeys

MAGIC = b"\x89AIFSCK\n"
VERSION = 1
DEFAULT_FRAME_SIZE = 64 * 1024
MAX_FRAME_SIZE = 16 * 1024 * 1024
MAX_CHUNK_BYTES = 64 * 1024 * 1024
MAX_WRAPPED_KEY = 1024
TAG_BYTES = 16
NONCE_BYTES = 12
DIGEST_BYTES = 32
FLAG_COMPRESSED = 0x01
# Header flag: the frame table's digests are zeros, not BLAKE3s of the frames. Sealing then
# hashes each byte once (the upload's id check) instead of twice (13% of the server's CPU per
# written byte); frames stay authenticated by their GCM tag, and a whole read is checked
# against the chunk id (ChunkService.read). Set on every envelope sealed since 2026-12-06.
HFLAG_NO_FRAME_DIGESTS = 0x01
_NO_DIGEST = bytes(DIGEST_BYTES)

# After magic: version u8, flags u8, key id length u8
_PRE = struct.Struct("<BBB")
# After key id: wrapped key length u16
_WLEN = struct.Struct("<H")
# After wrapped key: nonce base (12 bytes), frame size u32, plaintext length u64, frame count u32
_SIZES = struct.Struct("<12sIQI")
# Frame table entry: stored length u32, flags u8, BLAKE3 of the frame plaintext
_ENTRY = struct.Struct("<IB32s")
# Frame associated data (after the chunk id): frame index u32, frame count u32
_AAD = struct.Struct("<II")


# read_at(offset, n) -> the n bytes of an envelope at offset (fewer only past its end)
ReadAt = Callable[[int, int], "bytes | bytearray | memoryview"]
# First read of a ranged open: the whole header of a chunk of up to ~100 frames (1 MiB chunks
# of 64 KiB frames have 16, a ~730-byte header); a longer header costs one more read.
HEADER_PROBE = 4096


class Frame(NamedTuple):
    offset: int  # plaintext offset of the frame within the chunk
    raw_length: int  # plaintext bytes in the frame
    compressed: bool  # data is a zstd frame (else the plaintext itself)
    data: bytes | memoryview  # decrypted stored bytes
    digest: bytes | None  # BLAKE3 of the frame plaintext; None: the envelope keeps none
    chunk_id: bytes


class EnvelopeStats:
    """Process-wide counters, so tests can prove what a read touched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        with self._lock:
            self.frames_decrypted = 0
            self.frames_sealed = 0
            self.chunks_sealed = 0
            self.chunks_opened = 0
            self.legacy_reads = 0
            self.bytes_read = 0  # envelope bytes the ranged (`*_at`) functions read

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}


ENVELOPE_STATS = EnvelopeStats()


def _corrupt(chunk_id: bytes, why: str) -> CorruptChunk:
    return CorruptChunk(
        f"chunk {bytes(chunk_id).hex()} is corrupt: {why}. Its stored bytes are damaged or "
        f"were altered; restore the chunk store from backup, or run `aifs fsck` to list the "
        f"files that use this chunk"
    )


def is_envelope(data: bytes | bytearray | memoryview) -> bool:
    return bytes(data[: len(MAGIC)]) == MAGIC


def _nonce(base: int, index: int) -> bytes:
    return (base ^ index).to_bytes(NONCE_BYTES, "big")


def _frame_count(length: int, frame_size: int) -> int:
    return -(-length // frame_size)


# -- sealing ----------------------------------------------------------------------------------


def seal_chunk(
    chunk_id: bytes,
    plaintext: bytes | bytearray | memoryview,
    keys: ChunkKeys,
    codec: CompressionService,
    frame_size: int = DEFAULT_FRAME_SIZE,
    level: int | None = None,
    frame_digests: bool = False,
) -> bytearray:
    """Seal `plaintext` as the envelope of chunk `chunk_id` (see module docstring). Without
    `frame_digests` (the default) the frame table's digests are zeros and the header says so
    (HFLAG_NO_FRAME_DIGESTS): the caller has checked BLAKE3(plaintext) == chunk_id already."""
    if not 1 <= frame_size <= MAX_FRAME_SIZE:
        raise InvalidArgument(f"frame size {frame_size} out of range 1-{MAX_FRAME_SIZE}")
    view = memoryview(plaintext).cast("B")
    total = len(view)
    if total > MAX_CHUNK_BYTES:
        raise InvalidArgument(
            f"chunk of {total} bytes is larger than the maximum {MAX_CHUNK_BYTES}: use a "
            f"smaller chunk size"
        )
    count = _frame_count(total, frame_size)

    stored: list[bytes | bytearray | memoryview] = []
    table = bytearray()
    # one incompressibility probe for the whole chunk, then frame by frame if it compresses
    for i, (data, compressed) in enumerate(codec.compress_frames(view, frame_size, level)):
        piece = view[i * frame_size : (i + 1) * frame_size]
        stored.append(data)
        table += _ENTRY.pack(
            len(data) + TAG_BYTES, FLAG_COMPRESSED if compressed else 0,
            blake3(piece).digest() if frame_digests else _NO_DIGEST,
        )

    data_key = os.urandom(32)
    key_id, wrapped = keys.wrap_data_key(data_key)
    kid = key_id.encode("utf-8")
    if not 1 <= len(kid) <= 255 or not 1 <= len(wrapped) <= MAX_WRAPPED_KEY:
        raise InvalidArgument(f"key id {key_id!r} or its wrapped key has an unsupported length")
    nonce_base = os.urandom(NONCE_BYTES)
    header = bytearray(MAGIC)
    header += _PRE.pack(VERSION, 0 if frame_digests else HFLAG_NO_FRAME_DIGESTS, len(kid))
    header += kid
    header += _WLEN.pack(len(wrapped))
    header += wrapped
    header += _SIZES.pack(nonce_base, frame_size, total, count)
    header += table
    header_digest = blake3(header).digest()
    header += header_digest

    aead = AESGCM(data_key)
    base = int.from_bytes(nonce_base, "big")
    cid = bytes(chunk_id)
    # Frames are encrypted straight into the envelope's buffer: no ciphertext object per frame
    # and no join of them afterwards (one 1 MiB copy less per chunk written).
    out = bytearray(len(header) + sum(len(d) + TAG_BYTES for d in stored))
    out[: len(header)] = header
    dest = memoryview(out)
    at = len(header)
    for i, data in enumerate(stored):
        aad = cid + _AAD.pack(i, count) + header_digest
        end = at + len(data) + TAG_BYTES
        aead.encrypt_into(_nonce(base, i), data, aad, dest[at:end])
        at = end
    dest.release()
    ENVELOPE_STATS.add("frames_sealed", count)
    ENVELOPE_STATS.add("chunks_sealed")
    return out


# -- parsing ----------------------------------------------------------------------------------


class _Header(NamedTuple):
    key_id: str
    wrapped: bytes
    nonce_base: int
    frame_size: int
    total: int
    nframes: int
    entries: list[tuple[int, int, bytes]]  # (stored length, flags, digest)
    starts: list[int]  # envelope offset of each frame
    digest: bytes
    frame_digests: bool  # the table holds each frame's BLAKE3 (else zeros)


class _NeedMore(Exception):
    """The header prefix given to _parse ends before the header does: read `upto` bytes."""

    def __init__(self, upto: int) -> None:
        super().__init__(upto)
        self.upto = upto


def _parse(chunk_id: bytes, mv: memoryview, size: int | None = None) -> _Header:
    """Parse and check the header of an envelope that starts with MAGIC. CorruptChunk else.

    `mv` is the envelope, or (with `size`, the envelope's length) a prefix of it: a prefix that
    ends inside the header raises _NeedMore with how many bytes the parse needs next.
    """
    if size is None:
        size = len(mv)
    pos = len(MAGIC)

    def need(n: int, what: str) -> None:
        if pos + n > size:
            raise _corrupt(chunk_id, f"envelope truncated in the {what} ({size} bytes)")
        if pos + n > len(mv):
            # ask for a little more than this field, so a long header costs few reads
            raise _NeedMore(min(size, max(pos + n, 2 * len(mv))))

    need(_PRE.size, "header")
    version, flags, klen = _PRE.unpack_from(mv, pos)
    if version != VERSION:
        raise _corrupt(
            chunk_id, f"envelope version {version} is not one this server reads ({VERSION})"
        )
    if flags & ~HFLAG_NO_FRAME_DIGESTS or klen == 0:
        raise _corrupt(chunk_id, "reserved header flags set or empty key id")
    pos += _PRE.size
    need(klen + _WLEN.size, "key id")
    kid_bytes = bytes(mv[pos : pos + klen])
    pos += klen
    (wlen,) = _WLEN.unpack_from(mv, pos)
    pos += _WLEN.size
    if not 1 <= wlen <= MAX_WRAPPED_KEY:
        raise _corrupt(chunk_id, f"wrapped key length {wlen} out of range")
    need(wlen + _SIZES.size, "wrapped key")
    wrapped = bytes(mv[pos : pos + wlen])
    pos += wlen
    nonce_base, frame_size, total, count = _SIZES.unpack_from(mv, pos)
    pos += _SIZES.size
    if not 1 <= frame_size <= MAX_FRAME_SIZE or total > MAX_CHUNK_BYTES:
        raise _corrupt(chunk_id, f"frame size {frame_size} or length {total} out of range")
    if count != _frame_count(total, frame_size):
        raise _corrupt(chunk_id, f"frame count {count} does not fit length {total}")
    # The table and digest must be inside the envelope before we build anything from them.
    need(count * _ENTRY.size + DIGEST_BYTES, "frame table")
    table_end = pos + count * _ENTRY.size
    digest = bytes(mv[table_end : table_end + DIGEST_BYTES])
    if blake3(mv[:table_end]).digest() != digest:
        raise _corrupt(chunk_id, "header digest mismatch (the header was altered)")
    try:
        key_id = kid_bytes.decode("utf-8")
    except UnicodeDecodeError:
        raise _corrupt(chunk_id, "key id is not UTF-8") from None

    entries: list[tuple[int, int, bytes]] = []
    starts: list[int] = []
    at = table_end + DIGEST_BYTES
    for i, (slen, fflags, fdigest) in enumerate(_ENTRY.iter_unpack(mv[pos:table_end])):
        raw = min(frame_size, total - i * frame_size)
        if fflags == FLAG_COMPRESSED:
            ok = TAG_BYTES < slen < raw + TAG_BYTES
        else:
            ok = fflags == 0 and slen == raw + TAG_BYTES
        if not ok:
            raise _corrupt(chunk_id, f"frame {i} has stored length {slen} / flags {fflags}")
        if flags and fdigest != _NO_DIGEST:
            raise _corrupt(chunk_id, f"frame {i} has a digest in an envelope that keeps none")
        entries.append((slen, fflags, fdigest))
        starts.append(at)
        at += slen
    if at != size:
        raise _corrupt(
            chunk_id, f"envelope is {size} bytes but its header describes {at} bytes"
        )
    return _Header(key_id, wrapped, int.from_bytes(nonce_base, "big"), frame_size, total,
                   count, entries, starts, digest, not flags & HFLAG_NO_FRAME_DIGESTS)


def _range(total: int, offset: int, length: int | None) -> tuple[int, int]:
    if offset < 0 or (length is not None and length < 0):
        raise InvalidArgument(f"bad range offset={offset} length={length}: must be >= 0")
    end = total if length is None else min(total, offset + length)
    return min(offset, total), max(end, min(offset, total))


def _legacy(chunk_id: bytes, data: bytes | bytearray | memoryview) -> bytes | None:
    """The plaintext of a legacy chunk (raw, or one zstd frame) if its BLAKE3 is the chunk id."""
    mv = memoryview(data).cast("B")
    if blake3(mv).digest() == bytes(chunk_id):
        return bytes(mv)
    if is_zstd_frame(mv):
        try:
            pieces: list[bytes] = []
            size = 0
            for piece in CompressionService().decompress_iter([bytes(mv)]):
                size += len(piece)
                if size > MAX_CHUNK_BYTES:
                    return None
                pieces.append(piece)
        except ValueError:
            return None
        plain = b"".join(pieces)
        if blake3(plain).digest() == bytes(chunk_id):
            return plain
    return None


def _frames(
    chunk_id: bytes, envelope: bytes | bytearray | memoryview, keys: ChunkKeys, offset: int,
    length: int | None,
) -> tuple[int, int, Iterator[Frame] | bytes]:
    """(range start, range end, frames or legacy plaintext) for a range of a chunk."""
    mv = memoryview(envelope).cast("B")
    ENVELOPE_STATS.add("chunks_opened")
    if not is_envelope(mv):
        plain = _legacy(chunk_id, mv)
        if plain is None:
            raise _corrupt(chunk_id, "it is neither an AIFS envelope nor a legacy chunk "
                           "whose BLAKE3 matches its id")
        ENVELOPE_STATS.add("legacy_reads")
        start, end = _range(len(plain), offset, length)
        return start, end, plain
    try:
        hdr = _parse(chunk_id, mv)
    except CorruptChunk:
        # Plaintext that happens to begin with our magic, stored raw by an old writer.
        plain = _legacy(chunk_id, mv)
        if plain is None:
            raise
        ENVELOPE_STATS.add("legacy_reads")
        start, end = _range(len(plain), offset, length)
        return start, end, plain
    start, end = _range(hdr.total, offset, length)
    return start, end, _decrypt_frames(chunk_id, mv, hdr, keys, start, end)


def _read_exact(chunk_id: bytes, read_at: ReadAt, offset: int, n: int, size: int
                ) -> memoryview:
    data = memoryview(read_at(offset, n)).cast("B")
    ENVELOPE_STATS.add("bytes_read", len(data))
    if len(data) != n:
        raise _corrupt(chunk_id, f"envelope of {size} bytes ended early: {len(data)} of {n} "
                       f"bytes at offset {offset}")
    return data


def _frames_at(
    chunk_id: bytes, read_at: ReadAt, size: int, keys: ChunkKeys, offset: int,
    length: int | None, into: bool = False,
) -> tuple[int, int, Iterator[Frame] | bytes | bytearray]:
    """Like _frames, reading only the header and the covered frames through `read_at`;
    `into`: the range's plaintext as one bytearray when _decrypt_into can (see there)."""
    if size < 0:
        raise InvalidArgument(f"envelope size {size} is negative")
    # A range of half the envelope or more: one read of it all (on a cold disk, two reads
    # in a row cost two device round trips); a smaller one: the header first.
    whole_read = length is None or 2 * length >= size
    probe = size if whole_read else min(size, HEADER_PROBE)
    prefix = _read_exact(chunk_id, read_at, 0, probe, size)
    while is_envelope(prefix):
        try:
            hdr = _parse(chunk_id, prefix, size)
        except _NeedMore as more:
            prefix = _read_exact(chunk_id, read_at, 0, more.upto, size)
            continue
        except CorruptChunk:
            break  # maybe a legacy chunk that starts with the magic: _frames decides on it all
        ENVELOPE_STATS.add("chunks_opened")
        start, end = _range(hdr.total, offset, length)
        if start >= end:
            return start, end, iter(())
        first, last = start // hdr.frame_size, (end - 1) // hdr.frame_size
        lo, hi = hdr.starts[first], hdr.starts[last] + hdr.entries[last][0]
        if hi <= len(prefix):
            span, base = prefix, 0
        else:  # one read for all the covered frames, back to back on disk
            span, base = _read_exact(chunk_id, read_at, lo, hi - lo, size), lo
        if into:
            out = _decrypt_into(chunk_id, span, hdr, keys, start, end, base)
            if out is not None:
                return start, end, out
        return start, end, _decrypt_frames(chunk_id, span, hdr, keys, start, end, base)
    whole = prefix if len(prefix) == size else _read_exact(chunk_id, read_at, 0, size, size)
    return _frames(chunk_id, whole, keys, offset, length)


def _auth_failed(chunk_id: bytes, i: int, hdr: _Header) -> CorruptChunk:
    return _corrupt(chunk_id, f"frame {i} of {hdr.nframes} failed authentication (altered, "
                    f"swapped or moved)")


def _decrypt_frames(
    chunk_id: bytes, mv: memoryview, hdr: _Header, keys: ChunkKeys, start: int, end: int,
    base: int = 0,
) -> Iterator[Frame]:
    """Frames covering [start, end); `mv` holds the envelope's bytes from offset `base` on."""
    if start >= end:
        return
    first, last = start // hdr.frame_size, (end - 1) // hdr.frame_size
    aead = AESGCM(keys.unwrap_data_key(hdr.key_id, hdr.wrapped))
    cid = bytes(chunk_id)
    for i in range(first, last + 1):
        slen, fflags, fdigest = hdr.entries[i]
        at = hdr.starts[i] - base
        aad = cid + _AAD.pack(i, hdr.nframes) + hdr.digest
        try:
            data = aead.decrypt(_nonce(hdr.nonce_base, i), mv[at : at + slen], aad)
        except InvalidTag:
            raise _auth_failed(chunk_id, i, hdr) from None
        ENVELOPE_STATS.add("frames_decrypted")
        foff = i * hdr.frame_size
        raw = min(hdr.frame_size, hdr.total - foff)
        yield Frame(foff, raw, fflags == FLAG_COMPRESSED, data,
                    fdigest if hdr.frame_digests else None, cid)


def _decrypt_into(
    chunk_id: bytes, mv: memoryview, hdr: _Header, keys: ChunkKeys, start: int, end: int,
    base: int = 0,
) -> bytearray | None:
    """The plaintext of [start, end) decrypted straight into one bytearray (AESGCM
    decrypt_into), when the range is whole frames all stored raw (incompressible data, e.g.
    the float arrays of an ML sample); else None (then _decrypt_frames). Per 147 KiB chunk
    this saves a bytes object per frame and the join of them (~20-40 us). The same checks:
    each frame's GCM tag, its BLAKE3 where the envelope keeps one."""
    if start >= end or start % hdr.frame_size or not (end == hdr.total
                                                       or end % hdr.frame_size == 0):
        return None
    first, last = start // hdr.frame_size, (end - 1) // hdr.frame_size
    if any(hdr.entries[i][1] != 0 for i in range(first, last + 1)):
        return None
    out = bytearray(end - start)
    view = memoryview(out)
    aead = AESGCM(keys.unwrap_data_key(hdr.key_id, hdr.wrapped))
    cid = bytes(chunk_id)
    for i in range(first, last + 1):
        slen, _, fdigest = hdr.entries[i]
        at = hdr.starts[i] - base
        foff = i * hdr.frame_size
        piece = view[foff - start : foff - start + slen - TAG_BYTES]
        aad = cid + _AAD.pack(i, hdr.nframes) + hdr.digest
        try:
            aead.decrypt_into(_nonce(hdr.nonce_base, i), mv[at : at + slen], aad, piece)
        except InvalidTag:
            raise _auth_failed(chunk_id, i, hdr) from None
        if hdr.frame_digests and blake3(piece).digest() != fdigest:
            raise _corrupt(chunk_id, f"frame at offset {foff}: BLAKE3 mismatch")
    ENVELOPE_STATS.add("frames_decrypted", last + 1 - first)
    return out


def decode_frame(frame: Frame) -> bytes:
    """The plaintext of a Frame: decompressed if needed, its BLAKE3 checked where the envelope
    keeps one."""
    if frame.compressed:
        try:
            plain = decompress_exact(frame.data, frame.raw_length)
        except ValueError as exc:
            raise _corrupt(frame.chunk_id, f"frame at offset {frame.offset}: {exc}") from None
    else:
        plain = bytes(frame.data)
        if len(plain) != frame.raw_length:
            raise _corrupt(frame.chunk_id, f"frame at offset {frame.offset} has wrong length")
    if frame.digest is not None and blake3(plain).digest() != frame.digest:
        raise _corrupt(frame.chunk_id, f"frame at offset {frame.offset}: BLAKE3 mismatch")
    return plain


def open_chunk(
    chunk_id: bytes,
    envelope: bytes | bytearray | memoryview,
    keys: ChunkKeys,
    offset: int = 0,
    length: int | None = None,
) -> bytes:
    """Plaintext bytes [offset, offset+length) of the chunk (clipped to its end)."""
    return _plaintext(*_frames(chunk_id, envelope, keys, offset, length))


def open_chunk_at(
    chunk_id: bytes,
    read_at: ReadAt,
    size: int,
    keys: ChunkKeys,
    offset: int = 0,
    length: int | None = None,
) -> bytes:
    """open_chunk of an envelope of `size` bytes read through `read_at(offset, n)`: only the
    header and the frames the range covers are read."""
    return _plaintext(*_frames_at(chunk_id, read_at, size, keys, offset, length))


def open_chunk_buffer_at(chunk_id: bytes, read_at: ReadAt, size: int, keys: ChunkKeys,
                         length: int | None = None) -> bytes | bytearray:
    """open_chunk_at(.., 0, length) for a caller that only joins or writes the bytes: whole
    raw frames come as the bytearray they were decrypted into (no copy to make bytes of it)."""
    start, end, frames = _frames_at(chunk_id, read_at, size, keys, 0, length, into=True)
    if isinstance(frames, bytearray):
        return frames
    return _plaintext(start, end, frames)


def _plaintext(start: int, end: int, frames: Iterator[Frame] | bytes | bytearray) -> bytes:
    if isinstance(frames, bytearray):   # the range already (_frames_at with `into`)
        return bytes(frames)
    if isinstance(frames, bytes):
        return frames if (start, end) == (0, len(frames)) else frames[start:end]
    pieces: list[bytes | memoryview] = []
    for frame in frames:
        plain = decode_frame(frame)
        a, b = max(start - frame.offset, 0), min(end - frame.offset, frame.raw_length)
        pieces.append(plain if (a, b) == (0, frame.raw_length) else memoryview(plain)[a:b])
    if len(pieces) == 1 and isinstance(pieces[0], bytes):
        return pieces[0]
    return b"".join(pieces)


def iter_frames(
    chunk_id: bytes,
    envelope: bytes | bytearray | memoryview,
    keys: ChunkKeys,
    offset: int = 0,
    length: int | None = None,
) -> Iterator[Frame]:
    """Whole frames covering [offset, offset+length), decrypted, not decompressed.

    A legacy chunk yields one uncompressed Frame holding exactly the requested range.
    """
    return _whole_frames(chunk_id, *_frames(chunk_id, envelope, keys, offset, length))


def iter_frames_at(
    chunk_id: bytes,
    read_at: ReadAt,
    size: int,
    keys: ChunkKeys,
    offset: int = 0,
    length: int | None = None,
) -> Iterator[Frame]:
    """iter_frames of an envelope of `size` bytes read through `read_at(offset, n)`. The
    reads happen before this returns (the source may be closed then); only the header and the
    covered frames are read."""
    return _whole_frames(chunk_id, *_frames_at(chunk_id, read_at, size, keys, offset, length))


def _whole_frames(chunk_id: bytes, start: int, end: int,
                  frames: Iterator[Frame] | bytes | bytearray) -> Iterator[Frame]:
    if isinstance(frames, (bytes, bytearray)):
        if start < end:
            # a bytearray is the range already (_frames_at with `into`), bytes all of it
            piece = bytes(frames) if isinstance(frames, bytearray) else frames[start:end]
            yield Frame(start, len(piece), False, piece, blake3(piece).digest(), bytes(chunk_id))
        return
    yield from frames
