"""The Data service: chunks by id (HasChunks, PutChunks, GetChunks).

Interface:
    DataServicer(backend: rpc_filesystem.Backend)
    add_data_service(servicer, grpc_server)   register it (GetChunks answers encode_piece bytes)
    encode_piece(index, offset, raw_length, encoding, parts) -> bytes   one ChunkPiece, encoded
    decode_put(message bytes) -> PutRequest   a PutChunkRequest parsed without copying its data
                                              (file_offset -1: the bytes are in the message)
    PIECE_MAX = 1 MiB          the largest data payload of one GetChunks message

Rules:
- Chunk records are per namespace: a chunk not recorded in the caller's namespace is NOT_FOUND
  (even if another namespace stores the same bytes), so no cross-tenant "is it stored?" oracle.
- PutChunks: one whole chunk per message, or (a unix peer that named a file of its own under
  /dev/shm in the first message, server/inline_file.InlineSource) one chunk's offset in that
  file, counted as direction "in_file"; a file the server may not use fails the call with
  INVALID_ARGUMENT before anything is stored (the client then sends the bytes); a ZSTD upload is decompressed with a limit of the
  namespace's chunk size (a zstd bomb is refused); BLAKE3(plaintext) must equal the id
  (ChunkService verifies); the chunk is sealed at the namespace's zstd level, then recorded.
- GetChunks with "zstd" accepted: the stored frames covering the range go out as they are
  (compressed frames as ZSTD, raw frames as IDENTITY, sliced to the range) — no recompression.
  With "zstd-frames" accepted as well, contiguous compressed frames are sent together: one ZSTD
  piece holds several zstd frames back to back (raw_length = their total plaintext, at most
  PIECE_MAX), so a compressible 1 MiB chunk is one message, not 16 (serial 1 MiB reads of
  text: ~120-200 -> ~240-300 MiB/s). Without "zstd": identity bytes covering exactly the
  range, in pieces of at most PIECE_MAX. Raw frames are joined into one message (one copy).
- A call of several ranges reads (and decrypts) the next RANGE_LOOKAHEAD of them in a pool
  while it sends one, so a sequential reader's several whole chunks per call are read from
  the store in parallel; errors still surface in range order.
- A corrupt chunk is DATA_LOSS naming the chunk. A chunk recorded in the namespace but gone
  from the store is MISSING_CHUNK naming the chunk and the store (EIO at a mount, logged once
  at WARNING by ChunkService), never NOT_FOUND: the file that names it exists.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import grpc

from aifs_core.codec import decompress_bounded
from aifs_core.errors import AIFSError, CorruptChunk, InvalidArgument, NotFound
from aifs_core.protowire import fields, varint
from aifs_proto.v1 import data_pb2, data_pb2_grpc
from aifs_server.auth import call_scope
from aifs_server.envelope import Frame
from aifs_server.grpc_errors import rpc
from aifs_server.inline_file import InlineSink, InlineSource
from aifs_server.request_limits import LIMIT
from aifs_server.rpc_filesystem import Backend

PIECE_MAX = 1 << 20
HAS_CHUNKS_MAX = 100_000
# A GetChunks call of several ranges has up to this many read and decrypted ahead of the one
# being sent (see DataServicer._opened), by threads shared by all calls: the store's reads
# overlap (a cold disk serves many at once far faster than one after the other) and the
# memory a call holds stays bounded (LOOKAHEAD + 1 ranges; a range is at most a chunk).
RANGE_LOOKAHEAD = 3
RANGE_READERS = 16
_RANGE_POOL = ThreadPoolExecutor(RANGE_READERS, thread_name_prefix="aifs-getchunks")


def _check_id(chunk_id: bytes) -> bytes:
    if len(chunk_id) != 32:
        raise InvalidArgument(
            f"chunk id is {len(chunk_id)} bytes; ids are 32-byte BLAKE3 digests of the plaintext")
    return bytes(chunk_id)


def _decompress_limited(data: bytes, limit: int, chunk_hex: str) -> bytes:
    """Decompress one uploaded zstd chunk, refusing more than `limit` bytes of output."""
    try:
        out = decompress_bounded(data, limit)
    except ValueError as e:
        raise InvalidArgument(f"chunk {chunk_hex}: upload marked ZSTD is not valid zstd ({e})"
                              ) from None
    if len(out) > limit:
        raise InvalidArgument(
            f"chunk {chunk_hex}: decompresses to more than the namespace's chunk size "
            f"({limit} bytes); refused")
    return out


# A PutChunks stream is stored in batches: sealed in parallel, one directory fsync per batch.
# Bounded so a stream holds at most this much plaintext in memory.
PUT_BATCH_CHUNKS = 8
PUT_BATCH_BYTES = 16 << 20


def encode_piece(index: int, offset: int, raw_length: int, encoding: int,
                 data: list[bytes | memoryview], file_offset: int | None = None) -> bytes:
    """A ChunkPiece message in protobuf wire format, `data` joined behind its header: ONE copy
    of the payload. Building the message and serializing it (data_pb2.ChunkPiece) copies the
    payload twice more: ~1.2 ms of CPU per MiB against ~0.25 here, most of the server's cost
    per byte sent. Fields in number order, zeros left out (proto3's own encoding);
    `file_offset` (the bytes are in the client's file instead: no data) present even if 0."""
    head = bytearray()
    for tag, value in ((0x08, index), (0x10, offset), (0x18, raw_length), (0x20, encoding)):
        if value:
            head.append(tag)
            head += varint(value)
    size = sum(len(d) for d in data)
    if size:
        head.append(0x2A)
        head += varint(size)
    if file_offset is not None:
        return bytes(head + b"\x30" + varint(file_offset))
    return b"".join([head, *data])


class PutRequest(NamedTuple):
    """A PutChunks request (data_pb2.PutChunkRequest's fields), `data` a view into the
    received message."""

    chunk_id: bytes
    data: memoryview
    encoding: int
    raw_length: int
    file_offset: int = -1       # >= 0: the raw_length bytes are there in the call's file
    inline_file: str = ""


def decode_put(buf: bytes) -> PutRequest:
    """A PutChunkRequest from its protobuf wire format, the payload a view, not a copy:
    data_pb2.PutChunkRequest.FromString copies the 1 MiB payload into the message and `.data`
    copies it again. As protobuf does: unknown fields skipped, the last of a repeated field
    kept, enums and uint32 truncated to 32 bits. Malformed: an error, which grpc turns into
    INTERNAL "Exception deserializing request!" as it does when protobuf's parser fails."""
    cid = data = path = memoryview(buf)[0:0]
    encoding = raw_length = 0
    file_offset = -1
    try:
        for number, value in fields(buf):
            if isinstance(value, int):
                if number == 3:
                    encoding = value & 0xFFFFFFFF
                elif number == 4:
                    raw_length = value & 0xFFFFFFFF
                elif number == 5:
                    file_offset = value
            elif number == 1:
                cid = value
            elif number == 2:
                data = value
            elif number == 6:
                path = value
        inline_file = str(path, "utf-8") if len(path) else ""
    except ValueError as exc:    # UnicodeDecodeError too
        raise InvalidArgument(f"malformed PutChunkRequest ({exc})") from None
    if encoding >= 1 << 31:     # an enum is an int32: protobuf reads it signed
        encoding -= 1 << 32
    return PutRequest(bytes(cid), data, encoding, raw_length, file_offset, inline_file)


def _serialize_piece(m: Any) -> bytes:
    """GetChunks' response serializer: encode_piece's bytes as they are (a message object,
    should one come, serialized as usual)."""
    return m if type(m) is bytes else bytes(m.SerializeToString())


def add_data_service(servicer: DataServicer, server: grpc.Server) -> None:
    """data_pb2_grpc.add_DataServicer_to_server, with GetChunks sending the pre-encoded
    messages of encode_piece and PutChunks parsing its requests with decode_put."""
    handlers = {
        "HasChunks": grpc.unary_unary_rpc_method_handler(
            servicer.HasChunks, request_deserializer=data_pb2.HasChunksRequest.FromString,
            response_serializer=data_pb2.HasChunksReply.SerializeToString),
        "PutChunks": grpc.stream_unary_rpc_method_handler(
            servicer.PutChunks, request_deserializer=decode_put,
            response_serializer=data_pb2.PutChunksReply.SerializeToString),
        "GetChunks": grpc.unary_stream_rpc_method_handler(
            servicer.GetChunks, request_deserializer=data_pb2.GetChunksRequest.FromString,
            response_serializer=_serialize_piece),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("aifs.v1.Data",
                                                                          handlers),))
    server.add_registered_method_handlers("aifs.v1.Data", handlers)


class DataServicer(data_pb2_grpc.DataServicer):
    def __init__(self, backend: Backend) -> None:
        self.b = backend
        self.meta = backend.meta
        self.chunks = backend.chunks

    def _count(self, direction: str, n: int) -> None:
        if self.b.metrics is not None:
            self.b.metrics.add_bytes(direction, n)

    @rpc
    def HasChunks(self, request: Any, context: grpc.ServicerContext) -> Any:
        ns, _ = call_scope(context)
        self.b.namespace(ns)
        if len(request.chunk_ids) > HAS_CHUNKS_MAX:
            raise InvalidArgument(f"HasChunks takes at most {HAS_CHUNKS_MAX} ids per call; "
                                  f"got {len(request.chunk_ids)}: split the request")
        ids = [_check_id(c) for c in request.chunk_ids]
        present = self.meta.has_chunks(ns, ids) if ids else []
        # a caller that found a chunk will commit it without uploading: hold it until then
        self._hold(context, ns, [c for c, ok in zip(ids, present, strict=True) if ok])
        return data_pb2.HasChunksReply(present=present)

    def _hold(self, context: grpc.ServicerContext, ns: str, ids: list[bytes]) -> None:
        """Keep `ids` from the collector until the calling session (metadata `aifs-session`)
        commits them or ends; a caller without a session gets the SDK grace."""
        pins = self.chunks.pins
        if pins is None or not ids:
            return
        sid = next((str(v) for k, v in context.invocation_metadata() if k == "aifs-session"),
                   None)
        sess = self.b.leases.session(sid, self.b.tree(context)) if sid else None
        pins.hold(sess, ns, ids)

    @rpc
    def PutChunks(self, request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
        ns_name, _ = call_scope(context)
        ns = self.b.namespace(ns_name)
        reply = data_pb2.PutChunksReply()
        batch: list[tuple[bytes, bytes | memoryview]] = []
        batch_bytes = 0

        def store_batch() -> None:
            # Chunks are recorded only once the whole batch is durable, so a record never
            # names a chunk a crash could lose (dedup would then skip re-uploading it).
            # All of the batch's records go in one metadata transaction (one commit).
            results = self.chunks.put_batch(ns_name, batch, ns.zstd_level)
            records = [(cid, len(plain), int(stored_len))
                       for (cid, plain), (_new, stored_len) in zip(batch, results, strict=True)]
            for (_cid, _raw, stored_len), new in zip(
                    records, self.meta.record_chunks(ns_name, records), strict=True):
                if new:
                    reply.stored += 1
                    reply.stored_bytes += stored_len
                else:
                    reply.deduplicated += 1
            self._hold(context, ns_name, [cid for cid, _ in batch])
            batch.clear()

        source: InlineSource | None = None
        try:
            for n, req in enumerate(request_iterator):
                if n == 0 and req.inline_file:     # named in the first message only
                    source = InlineSource.open(req.inline_file, context.peer())
                    if source is None:
                        raise InvalidArgument(
                            "PutChunks: the call's inline_file cannot be used (not a unix "
                            "peer, or not a file of the client's own in its private "
                            "directory); send the bytes in the messages")
                if req.file_offset >= LIMIT:    # decode_put bypasses check_request
                    raise InvalidArgument(f"PutChunkRequest.file_offset = {req.file_offset} "
                                          f"is out of range (at most {LIMIT - 1})")
                cid = _check_id(req.chunk_id)
                plain: bytes | memoryview
                if req.file_offset >= 0:
                    plain = self._from_file(source, req, cid, ns.chunk_size)
                else:
                    plain = self._plaintext(req, cid, ns_name, ns.chunk_size)
                batch.append((cid, plain))
                batch_bytes += len(plain)
                if len(batch) >= PUT_BATCH_CHUNKS or batch_bytes >= PUT_BATCH_BYTES:
                    store_batch()
                    batch_bytes = 0
        finally:
            # here, not in a call-end callback: that runs in another thread and could close
            # the descriptor (its number then reused) while this thread still reads it
            if source is not None:
                source.close()
        if batch:
            store_batch()
        return reply

    def _from_file(self, source: InlineSource | None, req: PutRequest, cid: bytes,
                   chunk_size: int) -> bytes:
        """A chunk's plaintext from the call's file (raw_length bytes at file_offset), read
        into bytes of our own; its id is checked when it is stored, as for any upload."""
        hexid = cid.hex()
        if source is None:
            raise InvalidArgument(f"chunk {hexid}: file_offset given but the call named no "
                                  f"inline_file in its first message")
        if req.data or req.encoding != data_pb2.IDENTITY:
            raise InvalidArgument(f"chunk {hexid}: a chunk in the call's file has no data "
                                  f"and IDENTITY encoding")
        if req.raw_length > chunk_size:
            raise InvalidArgument(
                f"chunk {hexid} is {req.raw_length} bytes; the namespace takes chunks of at "
                f"most {chunk_size} bytes")
        plain = source.read(req.file_offset, req.raw_length)
        if plain is None:
            raise InvalidArgument(f"chunk {hexid}: the call's file does not hold "
                                  f"{req.raw_length} bytes at offset {req.file_offset}")
        self._count("in", len(plain))
        self._count("in_file", len(plain))
        return plain

    def _plaintext(self, req: Any, cid: bytes, ns_name: str, chunk_size: int
                   ) -> bytes | memoryview:
        """The uploaded chunk's plaintext, its encoding undone and its size checked."""
        hexid = cid.hex()
        self._count("in", len(req.data))
        if req.encoding == data_pb2.ZSTD:
            plain = _decompress_limited(req.data, chunk_size, hexid)
        elif req.encoding == data_pb2.IDENTITY:
            plain = req.data
        else:
            raise InvalidArgument(f"chunk {hexid}: unknown encoding {req.encoding}")
        if len(plain) > chunk_size:
            raise InvalidArgument(
                f"chunk {hexid} is {len(plain)} bytes; namespace {ns_name!r} takes chunks "
                f"of at most {chunk_size} bytes")
        if req.raw_length and req.raw_length != len(plain):
            raise InvalidArgument(
                f"chunk {hexid}: raw_length says {req.raw_length} bytes but the data is "
                f"{len(plain)}")
        # a view into the received message is kept as it is (no copy): the store seals it
        return plain

    @rpc
    def GetChunks(self, request: Any, context: grpc.ServicerContext) -> Iterator[Any]:
        ns, _ = call_scope(context)
        self.b.namespace(ns)
        ranges = list(request.ranges)
        ids = [_check_id(r.chunk_id) for r in ranges]
        if ids:
            present = self.meta.has_chunks(ns, ids)
            for cid, ok in zip(ids, present, strict=True):
                if not ok:
                    raise NotFound(f"chunk {cid.hex()} is not stored in namespace {ns!r}")
        accepted = {e.lower() for e in request.accept_encodings}
        zstd_ok = "zstd" in accepted
        multi = "zstd-frames" in accepted
        # raw bytes into the client's file when it gave one (server/inline_file.py); a file
        # the client reuses from an earlier call is written over from offset 0
        sink = (InlineSink.open(request.inline_file, context.peer(), reused=True)
                if request.inline_file else None)
        opened = self._opened(ns, ranges, ids, zstd_ok)
        try:
            for i, (r, cid) in enumerate(zip(ranges, ids, strict=True)):
                try:
                    content = next(opened)
                    if zstd_ok:
                        yield from self._frames(i, r.offset, r.length or None, content, multi,
                                                sink)
                    else:
                        yield from self._identity(i, r.offset, content, sink)
                except AIFSError:
                    raise
                except (ValueError, OSError) as e:
                    raise CorruptChunk(f"chunk {cid.hex()} could not be read ({e}); run "
                                       f"`aifs fsck --read-data`") from e
        finally:
            opened.close()
            # however the call ends: here, not in a call-end callback, which runs in another
            # thread and could close the descriptor (its number then reused by another open)
            # while this one still writes to it
            if sink is not None:
                sink.close()

    def _open(self, ns: str, cid: bytes, offset: int, length: int | None, zstd_ok: bool
              ) -> Any:
        """One range read from the store and decrypted: its frames (a list), or its
        plaintext bytes when the caller takes no zstd."""
        if zstd_ok:
            return list(self.chunks.frames(ns, cid, offset, length))
        return self.chunks.read(ns, cid, offset, length)

    def _opened(self, ns: str, ranges: list[Any], ids: list[bytes], zstd_ok: bool
                ) -> Generator[Any, None, None]:
        """The ranges' contents (_open), in order. With several ranges, the next
        RANGE_LOOKAHEAD are read and decrypted in a pool while one is sent: a cold chunk is a
        disk round trip of its own (its file's open and read), and a sequential reader asks
        for several whole chunks per call. Errors surface in order, when their range's turn
        comes; memory stays bounded by the lookahead."""
        if len(ranges) == 1:
            r = ranges[0]
            yield self._open(ns, ids[0], r.offset, r.length or None, zstd_ok)
            return
        pending: deque[Future[Any]] = deque()
        todo = iter(zip(ranges, ids, strict=True))
        try:
            while True:
                while len(pending) <= RANGE_LOOKAHEAD:
                    nxt = next(todo, None)
                    if nxt is None:
                        break
                    r, cid = nxt
                    pending.append(_RANGE_POOL.submit(
                        self._open, ns, cid, r.offset, r.length or None, zstd_ok))
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for fut in pending:     # the call ended early (an error, the client went away)
                fut.cancel()

    def _raw_piece(self, index: int, offset: int, pieces: list[bytes | memoryview],
                   sink: InlineSink | None) -> bytes:
        """One IDENTITY ChunkPiece of `pieces` (back to back): its bytes in the client's file
        when there is one that takes them, else in the message."""
        n = sum(len(p) for p in pieces)
        at = sink.place(pieces) if sink is not None and n else None
        self._count("out", n)
        if at is not None:
            self._count("out_file", n)
            return encode_piece(index, offset, n, data_pb2.IDENTITY, [], at)
        return encode_piece(index, offset, n, data_pb2.IDENTITY, pieces)

    def _identity(self, index: int, offset: int, data: bytes,
                  sink: InlineSink | None = None) -> Iterator[bytes]:
        view = memoryview(data)
        pos = 0
        while True:
            piece: bytes | memoryview = (data if len(data) <= PIECE_MAX
                                         else view[pos:pos + PIECE_MAX])
            yield self._raw_piece(index, offset + pos, [piece], sink)
            pos += len(piece)
            if pos >= len(data):
                break

    def _frames(self, index: int, offset: int, length: int | None, frames: list[Frame],
                multi: bool = False, sink: InlineSink | None = None) -> Iterator[bytes]:
        end = None if length is None else offset + length
        # Contiguous raw (uncompressed) pieces are coalesced into one IDENTITY message up to
        # PIECE_MAX; with `multi` ("zstd-frames" accepted) contiguous compressed frames are
        # coalesced too, into one ZSTD message holding the frames back to back.
        pend_off = -1
        pend: list[bytes | memoryview] = []
        pend_len = 0                    # plaintext bytes the pending pieces cover
        pend_enc = data_pb2.IDENTITY

        def flush() -> Iterator[bytes]:
            nonlocal pend, pend_len, pend_off
            if pend and pend_enc == data_pb2.IDENTITY:
                yield self._raw_piece(index, pend_off, pend, sink)
            elif pend:
                # the message's one copy: its pieces joined behind the header
                self._count("out", sum(len(p) for p in pend))
                yield encode_piece(index, pend_off, pend_len, pend_enc, pend)
            pend, pend_len, pend_off = [], 0, -1

        sent = False
        for f in frames:
            if f.compressed:
                if not multi:
                    yield from flush()
                    self._count("out", len(f.data))
                    sent = True
                    yield encode_piece(index, f.offset, f.raw_length, data_pb2.ZSTD, [f.data])
                    continue
                if pend and (pend_enc != data_pb2.ZSTD or pend_len + f.raw_length > PIECE_MAX):
                    yield from flush()
                if not pend:
                    pend_off, pend_enc = f.offset, data_pb2.ZSTD
                pend.append(f.data)
                pend_len += f.raw_length
                sent = True
                continue
            lo = max(offset, f.offset)
            hi = f.offset + f.raw_length if end is None else min(end, f.offset + f.raw_length)
            if hi <= lo:
                continue
            piece: bytes | memoryview = f.data
            if (lo - f.offset, hi - f.offset) != (0, len(f.data)):
                piece = memoryview(f.data)[lo - f.offset:hi - f.offset]
            if pend and (pend_enc != data_pb2.IDENTITY or pend_off + pend_len != lo
                         or pend_len + len(piece) > PIECE_MAX):
                yield from flush()
            if not pend:
                pend_off, pend_enc = lo, data_pb2.IDENTITY
            pend.append(piece)
            pend_len += len(piece)
            sent = True
        if pend:
            yield from flush()
        elif not sent:
            # an empty range (or an empty chunk): one empty piece so the client sees the range
            yield encode_piece(index, offset, 0, data_pb2.IDENTITY, [])
