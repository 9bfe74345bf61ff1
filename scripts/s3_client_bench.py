#!/usr/bin/env python3
"""Measure the two candidate S3 clients (boto3, obstore) against a local SeaweedFS; print a table.

Usage: .venv/bin/python scripts/s3_client_bench.py [--rounds N]
    Starts its own SeaweedFS (tests/services.py, loopback only) and stops it at the end.

What it measures, per client (median of --rounds, milliseconds unless said otherwise):
    import           importing the client module, in a fresh interpreter
    first call       building a client and its first request (a HEAD of a missing name)
    PUT 1 MiB        one object after another (ms each) and 8 in parallel (MiB/s)
    GET 64 KiB       a ranged GET inside a 1 MiB object
    HEAD x100        existence of 100 names (half present), serially and 8 in parallel
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.services import start_seaweedfs  # noqa: E402

MIB = 1 << 20


def import_ms(module: str) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout) * 1000


class Boto:
    name = "boto3"
    module = "boto3"

    def __init__(self, endpoint: str, bucket: str, key: str, secret: str) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                              aws_secret_access_key=secret, region_name="us-east-1",
                              config=Config(max_pool_connections=16,
                                            retries={"max_attempts": 1}))

    def put(self, key: str, data: bytes) -> None:
        self.c.put_object(Bucket=self.bucket, Key=key, Body=data)

    def get_range(self, key: str, start: int, n: int) -> bytes:
        r = self.c.get_object(Bucket=self.bucket, Key=key, Range=f"bytes={start}-{start + n - 1}")
        return bytes(r["Body"].read())

    def exists(self, key: str) -> bool:
        try:
            self.c.head_object(Bucket=self.bucket, Key=key)
            return True
        except self.c.exceptions.ClientError as e:
            if e.response["ResponseMetadata"]["HTTPStatusCode"] == 404:
                return False
            raise


class Obstore:
    name = "obstore"
    module = "obstore"

    def __init__(self, endpoint: str, bucket: str, key: str, secret: str) -> None:
        import obstore
        from obstore.store import S3Store

        self.ob = obstore
        self.s = S3Store(bucket, endpoint=endpoint, access_key_id=key, secret_access_key=secret,
                         region="us-east-1", virtual_hosted_style_request=False,
                         client_options={"allow_http": True},
                         retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5)})

    def put(self, key: str, data: bytes) -> None:
        self.ob.put(self.s, key, data, use_multipart=False)

    def get_range(self, key: str, start: int, n: int) -> bytes:
        return bytes(self.ob.get_range(self.s, key, start=start, length=n))

    def exists(self, key: str) -> bool:
        from obstore.exceptions import NotFoundError

        try:
            self.ob.head(self.s, key)
            return True
        except (NotFoundError, FileNotFoundError):
            return False


def timed(fn: Callable[[], Any]) -> float:
    t = time.perf_counter()
    fn()
    return (time.perf_counter() - t) * 1000


def one_round(c: Boto | Obstore, base: str, blob: bytes, pool: ThreadPoolExecutor,
              add: Callable[[str, float], None]) -> None:
    for i in range(8):  # serial PUTs
        add("PUT 1 MiB serial (ms)", timed(partial(c.put, f"{base}/s{i}", blob)))
    t = time.perf_counter()
    list(pool.map(lambda i: c.put(f"{base}/p{i}", blob), range(32)))
    add("PUT 1 MiB x8 parallel (MiB/s)", 32 / (time.perf_counter() - t))
    for i in range(20):
        off = (i * 40_000) % (MIB - 65536)
        add("GET 64 KiB ranged (ms)", timed(partial(c.get_range, f"{base}/s0", off, 65536)))
    names = [f"{base}/s{i}" if i < 8 else f"{base}/absent{i}" for i in range(100)]
    add("HEAD x100 serial (ms)", timed(lambda: [c.exists(n) for n in names]))
    add("HEAD x100 8 parallel (ms)", timed(lambda: list(pool.map(c.exists, names))))


def bench(cls: type[Boto] | type[Obstore], endpoint: str, bucket: str, key: str, secret: str,
          rounds: int) -> dict[str, float]:
    res: dict[str, list[float]] = {}

    def add(k: str, v: float) -> None:
        res.setdefault(k, []).append(v)

    blob = os.urandom(MIB)
    with ThreadPoolExecutor(8) as pool:
        for r in range(rounds):
            t = time.perf_counter()
            c = cls(endpoint, bucket, key, secret)
            c.exists(f"{cls.name}/missing-{r}")
            add("first call (ms)", (time.perf_counter() - t) * 1000)
            one_round(c, f"{cls.name}/{r}", blob, pool, add)
    return {k: statistics.median(v) for k, v in res.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    import importlib.util

    if importlib.util.find_spec("boto3") is None:
        # the project uses obstore; boto3 is only the other side of this comparison
        raise SystemExit("s3_client_bench: needs boto3 too: .venv/bin/pip install boto3")
    clients: list[type[Boto] | type[Obstore]] = [Boto, Obstore]
    table: dict[str, dict[str, float]] = {}
    for cls in clients:
        table.setdefault("import (ms)", {})[cls.name] = statistics.median(
            import_ms(cls.module) for _ in range(3))
    with tempfile.TemporaryDirectory(prefix="aifs-s3bench-") as d:
        t = time.perf_counter()
        sw = start_seaweedfs(d, bucket="aifs-bench")
        print(f"SeaweedFS ready in {time.perf_counter() - t:.1f} s at {sw.endpoint}")
        try:
            for cls in clients:
                for k, v in bench(cls, sw.endpoint, sw.bucket, sw.access_key, sw.secret_key,
                                  args.rounds).items():
                    table.setdefault(k, {})[cls.name] = v
        finally:
            sw.stop()
    names = [c.name for c in clients]
    print(f"{'measure':32}" + "".join(f"{n:>12}" for n in names))
    for k, row in table.items():
        print(f"{k:32}" + "".join(f"{row[n]:12.1f}" for n in names))


if __name__ == "__main__":
    main()
