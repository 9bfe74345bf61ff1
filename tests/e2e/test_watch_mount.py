"""Change events of what a real FUSE mount does (AIFSClient.watch next to `aifs mount`): files
written and closed, rewritten, renamed and removed with plain file calls show up as created /
changed / removed at their paths, once each change reached the server (a close, a rename)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from aifsfs.client import AIFSClient
from aifsfs.rpc.watch import Watch
from tests.e2e.conftest import Mount
from tests.helpers import ServerProc


def _until(w: Watch, want: list[tuple[str, str]], timeout: float = 20.0) -> None:
    """Read events until `want` came in that order (others between them allowed: a mount may
    send a setattr of its own); fails with what came if not within `timeout`."""
    got: list[tuple[str, str]] = []
    left = list(want)
    end = time.monotonic() + timeout
    while left:
        e = w.get(timeout=max(0.0, end - time.monotonic()))
        assert e is not None, f"waited for {left}; came: {got}"
        got.append((e.kind, e.path))
        if got[-1] == left[0]:
            left.pop(0)


def test_a_mounts_file_calls_as_events(server: ServerProc,
                                      mount_factory: Callable[..., Mount]) -> None:
    m = mount_factory(server)
    c = AIFSClient(server.address, token_file=server.token_file)
    try:
        with c.watch("/proj") as w:
            d = m.path / "proj"
            d.mkdir()
            (d / "a.txt").write_bytes(b"one")              # create + data + close: one call
            with open(d / "a.txt", "r+b") as f:             # rewritten in place: a commit
                f.write(b"two")
            os.rename(d / "a.txt", d / "b.txt")
            (m.path / "elsewhere.txt").write_bytes(b"x")    # not under /proj
            os.unlink(d / "b.txt")
            os.rmdir(d)
            os.sync()
            _until(w, [("created", "/proj"), ("created", "/proj/a.txt"),
                       ("changed", "/proj/a.txt"), ("removed", "/proj/a.txt"),
                       ("created", "/proj/b.txt"), ("removed", "/proj/b.txt"),
                       ("removed", "/proj")])
            while (e := w.get(timeout=1.0)) is not None:
                assert e.path.startswith("/proj"), f"an event outside the prefix: {e}"
    finally:
        c.close()
