"""tune_malloc bounds glibc's arenas: the memory a process keeps no longer grows with its
thread count (issue 10: peak RSS of the mount and the server)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Counts glibc's heaps (arenas) after 12 live threads each allocated 1 MiB: without a
# cap each new thread takes an arena of its own (up to 8 per core).
_PROBE = r"""
import ctypes, os, sys, tempfile, threading
from aifs_core.malloc_tuning import tune_malloc
if sys.argv[1] == "tuned":
    assert tune_malloc()
together = threading.Barrier(12)
def work():
    b = [bytearray(1 << 16) for _ in range(16)]
    together.wait()
    del b
ts = [threading.Thread(target=work) for _ in range(12)]
for t in ts:
    t.start()
for t in ts:
    t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
libc.fclose.argtypes = [ctypes.c_void_p]
path = tempfile.mktemp()
fp = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, fp)
libc.fclose(fp)
xml = open(path).read()
os.unlink(path)
print(xml.count("<heap nr="))
"""


def _heaps(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_tune_malloc_caps_the_arenas_whatever_the_thread_count() -> None:
    from aifs_core.malloc_tuning import MALLOC_ARENA_MAX

    untuned = _heaps("plain")
    tuned = _heaps("tuned")
    if untuned <= MALLOC_ARENA_MAX:
        pytest.skip(f"this libc made only {untuned} arenas for 12 threads: nothing to cap")
    assert tuned <= MALLOC_ARENA_MAX < untuned
