"""Process-wide glibc malloc tuning for the processes that move MiB-sized messages.

Interface:
    tune_malloc() -> bool   idempotent; True where applied (glibc), False elsewhere. Keeps
                            freed MiB-sized buffers for reuse and caps the malloc arenas
                            (MALLOC_ARENA_MAX), so the memory kept is bounded by that count,
                            not by the thread count.
                            Called once at process start by the server and the mount, never
                            by library code (a library must not change malloc behind a host's
                            back: the SDK leaves it alone).
"""

from __future__ import annotations

import ctypes
import os
import sys

# glibc's malloc gives blocks over its (dynamic) mmap threshold back to the kernel when they
# are freed, and trims the heap top above 128 KiB: every 1 MiB message protobuf and gRPC build
# then costs fresh pages, i.e. ~256 page faults (measured here: serialising one fresh 1 MiB
# ChunkPiece took 1.5-3.5 ms instead of ~0.1 ms). Keeping such blocks in the heap fixes it.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8
# Above a 1 MiB chunk or message and the ~2 MiB buffers built for it; small enough that each
# thread's arena keeps little (8 threads building 1 MiB messages: 4/16 MiB gave 2.8 ms per
# message, 32/64 MiB 2.3 ms, glibc's defaults 16.9 ms).
MALLOC_MMAP_THRESHOLD = 4 << 20
MALLOC_TRIM_THRESHOLD = 16 << 20
# glibc gives each thread that contends for malloc an arena of its own, up to 8 per core, and
# each arena keeps its freed MiB buffers (the two thresholds above): with 32 RPC or worker
# threads building 1 MiB messages that was the biggest part of the peak RSS (memcheck, 1 GiB:
# server 304 -> 202 MiB, mount 344 -> 279 MiB with 2 arenas). A fixed count bounds it whatever
# the thread count; the GIL serialises most allocations anyway. MALLOC_ARENA_MAX in the
# environment wins (glibc reads it; we then leave the count alone).
MALLOC_ARENA_MAX = 2
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
    if "MALLOC_ARENA_MAX" not in os.environ:
        ok = bool(mallopt(M_ARENA_MAX, MALLOC_ARENA_MAX)) and ok
    _malloc_tuned = ok
    return ok
