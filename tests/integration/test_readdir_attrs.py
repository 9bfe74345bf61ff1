"""A plain ReadDir against a real server (its page encoded in one message:
rpc_filesystem.encode_entries): every kind of entry comes with the attributes a GetAttr of it
gives, field by field, over pages of any size; the raw reply parses with the generated
classes."""

from __future__ import annotations

import stat

import blake3

from aifs_core.types import ROOT_INO, SET_ATIME, SET_MTIME, SET_UID, Attr, ChunkRef
from aifs_proto.v1 import filesystem_pb2, filesystem_pb2_grpc
from aifsfs.client import AIFSClient
from tests.helpers import ServerProc, call_md


def _listing(c: AIFSClient, d: int, limit: int) -> list[tuple[bytes, Attr, int]]:
    out: list[tuple[bytes, Attr, int]] = []
    cookie, eof = 0, False
    while not eof:
        entries, eof = c.readdir(d, cookie, limit)
        assert len(entries) <= limit
        out += [(e.name, e.attr, e.cookie) for e in entries]
        if entries:
            cookie = entries[-1].cookie
    return out


def test_plain_readdir_gives_each_entrys_getattr(server_module: ServerProc) -> None:
    c = AIFSClient(server_module.address, token_file=server_module.token_file)
    try:
        d = c.mkdir(ROOT_INO, b"rd-attrs").ino
        data = b"x" * 5000
        f = c.create(d, b"file").ino
        c.commit_file(f, [ChunkRef(0, blake3.blake3(data).digest(), len(data))], len(data),
                      inline=[(blake3.blake3(data).digest(), data)])
        c.setattr(f, SET_ATIME | SET_MTIME | SET_UID, uid=4_000_000_000,
                  atime_ns=-1_500_000_000_123, mtime_ns=(1 << 62) + 7)   # before 1970; far
        sub = c.mkdir(d, b"sub", 0o2750).ino
        ln = c.symlink(d, b"ln", b"../some/target").ino
        fifo = c.create(d, b"fifo", stat.S_IFIFO | 0o600).ino
        c.link(f, d, b"hard")
        names = [b"file", b"sub", b"ln", b"fifo", b"hard"]
        inos = [f, sub, ln, fifo, f]
        for limit in (1, 2, 1000):
            got = _listing(c, d, limit)
            assert [n for n, _, _ in got] == names
            assert [a.ino for _, a, _ in got] == inos
            for name, a, _ in got:
                assert a == c.getattr(a.ino) == c.lookup(d, name), name
        fa = c.getattr(f)
        assert fa.size == 5000 and fa.nlink == 2 and fa.uid == 4_000_000_000
        assert fa.atime_ns == -1_500_000_000_123 and fa.mtime_ns == (1 << 62) + 7

        # the bytes as they come, parsed by the generated classes
        ch = server_module.channel()
        try:
            stub = filesystem_pb2_grpc.FilesystemStub(ch)
            r = stub.ReadDir(filesystem_pb2.ReadDirRequest(ino=d),
                             metadata=call_md(server_module.token))
        finally:
            ch.close()
        assert r.eof and [e.name for e in r.entries] == names
        cookies = [cookie for _, _, cookie in _listing(c, d, 1000)]
        assert [e.cookie for e in r.entries] == cookies
        assert all(not e.HasField("map") for e in r.entries)
        assert r.entries[0].attr.atime_ns == -1_500_000_000_123
        assert [e.attr.mode for e in r.entries] == [c.getattr(i).mode for i in inos]
    finally:
        c.close()
