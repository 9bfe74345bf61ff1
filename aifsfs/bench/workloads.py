"""The workloads of `aifs bench`: each runs in a directory and returns figures.

Interface (every function takes the directory to work in; sizes come from `Sizes`):
- `Sizes`: seq file size, small-file count, ML sample count, stored-bytes set size, fio runtime.
- `FIGURES`: figure key -> `Figure(label, unit, better)`; the one list the runner, the report
  and the smoke test agree on. `WRITE_FIGURES`: figures that need a writable target.
- Writers (also used to build borg's read-only data set natively): `write_seq(dir, size)`
  (1 MiB blocks, fsync before close, returns MiB/s), `create_small(dir, n)` (files/s; the
  directory fsynced before the clock stops, on every target),
  `create_parallel(dir, n, writers=4, sub="small4")` (the same files made by `writers` threads
  at once in dir/sub, each every writers-th; files/s),
  `write_samples(dir, n)`, `write_text_set(dir, size)`, `write_random_set(dir, size)`.
- Readers: `read_seq(dir)` (MiB/s), `fio_randread(dir, jobs, runtime)` (IOPS),
  `stat_small(dir)`, `read_small(dir)`, `unlink_small(dir)` (files/s),
  `LoaderPool` (4 worker processes calling numpy.load) with `.epoch(dir, seed)` (samples/s).
- `tree_bytes(dir)`: apparent bytes of every regular file under dir (du -sb).
- `snapshot_and_branch(address, n)` (aifs only): add `n` empty files through the SDK, then time
  one snapshot of main ("snapshot 100k files" at full size), one branch create from it and the
  first write to that branch, which copies the branch's rows (ms).

Every byte written is distinct at 1 MiB (chunk) granularity, so no target's dedup can make a
figure out of repeated blocks; the text set compresses like real CSV (random values), the
random set not at all.
"""

from __future__ import annotations

import json
import multiprocessing
import multiprocessing.pool
import os
import random
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .procs import BenchError

MiB = 1 << 20
BLOCK = MiB
SMALL_SIZE = 4096
SAMPLE_SHAPE = (3, 224, 224)  # one decoded 224x224 RGB image, uint8: ~147 KiB per .npy
LOADER_WORKERS = 4


@dataclass(frozen=True)
class Figure:
    label: str
    unit: str
    better: str  # "higher" or "lower"


FIGURES: dict[str, Figure] = {
    "seq_write": Figure("seq write 1 MiB blocks + fsync", "MiB/s", "higher"),
    "seq_read_cold": Figure("seq read, cold", "MiB/s", "higher"),
    "seq_read_warm": Figure("seq read, warm", "MiB/s", "higher"),
    "rand_read_qd1": Figure("rand 4 KiB read, psync QD1", "IOPS", "higher"),
    "rand_read_16j": Figure("rand 4 KiB read, 16 jobs", "IOPS", "higher"),
    "small_create": Figure("small files create+write+close", "files/s", "higher"),
    # the same files made by 4 threads at once (tar | xargs -P, DataLoader workers writing
    # outputs): what concurrent closes cost, with AIFS's group commit (LEASES.md)
    "small_create_4w": Figure("small files create, 4 writers", "files/s", "higher"),
    "small_stat": Figure("small files stat", "files/s", "higher"),
    "small_read": Figure("small files read", "files/s", "higher"),
    "small_unlink": Figure("small files unlink", "files/s", "higher"),
    "ml_epoch1": Figure("ML loader epoch 1 (cold)", "samples/s", "higher"),
    "ml_epoch2": Figure("ML loader epoch 2 (warm)", "samples/s", "higher"),
    # the same data set once more after drop_caches, the mount kept: a data set larger than
    # RAM (issue 10: AIFS's own figure here >= 0.5x its warm epoch)
    "ml_epoch_dropped": Figure("ML loader epoch 3 (page cache dropped)", "samples/s",
                               "higher"),
    "stored_text": Figure("stored/logical, text (CSV)", "ratio", "lower"),
    "stored_random": Figure("stored/logical, random", "ratio", "lower"),
    "mem_fuse": Figure("peak RSS, FUSE process", "MiB", "lower"),
    "mem_total": Figure("peak RSS, all processes", "MiB", "lower"),
    "mem_server": Figure("peak RSS, AIFS server", "MiB", "lower"),
    "snapshot_files": Figure("snapshot 100k files (--quick: 500)", "ms", "lower"),
    "branch_create": Figure("branch create from that snapshot", "ms", "lower"),
    # the branch's copy, deferred from its create to here (FORMAT.md §6.4 "Branches")
    "branch_first_write": Figure("first write to that branch (copies it)", "ms", "lower"),
    # what a snapshot costs when the server's hashes are current: O(changes since its last pass)
    "snapshot_changed": Figure("snapshot of that tree after 10 changes", "ms", "lower"),
}
WRITE_FIGURES = {"seq_write", "small_create", "small_create_4w", "small_unlink"}
MEMORY_FIGURES = {"mem_fuse", "mem_total", "mem_server"}
SERVER_FIGURES = {"mem_server"}  # only targets with a separate server process (aifs)
VERSION_FIGURES = {"snapshot_files", "branch_create", "branch_first_write",
                   "snapshot_changed"}  # aifs only


@dataclass(frozen=True)
class Sizes:
    seq_bytes: int = 1024 * MiB
    files: int = 5000
    samples: int = 2000
    set_bytes: int = 128 * MiB
    fio_runtime: float = 10.0
    snap_files: int = 100_000

    @classmethod
    def quick(cls) -> Sizes:
        return cls(seq_bytes=8 * MiB, files=40, samples=24, set_bytes=2 * MiB, fio_runtime=0.5,
                   snap_files=500)


# -- data -----------------------------------------------------------------------------------


class RandomBlocks:
    """Distinct incompressible 1 MiB blocks: aligned slices of a random pool + a counter.

    The pool (AES-CTR keystream, made before any timing) holds up to `pool_bytes` of fresh
    random data, so up to that size no byte run repeats, not even shifted: borg's
    content-defined chunking finds nothing to dedup. Past it blocks repeat except for
    their counter (only exact-chunk dedup, as AIFS does, is then still defeated).
    """

    def __init__(self, seed: int, pool_bytes: int = 1024 * MiB) -> None:
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        nblocks = max(1, pool_bytes // BLOCK)
        key = seed.to_bytes(4, "little") * 8
        enc = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self.pool = enc.update(bytes(nblocks * BLOCK))
        self.nblocks = nblocks
        self.buf = bytearray(BLOCK)

    def block(self, i: int) -> bytearray:
        off = (i % self.nblocks) * BLOCK
        self.buf[:] = self.pool[off : off + BLOCK]
        self.buf[:8] = i.to_bytes(8, "little")
        return self.buf


def _text_bytes(size: int, seed: int) -> bytes:
    """CSV-like sensor readings with random values: compresses about as much as real logs."""
    rng = random.Random(seed)
    sensors = [f"sensor-{k:03d}" for k in range(200)]
    states = ["ok", "ok", "ok", "warn", "fail"]
    parts = ["id,timestamp,sensor,value,status\n"]
    n = 0
    t = 1_700_000_000_000
    i = 0
    while n < size:
        t += rng.randint(1, 2000)
        row = f"{i},{t},{rng.choice(sensors)},{rng.gauss(20, 5):.4f},{rng.choice(states)}\n"
        parts.append(row)
        n += len(row)
        i += 1
    return "".join(parts).encode()[:size]


# -- writers --------------------------------------------------------------------------------


def write_seq(root: Path, size: int, seed: int = 1) -> float:
    blocks = RandomBlocks(seed, min(size, 1024 * MiB))
    nblocks = max(1, size // BLOCK)
    path = root / "seq.bin"
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for i in range(nblocks):
            os.write(fd, blocks.block(i))
        os.fsync(fd)
    finally:
        os.close(fd)
    dt = time.perf_counter() - t0
    return nblocks * BLOCK / MiB / dt


def _small_payload() -> bytes:
    return np.random.default_rng(2).bytes(SMALL_SIZE)


def _create_small_file(d: Path, i: int, payload: bytes) -> None:
    """Small file `i` of the set: open(O_CREAT|O_EXCL) + one write + close, its first 8
    bytes its number (every file distinct)."""
    fd = os.open(d / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, i.to_bytes(8, "little") + payload[8:])
    finally:
        os.close(fd)


def create_small(root: Path, n: int) -> float:
    d = root / "small"
    d.mkdir(exist_ok=True)
    payload = _small_payload()
    t0 = time.perf_counter()
    for i in range(n):
        _create_small_file(d, i, payload)
    _fsync_dir(d)
    return n / (time.perf_counter() - t0)


def _fsync_dir(d: Path) -> None:
    """Timed with the creates, on every target: what a filesystem keeps after the closes
    (AIFS --writeback: the creates still queued) is stored before the clock stops."""
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_parallel(root: Path, n: int, writers: int = 4, sub: str = "small4") -> float:
    """create_small's files (names, size, flags) made by `writers` threads at once in one
    directory, each making every writers-th file; started together."""
    d = root / sub
    d.mkdir(exist_ok=True)
    payload = _small_payload()
    start = threading.Barrier(writers + 1)

    def make(first: int) -> None:
        start.wait()
        for i in range(first, n, writers):
            _create_small_file(d, i, payload)

    with ThreadPoolExecutor(writers) as pool:
        done = [pool.submit(make, w) for w in range(writers)]
        start.wait()
        t0 = time.perf_counter()
        for f in done:
            f.result()
        _fsync_dir(d)
        return n / (time.perf_counter() - t0)


def write_samples(root: Path, n: int, seed: int = 3) -> None:
    d = root / "ml"
    d.mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        np.save(d / f"sample{i:06d}.npy", rng.integers(0, 256, SAMPLE_SHAPE, dtype=np.uint8))


def write_text_set(d: Path, size: int, files: int = 8) -> int:
    d.mkdir(exist_ok=True)
    per = max(1, size // files)
    for k in range(files):
        with open(d / f"part{k:02d}.csv", "wb") as f:
            f.write(_text_bytes(per, seed=100 + k))
            f.flush()
            os.fsync(f.fileno())
    return per * files


def write_random_set(d: Path, size: int, files: int = 8) -> int:
    d.mkdir(exist_ok=True)
    blocks = RandomBlocks(seed=7, pool_bytes=size + BLOCK * files)  # its own key: not seq.bin's
    per = max(1, size // files)
    idx = 0
    for k in range(files):
        with open(d / f"part{k:02d}.bin", "wb") as f:
            left = per
            while left > 0:
                b = blocks.block(idx)
                idx += 1
                f.write(b[: min(left, BLOCK)])
                left -= BLOCK
            f.flush()
            os.fsync(f.fileno())
    return per * files


# -- readers --------------------------------------------------------------------------------


def read_seq(root: Path) -> float:
    buf = bytearray(BLOCK)
    view = memoryview(buf)
    total = 0
    t0 = time.perf_counter()
    with open(root / "seq.bin", "rb", buffering=0) as f:
        while True:
            n = f.readinto(view)
            if not n:
                break
            total += n
    dt = time.perf_counter() - t0
    if total == 0:
        raise BenchError(f"{root / 'seq.bin'} read back empty")
    return total / MiB / dt


def fio_randread(root: Path, jobs: int, runtime: float) -> float:
    """Random 4 KiB buffered reads of seq.bin with fio (psync), IOPS over all jobs.

    Concurrency comes from jobs, not libaio's iodepth: without O_DIRECT (which not every
    FUSE target honours) libaio submits synchronously, so iodepth 16 would still be QD1.
    fio's fadvise hint (on by default for random I/O) turns off kernel read-ahead, and
    invalidate=1 drops the file's page cache first, so the target serves the reads.
    """
    cmd = [
        "fio", "--name=randread", f"--filename={root / 'seq.bin'}", "--readonly",
        "--rw=randread", "--bs=4k", "--ioengine=psync", "--iodepth=1",
        f"--numjobs={jobs}", "--group_reporting", "--time_based",
        f"--runtime={max(1, round(runtime * 1000))}ms", "--invalidate=1",
        "--output-format=json",
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, timeout=runtime * 10 + 120)
    if r.returncode != 0:
        raise BenchError(
            f"fio failed (exit {r.returncode}): {r.stderr.decode(errors='replace')[-1000:]}"
        )
    out = r.stdout.decode(errors="replace")
    data = json.loads(out[out.index("{") :])  # fio may print notes before the JSON
    iops = float(data["jobs"][0]["read"]["iops"])
    if not iops > 0:
        raise BenchError(f"fio reported {iops} IOPS on {root}: the reads failed")
    return iops


def _small_names(root: Path) -> list[Path]:
    d = root / "small"
    return sorted(d / name for name in os.listdir(d))


def stat_small(root: Path) -> float:
    # The listing is timed with the stats (issue 9): timed alone after it, the stats measure
    # what readdirplus just put in the kernel's cache, not the filesystem.
    t0 = time.perf_counter()
    names = _small_names(root)
    for p in names:
        os.stat(p)
    return len(names) / (time.perf_counter() - t0)


def read_small(root: Path) -> float:
    t0 = time.perf_counter()     # the listing too, as in stat_small
    names = _small_names(root)
    for p in names:
        fd = os.open(p, os.O_RDONLY)
        try:
            if len(os.read(fd, SMALL_SIZE * 2)) != SMALL_SIZE:
                raise BenchError(f"{p}: short read")
        finally:
            os.close(fd)
    return len(names) / (time.perf_counter() - t0)


def unlink_small(root: Path) -> float:
    names = _small_names(root)
    t0 = time.perf_counter()
    for p in names:
        os.unlink(p)
    return len(names) / (time.perf_counter() - t0)


def _load_sample(path: str) -> int:
    # In a pool worker, like a DataLoader worker's __getitem__: load, touch the data.
    arr = np.load(path)
    return int(arr.nbytes)


def _warm(_: int) -> int:
    time.sleep(0.05)
    return os.getpid()


class LoaderPool:
    """A DataLoader-style reader: 4 persistent worker processes calling numpy.load."""

    def __init__(self, workers: int = LOADER_WORKERS) -> None:
        # forkserver: workers do not inherit the runner's threads (tqdm's monitor) or fds.
        # Preloading this module (and numpy) keeps imports out of the first timed epoch.
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload([__name__])
        self.pool: multiprocessing.pool.Pool = ctx.Pool(workers)
        # Sleeping tasks, one per worker at a time: every worker is up before any timing.
        self.pool.map(_warm, range(workers * 2), chunksize=1)

    def epoch(self, root: Path, seed: int) -> float:
        paths = sorted(str(p) for p in (root / "ml").glob("*.npy"))
        random.Random(seed).shuffle(paths)  # shuffle=True, a new order per epoch
        want = int(np.prod(SAMPLE_SHAPE))
        t0 = time.perf_counter()
        for nbytes in self.pool.imap_unordered(_load_sample, paths, chunksize=4):
            if nbytes != want:
                raise BenchError(f"a sample under {root / 'ml'} loaded {nbytes} bytes, want {want}")
        dt = time.perf_counter() - t0
        if not paths:
            raise BenchError(f"no .npy samples under {root / 'ml'}")
        return len(paths) / dt

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()

    def __enter__(self) -> LoaderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def tree_bytes(d: Path) -> int:
    """Apparent bytes under d, like `du -sb`, less *.log: a daemon's log is not stored data."""
    total = 0
    for dirpath, _dirs, files in os.walk(d):
        for name in files:
            if name.endswith(".log"):
                continue
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except FileNotFoundError:
                continue  # a temp file renamed away while we walk
            total += st.st_size
    return total


def snapshot_and_branch(address: str, n: int, per_dir: int = 1000
                        ) -> tuple[float, float, float, float]:
    """(snapshot ms, branch create ms, first write ms, next snapshot ms) on the aifs server at
    `address`: `n` empty files (in directories of `per_dir`) are added to main through the SDK
    (not timed: building the tree is not what is measured), then one snapshot of main, one
    branch from it and one create in that branch are timed, each a single RPC, and, after 10
    files of main changed (chmod, not timed), a second snapshot of main. Each snapshot hashes
    only what changed since the server's background hashing last passed over main, and their
    directories (O(changes · depth): FORMAT.md §6.4 "Hash checkpoints"; a server without it,
    `--hash-interval 0`, hashes every node once at the first); the create copies nothing
    (O(1)); the branch's first write copies its rows: O(tree) (FORMAT.md §6.4)."""
    from aifs_core.types import ROOT_INO, SET_MODE
    from aifsfs.client import AIFSClient

    with AIFSClient(address, timeout=600) as c:
        top = c.fs.mkdir(ROOT_INO, b"snapbench").ino
        d = top
        spread: list[int] = []           # 10 files across the tree, changed before snapshot 2
        for i in range(n):
            if i % per_dir == 0:
                d = c.fs.mkdir(top, f"d{i // per_dir:05d}".encode()).ino
            a, _pa, _c = c.fs.create_entry(d, f"f{i:06d}".encode(), 0o100644, 0, 0)
            if i % max(1, n // 10) == 0 and len(spread) < 10:
                spread.append(a.ino)
        t0 = time.perf_counter()
        snap = c.versions.snapshot(message="aifs bench")
        t1 = time.perf_counter()
        c.versions.create_branch("bench-branch", snap["id"])
        t2 = time.perf_counter()
        c.branch = "bench-branch"
        c.fs.create_entry(top, b"first-write", 0o100644, 0, 0)
        t3 = time.perf_counter()
        c.branch = "main"
        for ino in spread:
            c.fs.setattr(ino, SET_MODE, mode=0o100600)
        t4 = time.perf_counter()
        c.versions.snapshot(message="aifs bench, 10 changes later")
        t5 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000, (t5 - t4) * 1000
