"""Server-side cost of versions at scale, in one process (no gRPC, no mount): CPU and wall time
of a first snapshot, a snapshot after N changes, a branch create and the first write to that
branch (which copies the branch's rows: FORMAT.md §6.4 "Branches"), over a tree of `--files`
files (directories of `--per-dir`, 1000) on a fresh SQLite (or PostgreSQL: --pg DSN) metadata engine.

    python scripts/bench_versions.py --files 100000 [--changes 10] [--chunks] [--runs 3]
                                     [--list-dir 20000] [--hash-interval S]

--hash-interval S: the server's background hashing (hash_keeper.HashKeeper, on by default
with the server's interval; 0 = off, and off in revisions without it) runs while the tree is
built and until the first snapshot, as in a server: that snapshot then rehashes only what
changed since its last pass. It is stopped after the first snapshot, so the later figures
time the snapshot's own O(changes) path.

--list-dir N: then Versions.list_tree (what the mount's view lists a directory with: one
ListTree) of a snapshot's directory of N files, 1% of them changed after the snapshot (so
its view reads history rows too).

Uses only PosixMeta / Versions calls, so the same script measures any revision (run it with
that revision's interpreter). What `aifs bench` (snapshot_and_branch) times adds one RPC.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from aifs_core.types import ROOT_INO, SET_MODE, ChunkRef, Namespace, TreeRef
from aifs_server.metadata.sqlite import SQLiteMetadata
from aifs_server.versions import Versions

T = TreeRef("bench")


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return (time.process_time() - c0) * 1000, (time.perf_counter() - w0) * 1000, out


def list_tree(m: Any, v: Versions, n: int, runs: int) -> None:
    """list_tree of a snapshot directory of `n` files, 1% changed after the snapshot."""
    d = m.mkdir(T, ROOT_INO, b"listing", 0o40755, 0, 0).ino
    files = [m.create(T, d, f"f{i:06d}".encode(), 0o100644, 0, 0, 0).ino for i in range(n)]
    snap = v.create_snapshot("bench", "main")
    for f in files[::100]:
        m.setattr(T, f, SET_MODE, mode=0o100600)
    got = [timed(lambda: v.list_tree("bench", snap.id, d)) for _ in range(runs)]
    print(f"list_tree of a snapshot directory of {n} files (1% changed since): " +
          ", ".join(f"cpu {c:.0f} ms wall {w:.0f} ms" for c, w, _ in got) +
          f"; {len(got[0][2][3])} entries")


def _keeper(m: Any, v: Versions, interval: float | None) -> Any:
    """The server's background hashing over this engine, started; None when off or absent."""
    try:
        from aifs_server.hash_keeper import INTERVAL, HashKeeper
    except ImportError:   # a revision before it
        return None
    if interval == 0:
        return None
    stats = [0, 0, 0.0]

    def on_pass(trees: int, nodes: int, t: float) -> None:
        stats[0] += trees
        stats[1] += nodes
        stats[2] += t
    keeper = HashKeeper(Versions(m, Ed25519PrivateKey.generate()),
                        interval=INTERVAL if interval is None else interval, on_pass=on_pass)
    keeper.stats = stats   # type: ignore[attr-defined]
    keeper.start()
    return keeper


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=10)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--chunks", action="store_true", help="one chunk per file")
    ap.add_argument("--pg", default="", help="a PostgreSQL DSN instead of SQLite")
    ap.add_argument("--build-only", action="store_true", help="time the tree's creates only")
    ap.add_argument("--per-dir", type=int, default=1000,
                    help="files a directory (--per-dir 100000: one flat directory)")
    ap.add_argument("--hash-interval", type=float, default=None,
                    help="background hashing interval (default: the server's; 0 = off)")
    ap.add_argument("--list-dir", type=int, default=0,
                    help="time list_tree of a snapshot directory of this many files")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        if a.pg:
            from aifs_server.metadata.postgres import PostgresMetadata
            m: Any = PostgresMetadata(a.pg)
        else:
            m = SQLiteMetadata(Path(tmp) / "meta.db")
        m.create_namespace(Namespace("bench", 1 << 20, 3, "key-1"))
        m.ensure_tree(T)
        v = Versions(m, Ed25519PrivateKey.generate())
        keeper = _keeper(m, v, a.hash_interval)
        t0 = time.perf_counter()
        files: list[int] = []
        d = ROOT_INO
        for i in range(a.files):
            if i % a.per_dir == 0:
                d = m.mkdir(T, ROOT_INO, f"d{i // a.per_dir:05d}".encode(), 0o40755, 0, 0).ino
            f = m.create(T, d, f"f{i:06d}".encode(), 0o100644, 0, 0, 0).ino
            files.append(f)
            if a.chunks:
                data = i.to_bytes(8, "little")
                cid = blake3.blake3(data).digest()
                m.record_chunk("bench", cid, 8, 48)
                m.commit_file(T, f, [ChunkRef(0, cid, 8)], 8)
        print(f"tree of {a.files} files built in {time.perf_counter() - t0:.1f} s "
              f"(cpu {time.process_time():.1f} s)")
        if a.build_only:
            return
        c, w, first = timed(lambda: v.create_snapshot("bench", "main"))
        print(f"first snapshot: cpu {c:.0f} ms, wall {w:.0f} ms (rehashed {v.last_rehashed})")
        if keeper is not None:
            keeper.stop()
            print(f"background hashing: {keeper.passes} passes, {keeper.stats[0]} checkpoints, "
                  f"{keeper.stats[1]} nodes, {keeper.stats[2] * 1000:.0f} ms working")
        snaps, branches, firsts = [], [], []
        for r in range(a.runs):
            for k in range(a.changes):
                m.setattr(T, files[(r * a.changes + k) * 7919 % len(files)], SET_MODE,
                          mode=0o100600 | (r & 1) << 3 | (k & 1) << 2)
            c, w, snap = timed(lambda: v.create_snapshot("bench", "main"))
            snaps.append((c, w))
            print(f"snapshot after {a.changes} changes: cpu {c:.1f} ms, wall {w:.1f} ms "
                  f"(rehashed {v.last_rehashed})")
            c, w, _ = timed(lambda r=r, s=snap: v.create_branch("bench", f"b{r}", s.id))
            branches.append((c, w))
            print(f"branch create: cpu {c:.1f} ms, wall {w:.1f} ms")
            # the copy a branch create no longer makes: its first change makes it
            c, w, _ = timed(lambda r=r: m.create(TreeRef("bench", f"b{r}"), ROOT_INO,
                                                 b"first-write", 0o100644, 0, 0, 0))
            firsts.append((c, w))
            print(f"first write to that branch (copies it): cpu {c:.1f} ms, wall {w:.1f} ms")

        def med(xs: list[tuple[float, float]]) -> str:
            return (f"cpu {statistics.median(x[0] for x in xs):.1f} ms wall "
                    f"{statistics.median(x[1] for x in xs):.1f} ms")
        print(f"median: snapshot {med(snaps)}; branch {med(branches)}; "
              f"first write to the branch {med(firsts)}")
        # the live write path on a tree that has snapshots (epochs: history triggers, born)
        d = m.mkdir(T, ROOT_INO, b"after", 0o40755, 0, 0).ino
        c, w, _ = timed(lambda: [m.create(T, d, f"n{i:06d}".encode(), 0o100644, 0, 0, 0)
                                 for i in range(10_000)])
        print(f"10000 creates after snapshots: cpu {c:.0f} ms, wall {w:.0f} ms")
        c, w, _ = timed(lambda: [m.setattr(T, f, SET_MODE, mode=0o100640)
                                 for f in files[:10_000]])
        print(f"10000 chmods of files a snapshot holds: cpu {c:.0f} ms, wall {w:.0f} ms")
        ok = v.verify("bench", first.id)[0] and v.verify("bench", snap.id)[0]
        print("verify:", ok)
        if a.list_dir:
            list_tree(m, v, a.list_dir, a.runs)
        m.close()


if __name__ == "__main__":
    main()
