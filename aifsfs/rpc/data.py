"""Client of the Data service: content-addressed chunks in and out.

Interface:
    GrpcData(channel)                     an `aifsfs.protocols.DataClient` over a `Channel`
        .address                          the server's address (store_chunk asks first over TCP)
        has_chunks(ids) -> [bool]
        put_chunks(iterable of (id, data), compress=None, timeout=None) -> PutChunksResult
            over a unix socket, a list's bytes go through a file of the call's own under
            /dev/shm (inline_file.py), not the messages; .file_puts / .message_puts count
            the chunks each way went (tests, stats)
        get_chunks([(id, offset, length)], accept_zstd=None, timeout=None) -> [bytes]
            exact ranges, in order; length 0 = to the chunk's end
    unzstd(data, raw_length) -> bytes     one GetChunks ZSTD piece, bounded to raw_length
    decode_piece(message bytes) -> Piece  a GetChunks answer parsed without copying its data
    encode_put(chunk_id, data, encoding, raw_length, file_offset=None, inline_file="")
                                          -> bytes   one PutChunkRequest, encoded by hand
                                          (byte-identical to protobuf's), one copy

Payload bytes are counted in the channel's `wire_stats` (zstd vs identity). get_chunks is the
mount's hot path: one retrying call, pieces joined once per range (no copy for a range that
arrives as one exact piece).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

import grpc
import zstandard

from aifs_core.codec import decompress_bounded, thread_compressor, thread_decompressor
from aifs_core.protowire import fields, varint
from aifs_proto.v1 import data_pb2, data_pb2_grpc

from ..errors import IncompleteRead, RemoteError
from ..protocols import PutChunksResult
from . import inline_file
from .channel import Channel

log = logging.getLogger("aifsfs.rpc.data")
# The most one PutChunks call writes into its /dev/shm file (the mount's calls are at most
# 16 MiB; an SDK caller's long list sends the rest in the messages)
PUT_FILE_MAX = 32 << 20
# /dev/shm bytes the call files kept between PutChunks and GetChunks calls may hold
# (inline_file.CallFiles)
CALL_FILES_KEEP = 32 << 20
# one pool per process, not per client: an SDK program making many clients keeps no more
_call_files = inline_file.CallFiles(CALL_FILES_KEEP)


class Piece(NamedTuple):
    """A GetChunks answer (data_pb2.ChunkPiece's fields), `data` a view into the message."""

    range_index: int
    offset: int
    raw_length: int
    encoding: int
    data: memoryview
    file_offset: int = -1   # >= 0: the raw_length bytes are there in the call's inline file


def decode_piece(buf: bytes) -> Piece:
    """A ChunkPiece message from its protobuf wire format, without copying the payload:
    data_pb2.ChunkPiece.FromString copies it into the message and each `.data` access copies
    it again (~0.4 ms of CPU per MiB against ~0.2 for the one copy get_chunks makes of a
    view). Unknown fields are skipped, as protobuf does; a malformed message is a
    RemoteError."""
    got: list[int] = [0, 0, 0, 0, 0, 0, -1]
    data = memoryview(buf)[0:0]
    try:
        for number, value in fields(buf):
            if isinstance(value, int):
                if 1 <= number <= 4 or number == 6:
                    got[number] = value
            elif number == 5:
                data = value
    except ValueError as exc:
        raise RemoteError(f"GetChunks sent a malformed ChunkPiece ({exc})",
                          grpc.StatusCode.INTERNAL, "PROTOCOL", "") from None
    return Piece(got[1] & 0xFFFFFFFF, got[2] & 0xFFFFFFFF, got[3] & 0xFFFFFFFF, got[4], data,
                 got[6])


def encode_put(chunk_id: bytes, data: bytes | bytearray | memoryview, encoding: int,
               raw_length: int, file_offset: int | None = None, inline_file: str = ""
               ) -> bytes:
    """A PutChunkRequest in protobuf wire format, `data` joined behind its header: ONE copy of
    the payload. Building a data_pb2.PutChunkRequest copies the payload into the message and
    SerializeToString copies it again (and `bytes(data)` of a bytearray once more). Fields in
    number order, zeros left out: the bytes protobuf itself produces (a unit test checks)."""
    head = bytearray()
    if chunk_id:
        head += b"\x0a" + varint(len(chunk_id)) + chunk_id
    n = len(data)
    if n:
        head += b"\x12" + varint(n)
    tail = bytearray()
    if encoding:
        tail += b"\x18" + varint(encoding)
    if raw_length:
        tail += b"\x20" + varint(raw_length)
    if file_offset is not None:         # optional: present even if 0
        tail += b"\x28" + varint(file_offset)
    if inline_file:
        name = inline_file.encode()
        tail += b"\x32" + varint(len(name)) + name
    return b"".join((head, data, tail)) if n else bytes(head + tail)


def _pass_through(m: bytes) -> bytes:
    return m


def unzstd(data: bytes | memoryview, raw_length: int) -> bytes:
    """A GetChunks ZSTD piece: one zstd frame, or (we accept "zstd-frames") several back to
    back, `raw_length` bytes in all. Never more than raw_length + 1 bytes are produced."""
    if zstandard.frame_content_size(data) == raw_length:
        return thread_decompressor().decompress(data, max_output_size=raw_length)
    return decompress_bounded(data, raw_length)


class GrpcData:
    """The Data service's calls (thread-safe)."""

    def __init__(self, channel: Channel) -> None:
        self._ch = channel
        self._data = data_pb2_grpc.DataStub(channel.grpc)
        # GetChunks answers are parsed by decode_piece (the payload a view, not a copy)
        self._get_chunks_call = channel.grpc.unary_stream(
            "/aifs.v1.Data/GetChunks",
            request_serializer=data_pb2.GetChunksRequest.SerializeToString,
            response_deserializer=decode_piece)
        # PutChunks requests are encoded by encode_put (one copy of each chunk, not three)
        self._put_chunks_call = channel.grpc.stream_unary(
            "/aifs.v1.Data/PutChunks", request_serializer=_pass_through,
            response_deserializer=data_pb2.PutChunksReply.FromString)
        self.address = channel.address
        self._inline_files = inline_file.available(getattr(channel, "addresses", ()))
        # uploads through the file too, until a server refuses them (an old one)
        self._inline_puts = self._inline_files
        self.file_puts = self.message_puts = 0      # chunks sent each way

    def _from_file(self, side: inline_file.InlineFile | None, piece: Piece, cid: bytes
                   ) -> bytes:
        """An IDENTITY piece whose bytes the server wrote into the call's inline file."""
        data = _file_slice(side, piece.file_offset, piece.raw_length)
        if data is None or piece.encoding != data_pb2.IDENTITY:
            raise RemoteError(f"GetChunks placed bytes of chunk {bytes(cid).hex()} where this "
                              f"call's file does not hold them", grpc.StatusCode.INTERNAL,
                              "PROTOCOL", self._ch.address)
        return data

    def has_chunks(self, chunk_ids: Sequence[bytes]) -> list[bool]:
        if not chunk_ids:
            return []
        r = self._ch.unary(self._data.HasChunks,
                        data_pb2.HasChunksRequest(chunk_ids=list(chunk_ids)))
        present = list(r.present)
        if len(present) != len(chunk_ids):
            raise RemoteError(f"HasChunks answered {len(present)} flags for {len(chunk_ids)} ids",
                              grpc.StatusCode.INTERNAL, "PROTOCOL", self._ch.address)
        return present

    def put_chunks(self, chunks: Iterable[tuple[bytes, bytes | bytearray | memoryview]],
                   compress: bool | None = None, timeout: float | None = None
                   ) -> PutChunksResult:
        """Upload whole chunks (id = BLAKE3 of the data). A list is retried on UNAVAILABLE; a
        one-shot iterator is sent once the channel is up (always in the messages)."""
        t = timeout or max(self._ch.timeout, 600.0)
        if self._inline_puts and isinstance(chunks, Sequence) and chunks:
            try:
                done = self._put_through_file(chunks, t)
            except RemoteError as exc:
                if exc.reason != "INVALID_ARGUMENT":
                    raise
                # An old server (it sees a chunk without its bytes) or one that may not use
                # our file: the same chunks in the messages. If that works, the file was the
                # trouble: messages from now on.
                result = self._put_in_messages(chunks, compress, t)
                self._inline_puts = False
                log.warning("PutChunks through /dev/shm refused by %s (%s): chunk bytes go "
                            "in the messages from now on", self._ch.address, exc)
                return result
            if done is not None:
                return done
        return self._put_in_messages(chunks, compress, t)

    def _put_in_messages(self, chunks: Iterable[tuple[bytes, bytes | bytearray | memoryview]],
                         compress: bool | None, t: float) -> PutChunksResult:
        zstd = self._ch.compress_uploads if compress is None else compress
        result = PutChunksResult()
        replayable = isinstance(chunks, Sequence)

        def requests() -> Iterator[bytes]:
            result.sent_bytes = result.raw_bytes = 0
            for chunk_id, data in chunks:
                payload: bytes | bytearray | memoryview = data
                enc = data_pb2.IDENTITY
                if zstd and len(data):
                    packed = thread_compressor(1).compress(data)
                    if len(packed) < len(data):  # only when it pays
                        payload, enc = packed, data_pb2.ZSTD
                result.sent_bytes += len(payload)
                result.raw_bytes += len(data)
                self.message_puts += 1
                yield encode_put(bytes(chunk_id), payload, enc, len(data))

        r = self._ch.client_stream(self._put_chunks_call, requests, replayable, t)
        return self._put_result(result, r)

    def _put_result(self, result: PutChunksResult, r: Any) -> PutChunksResult:
        self._ch.wire_stats.add(sent_bytes=result.sent_bytes, sent_raw_bytes=result.raw_bytes)
        result.stored, result.deduplicated, result.stored_bytes = (
            r.stored, r.deduplicated, r.stored_bytes)
        return result

    def _put_through_file(self, chunks: Sequence[tuple[bytes, bytes | bytearray | memoryview]],
                          t: float) -> PutChunksResult | None:
        """PutChunks with the chunks' bytes written into a file of the call's own (one pwritev)
        and each message naming its offset; a chunk the file could not take (/dev/shm full)
        travels in its message. None: no file could be made (the caller sends messages).
        The file is kept for the next call after a success (inline_file.CallFiles), else
        unlinked."""
        result = PutChunksResult()
        side = _call_files.take()
        if side is None:
            return None
        ok = False
        try:
            # the file holds at most PUT_FILE_MAX (RAM until the call ends); a longer list's
            # later chunks go in their messages
            fit, size = 0, 0
            while fit < len(chunks) and size + len(chunks[fit][1]) <= PUT_FILE_MAX:
                size += len(chunks[fit][1])
                fit += 1
            offsets = side.write_all([d for _, d in chunks[:fit]], 0)
            offsets += [None] * (len(chunks) - fit)
            msgs: list[bytes] = []
            for (cid, data), at in zip(chunks, offsets, strict=True):
                n = len(data)
                result.raw_bytes += n
                if at is None or not n:
                    result.sent_bytes += n
                    msgs.append(encode_put(bytes(cid), data, data_pb2.IDENTITY, n,
                                           inline_file="" if msgs else side.path))
                    self.message_puts += 1
                else:
                    msgs.append(encode_put(bytes(cid), b"", data_pb2.IDENTITY, n, at,
                                           "" if msgs else side.path))
                    self.file_puts += 1
            # through the channel's client_stream, as the messages path: a mount's channel
            # adds its session id there (aifsfs/rpc/session.py), which keeps the uploaded
            # chunks from the collector until the commit; a retry re-sends the same messages
            # naming the same file (the server only reads it)
            reply = self._ch.client_stream(self._put_chunks_call, lambda: iter(msgs), True, t)
            ok = True
            return self._put_result(result, reply)
        finally:
            _call_files.give_back(side, ok)

    def get_chunks(self, ranges: Sequence[tuple[bytes, int, int]],
                   accept_zstd: bool | None = None, timeout: float | None = None
                   ) -> list[bytes]:
        """Bytes of each (chunk_id, offset, length) range, in order; length 0 = to the end."""
        if not ranges:
            return []
        zstd = self._ch.accept_zstd if accept_zstd is None else accept_zstd
        req = data_pb2.GetChunksRequest(
            ranges=[data_pb2.ChunkRange(chunk_id=bytes(c), offset=o, length=n)
                    for c, o, n in ranges],
            accept_encodings=["zstd", "zstd-frames"] if zstd else [])
        t = timeout or self._ch.timeout

        def attempt() -> list[bytes]:
            # raw bytes through a file of this call's (aifsfs/rpc/inline_file.py): one kept
            # from an earlier call that ended well, or a fresh one; kept again only if this
            # call ends well too (the server may still write into a failed call's file)
            side = _call_files.take() if self._inline_files else None
            req.inline_file = side.path if side is not None else ""
            ok = False
            try:
                got = self._get_chunks_once(req, ranges, t, side)
                ok = True
                return got
            finally:
                if side is not None:
                    _call_files.give_back(side, ok)
        return self._ch.retrying(attempt, True, t)

    def _get_chunks_once(self, req: data_pb2.GetChunksRequest,
                         ranges: Sequence[tuple[bytes, int, int]], timeout: float,
                         side: inline_file.InlineFile | None = None) -> list[bytes]:
        # Pieces are kept as received and joined once per range at the end (one copy); a range
        # that arrives as a single exact piece (a whole 1 MiB chunk, a 64 KiB frame) is
        # returned as that very object: no copy at all.
        parts: list[list[bytes | memoryview]] = [[] for _ in ranges]
        sizes = [0] * len(ranges)
        # where the next byte of each range must start (chunk offset)
        nexts = [int(o) for _, o, _ in ranges]
        ends = [int(o) + int(n) if n else None for _, o, n in ranges]
        received = raw_received = zpieces = ipieces = 0
        for piece in self._get_chunks_call(req, metadata=self._ch.metadata(), timeout=timeout):
            i = piece.range_index
            if i >= len(ranges):
                raise RemoteError(f"GetChunks sent a piece for range {i} of {len(ranges)}",
                                  grpc.StatusCode.INTERNAL, "PROTOCOL", self._ch.address)
            data = piece.data  # a view into the received message: no copy
            if piece.file_offset >= 0:
                data = self._from_file(side, piece, ranges[i][0])
            received += len(data)
            if piece.encoding == data_pb2.ZSTD:
                zpieces += 1
                raw = unzstd(data, piece.raw_length)
                if len(raw) != piece.raw_length:
                    raise IncompleteRead(
                        f"chunk {bytes(ranges[i][0]).hex()}: a zstd frame at offset "
                        f"{piece.offset} gave {len(raw)} bytes, expected {piece.raw_length}",
                        address=self._ch.address)
            else:
                ipieces += 1
                raw = data
            raw_received += len(raw)
            start, end = piece.offset, piece.offset + len(raw)
            want_end = ends[i]
            lo = max(start, nexts[i])
            hi = end if want_end is None else min(end, want_end)
            if lo > nexts[i]:
                raise IncompleteRead(
                    f"chunk {bytes(ranges[i][0]).hex()}: GetChunks skipped bytes "
                    f"{nexts[i]}..{lo}", address=self._ch.address)
            if hi > lo:
                parts[i].append(raw if (lo, hi) == (start, end)
                                else memoryview(raw)[lo - start:hi - start])
                sizes[i] += hi - lo
                nexts[i] = hi
                if sizes[i] == ranges[i][2]:
                    # complete: made bytes now, so the received messages it came in are freed
                    # as the call goes on (a several-chunk call never holds all twice)
                    parts[i] = [_joined(parts[i])]
        self._ch.wire_stats.add(received_bytes=received, received_raw_bytes=raw_received,
                            zstd_pieces=zpieces, identity_pieces=ipieces)
        out: list[bytes] = []
        for i, (cid, off, n) in enumerate(ranges):
            if n and sizes[i] != n:
                raise IncompleteRead(
                    f"chunk {bytes(cid).hex()}: asked for {n} bytes at offset {off}, got "
                    f"{sizes[i]} (is the range past the chunk's end?)", address=self._ch.address)
            out.append(_joined(parts[i]))
        return out


def _file_slice(side: inline_file.InlineFile | None, at: int, n: int) -> bytes | None:
    """Bytes [at, at + n) of the call's inline file (None: not there). Read, not mapped: the
    range is wanted as bytes (the caches and FUSE replies keep bytes), and one pread is its
    one copy, with no page faults on a fresh mapping."""
    if side is None:
        return None
    data = os.pread(side.fd, n, at)
    return data if len(data) == n else None


def _joined(got: list[bytes | memoryview]) -> bytes:
    """A range's pieces as one bytes: its one copy (a lone bytes piece: none)."""
    if len(got) == 1:
        one = got[0]
        return one if isinstance(one, bytes) else bytes(one)
    return b"".join(got)
