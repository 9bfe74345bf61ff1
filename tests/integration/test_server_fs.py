"""Filesystem and Data services over a real server process and a real unix-socket channel."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import blake3
import grpc
import pytest
import zstandard

from aifs_proto.v1 import common_pb2, data_pb2, data_pb2_grpc, filesystem_pb2, filesystem_pb2_grpc
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
