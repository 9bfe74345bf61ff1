"""The client SDK's asset calls against a real server process, over a unix socket and TCP."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from aifs_core import errors as server_errors
from aifs_core.kinds import EmbeddingData, TensorData
from aifs_core.types import ParentEdge
from aifsfs.client import AIFSClient
from aifsfs.errors import RemoteError
from tests.helpers import ServerProc, make_data_dir, start_server, stop_server


def tcp_address(sp: ServerProc) -> str:
    return next(a for a in sp.addresses if not a.startswith("unix:"))


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    data = make_data_dir(tmp_path_factory.mktemp("sdk") / "data")
    srv = start_server(data, listen=["127.0.0.1:0"])
    try:
        yield srv
    finally:
        stop_server(srv)


@pytest.fixture(params=["unix", "tcp"])
def client(request: pytest.FixtureRequest, live_server: ServerProc) -> Iterator[AIFSClient]:
    addr = live_server.address if request.param == "unix" else tcp_address(live_server)
    # TCP has no token file next to it: pass the admin token the unix listener wrote
    with AIFSClient(addr, token=live_server.token, timeout=30, retry_for=10) as c:
        yield c


def test_blob_round_trip(client: AIFSClient) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several 1 MiB pieces and a tail
    aid = client.put_asset(data, kind="blob", metadata={"name": "rand", "n": 1})
    got = client.get_asset(aid)
    assert got["data"] == data
    assert got["asset_id"] == aid and got["kind"] == "blob" and got["size"] == len(data)
    assert got["metadata"] == {"name": "rand", "n": 1}
    assert got["uri"] == f"aifs://default/{aid}"
    info = client.stat_asset(aid)
    assert "data" not in info and info["size"] == len(data)
    assert aid in {a["asset_id"] for a in client.list_assets(kind="blob")}
    assert client.verify_asset(aid)["ok"] is True


def test_put_from_file_and_iterable_and_stream_back(client: AIFSClient, tmp_path: Path) -> None:
    data = b"line of text\n" * 200_000
    src = tmp_path / "src.bin"
    src.write_bytes(data)
    with src.open("rb") as f:
        aid = client.put_asset(f)
    assert client.put_asset(iter([data[:1000], data[1000:]])) == aid  # same bytes, same id
    info, pieces = client.get_asset_stream(aid)
    assert info["size"] == len(data)
    assert b"".join(pieces) == data
    out = tmp_path / "out.bin"
    with out.open("wb") as f:
        client.download(aid, f)
    assert out.read_bytes() == data


@pytest.mark.parametrize("arr", [
    np.arange(24, dtype=np.float32).reshape(2, 3, 4),
    np.array(3.5, dtype=np.float64),                          # 0-d
    np.arange(100, dtype=np.int64).reshape(10, 10)[::2, 1::3],  # non-contiguous view
    np.array([[True, False], [False, True]]),
    np.arange(12, dtype=np.uint8).reshape(3, 4).T,             # Fortran-ordered view
    np.zeros((0, 5), dtype=np.int16),                          # empty
    (np.arange(6) + 1j).astype(np.complex64),
])
def test_tensor_round_trip(client: AIFSClient, arr: np.ndarray) -> None:
    aid = client.put_tensor(TensorData(data=arr, metadata={"source": "test"}))
    got = client.get_tensor(aid)
    assert got.data.dtype == arr.dtype
    assert got.data.shape == arr.shape
    assert np.array_equal(got.data, arr)
    assert got.metadata == {"source": "test"}
    assert client.stat_asset(aid)["kind"] == "tensor"


def test_embedding_and_artifact_round_trip(client: AIFSClient, tmp_path: Path) -> None:
    vecs = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)
    eid = client.put_embedding(EmbeddingData(vectors=vecs, model="m-1", modality="text"))
    emb = client.get_embedding(eid)
    assert np.array_equal(emb.vectors, vecs) and emb.model == "m-1" and emb.dim == 16

    files = {"model.json": b'{"layers": 2}', "weights/a.bin": os.urandom(5000)}
    aid = client.put_artifact(files)
    assert client.get_artifact(aid) == files
    (tmp_path / "art").mkdir()
    for name, content in files.items():
        (tmp_path / "art" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "art" / name).write_bytes(content)
    assert client.put_artifact(tmp_path / "art") == aid  # deterministic encoding


def test_lineage_and_parent_not_committed(client: AIFSClient) -> None:
    raw = client.put_asset(b"raw data " + os.urandom(8))
    clean = client.put_asset(b"clean data " + os.urandom(8), parents=[
        ParentEdge(raw, transform="clean", transform_digest="sha:1")])
    model = client.put_asset(b"model " + os.urandom(8),
                             parents=[{"parent_id": clean, "transform": "train"}])
    assert client.get_asset(model)["parents"] == [
        {"parent_id": clean, "transform": "train", "transform_digest": ""}]
    ancestors = [a["asset_id"] for a in client.get_lineage(model)]
    assert ancestors[:2] == [clean, raw]

    missing = "ab" * 32
    with pytest.raises(server_errors.ParentNotCommitted) as ei:
        client.put_asset(b"orphan " + os.urandom(8), parents=[missing])
    assert isinstance(ei.value, RemoteError)
    assert ei.value.reason == "PARENT_NOT_COMMITTED"
    assert missing in ei.value.message


def test_missing_asset_and_delete(client: AIFSClient) -> None:
    with pytest.raises(server_errors.NotFound) as ei:
        client.get_asset("0" * 64)
    assert ei.value.reason == "NOT_FOUND" and "0" * 64 in str(ei.value)
    aid = client.put_asset(b"to delete " + os.urandom(8))
    client.delete_asset(aid)
    with pytest.raises(server_errors.NotFound):
        client.stat_asset(aid)


def test_admin_calls(client: AIFSClient) -> None:
    assert client.health() == "SERVING"
    info = client.introspect()
    assert info["version"] and "default" in {n["name"] for n in info["namespaces"]}
    assert "default" in {n["name"] for n in client.list_namespaces()}
    assert client.fsck()["ok"] is True
    assert client.gc(dry_run=True)["chunks_deleted"] >= 0
    again = client.format("default")
    assert again["created"] is False and again["message"]


def test_bad_token_is_refused_and_token_is_never_shown(live_server: ServerProc) -> None:
    secret = live_server.token
    with AIFSClient(tcp_address(live_server), token=secret) as c:
        assert secret not in repr(c)
    with AIFSClient(tcp_address(live_server), token="garbage", retry_for=2) as c, \
            pytest.raises(server_errors.Unauthenticated) as ei:
        c.list_assets()
    assert "garbage" not in str(ei.value)


def test_token_file_next_to_unix_socket_is_found(live_server: ServerProc) -> None:
    env = {k: os.environ.pop(k) for k in ("AIFS_TOKEN", "AIFS_TOKEN_FILE") if k in os.environ}
    try:
        with AIFSClient(live_server.address) as c:
            assert c.health() == "SERVING"
            assert isinstance(c.list_assets(), list)
    finally:
        os.environ.update(env)


def test_asset_info_carries_its_chunk_list_for_range_reads(client: AIFSClient) -> None:
    data = os.urandom((1 << 20) + 12345)  # two chunks at the default 1 MiB chunk size
    aid = client.put_asset(data, "blob")
    info = client.stat_asset(aid)
    assert info["chunk_size"] == 1 << 20
    chunks = info["chunks"]
    assert [c.index for c in chunks] == [0, 1]
    assert [c.length for c in chunks] == [1 << 20, 12345]
    # a byte range of the asset, read through its chunk list alone
    (piece,) = client.get_chunks([(chunks[1].chunk_id, 100, 1000)])
    assert piece == data[(1 << 20) + 100:(1 << 20) + 1100]
    listed = [a for a in client.list_assets() if a["asset_id"] == aid]
    assert listed and listed[0]["chunks"] == []  # listings stay small
