"""Filesystem and Data services over a real server process and a real unix-socket channel."""

from __future__ import annotations

import errno
import stat
from collections.abc import Iterator

import blake3
import grpc
import pytest
import zstandard

from aifs_proto.v1 import common_pb2, data_pb2, data_pb2_grpc, filesystem_pb2, filesystem_pb2_grpc
from aifsfs.client import AIFSClient
from aifsfs.errors import IncompleteRead
from tests.helpers import ServerProc, call_md, error_info

MiB = 1 << 20


class Fs:
    """Tiny client for these tests (the real SDK lives in aifsfs.client)."""

    def __init__(self, sp: ServerProc, namespace: str = "default") -> None:
        self.ch = sp.channel()
        self.md = call_md(sp.token, namespace)
        self.fs = filesystem_pb2_grpc.FilesystemStub(self.ch)
        self.data = data_pb2_grpc.DataStub(self.ch)

    def close(self) -> None:
        self.ch.close()

    def create(self, name: bytes, parent: int = 1) -> int:
        r = self.fs.Create(filesystem_pb2.CreateRequest(parent=parent, name=name, mode=0o644),
                           metadata=self.md)
        return int(r.attr.ino)

    def write_file(self, ino: int, content: bytes, chunk_size: int = MiB,
                   zstd_upload: bool = False) -> None:
        refs = []

        def reqs() -> Iterator[data_pb2.PutChunkRequest]:
            for i in range(0, len(content), chunk_size):
                piece = content[i:i + chunk_size]
                cid = blake3.blake3(piece).digest()
                refs.append(common_pb2.ChunkRef(index=i // chunk_size, chunk_id=cid,
                                                length=len(piece)))
                if zstd_upload:
                    yield data_pb2.PutChunkRequest(
                        chunk_id=cid, data=zstandard.ZstdCompressor().compress(piece),
                        encoding=data_pb2.ZSTD, raw_length=len(piece))
                else:
                    yield data_pb2.PutChunkRequest(chunk_id=cid, data=piece)

        self.data.PutChunks(reqs(), metadata=self.md)
        self.fs.CommitFile(filesystem_pb2.CommitFileRequest(ino=ino, chunks=refs,
                                                            size=len(content)),
                           metadata=self.md)

    def read_file(self, ino: int, zstd: bool) -> tuple[bytes, int]:
        """(content, payload bytes received) through GetChunkMap + GetChunks."""
        cmap = self.fs.GetChunkMap(filesystem_pb2.ChunkMapRequest(ino=ino), metadata=self.md)
        ranges = [data_pb2.ChunkRange(chunk_id=c.chunk_id, offset=0, length=c.length)
                  for c in cmap.chunks]
        return self.get_ranges(ranges, zstd)

    def get_ranges(self, ranges: list[data_pb2.ChunkRange], zstd: bool) -> tuple[bytes, int]:
        out = [bytearray() for _ in ranges]
        wire = 0
        req = data_pb2.GetChunksRequest(ranges=ranges,
                                        accept_encodings=["zstd"] if zstd else [])
        for piece in self.data.GetChunks(req, metadata=self.md):
            wire += piece.ByteSize()
            r = ranges[piece.range_index]
            if piece.encoding == data_pb2.ZSTD:
                raw = zstandard.ZstdDecompressor().decompress(piece.data)
                assert len(raw) == piece.raw_length
            else:
                raw = piece.data
            # slice the piece to the requested range (ZSTD pieces are whole frames)
            lo = max(r.offset, piece.offset)
            end = r.offset + r.length if r.length else piece.offset + piece.raw_length
            hi = min(end, piece.offset + piece.raw_length)
            buf = out[piece.range_index]
            assert lo - r.offset == len(buf), "pieces must arrive in order, without gaps"
            buf += raw[lo - piece.offset:hi - piece.offset]
        return b"".join(out), wire


@pytest.fixture
def fs(server_module: ServerProc) -> Iterator[Fs]:
    c = Fs(server_module)
    yield c
    c.close()


def _compressible(n: int) -> bytes:
    line = b"".join(b"row %08d, value=%d, label=cat\n" % (i, i % 97) for i in range(n // 30 + 1))
    return line[:n]


def test_create_write_commit_read_identity_and_zstd(fs: Fs) -> None:
    content = _compressible(3 * MiB + 12345)
    ino = fs.create(b"data.txt")
    fs.write_file(ino, content)
    attr = fs.fs.GetAttr(filesystem_pb2.InodeRequest(ino=ino), metadata=fs.md).attr
    assert attr.size == len(content) and stat.S_ISREG(attr.mode)
    cmap = fs.fs.GetChunkMap(filesystem_pb2.ChunkMapRequest(ino=ino), metadata=fs.md)
    assert cmap.chunk_size == MiB and [c.index for c in cmap.chunks] == [0, 1, 2, 3]
    for zstd in (False, True):
        got, _ = fs.read_file(ino, zstd)
        assert got == content
    # a range read in the middle of a chunk, both encodings
    c1 = cmap.chunks[1]
    rng = [data_pb2.ChunkRange(chunk_id=c1.chunk_id, offset=70_000, length=5000)]
    for zstd in (False, True):
        got, _ = fs.get_ranges(rng, zstd)
        assert got == content[MiB + 70_000:MiB + 75_000]


def test_zstd_upload_is_verified_and_deduplicated(fs: Fs) -> None:
    content = _compressible(MiB)
    ino = fs.create(b"z.txt")
    fs.write_file(ino, content, zstd_upload=True)
    assert fs.read_file(ino, False)[0] == content
    cid = blake3.blake3(content).digest()
    r = fs.data.HasChunks(data_pb2.HasChunksRequest(chunk_ids=[cid, b"\0" * 32]),
                          metadata=fs.md)
    assert list(r.present) == [True, False]
    rep = fs.data.PutChunks(iter([data_pb2.PutChunkRequest(chunk_id=cid, data=content)]),
                            metadata=fs.md)
    assert rep.deduplicated == 1 and rep.stored == 0
    # wrong id for the data: refused, says so
    with pytest.raises(grpc.RpcError) as ei:
        fs.data.PutChunks(iter([data_pb2.PutChunkRequest(chunk_id=b"\1" * 32, data=b"x")]),
                          metadata=fs.md)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # a zstd bomb larger than the chunk size is refused
    bomb = zstandard.ZstdCompressor().compress(bytes(2 * MiB))
    with pytest.raises(grpc.RpcError) as ei:
        fs.data.PutChunks(iter([data_pb2.PutChunkRequest(
            chunk_id=blake3.blake3(bytes(2 * MiB)).digest(), data=bomb,
            encoding=data_pb2.ZSTD)]), metadata=fs.md)
    code, _, msg = error_info(ei.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "chunk size" in msg


def test_zstd_wire_bytes_smaller_for_8mib_file(fs: Fs, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    content = _compressible(8 * MiB)
    ino = fs.create(b"eight.txt")
    fs.write_file(ino, content)
    plain, plain_wire = fs.read_file(ino, zstd=False)
    comp, zstd_wire = fs.read_file(ino, zstd=True)
    assert plain == content and comp == content
    assert plain_wire >= len(content)
    assert zstd_wire < plain_wire // 3
    with capsys.disabled():
        print(f"\n[wire] 8 MiB compressible file: identity {plain_wire} bytes, "
              f"zstd {zstd_wire} bytes ({zstd_wire / plain_wire:.3f})")


def test_unknown_chunk_not_found_and_missing_chunk_commit(fs: Fs) -> None:
    with pytest.raises(grpc.RpcError) as ei:
        fs.get_ranges([data_pb2.ChunkRange(chunk_id=b"\7" * 32)], False)
    code, reason, msg = error_info(ei.value)
    assert code == grpc.StatusCode.NOT_FOUND and reason == "NOT_FOUND" and "07070707" in msg
    ino = fs.create(b"missing.bin")
    with pytest.raises(grpc.RpcError) as ei:
        fs.fs.CommitFile(filesystem_pb2.CommitFileRequest(
            ino=ino, size=10, chunks=[common_pb2.ChunkRef(index=0, chunk_id=b"\5" * 32,
                                                          length=10)]), metadata=fs.md)
    code, reason, _ = error_info(ei.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "MISSING_CHUNK"


def test_namespace_records_isolate_chunks(server_module: ServerProc) -> None:
    from aifs_proto.v1 import admin_pb2, admin_pb2_grpc

    a = Fs(server_module)
    try:
        admin = admin_pb2_grpc.AdminStub(a.ch)
        rep = admin.Format(admin_pb2.FormatRequest(namespace="other"), metadata=a.md)
        assert rep.created or "already exists" in rep.message
        content = b"secret content of namespace default"
        ino = a.create(b"iso.txt")
        a.write_file(ino, content)
        cid = blake3.blake3(content).digest()
        b = Fs(server_module, namespace="other")
        try:
            assert list(b.data.HasChunks(data_pb2.HasChunksRequest(chunk_ids=[cid]),
                                         metadata=b.md).present) == [False]
            with pytest.raises(grpc.RpcError) as ei:
                b.get_ranges([data_pb2.ChunkRange(chunk_id=cid)], False)
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
        finally:
            b.close()
    finally:
        a.close()


def test_readdir_paging_rename_unlink_xattr_statfs_errors(fs: Fs) -> None:
    md = fs.md
    d = fs.fs.MkDir(filesystem_pb2.MkDirRequest(parent=1, name=b"dir", mode=0o755),
                    metadata=md).attr.ino
    names = {b"f%02d" % i for i in range(25)}
    for n in names:
        fs.create(n, parent=d)
    seen: list[bytes] = []
    cookie, pages = 0, 0
    while True:
        r = fs.fs.ReadDir(filesystem_pb2.ReadDirRequest(ino=d, cookie=cookie, limit=10),
                          metadata=md)
        pages += 1
        assert len(r.entries) <= 10
        seen += [e.name for e in r.entries]
        if r.eof:
            break
        cookie = r.entries[-1].cookie
    assert set(seen) == names and len(seen) == 25 and pages >= 3

    # rename then lookup
    fs.fs.Rename(filesystem_pb2.RenameRequest(parent=d, name=b"f00", new_parent=1,
                                              new_name=b"moved"), metadata=md)
    moved = fs.fs.Lookup(filesystem_pb2.LookupRequest(parent=1, name=b"moved"), metadata=md)
    with pytest.raises(grpc.RpcError) as ei:
        fs.fs.Lookup(filesystem_pb2.LookupRequest(parent=d, name=b"f00"), metadata=md)
    code, reason, _ = error_info(ei.value)
    assert code == grpc.StatusCode.NOT_FOUND and reason == "NOT_FOUND"

    # xattrs
    ino = moved.attr.ino
    fs.fs.SetXattr(filesystem_pb2.XattrRequest(ino=ino, name=b"user.k", value=b"v1"),
                   metadata=md)
    assert fs.fs.GetXattr(filesystem_pb2.XattrRequest(ino=ino, name=b"user.k"),
                          metadata=md).value == b"v1"
    assert b"user.k" in fs.fs.ListXattr(filesystem_pb2.InodeRequest(ino=ino),
                                        metadata=md).names
    fs.fs.RemoveXattr(filesystem_pb2.XattrRequest(ino=ino, name=b"user.k"), metadata=md)
    with pytest.raises(grpc.RpcError) as ei:
        fs.fs.GetXattr(filesystem_pb2.XattrRequest(ino=ino, name=b"user.k"), metadata=md)
    assert ei.value.code() == grpc.StatusCode.NOT_FOUND

    # unlink, rmdir of a non-empty dir, a name too long
    fs.fs.Unlink(filesystem_pb2.NameRequest(parent=1, name=b"moved"), metadata=md)
    with pytest.raises(grpc.RpcError) as ei:
        fs.fs.RmDir(filesystem_pb2.NameRequest(parent=1, name=b"dir"), metadata=md)
    code, reason, _ = error_info(ei.value)
    assert code == grpc.StatusCode.FAILED_PRECONDITION and reason == "NOT_EMPTY"
    with pytest.raises(grpc.RpcError) as ei:
        fs.create(b"x" * 256)
    code, reason, _ = error_info(ei.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and reason == "NAME_TOO_LONG"

    # symlink + readlink
    s = fs.fs.Symlink(filesystem_pb2.SymlinkRequest(parent=1, name=b"ln", target=b"dir/f01"),
                      metadata=md).attr
    assert fs.fs.ReadLink(filesystem_pb2.InodeRequest(ino=s.ino), metadata=md).target == \
        b"dir/f01"

    st = fs.fs.StatFs(common_pb2.Empty(), metadata=md)
    assert st.block_size == 4096 and st.name_max == 255 and st.files >= 27
    assert st.blocks >= st.blocks_free > 0


def test_file_info_gives_the_asset_id(fs: Fs) -> None:
    content = _compressible(MiB + 5)
    ino = fs.create(b"info.txt")
    fs.write_file(ino, content)
    info = fs.fs.GetFileInfo(filesystem_pb2.InodeRequest(ino=ino), metadata=fs.md)
    assert info.asset_id == blake3.blake3(content).hexdigest()
    assert info.uri == f"aifs://default/{info.asset_id}" and info.kind == "blob"
    assert info.logical_bytes == len(content) and 0 < info.stored_bytes < len(content)


# -- read path: AIFSClient.get_chunks and the mount's ChunkReader over the real server ---------


def _client(sp: ServerProc) -> AIFSClient:
    return AIFSClient(sp.address, token_file=sp.token_file)


def test_get_chunks_ranges_match_slices(server_module: ServerProc) -> None:
    import os
    import random

    c = _client(server_module)
    try:
        chunks = [os.urandom(MiB), _compressible(MiB), _compressible(300_000) + os.urandom(5000)]
        ids = [blake3.blake3(b).digest() for b in chunks]
        c.put_chunks(list(zip(ids, chunks, strict=True)))
        rng = random.Random(3)
        for zstd in (True, False):
            for _ in range(20):
                k = rng.randrange(len(chunks))
                n = len(chunks[k])
                ranges = [(ids[k], 0, 0), (ids[k], 0, n)]
                for _ in range(3):
                    off = rng.randrange(n)
                    ranges.append((ids[k], off, rng.randrange(1, n - off + 1)))
                got = c.get_chunks(ranges, accept_zstd=zstd)
                assert got == [chunks[k][o:o + ln] if ln else chunks[k][o:]
                               for _, o, ln in ranges]
        with pytest.raises(IncompleteRead, match="past the chunk's end"):
            c.get_chunks([(ids[2], 0, len(chunks[2]) + 1)])
    finally:
        c.close()


def test_chunk_reader_fetches_one_frame_for_a_small_read_then_hits_the_cache(
        server_module: ServerProc) -> None:
    import os

    import trio

    from aifs_core.types import ChunkRef
    from aifsfs.fuse.chunk_cache import FRAME_SIZE, ChunkCache
    from aifsfs.fuse.readahead import ChunkReader

    c = _client(server_module)
    try:
        data = os.urandom(MiB)
        cid = blake3.blake3(data).digest()
        c.put_chunks([(cid, data)])
        reader = ChunkReader(c, ChunkCache(8 * MiB), trio.CapacityLimiter(4))
        ref = ChunkRef(0, cid, MiB)

        async def main() -> None:
            off = 5 * FRAME_SIZE + 1000
            assert await reader.read(ref, off, 4096) == data[off:off + 4096]
            assert (reader.fetches, reader.fetched_bytes) == (1, FRAME_SIZE)
            # more 4 KiB reads in the same frame: from the cache, no call
            for o in (off + 4096, 5 * FRAME_SIZE, 6 * FRAME_SIZE - 4096):
                assert await reader.read(ref, o, 4096) == data[o:o + 4096]
            assert reader.fetches == 1
            # a read across a frame boundary fetches the two frames it covers
            o = 8 * FRAME_SIZE - 100
            assert await reader.read(ref, o, 200) == data[o:o + 200]
            assert (reader.fetches, reader.fetched_bytes) == (2, 3 * FRAME_SIZE)
            # concurrent readers of one range share a single fetch
            async with trio.open_nursery() as n:
                for _ in range(4):
                    n.start_soon(reader.read, ref, 12 * FRAME_SIZE, 4096)
            assert reader.fetches == 3
            # a whole-chunk (sequential) read, then everything is a hit
            assert await reader.read(ref, 0, MiB, whole=True) == data
            assert reader.fetches == 4
            assert await reader.read(ref, MiB - 10, 100) == data[-10:] + bytes(90)

        trio.run(main)
    finally:
        c.close()


# -- fast paths of the mount: replies that save round trips ------------------------------------

def test_entry_replies_carry_the_parent_attrs(server_module: ServerProc) -> None:
    c = _client(server_module)
    try:
        d = c.mkdir(1, b"fp-parent")
        a, pa = c.create_entry(d.ino, b"f", 0o100644)
        assert pa is not None and pa == c.getattr(d.ino)       # the parent after the create
        assert pa.mtime_ns >= d.mtime_ns
        sub, pa = c.mkdir_entry(d.ino, b"sub", 0o755)
        assert pa is not None and pa.nlink == 3 and pa == c.getattr(d.ino)
        _s, pa = c.symlink_entry(d.ino, b"ln", b"f")
        assert pa == c.getattr(d.ino)
        linked, pa = c.link_entry(a.ino, sub.ino, b"hard")
        assert linked.nlink == 2 and pa == c.getattr(sub.ino)
    finally:
        c.close()


def test_unlink_and_rmdir_say_what_they_removed_and_may_drop_it(
        server_module: ServerProc) -> None:
    from aifsfs.errors import RemoteError

    c = _client(server_module)
    try:
        d = c.mkdir(1, b"fp-remove")
        a = c.create(d.ino, b"one")
        c.link(a.ino, d.ino, b"two")
        r = c.remove(d.ino, b"one", forget=True)
        assert r.attr is not None and (r.attr.ino, r.attr.nlink) == (a.ino, 1)
        assert r.parent == c.getattr(d.ino)
        assert c.getattr(a.ino).nlink == 1                # still linked: forget left it alone
        r = c.remove(d.ino, b"two", forget=True)
        assert r.attr is not None and r.attr.nlink == 0
        with pytest.raises(RemoteError) as err:            # dropped in the same call
            c.getattr(a.ino)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
        # without forget the inode stays (nlink 0, an open handle may still read it) until Forget
        b = c.create(d.ino, b"kept")
        r = c.remove(d.ino, b"kept")
        assert r.attr is not None and r.attr.nlink == 0 and c.getattr(b.ino).nlink == 0
        c.forget(b.ino)
        with pytest.raises(RemoteError):
            c.getattr(b.ino)
        sub = c.mkdir(d.ino, b"sub")
        r = c.remove(d.ino, b"sub", directory=True, forget=True)
        assert r.attr is not None and (r.attr.ino, r.attr.nlink) == (sub.ino, 0)
        assert r.parent is not None and r.parent.nlink == 2
        with pytest.raises(RemoteError):
            c.getattr(sub.ino)
        with pytest.raises(RemoteError) as err:            # errors are unchanged
            c.remove(d.ino, b"missing", forget=True)
        assert err.value.code == grpc.StatusCode.NOT_FOUND
    finally:
        c.close()


def test_rename_says_which_inode_it_replaced(server_module: ServerProc) -> None:
    from aifsfs.errors import RemoteError

    c = _client(server_module)
    try:
        d = c.mkdir(1, b"fp-rename")
        e = c.mkdir(1, b"fp-rename-2")
        src = c.create(d.ino, b"src")
        dst = c.create(e.ino, b"dst")
        r = c.rename_entry(d.ino, b"src", e.ino, b"dst", forget=True)
        assert r.replaced is not None and (r.replaced.ino, r.replaced.nlink) == (dst.ino, 0)
        assert r.parent == c.getattr(d.ino) and r.new_parent == c.getattr(e.ino)
        assert c.lookup(e.ino, b"dst").ino == src.ino
        with pytest.raises(RemoteError):
            c.getattr(dst.ino)                             # dropped with the rename
        # no target, a hard link of itself, an exchange: nothing replaced
        assert c.rename_entry(e.ino, b"dst", d.ino, b"back").replaced is None
        c.link(src.ino, d.ino, b"alias")
        assert c.rename_entry(d.ino, b"back", d.ino, b"alias").replaced is None
        other = c.create(d.ino, b"other")
        r = c.rename_entry(d.ino, b"alias", d.ino, b"other", flags=2)   # RENAME_EXCHANGE
        assert r.replaced is None and c.getattr(other.ino).nlink == 1
        # replacing one of two links: reported with the link it has left
        r = c.rename_entry(d.ino, b"alias", d.ino, b"back", forget=True)
        assert r.replaced is not None and (r.replaced.ino, r.replaced.nlink) == (src.ino, 1)
        assert c.getattr(src.ino).nlink == 1
        # replaced without forget: kept (nlink 0) for a mount that still has it open
        y = c.create(d.ino, b"y")
        r = c.rename_entry(d.ino, b"back", d.ino, b"y")
        assert r.replaced is not None and r.replaced.ino == y.ino
        assert c.getattr(y.ino).nlink == 0
    finally:
        c.close()


def test_commit_file_stores_inline_chunks(server_module: ServerProc) -> None:
    from aifs_core.types import ChunkRef
    from aifsfs.errors import RemoteError

    c = _client(server_module)
    try:
        a = c.create(1, b"fp-inline-commit")
        data = b"small file body " * 300
        cid = blake3.blake3(data).digest()
        attr = c.commit_file(a.ino, [ChunkRef(0, cid, len(data))], len(data),
                             inline=[(cid, data)])
        assert attr.size == len(data) and attr.generation == a.generation + 1
        assert c.has_chunks([cid]) == [True]
        assert c.get_chunks([(cid, 0, 0)]) == [data]
        # a damaged inline chunk is refused and the file keeps its content
        bad = b"other bytes"
        with pytest.raises(RemoteError) as err:
            c.commit_file(a.ino, [ChunkRef(0, cid, len(bad))], len(bad),
                          inline=[(cid, bad)], truncated=True)
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "BLAKE3" in str(err.value)
        with pytest.raises(RemoteError) as err:
            c.commit_file(a.ino, [], 1, inline=[(b"short", b"x")])
        assert err.value.code == grpc.StatusCode.INVALID_ARGUMENT
        _a, _cs, refs = c.get_chunk_map(a.ino)
        assert c.getattr(a.ino).size == len(data) and refs[0].chunk_id == cid
    finally:
        c.close()


def test_open_chunk_map_inlines_small_files_only(server_module: ServerProc) -> None:
    from aifs_core.types import ChunkRef

    c = _client(server_module)
    try:
        def make(name: bytes, data: bytes) -> int:
            ino = c.create(1, name).ino
            refs, inline = [], []
            for i in range(0, len(data), MiB):
                piece = data[i:i + MiB]
                cid = blake3.blake3(piece).digest()
                refs.append(ChunkRef(i // MiB, cid, len(piece)))
                inline.append((cid, piece))
            c.commit_file(ino, refs, len(data), inline=inline)
            return ino

        small = b"0123456789" * 15000                        # 150 kB, one chunk
        ino = make(b"fp-open-small", small)
        attr, _cs, refs, data = c.open_chunk_map(ino, inline_max=MiB)
        assert data == small and len(refs) == 1
        # the caller's cache holds this generation already: no bytes
        assert c.open_chunk_map(ino, MiB, cached_generation=attr.generation)[3] == b""
        assert c.open_chunk_map(ino, MiB, cached_generation=attr.generation - 1)[3] == small
        assert c.open_chunk_map(ino, 0)[3] == b""                   # not asked for
        assert c.open_chunk_map(ino, 1000)[3] == b""                # bigger than asked
        big = make(b"fp-open-big", bytes(range(256)) * 4097)      # two chunks
        assert c.open_chunk_map(big, 2 * MiB)[3] == b""
        empty = c.create(1, b"fp-open-empty").ino
        assert c.open_chunk_map(empty, MiB)[3] == b""
    finally:
        c.close()


def test_grant_cache_keeps_expiry_namespace_and_verb_exact() -> None:
    import os
    import time

    from aifs_core.errors import PermissionDenied, TokenExpired, Unauthenticated
    from aifs_server.auth import GrantCache, mint_token, verify_token

    key = os.urandom(32)
    cache = GrantCache(ttl=60)
    tok = mint_token(key, "ns1", "get", ttl_seconds=100)
    g = verify_token(key, tok, "ns1", "get", cache=cache)
    assert g.expires is not None
    assert verify_token(key, tok, "ns1", "get", cache=cache) == g          # cached
    with pytest.raises(TokenExpired):          # cached, yet the expiry is checked every call
        verify_token(key, tok, "ns1", "get", now=g.expires, cache=cache)
    with pytest.raises(PermissionDenied):
        verify_token(key, tok, "ns1", "put", cache=cache)
    with pytest.raises(PermissionDenied):
        verify_token(key, tok, "ns2", "get", cache=cache)
    with pytest.raises(Unauthenticated):       # another root key: not the cached grant
        verify_token(os.urandom(32), tok, "ns1", "get", cache=cache)
    with pytest.raises(Unauthenticated):       # a tampered token is verified, never cached
        verify_token(key, tok[:-4] + "AAAA", "ns1", "get", cache=cache)
    short = GrantCache(ttl=0.01, max_entries=1)
    verify_token(key, tok, "ns1", "get", cache=short)
    time.sleep(0.02)                           # expired entries are verified again
    other = mint_token(key, "ns1", "get", ttl_seconds=100)
    verify_token(key, other, "ns1", "get", cache=short)
    assert len(short._items) == 1              # bounded


def test_chunk_reader_batches_concurrent_small_reads_and_isolates_a_bad_chunk(
        server_module: ServerProc) -> None:
    import os

    import trio

    from aifs_core.types import ChunkRef
    from aifsfs.errors import errno_for
    from aifsfs.fuse import readahead
    from aifsfs.fuse.chunk_cache import FRAME_SIZE, ChunkCache
    from aifsfs.fuse.readahead import ChunkReader

    c = _client(server_module)
    try:
        chunks = [os.urandom(MiB) for _ in range(3)]
        refs = [ChunkRef(i, blake3.blake3(b).digest(), MiB) for i, b in enumerate(chunks)]
        c.put_chunks([(r.chunk_id, b) for r, b in zip(refs, chunks, strict=True)])
        missing = ChunkRef(9, blake3.blake3(b"never stored").digest(), MiB)
        got: dict[tuple[int, int], bytes] = {}
        errors: list[int] = []

        def run(reader: ChunkReader, reads: list[tuple[ChunkRef, int]]) -> None:
            async def one(ref: ChunkRef, frame: int) -> None:
                try:
                    got[ref.index, frame] = await reader.read(ref, frame * FRAME_SIZE + 7, 4096)
                except Exception as exc:  # noqa: BLE001 - collected and checked below
                    errors.append(errno_for(exc))

            async def main() -> None:
                async with trio.open_nursery() as n:
                    for ref, frame in reads:
                        n.start_soon(one, ref, frame)

            trio.run(main)

        def check() -> None:
            for (i, frame), data in got.items():
                assert data == chunks[i][frame * FRAME_SIZE + 7:frame * FRAME_SIZE + 4103]

        reader = ChunkReader(c, ChunkCache(64 * MiB), trio.CapacityLimiter(32))
        run(reader, [(ref, frame) for ref in refs for frame in range(16)])
        assert len(got) == 48 and errors == []
        check()
        # 48 ranges: at most SMALL_CALLS_MAX went alone, the rest shared calls
        assert reader.fetches == 48
        assert reader.calls < 48 - readahead.SMALL_CALLS_MAX, reader.calls
        # a batch holding a range of a missing chunk: only that read fails (EIO: a chunk a
        # file's map names but the server lacks is damage, not a missing file)
        got.clear()
        reader = ChunkReader(c, ChunkCache(64 * MiB), trio.CapacityLimiter(32))
        run(reader, [(ref, frame) for ref in refs for frame in range(4)] + [(missing, 3)] +
            [(ref, frame) for ref in refs for frame in range(4, 8)])
        assert errors == [errno.EIO]
        assert len(got) == 24
        check()
    finally:
        c.close()


def test_zstd_frames_go_together_only_for_clients_that_accept_them(fs: Fs) -> None:
    import os

    from aifsfs.client import _unzstd

    text = _compressible(MiB)
    mixed = _compressible(4 * 65536) + os.urandom(65536) + _compressible(3 * 65536)
    for data in (text, mixed):
        cid = blake3.blake3(data).digest()
        fs.data.PutChunks(iter([data_pb2.PutChunkRequest(chunk_id=cid, data=data)]),
                          metadata=fs.md)
        for accept in (["zstd"], ["zstd", "zstd-frames"]):
            req = data_pb2.GetChunksRequest(ranges=[data_pb2.ChunkRange(chunk_id=cid)],
                                            accept_encodings=accept)
            pieces = list(fs.data.GetChunks(req, metadata=fs.md))
            kinds = [p.encoding for p in pieces]
            out = b"".join(_unzstd(p.data, p.raw_length)
                           if p.encoding == data_pb2.ZSTD else p.data for p in pieces)
            assert out == data
            assert [p.offset for p in pieces] == [
                sum(q.raw_length for q in pieces[:k]) for k in range(len(pieces))]
            if accept == ["zstd"]:  # one stored frame per ZSTD piece, as before
                assert all(p.raw_length <= 65536 for p in pieces if p.encoding == data_pb2.ZSTD)
            elif data is text:
                assert kinds == [data_pb2.ZSTD] and pieces[0].raw_length == MiB
            else:
                assert kinds == [data_pb2.ZSTD, data_pb2.IDENTITY, data_pb2.ZSTD]
                assert [p.raw_length for p in pieces] == [4 * 65536, 65536, 3 * 65536]
    # a piece claiming fewer bytes than its frames hold is caught (never more than +1 made)
    two = zstandard.ZstdCompressor(write_content_size=True).compress(b"a" * 1000) * 2
    assert len(_unzstd(two, 2000)) == 2000
    assert len(_unzstd(two, 1500)) == 1501
