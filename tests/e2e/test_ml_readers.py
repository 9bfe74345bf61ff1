"""ML file formats on a real AIFS mount: numpy, np.memmap, torch, safetensors, pyarrow/parquet.

Every test writes through mount A and reads back through mount B, a second mount of the same
server that never saw the bytes being written: so what B returns came from the server (chunk
maps, GetChunks, decryption, decompression), not from A's page cache. Files written by a
library on the mount are also compared byte for byte (SHA-256) with the same objects saved by
the same library to a local tmp dir, which proves the mount mangles nothing.

Fixtures (module scope, so the suite stays fast): `pair` = (A, B) over one `server_module`,
made with `tests.e2e.conftest.start_mount` and always torn down with `teardown_mount`.
Each test works in its own directory (`work`), named after the test.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as np_load_file
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import load_file as pt_load_file
from safetensors.torch import save_file as pt_save_file

from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.helpers import ServerProc

pytestmark = [pytest.mark.e2e, pytest.mark.usefixtures("caches_kept")]

MiB = 1 << 20


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


@pytest.fixture(scope="module")
def pair(server_module: ServerProc) -> Iterator[tuple[Mount, Mount]]:
    """Two mounts of one server: A writes, B (cold, separate process) reads."""
    a = start_mount(server_module)
    try:
        b = start_mount(server_module)
        try:
            yield a, b
        finally:
            teardown_mount(b)
    finally:
        teardown_mount(a)


@pytest.fixture
def work(pair: tuple[Mount, Mount], request: pytest.FixtureRequest
         ) -> tuple[Path, Path]:
    """(dir on A, the same dir seen through B) for this test."""
    a, b = pair
    name = request.node.name.replace("[", "_").replace("]", "")
    (a.path / name).mkdir()
    return a.path / name, b.path / name


# --- numpy -------------------------------------------------------------------------------------

DTYPE_ARRAYS: dict[str, np.ndarray] = {}


def _dtype_arrays() -> dict[str, np.ndarray]:
    if DTYPE_ARRAYS:
        return DTYPE_ARRAYS
    rng = np.random.default_rng(1234)
    DTYPE_ARRAYS.update({
        "bool": rng.integers(0, 2, (37, 5)).astype(np.bool_),
        "int8": rng.integers(-128, 128, 1001, dtype=np.int8),
        "uint16": rng.integers(0, 1 << 16, (3, 333), dtype=np.uint16),
        "int32": rng.integers(-(1 << 31), 1 << 31, (64, 64), dtype=np.int32),
        "int64": rng.integers(-(1 << 62), 1 << 62, 4099, dtype=np.int64),
        "float16": rng.standard_normal((7, 11, 13)).astype(np.float16),
        "float32": rng.standard_normal((256, 1024)).astype(np.float32),   # 1 MiB: a chunk
        "float64_fortran": np.asfortranarray(rng.standard_normal((300, 200))),
        "complex64": (rng.standard_normal(500) + 1j * rng.standard_normal(500)
                      ).astype(np.complex64),
        "scalar": np.array(3.25, dtype=np.float64),
        "empty": np.zeros((0, 4), dtype=np.float32),
        "structured": np.array([(1, 2.5, b"ab"), (3, -1.0, b"xyz")],
                               dtype=[("i", "<i4"), ("f", "<f8"), ("s", "S3")]),
        "big_endian": np.arange(1000, dtype=">i4"),
    })
    return DTYPE_ARRAYS


@pytest.mark.parametrize("kind", sorted(_dtype_arrays()))
def test_numpy_save_load_dtypes(work: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    arr = _dtype_arrays()[kind]
    on_a, on_b = work
    np.save(on_a / "x.npy", arr)
    np.save(tmp_path / "x.npy", arr)
    assert sha256(on_a / "x.npy") == sha256(tmp_path / "x.npy")
    for d in (on_a, on_b):
        got = np.load(d / "x.npy")
        assert got.dtype == arr.dtype and got.shape == arr.shape
        np.testing.assert_array_equal(got, arr)
        assert got.flags.f_contiguous == arr.flags.f_contiguous
    assert sha256(on_b / "x.npy") == sha256(tmp_path / "x.npy")


def test_numpy_64mib_array_load_and_mmap(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_a, on_b = work
    arr = np.random.default_rng(7).standard_normal(16 * MiB, dtype=np.float32)  # 64 MiB
    np.save(on_a / "big.npy", arr)
    np.save(tmp_path / "big.npy", arr)
    local = sha256(tmp_path / "big.npy")
    assert os.path.getsize(on_b / "big.npy") == os.path.getsize(tmp_path / "big.npy")
    assert sha256(on_b / "big.npy") == local
    assert sha256(on_a / "big.npy") == local
    np.testing.assert_array_equal(np.load(on_b / "big.npy"), arr)
    # mmap_mode="r": random slices first (frame-sized reads), then all of it
    m = np.load(on_b / "big.npy", mmap_mode="r")
    assert isinstance(m, np.memmap) and m.shape == arr.shape
    for lo in (0, 262_139, 3 * MiB - 5, 9_999_999, 16 * MiB - 100):
        np.testing.assert_array_equal(m[lo:lo + 100], arr[lo:lo + 100])
    np.testing.assert_array_equal(m, arr)
    del m


def test_np_memmap_read_with_offset(work: tuple[Path, Path]) -> None:
    on_a, on_b = work
    header = b"HDR!" * 1000                         # 4000 bytes, not page aligned
    body = np.arange(3 * MiB // 8 + 17, dtype=np.int64).reshape(-1, 1)  # crosses 1 MiB chunks
    with open(on_a / "raw.bin", "wb") as f:
        f.write(header)
        f.write(body.tobytes())
    for d in (on_a, on_b):
        m = np.memmap(d / "raw.bin", dtype=np.int64, mode="r", offset=len(header),
                      shape=body.shape)
        np.testing.assert_array_equal(m[MiB // 8 - 3: MiB // 8 + 3], body[MiB // 8 - 3:
                                                                          MiB // 8 + 3])
        np.testing.assert_array_equal(m, body)
        del m


def _rplus_edit(mm: np.memmap, expected: np.ndarray, *, flush: bool) -> None:
    """Edit slices through a shared writable mapping (MAP_SHARED, PROT_WRITE), then unmap."""
    per_chunk = MiB // expected.itemsize
    edits = [slice(0, 10),                                # the first page
             slice(per_chunk - 7, per_chunk + 7),         # across a chunk boundary
             slice(2 * per_chunk + 1000, 2 * per_chunk + 1400),
             slice(len(expected) - 3, len(expected))]     # the partial last chunk's tail
    for i, s in enumerate(edits):
        mm[s] = -(i + 1)
        expected[s] = -(i + 1)
    if flush:
        mm.flush()                                        # msync(MS_SYNC) -> FUSE fsync
    del mm                                                # munmap -> writeback, release


@pytest.mark.parametrize("flush", [True, False], ids=["flush", "noflush"])
def test_np_memmap_rplus_writes(work: tuple[Path, Path], flush: bool) -> None:
    on_a, on_b = work
    expected = np.arange(7 * MiB // 8, dtype=np.int32)   # 3.5 MiB: 4 slots, the last partial
    np.save(on_a / "w.npy", expected)
    np.testing.assert_array_equal(np.load(on_b / "w.npy"), expected)   # B caches the old bytes
    mm = np.load(on_a / "w.npy", mmap_mode="r+")
    assert isinstance(mm, np.memmap)
    _rplus_edit(mm, expected, flush=flush)
    del mm
    # the same mount, reopened
    np.testing.assert_array_equal(np.load(on_a / "w.npy"), expected)
    np.testing.assert_array_equal(np.load(on_a / "w.npy", mmap_mode="r"), expected)
    # the other mount (close-to-open: it must drop what it cached before)
    np.testing.assert_array_equal(np.load(on_b / "w.npy"), expected)
    assert sha256(on_b / "w.npy") == sha256(on_a / "w.npy")


def test_np_memmap_wplus_new_file(work: tuple[Path, Path]) -> None:
    """mode="w+" makes a sparse file (seek + 1 byte) and fills it through the mapping."""
    on_a, on_b = work
    shape = (5, MiB // 4)                                  # 5 MiB of float32
    mm = np.memmap(on_a / "new.dat", dtype=np.float32, mode="w+", shape=shape)
    rng = np.random.default_rng(3)
    expected = np.zeros(shape, dtype=np.float32)
    for row in (0, 2, 4):                                  # rows 1 and 3 stay holes
        expected[row] = rng.standard_normal(shape[1])
        mm[row] = expected[row]
    mm.flush()
    del mm
    assert os.path.getsize(on_b / "new.dat") == expected.nbytes
    for d in (on_a, on_b):
        got = np.fromfile(d / "new.dat", dtype=np.float32).reshape(shape)
        np.testing.assert_array_equal(got, expected)


def test_np_memmap_rplus_survives_remount(server_module: ServerProc, tmp_path: Path) -> None:
    """Edits through a writable mapping reach the server: a brand-new mount sees them."""
    m1 = start_mount(server_module)
    try:
        (m1.path / "remount").mkdir()
        p = m1.path / "remount" / "r.npy"
        expected = np.arange(3 * MiB // 4, dtype=np.float32)
        np.save(p, expected)
        mm = np.load(p, mmap_mode="r+")
        mm[5:9] = 42.0
        mm[MiB // 4: MiB // 4 + 2] = -1.5
        expected[5:9] = 42.0
        expected[MiB // 4: MiB // 4 + 2] = -1.5
        mm.flush()
        del mm
    finally:
        teardown_mount(m1)
    np.save(tmp_path / "r.npy", expected)
    m2 = start_mount(server_module)
    try:
        p2 = m2.path / "remount" / "r.npy"
        np.testing.assert_array_equal(np.load(p2), expected)
        assert sha256(p2) == sha256(tmp_path / "r.npy")
    finally:
        teardown_mount(m2)


# --- torch -------------------------------------------------------------------------------------

class SmallNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3)
        self.bn = torch.nn.BatchNorm2d(8)
        self.fc = torch.nn.Linear(8 * 30 * 30, 10)
        self.register_buffer("steps", torch.tensor(17, dtype=torch.int64))


def _assert_state_equal(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        assert torch.equal(got[k], v), k


def test_torch_state_dict_roundtrip(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_a, on_b = work
    torch.manual_seed(0)
    sd = SmallNet().state_dict()
    torch.save(sd, on_a / "model.pt")
    torch.save(sd, tmp_path / "model.pt")
    assert sha256(on_b / "model.pt") == sha256(tmp_path / "model.pt")
    assert zipfile.ZipFile(on_b / "model.pt").testzip() is None   # every CRC checks out
    for d in (on_a, on_b):
        _assert_state_equal(torch.load(d / "model.pt", weights_only=True), sd)
    net = SmallNet()
    net.load_state_dict(torch.load(on_b / "model.pt", weights_only=True))
    _assert_state_equal(net.state_dict(), sd)


def test_torch_large_tensor_and_mmap_load(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_a, on_b = work
    g = torch.Generator().manual_seed(11)
    big = {"w": torch.randn(32 * MiB, generator=g),                  # 128 MiB
           "idx": torch.randint(0, 1 << 30, (1000,), generator=g)}
    torch.save(big, on_a / "big.pt")
    torch.save(big, tmp_path / "big.pt")
    assert sha256(on_b / "big.pt") == sha256(tmp_path / "big.pt")
    got = torch.load(on_b / "big.pt", weights_only=True)
    assert torch.equal(got["w"], big["w"]) and torch.equal(got["idx"], big["idx"])
    del got
    for d in (on_a, on_b):
        lazy = torch.load(d / "big.pt", mmap=True, weights_only=True)
        w = lazy["w"]
        assert torch.equal(w[12_345_678:12_345_978], big["w"][12_345_678:12_345_978])
        assert torch.equal(w, big["w"]) and torch.equal(lazy["idx"], big["idx"])
        del lazy, w


# --- safetensors -------------------------------------------------------------------------------

def test_safetensors_numpy(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_a, on_b = work
    rng = np.random.default_rng(5)
    tensors: dict[str, np.ndarray] = {
               "emb": rng.standard_normal((4096, 96)).astype(np.float32),   # 1.5 MiB
               "bias": rng.standard_normal(96).astype(np.float16),
               "ids": np.arange(777, dtype=np.int64)}
    np_save_file(tensors, str(on_a / "t.safetensors"), metadata={"who": "e2e"})
    np_save_file(tensors, str(tmp_path / "t.safetensors"), metadata={"who": "e2e"})
    assert sha256(on_b / "t.safetensors") == sha256(tmp_path / "t.safetensors")
    loaded = np_load_file(str(on_b / "t.safetensors"))
    for k, v in tensors.items():
        np.testing.assert_array_equal(loaded[k], v)
    with safe_open(str(on_b / "t.safetensors"), framework="np") as f:
        assert f.metadata() == {"who": "e2e"}
        assert sorted(f.keys()) == sorted(tensors)
        sl = f.get_slice("emb")
        assert sl.get_shape() == [4096, 96]
        np.testing.assert_array_equal(sl[2730:2750, 10:20], tensors["emb"][2730:2750, 10:20])
        np.testing.assert_array_equal(f.get_tensor("ids"), tensors["ids"])


def test_safetensors_torch(work: tuple[Path, Path], tmp_path: Path) -> None:
    on_a, on_b = work
    g = torch.Generator().manual_seed(9)
    tensors = {"layer.0.weight": torch.randn(1024, 1024, generator=g),       # 4 MiB
               "layer.0.bias": torch.randn(1024, generator=g).to(torch.bfloat16),
               "mask": torch.rand(333, generator=g) > 0.5}
    pt_save_file(tensors, str(on_a / "m.safetensors"))
    pt_save_file(tensors, str(tmp_path / "m.safetensors"))
    assert sha256(on_b / "m.safetensors") == sha256(tmp_path / "m.safetensors")
    loaded = pt_load_file(str(on_b / "m.safetensors"))
    for k, v in tensors.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    with safe_open(str(on_b / "m.safetensors"), framework="pt") as f:
        sl = f.get_slice("layer.0.weight")
        assert sl.get_shape() == [1024, 1024]
        rows = sl[700:705]                   # lazy: only these rows are read
        assert torch.equal(rows, tensors["layer.0.weight"][700:705])
        assert torch.equal(sl[:, 3:5], tensors["layer.0.weight"][:, 3:5])
        assert torch.equal(f.get_tensor("mask"), tensors["mask"])


# --- parquet -----------------------------------------------------------------------------------

def test_parquet_roundtrip_columns_and_row_groups(work: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    on_a, on_b = work
    n = 200_000
    rng = np.random.default_rng(21)
    table = pa.table({
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "x": pa.array(rng.standard_normal(n)),
        "label": pa.array([f"cls-{i % 37}" for i in range(n)]),
        "vec": pa.array(list(rng.standard_normal((n, 4)).astype(np.float32)),
                        type=pa.list_(pa.float32())),
    })
    pq.write_table(table, on_a / "t.parquet", row_group_size=25_000, compression="zstd")
    pq.write_table(table, tmp_path / "t.parquet", row_group_size=25_000, compression="zstd")
    assert sha256(on_b / "t.parquet") == sha256(tmp_path / "t.parquet")
    for d in (on_a, on_b):
        assert pq.read_table(d / "t.parquet").equals(table)
    assert pq.read_table(on_b / "t.parquet", memory_map=True).equals(table)
    sub = pq.read_table(on_b / "t.parquet", columns=["id", "label"])
    assert sub.column_names == ["id", "label"]
    assert sub.equals(table.select(["id", "label"]))
    pf = pq.ParquetFile(on_b / "t.parquet")
    assert pf.metadata.num_rows == n and pf.num_row_groups == 8
    rg = pf.read_row_group(5, columns=["x", "vec"])
    assert rg.equals(table.select(["x", "vec"]).slice(125_000, 25_000))
    two = pf.read_row_groups([1, 7], columns=["id"])
    assert two.column("id").to_pylist() == (list(range(25_000, 50_000))
                                            + list(range(175_000, 200_000)))
    batches = list(pf.iter_batches(batch_size=60_000, row_groups=[2, 3], columns=["id"]))
    assert sum(b.num_rows for b in batches) == 50_000
    assert batches[0].column(0)[0].as_py() == 50_000


def test_arrow_ipc_memory_map(work: tuple[Path, Path]) -> None:
    """The Arrow IPC file format, memory-mapped (how HF `datasets` reads its cache files)."""
    import pyarrow.ipc as ipc

    on_a, on_b = work
    n = 1_000_000
    table = pa.table({"x": np.arange(n), "y": np.random.default_rng(4).standard_normal(n)})
    with pa.OSFile(str(on_a / "t.arrow"), "wb") as sink, \
            ipc.new_file(sink, table.schema) as w:
        for batch in table.to_batches(max_chunksize=100_000):
            w.write_batch(batch)
    with pa.memory_map(str(on_b / "t.arrow")) as src:
        r = ipc.open_file(src)
        assert r.num_record_batches == 10
        assert r.get_batch(7).equals(table.slice(700_000, 100_000).to_batches()[0])
        assert r.read_all().equals(table)


# --- close-to-open across mounts (a trainer writes on one node, an evaluator reads on another) --

def test_rewritten_file_has_its_new_size_on_the_other_mount(work: tuple[Path, Path]) -> None:
    """After A rewrites a file and closes it, an open() on B must see the new size at once."""
    on_a, on_b = work
    small = pa.table({"i": np.arange(1000)})
    big = pa.table({"i": np.arange(100_000), "f": np.random.default_rng(8).random(100_000)})
    pq.write_table(small, on_a / "grow.parquet")
    assert pq.read_table(on_b / "grow.parquet").equals(small)   # B caches the attributes
    pq.write_table(big, on_a / "grow.parquet")                    # closed: committed
    want = os.path.getsize(on_a / "grow.parquet")
    with open(on_b / "grow.parquet", "rb") as f:
        assert os.fstat(f.fileno()).st_size == want, "B's open() kept the old size"
    assert pq.read_table(on_b / "grow.parquet").equals(big)


def test_checkpoint_replaced_atomically_opens_on_the_other_mount(
        work: tuple[Path, Path]) -> None:
    """Save to a temp name + os.replace (what trainers do): B's next open gets the new file."""
    on_a, on_b = work
    torch.save({"step": 1}, on_a / "last.pt")
    assert torch.load(on_b / "last.pt", weights_only=True) == {"step": 1}
    torch.save({"step": 2, "w": torch.arange(10)}, on_a / "last.pt.tmp")
    os.replace(on_a / "last.pt.tmp", on_a / "last.pt")
    got = torch.load(on_b / "last.pt", weights_only=True)   # not ENOENT, not step 1
    assert got["step"] == 2 and torch.equal(got["w"], torch.arange(10))
