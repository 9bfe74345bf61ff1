"""Process-wide glibc malloc tuning for the processes that move MiB-sized messages.

Interface:
    tune_malloc() -> bool   idempotent; True where applied (glibc), False elsewhere.
                            Called once at process start by the server and the mount, never
                            by library code (a library must not change malloc behind a host's
                            back: the SDK leaves it alone).
"""

from __future__ import annotations

import ctypes
import sys

# glibc's malloc gives blocks over its (dynamic) mmap threshold back to the kernel when they
# are freed, and trims the heap top above 128 KiB: every 1 MiB message protobuf and gRPC build
# then costs fresh pages, i.e. ~256 page faults (measured here: serialising one fresh 1 MiB
# ChunkPiece took 1.5-3.5 ms instead of ~0.1 ms). Keeping such blocks in the heap fixes it.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
# Above a 1 MiB chunk or message and the ~2 MiB buffers built for it; small enough that each
# thread's arena keeps little (8 threads building 1 MiB messages: 4/16 MiB gave 2.8 ms per
# message, 32/64 MiB 2.3 ms, glibc's defaults 16.9 ms).
MALLOC_MMAP_THRESHOLD = 4 << 20
MALLOC_TRIM_THRESHOLD = 16 << 20
_malloc_tuned = False


def tune_malloc() -> bool:
    """Make glibc malloc keep freed MiB-sized buffers for reuse (process-wide, idempotent).
    True if applied (glibc), False where there is no mallopt to call."""
    global _malloc_tuned
    if _malloc_tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    ok = bool(mallopt(M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD))
    _malloc_tuned = ok
    return ok
