"""Shared parts of the fault drills (tests/e2e/test_drills_*.py, issue 13).

Interface:
    Rig(tmp_path)                  a context: .serve(*args) starts a real server on one data dir
                                   (again after a crash: same dir), .mount(sp, *args) a real
                                   mount; everything started is unmounted / stopped on exit,
                                   mounts first, even when the test failed
    content(seed, size) -> bytes   the deterministic bytes of a drill's file
    chunk_files(data_dir) -> set   the stored envelopes of a data dir's local store (files and
                                   small.sqlite's rows: tests/stored_chunks.py)
    read_each(path, size, step)    per `step`-sized range of a file: (bytes read, errno|None)
    MiB
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
from pathlib import Path
from types import TracebackType

from tests.e2e.conftest import Mount, start_mount, teardown_mount
from tests.helpers import ServerProc, make_data_dir, start_server, stop_server
from tests.stored_chunks import StoredChunk, stored_chunks

MiB = 1 << 20


def content(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


def chunk_files(data_dir: Path) -> set[StoredChunk]:
    return stored_chunks(data_dir / "chunks")


def read_each(path: Path, size: int, step: int) -> list[tuple[bytes, int | None]]:
    """Read `path` range by range, each with a fresh descriptor and until the range is done or
    a read fails: (the bytes read, None) or (the bytes read before the error, its errno). A
    damaged chunk may give a short read first (the frames before the damage are proven good)."""
    out: list[tuple[bytes, int | None]] = []
    for off in range(0, size, step):
        got = bytearray()
        err: int | None = None
        fd = os.open(path, os.O_RDONLY)
        try:
            while len(got) < min(step, size - off):
                try:
                    piece = os.pread(fd, step - len(got), off + len(got))
                except OSError as e:
                    err = e.errno or -1
                    break
                if not piece:
                    break
                got += piece
        finally:
            os.close(fd)
        out.append((bytes(got), err))
    return out


class Rig:
    """One data dir, the servers run on it one after the other, and their mounts."""

    def __init__(self, tmp_path: Path, data_dir: Path | None = None) -> None:
        self.data_dir = data_dir or make_data_dir(tmp_path / "data")
        self.servers: list[ServerProc] = []
        self.mounts: list[Mount] = []

    def serve(self, *args: str) -> ServerProc:
        self.servers.append(start_server(self.data_dir, args=args))
        return self.servers[-1]

    def mount(self, sp: ServerProc, *args: str) -> Mount:
        self.mounts.append(start_mount(sp, "--cache-size", "0", *args))
        return self.mounts[-1]

    def __enter__(self) -> Rig:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        errors: list[BaseException] = []
        for m in reversed(self.mounts):
            try:
                teardown_mount(m)
            except Exception as e:  # noqa: BLE001 - take the rest down anyway
                errors.append(e)
        for sp in reversed(self.servers):
            with contextlib.suppress(Exception):
                if sp.proc.poll() is None:
                    os.kill(sp.pid, signal.SIGCONT)   # a stalled server must hear SIGTERM
                stop_server(sp)
        if errors and et is None:
            raise errors[0]
