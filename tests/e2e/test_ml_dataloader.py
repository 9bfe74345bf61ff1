"""A multi-worker torch DataLoader reading 1,000 `.npy` samples straight off a real AIFS mount.

The samples are written once per module through mount A (`numpy.save`), and the same arrays are
saved to a local directory. Each test reads them through a mount made for it alone (a separate
mount process that never saw the writes, so its first epoch is cold and really goes to the
server), with `num_workers=4`: every sample must come back equal to what was written (SHA-256
of dtype + shape + bytes, per sample), and the second epoch must give identical data. Epoch
times are printed and recorded as test properties (informational: never asserted).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.helpers import ServerProc

pytestmark = [
    pytest.mark.e2e,
    # 4 workers on a 2-core machine is the point of the test, not a mistake
    pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning"),
]

N_SAMPLES = 1000
DS_DIR = "dataset"
DTYPES = (np.float32, np.float16, np.int64, np.uint8)


def digest(arr: np.ndarray) -> str:
    h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def file_sha(path: str | os.PathLike[str]) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_sample(i: int) -> np.ndarray:
    """Sample i: its own shape (2-40 KiB) and dtype, so a mix-up of two samples shows."""
    rng = np.random.default_rng(i)
    rows = 8 + i % 57
    dtype = DTYPES[i % len(DTYPES)]
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 200, (rows, 80)).astype(dtype)
    return rng.standard_normal((rows, 80)).astype(dtype)


@dataclass
class Written:
    server: ServerProc
    digests: dict[int, str]          # sample index -> digest of the array
    file_shas: dict[str, str]        # file name -> SHA-256 of the local np.save of it
    local_dir: Path


@pytest.fixture(scope="module")
def written(server_module: ServerProc, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Written]:
    local = tmp_path_factory.mktemp("local_ds")
    digests: dict[int, str] = {}
    shas: dict[str, str] = {}
    writer = start_mount(server_module)
    try:
        root = writer.path / DS_DIR
        root.mkdir()

        def save(i: int) -> tuple[int, str, str, str]:
            arr = make_sample(i)
            name = f"sample_{i:05d}.npy"
            np.save(root / name, arr)
            np.save(local / name, arr)
            return i, name, digest(arr), file_sha(local / name)

        # 8 writers at once: concurrent creates in one directory, as a preprocessing job does
        # (and each create waits on the server's fsyncs, so overlapping them saves time)
        with ThreadPoolExecutor(8) as pool:
            for i, name, dg, sha in pool.map(save, range(N_SAMPLES)):
                digests[i] = dg
                shas[name] = sha
    finally:
        teardown_mount(writer)   # everything committed; readers see it from the server
    yield Written(server_module, digests, shas, local)


@pytest.fixture
def reader(written: Written) -> Iterator[Mount]:
    """A fresh mount (cold caches) of the server holding the dataset."""
    m = start_mount(written.server)
    try:
        yield m
    finally:
        teardown_mount(m)


class NpyDir(Dataset[tuple[int, np.ndarray, int]]):
    """Sample i = numpy.load of the i-th `.npy` file of a directory, in name order."""

    def __init__(self, root: Path) -> None:
        self.files = sorted(p for p in os.listdir(root) if p.endswith(".npy"))
        self.root = root

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray, int]:
        arr = np.load(self.root / self.files[i])
        info = get_worker_info()
        return i, arr, -1 if info is None else os.getpid()


def as_list(batch: list[Any]) -> list[Any]:
    return batch   # samples differ in shape and dtype: no stacking


def run_epoch(loader: DataLoader[Any]) -> tuple[list[int], dict[int, str], set[int], float]:
    """(indices in the order seen, index -> digest, worker pids, seconds)."""
    order: list[int] = []
    got: dict[int, str] = {}
    pids: set[int] = set()
    t0 = time.perf_counter()
    for batch in loader:
        for i, arr, pid in batch:
            assert i not in got, f"sample {i} delivered twice in one epoch"
            order.append(i)
            got[i] = digest(arr)
            pids.add(pid)
    return order, got, pids, time.perf_counter() - t0


def check_epoch(got: dict[int, str], want: dict[int, str]) -> None:
    assert len(got) == N_SAMPLES
    bad = sorted(i for i in want if got.get(i) != want[i])
    assert not bad, f"{len(bad)} samples differ from what was written, e.g. {bad[:10]}"


def test_dataset_files_listed_and_byte_identical(written: Written, reader: Mount) -> None:
    root = reader.path / DS_DIR
    names = sorted(os.listdir(root))
    assert names == sorted(written.file_shas)
    with ThreadPoolExecutor(4) as pool:
        shas = dict(zip(names, pool.map(lambda n: file_sha(root / n), names), strict=True))
    differ = [n for n in names if shas[n] != written.file_shas[n]]
    assert not differ, f"{len(differ)} files differ from local np.save, e.g. {differ[:5]}"


def test_dataloader_four_workers_two_epochs(written: Written, reader: Mount,
                                            record_property: Any) -> None:
    ds = NpyDir(reader.path / DS_DIR)
    assert len(ds) == N_SAMPLES
    loader = DataLoader(ds, batch_size=16, num_workers=4, collate_fn=as_list)
    order1, got1, pids1, t1 = run_epoch(loader)
    check_epoch(got1, written.digests)
    assert order1 == list(range(N_SAMPLES))
    assert len(pids1) > 1 and -1 not in pids1      # really read by several worker processes
    order2, got2, _, t2 = run_epoch(loader)
    assert order2 == order1
    assert got2 == got1                            # the second epoch: identical data
    record_property("epoch1_s", round(t1, 3))
    record_property("epoch2_s", round(t2, 3))
    print(f"\nDataLoader 4 workers, {N_SAMPLES} samples: epoch 1 {t1:.2f} s, "
          f"epoch 2 {t2:.2f} s")


def test_dataloader_persistent_workers_shuffled(written: Written, reader: Mount,
                                                record_property: Any) -> None:
    ds = NpyDir(reader.path / DS_DIR)
    loader = DataLoader(ds, batch_size=10, num_workers=4, shuffle=True, persistent_workers=True,
                        collate_fn=as_list, generator=torch.Generator().manual_seed(42))
    order1, got1, pids1, t1 = run_epoch(loader)
    check_epoch(got1, written.digests)
    order2, got2, pids2, t2 = run_epoch(loader)
    assert sorted(order1) == sorted(order2) == list(range(N_SAMPLES))
    assert order1 != order2                        # reshuffled...
    assert got2 == got1                            # ...yet every sample is the same
    assert pids2 == pids1 and len(pids1) > 1      # the same worker processes both epochs
    record_property("epoch1_s", round(t1, 3))
    record_property("epoch2_s", round(t2, 3))
    print(f"\nDataLoader 4 persistent workers, shuffled: epoch 1 {t1:.2f} s, "
          f"epoch 2 {t2:.2f} s")


# --- a memory-mapped token file (the nanoGPT `np.memmap("train.bin")` pattern) ---------------

TOKENS = 16 << 20                     # uint16: 32 MiB
CTX = 1025


def tokens() -> np.ndarray:
    return np.random.default_rng(99).integers(0, 50_000, TOKENS, dtype=np.uint16)


class TokenWindows(Dataset[tuple[int, np.ndarray]]):
    """Sample i = a window of CTX tokens at a random offset, read through np.memmap."""

    def __init__(self, path: Path, n: int) -> None:
        self.path = path
        self.starts = np.random.default_rng(5).integers(0, TOKENS - CTX, n)

    def __len__(self) -> int:
        return len(self.starts)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray]:
        m = np.memmap(self.path, dtype=np.uint16, mode="r")   # opened per item, like nanoGPT
        s = int(self.starts[i])
        return i, np.array(m[s:s + CTX])


def test_dataloader_memmap_token_windows(written: Written, reader: Mount,
                                         record_property: Any) -> None:
    tok = tokens()
    # written through a separate mount, read cold through `reader`
    writer = start_mount(written.server)
    try:
        tok.tofile(writer.path / "train.bin")
    finally:
        teardown_mount(writer)
    ds = TokenWindows(reader.path / "train.bin", 2000)
    loader = DataLoader(ds, batch_size=32, num_workers=4, collate_fn=as_list)
    t0 = time.perf_counter()
    seen = 0
    for batch in loader:
        for i, window in batch:
            s = int(ds.starts[i])
            assert np.array_equal(window, tok[s:s + CTX]), f"window {i} at token {s} differs"
            seen += 1
    assert seen == len(ds)
    record_property("epoch_s", round(time.perf_counter() - t0, 3))


# --- parallel preprocessing into one preallocated np.memmap -----------------------------------

ROWS, COLS = 48, 100_003     # float32 rows of ~391 KiB: they straddle pages and 1 MiB chunks


def _row(r: int) -> np.ndarray:
    return np.random.default_rng(1000 + r).standard_normal(COLS).astype(np.float32)


def _fill_rows(args: tuple[str, int, int]) -> int:
    """Worker: write every `step`-th row, starting at `first`, through its own r+ mapping."""
    path, first, step = args
    m = np.memmap(path, dtype=np.float32, mode="r+", shape=(ROWS, COLS))
    for r in range(first, ROWS, step):
        m[r] = _row(r)
    m.flush()
    del m
    return first


def test_processes_fill_one_shared_memmap(written: Written, reader: Mount) -> None:
    writer = start_mount(written.server)
    try:
        path = writer.path / "features.f32"
        m = np.memmap(path, dtype=np.float32, mode="w+", shape=(ROWS, COLS))
        m.flush()
        del m
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(4) as pool:
            assert sorted(pool.map(_fill_rows, [(str(path), k, 4) for k in range(4)])) == \
                [0, 1, 2, 3]
        expected = np.stack([_row(r) for r in range(ROWS)])
        views = [np.fromfile(path, dtype=np.float32)]
    finally:
        teardown_mount(writer)
    views.append(np.fromfile(reader.path / "features.f32", dtype=np.float32))
    for got in views:
        got = got.reshape(ROWS, COLS)
        bad = [r for r in range(ROWS) if not np.array_equal(got[r], expected[r])]
        assert not bad, f"rows {bad} differ"
