"""PutChunks with the chunks' bytes in a file under /dev/shm (aifsfs/rpc/data.py
put_chunks, server/inline_file.InlineSource) against a real server: a unix-socket client's
bytes go through its file (counted by the server as direction "in_file") and are stored byte
for byte, and the file is kept for the next call (written over from offset 0, at most one
per call in flight, never after a failed call); a TCP client, AIFS_INLINE_FILE=0, a /dev/shm where no
file can be made and a file that fills up (the rest in the messages) all store the same bytes;
the server refuses a file that is not the client's own (a symlink, a second hard link, a
directory others may enter or of another owner, a TCP peer) with INVALID_ARGUMENT and stores
nothing, and a client whose file is refused sends the bytes in the messages instead."""

from __future__ import annotations

import os
import resource
import secrets
import signal
import stat
from collections.abc import Iterator
from pathlib import Path

import blake3
import grpc
import pytest

from aifs_core.errors import InvalidArgument
from aifs_proto.v1 import data_pb2, data_pb2_grpc
from aifsfs.client import AIFSClient
from aifsfs.rpc import data as rpc_data
from aifsfs.rpc import inline_file
from aifsfs.rpc.data import PUT_FILE_MAX, encode_put
from tests.helpers import ServerProc, call_md, make_data_dir, start_server, stop_server
from tests.integration.test_snapshot_open import metric

MiB = 1 << 20
pytestmark = pytest.mark.skipif(not inline_file.available(["unix:x"]), reason="no /dev/shm")



@pytest.fixture(autouse=True)
def _no_kept_call_files() -> None:
    """The upload files kept by earlier puts in this process (other test modules of the same
    worker too): the files each test counts in /dev/shm are its own."""
    rpc_data._call_files.close()


def _in_file(sp: ServerProc) -> int:
    return int(metric(sp, "aifs_data_bytes_total", 'direction="in_file"'))


def _in(sp: ServerProc) -> int:
    return int(metric(sp, "aifs_data_bytes_total", 'direction="in"'))


def _chunks(sizes: list[int]) -> list[tuple[bytes, bytes]]:
    out = []
    for n in sizes:
        data = os.urandom(n)
        out.append((blake3.blake3(data).digest(), data))
    return out


def _read_back(c: AIFSClient, chunks: list[tuple[bytes, bytes]]) -> list[bytes]:
    return c.data.get_chunks([(cid, 0, len(d)) for cid, d in chunks])


@pytest.fixture(scope="module")
def metered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    """A server of this module's own: a unix socket and loopback TCP, metrics published."""
    data = make_data_dir(tmp_path_factory.mktemp("inline-put") / "data")
    s = start_server(data, listen=["127.0.0.1:0"], args=["--metrics-port", "0"])
    try:
        yield s
    finally:
        stop_server(s)


@pytest.fixture
def unix_client(metered: ServerProc) -> Iterator[AIFSClient]:
    with AIFSClient(metered.address, token_file=metered.token_file) as c:
        yield c


def test_unix_client_puts_through_its_file(metered: ServerProc,
                                           unix_client: AIFSClient) -> None:
    chunks = _chunks([MiB, 3, MiB - 7, 0, 700_001])
    f0, i0 = _in_file(metered), _in(metered)
    res = unix_client.data.put_chunks(chunks)
    assert res.stored + res.deduplicated == 5   # the empty chunk went in its message
    total = sum(len(d) for _, d in chunks)
    assert _in_file(metered) - f0 == total      # every non-empty byte came through the file
    assert _in(metered) - i0 == total
    assert _read_back(unix_client, chunks) == [d for _, d in chunks]
    assert len(inline_file.files_of(os.getpid())) == 1      # kept for the next call
    # a one-shot iterator still travels in the messages
    more = _chunks([50_000])
    f0 = _in_file(metered)
    assert unix_client.data.put_chunks(iter(more)).stored == 1
    assert _in_file(metered) == f0
    assert _read_back(unix_client, more) == [more[0][1]]


def test_the_upload_file_is_reused_and_written_over(metered: ServerProc,
                                                    unix_client: AIFSClient) -> None:
    """A kept file serves the next call from offset 0: a shorter second call (its file's
    tail still the first call's bytes) stores exactly its own bytes, through the same file;
    a call that fails leaves no file kept."""
    rpc_data._call_files.close()
    first = _chunks([MiB, MiB, 300_000])
    unix_client.data.put_chunks(first)
    kept = inline_file.files_of(os.getpid())
    assert len(kept) == 1
    second = _chunks([5, 4096, 70_001])
    f0 = _in_file(metered)
    assert unix_client.data.put_chunks(second).stored == 3
    assert _in_file(metered) - f0 == 5 + 4096 + 70_001
    assert inline_file.files_of(os.getpid()) == kept    # the same file, not a new one
    assert _read_back(unix_client, first + second) == [d for _, d in first + second]
    # a chunk whose id is not its bytes' BLAKE3: the call fails, its file is not kept
    bad = [(blake3.blake3(b"other").digest(), os.urandom(10_000))]
    with pytest.raises(InvalidArgument, match="BLAKE3|hash|id"):
        unix_client.data.put_chunks(bad)
    assert inline_file.files_of(os.getpid()) == []


def test_a_long_list_fills_the_file_up_to_its_bound(metered: ServerProc,
                                                     unix_client: AIFSClient) -> None:
    """At most PUT_FILE_MAX bytes of one call go into /dev/shm (RAM until the call ends); the
    rest of a long list travels in its messages."""
    n = PUT_FILE_MAX // MiB + 3
    chunks = _chunks([MiB] * n)
    f0, i0 = _in_file(metered), _in(metered)
    assert unix_client.data.put_chunks(chunks).stored == n
    assert _in_file(metered) - f0 == PUT_FILE_MAX and _in(metered) - i0 == n * MiB
    assert _read_back(unix_client, chunks[-4:]) == [d for _, d in chunks[-4:]]


def test_tcp_client_and_switched_off_put_in_messages(
        metered: ServerProc, monkeypatch: pytest.MonkeyPatch) -> None:
    tcp = next(a for a in metered.addresses if not a.startswith("unix:"))
    chunks = _chunks([MiB, 12_345])
    f0, i0 = _in_file(metered), _in(metered)
    with AIFSClient(tcp, token=metered.token, compress_uploads=False) as c:
        c.data.put_chunks(chunks)
        assert _read_back(c, chunks) == [d for _, d in chunks]
    assert _in_file(metered) == f0 and _in(metered) - i0 == MiB + 12_345
    monkeypatch.setenv("AIFS_INLINE_FILE", "0")
    chunks = _chunks([MiB])
    with AIFSClient(metered.address, token_file=metered.token_file) as c:
        c.data.put_chunks(chunks)
        assert _read_back(c, chunks) == [chunks[0][1]]
    assert _in_file(metered) == f0


def test_no_file_to_make_or_a_full_one_falls_back_to_messages(
        metered: ServerProc, unix_client: AIFSClient,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # no /dev/shm to make the file in: the whole call in the messages
    rpc_data._call_files.close()      # (no file kept from an earlier call)
    with monkeypatch.context() as mp:
        mp.setattr(inline_file, "SHM", "/nonexistent-aifs-shm")
        mp.setattr(inline_file, "_dir", None)
        chunks = _chunks([MiB, 1000])
        f0 = _in_file(metered)
        unix_client.data.put_chunks(chunks)
        assert _in_file(metered) == f0
        assert _read_back(unix_client, chunks) == [d for _, d in chunks]
    # a file that fills up (the kernel's file size limit: EFBIG, as ENOSPC on a full tmpfs):
    # the chunks written whole go through it, the rest in the messages
    chunks = _chunks([MiB, MiB, MiB])
    f0, i0 = _in_file(metered), _in(metered)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (MiB + MiB // 2, hard))
    try:
        res = unix_client.data.put_chunks(chunks)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert res.stored == 3
    assert _in_file(metered) - f0 == MiB and _in(metered) - i0 == 3 * MiB
    assert _read_back(unix_client, chunks) == [d for _, d in chunks]
    assert len(inline_file.files_of(os.getpid())) <= 1   # at most the kept one


def _raw_put(sp: ServerProc, path: str, chunk: tuple[bytes, bytes], tcp: bool = False
             ) -> grpc.RpcError | None:
    """One PutChunks naming `path`, the chunk at offset 0 of it; the call's error or None."""
    cid, data = chunk
    addr = next(a for a in sp.addresses if a.startswith("unix:") != tcp)
    ch = grpc.insecure_channel(addr)
    try:
        call = ch.stream_unary("/aifs.v1.Data/PutChunks", request_serializer=lambda m: m,
                               response_deserializer=data_pb2.PutChunksReply.FromString)
        call(iter([encode_put(cid, b"", data_pb2.IDENTITY, len(data), 0, path)]),
             metadata=call_md(sp.token), timeout=30)
        return None
    except grpc.RpcError as err:
        return err
    finally:
        ch.close()


def _stored(sp: ServerProc, cid: bytes) -> bool:
    ch = grpc.insecure_channel(sp.address)
    try:
        r = data_pb2_grpc.DataStub(ch).HasChunks(data_pb2.HasChunksRequest(chunk_ids=[cid]),
                                                 metadata=call_md(sp.token), timeout=30)
        return bool(r.present[0])
    finally:
        ch.close()


def _refused(sp: ServerProc, path: str, chunk: tuple[bytes, bytes], tcp: bool = False) -> bool:
    err = _raw_put(sp, path, chunk, tcp)
    return (err is not None and err.code() == grpc.StatusCode.INVALID_ARGUMENT
            and not _stored(sp, chunk[0]))


def test_server_reads_only_the_clients_own_file(metered: ServerProc, tmp_path: Path) -> None:
    def name(directory: str | None = None) -> Path:
        return Path(f"{directory or inline_file.private_dir()}/{secrets.token_hex(16)}")

    # the proper case: a file of ours in our private directory
    chunk = _chunks([100_000])[0]
    good = name()
    good.write_bytes(chunk[1])
    try:
        f0 = _in_file(metered)
        assert _raw_put(metered, str(good), chunk) is None and _stored(metered, chunk[0])
        assert _in_file(metered) - f0 == 100_000
        # over TCP the same file is refused
        chunk = _chunks([5000])[0]
        good.write_bytes(chunk[1])
        assert _refused(metered, str(good), chunk, tcp=True)
    finally:
        good.unlink()
    # a symlink to a file holding the bytes: never read through
    chunk = _chunks([5000])[0]
    target = tmp_path / "target"
    target.write_bytes(chunk[1])
    link = name()
    link.symlink_to(target)
    try:
        assert _refused(metered, str(link), chunk)
    finally:
        link.unlink()
    # a second hard link of a file of ours: refused
    first, second = name(), name()
    first.write_bytes(chunk[1])
    os.link(first, second)
    try:
        assert _refused(metered, str(second), chunk)
    finally:
        first.unlink()
        second.unlink()
    # a name the client would not make, and one that is gone
    other = tmp_path / "x"
    other.write_bytes(chunk[1])
    assert _refused(metered, str(other), chunk)
    assert _refused(metered, str(name()), chunk)
    # a directory others may enter: its names may be known to them
    shared = Path(f"{inline_file.SHM}/{inline_file.PREFIX}{os.getpid()}-{secrets.token_hex(16)}")
    shared.mkdir(mode=0o700)
    inside = name(str(shared))
    inside.write_bytes(chunk[1])
    try:
        shared.chmod(0o755)
        assert _refused(metered, str(inside), chunk)
        if os.geteuid() == 0:
            # a closed directory of another user's (root may chown): not ours to read from
            shared.chmod(0o700)
            os.chown(shared, 65534, 65534)
            assert stat.S_IMODE(shared.stat().st_mode) == 0o700
            assert _refused(metered, str(inside), chunk)
            # our directory, the file another user's
            os.chown(shared, os.geteuid(), os.getegid())
            os.chown(inside, 65534, 65534)
            assert _refused(metered, str(inside), chunk)
    finally:
        inside.unlink()
        shared.rmdir()


def test_client_whose_file_is_refused_sends_messages(
        metered: ServerProc, unix_client: AIFSClient) -> None:
    # the client's private directory open to others: the server refuses its files, the
    # client puts the same chunks in the messages and keeps to them from then on
    d = inline_file.private_dir()
    os.chmod(d, 0o750)
    try:
        chunks = _chunks([MiB, 4096])
        f0, i0 = _in_file(metered), _in(metered)
        assert unix_client.data.put_chunks(chunks).stored == 2
        assert _in_file(metered) == f0 and _in(metered) - i0 == MiB + 4096
        os.chmod(d, 0o700)
        more = _chunks([MiB])
        unix_client.data.put_chunks(more)
        assert _in_file(metered) == f0          # messages from now on
        assert _read_back(unix_client, chunks + more) == [d for _, d in chunks + more]
    finally:
        os.chmod(d, 0o700)
    rpc_data._call_files.close()        # the read-back's GetChunks file, kept for reuse
    assert inline_file.files_of(os.getpid()) == []
