"""What `put` may change and what needs `delete` (issue 13), over a real server process.

Policy: `put` creates and changes content (write, truncate, setattr, RENAME_EXCHANGE); removing
a name is deleting, so a rename that REPLACES an existing name needs `delete` as unlink does.
"""

from __future__ import annotations

from collections.abc import Iterator

import blake3
import grpc
import pytest

from aifs_core.types import RENAME_EXCHANGE, RENAME_NOREPLACE
from aifs_proto.v1 import common_pb2, filesystem_pb2, filesystem_pb2_grpc
from aifs_server.auth import mint_token
from tests.helpers import ServerProc, call_md, error_info

Stub = filesystem_pb2_grpc.FilesystemStub


@pytest.fixture(scope="module")
def fs(server_module: ServerProc) -> Iterator[Stub]:
    with server_module.channel() as ch:
        yield filesystem_pb2_grpc.FilesystemStub(ch)


@pytest.fixture(scope="module")
def root_key(server_module: ServerProc) -> bytes:
    return (server_module.data_dir / "macaroon.key").read_bytes()


def _write(fs: Stub, md: tuple[tuple[str, str], ...], parent: int, name: bytes, data: bytes
           ) -> int:
    """Create `name` holding `data` (one inline chunk): the ino."""
    ino = fs.Create(filesystem_pb2.CreateRequest(parent=parent, name=name, mode=0o100644),
                    metadata=md, timeout=10).attr.ino
    cid = blake3.blake3(data).digest()
    fs.CommitFile(filesystem_pb2.CommitFileRequest(
        ino=ino, size=len(data), truncated=True,
        chunks=[common_pb2.ChunkRef(index=0, chunk_id=cid, length=len(data))],
        inline_chunks=[filesystem_pb2.InlineChunk(chunk_id=cid, data=data)]),
        metadata=md, timeout=10)
    return ino


def _dir(fs: Stub, md: tuple[tuple[str, str], ...], name: bytes) -> int:
    return int(fs.MkDir(filesystem_pb2.MkDirRequest(parent=1, name=name, mode=0o40755),
                        metadata=md, timeout=10).attr.ino)


def _lookup(fs: Stub, md: tuple[tuple[str, str], ...], parent: int, name: bytes) -> int:
    return int(fs.Lookup(filesystem_pb2.LookupRequest(parent=parent, name=name), metadata=md,
                         timeout=10).attr.ino)


def _rename(fs: Stub, md: tuple[tuple[str, str], ...], parent: int, name: bytes,
            new_name: bytes, flags: int = 0) -> None:
    fs.Rename(filesystem_pb2.RenameRequest(parent=parent, name=name, new_parent=parent,
                                           new_name=new_name, flags=flags),
              metadata=md, timeout=10)


def test_put_only_token_cannot_replace_by_rename(server_module: ServerProc, fs: Stub,
                                                 root_key: bytes) -> None:
    admin = call_md(server_module.token)
    d = _dir(fs, admin, b"rename-over")
    victim = _write(fs, admin, d, b"victim", b"precious bytes")
    put = call_md(mint_token(root_key, "default", ["put", "stat"], 600))
    _write(fs, put, d, b"attacker", b"garbage")

    with pytest.raises(grpc.RpcError) as ei:
        _rename(fs, put, d, b"attacker", b"victim")
    code, reason, msg = error_info(ei.value)
    assert code == grpc.StatusCode.PERMISSION_DENIED and reason == "PERMISSION_DENIED"
    assert "delete" in msg and "victim" in msg
    # the victim is untouched and the source still there: the refused rename did nothing
    assert _lookup(fs, admin, d, b"victim") == victim
    assert fs.GetAttr(filesystem_pb2.InodeRequest(ino=victim), metadata=admin,
                      timeout=10).attr.size == len(b"precious bytes")
    _lookup(fs, admin, d, b"attacker")

    # the same rename with `delete` as well replaces, as unlink would have removed it
    both = call_md(mint_token(root_key, "default", ["put", "delete"], 600))
    _rename(fs, both, d, b"attacker", b"victim")
    assert _lookup(fs, admin, d, b"victim") != victim


def test_put_only_token_may_rename_to_a_free_name_and_exchange(
        server_module: ServerProc, fs: Stub, root_key: bytes) -> None:
    admin = call_md(server_module.token)
    d = _dir(fs, admin, b"rename-free")
    put = call_md(mint_token(root_key, "default", ["put"], 600))
    a = _write(fs, put, d, b"a", b"aaa")
    b = _write(fs, put, d, b"b", b"bbb")
    _rename(fs, put, d, b"a", b"c")                    # a new name: nothing removed
    assert _lookup(fs, admin, d, b"c") == a
    _rename(fs, put, d, b"c", b"b", RENAME_EXCHANGE)   # both names stay: nothing removed
    assert _lookup(fs, admin, d, b"b") == a and _lookup(fs, admin, d, b"c") == b
    # renaming a name onto a hard link of itself removes nothing either (POSIX: a no-op)
    fs.Link(filesystem_pb2.LinkRequest(ino=a, new_parent=d, new_name=b"a2"), metadata=put,
            timeout=10)
    _rename(fs, put, d, b"a2", b"b")
    assert _lookup(fs, admin, d, b"a2") == a == _lookup(fs, admin, d, b"b")
    # a caller's own RENAME_NOREPLACE still answers EEXIST, not a permission error
    with pytest.raises(grpc.RpcError) as ei:
        _rename(fs, put, d, b"c", b"b", RENAME_NOREPLACE)
    assert ei.value.code() == grpc.StatusCode.ALREADY_EXISTS


def test_put_only_token_may_truncate_and_rewrite(server_module: ServerProc, fs: Stub,
                                                 root_key: bytes) -> None:
    # changing content is `put` (as JuiceFS and NFS do): the name stays, so nothing is deleted
    admin = call_md(server_module.token)
    d = _dir(fs, admin, b"rewrite")
    ino = _write(fs, admin, d, b"f", b"old content")
    put = call_md(mint_token(root_key, "default", ["put"], 600))
    fs.SetAttr(filesystem_pb2.SetAttrRequest(ino=ino, fields=8, size=0),
               metadata=put, timeout=10)
    assert fs.GetAttr(filesystem_pb2.InodeRequest(ino=ino), metadata=admin,
                      timeout=10).attr.size == 0
