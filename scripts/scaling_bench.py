#!/usr/bin/env python3
"""Measure what one shared deployment does per server (issue 12, docs/SCALING.md).

Starts a private PostgreSQL 15 + SeaweedFS (tests/cluster.py, the code `scripts/cluster.sh`
uses) and, for each server count asked, that many `aifs server`s on one fresh database and
bucket prefix; plus the embedded default (SQLite + local chunk directory, one server) for
reference. Then, through the SDK (no FUSE: the servers are what is measured):
- metadata: THREADS client threads, spread round-robin over the servers, each with its own
  client and directory: create N files, stat each (getattr), unlink each; ops/s per phase;
- chunk ingest: THREADS threads put_asset blobs of 4 MiB of random bytes (incompressible:
  zstd falls back to stored frames, every byte is sealed and sent to the store); MiB/s.
Prints a Markdown table (total and per server); --json FILE keeps the raw figures.

Usage: .venv/bin/python scripts/scaling_bench.py [--servers 1,2] [--threads 4]
           [--files 400] [--ingest-mib 128] [--no-embedded] [--json FILE]
Everything it starts is stopped (and its directory removed) on exit, even on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.cluster / tests.services: run from a source checkout

from aifs_core.types import ROOT_INO  # noqa: E402
from aifsfs.client import AIFSClient  # noqa: E402

BLOB = 4 << 20


def _parallel(n: int, work: Callable[[int], None]) -> float:
    """Run work(0..n-1) in n threads at once; the wall time from a common start."""
    errors: list[BaseException] = []
    start = threading.Barrier(n + 1)

    def run(i: int) -> None:
        try:
            start.wait(60)
            work(i)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    start.wait(60)
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    took = time.perf_counter() - t0
    if errors:
        raise errors[0]
    return took


def measure(addresses: list[str], token_file: str, threads: int, files: int,
            ingest_mib: int) -> dict[str, float]:
    clients = [AIFSClient(addresses[i % len(addresses)], token_file=token_file)
               for i in range(threads)]
    try:
        tag = os.urandom(3).hex()
        dirs = [c.mkdir(ROOT_INO, f"scal-{tag}-{i}".encode()).ino for i, c in enumerate(clients)]
        inos: list[list[int]] = [[] for _ in range(threads)]

        def create(i: int) -> None:
            for k in range(files):
                inos[i].append(clients[i].create(dirs[i], f"f{k}".encode()).ino)

        def stat(i: int) -> None:
            for ino in inos[i]:
                clients[i].getattr(ino)

        def unlink(i: int) -> None:
            for k in range(files):
                clients[i].unlink(dirs[i], f"f{k}".encode())

        total = threads * files
        out = {"create_ops": total / _parallel(threads, create),
               "stat_ops": total / _parallel(threads, stat),
               "unlink_ops": total / _parallel(threads, unlink)}
        per_thread = max(1, (ingest_mib << 20) // BLOB // threads)
        blobs = [os.urandom(BLOB) for _ in range(threads)]

        def ingest(i: int) -> None:
            for k in range(per_thread):
                # a different first 8 bytes per put: no chunk is a duplicate of another
                data = bytearray(blobs[i])
                data[:8] = (k * threads + i).to_bytes(8, "big")
                clients[i].put_asset(bytes(data))

        took = _parallel(threads, ingest)
        out["ingest_mib_s"] = threads * per_thread * BLOB / (1 << 20) / took
        for i, c in enumerate(clients):
            c.rmdir(ROOT_INO, f"scal-{tag}-{i}".encode())
        return out
    finally:
        for c in clients:
            c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default="1,2", help="server counts to measure (default 1,2)")
    p.add_argument("--threads", type=int, default=4, help="client threads (default 4)")
    p.add_argument("--files", type=int, default=400, help="files per thread (default 400)")
    p.add_argument("--ingest-mib", type=int, default=128, help="MiB to ingest (default 128)")
    p.add_argument("--no-embedded", action="store_true", help="skip the SQLite reference row")
    p.add_argument("--json", default=None, metavar="FILE")
    a = p.parse_args(argv)
    counts = [int(x) for x in a.servers.split(",") if x.strip()]

    from tests.cluster import start_cluster
    from tests.helpers import make_data_dir, short_tmpdir, start_server, stop_server
    from tests.services import S3Location, start_postgres, start_seaweedfs

    rows: list[dict[str, Any]] = []
    base = Path(short_tmpdir())
    pg = sw = None
    try:
        if not a.no_embedded:
            srv = start_server(make_data_dir(base / "embedded"))
            try:
                r = measure([srv.address], srv.token_file, a.threads, a.files, a.ingest_mib)
            finally:
                stop_server(srv)
            rows.append({"deployment": "embedded (SQLite + local dir)", "servers": 1, **r})
            print(f"embedded: {r}", file=sys.stderr, flush=True)
        pg = start_postgres(base / "pg")
        sw = start_seaweedfs(base / "s3", bucket="aifs")
        for n in counts:
            # each count on a fresh database and prefix: no run measures another's leftovers
            cluster = start_cluster(base / f"c{n}", n,
                                    meta_url=pg.create_database(f"scal{n}"),
                                    s3=S3Location(sw, f"scal{n}"))
            try:
                r = measure([s.address for s in cluster.servers], str(cluster.token_file),
                            a.threads, a.files, a.ingest_mib)
            finally:
                cluster.stop()
            rows.append({"deployment": "PostgreSQL + SeaweedFS", "servers": n, **r})
            print(f"{n} server(s): {r}", file=sys.stderr, flush=True)
    finally:
        for svc in (sw, pg):
            if svc is not None:
                svc.stop()
        shutil.rmtree(base, ignore_errors=True)

    print(f"\n{a.threads} client threads, {a.files} files per thread, "
          f"{a.ingest_mib} MiB ingested in {BLOB >> 20} MiB random blobs; {os.cpu_count()} CPUs\n")
    print("| deployment | servers | create/s | stat/s | unlink/s | ingest MiB/s "
          "| create/s per server | ingest MiB/s per server |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        n = r["servers"]
        print(f"| {r['deployment']} | {n} | {r['create_ops']:,.0f} | {r['stat_ops']:,.0f} "
              f"| {r['unlink_ops']:,.0f} | {r['ingest_mib_s']:.1f} "
              f"| {r['create_ops'] / n:,.0f} | {r['ingest_mib_s'] / n:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps({"threads": a.threads, "files": a.files,
                                            "ingest_mib": a.ingest_mib, "rows": rows},
                                           indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
