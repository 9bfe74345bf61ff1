"""Process-wide tuning of Python's cyclic garbage collector for the server and the mount.

Interface:
    tune_gc() -> bool   once the process has started (modules imported, services built):
                        moves every object alive now out of the collector's reach
                        (gc.freeze) and raises the gen-0 threshold to GEN0_THRESHOLD.
                        AIFS_GC_GEN0 in the environment sets the threshold (0: leave the
                        collector as it is, to compare). True where it changed anything.
                        Called once at start by the server and the mount, never by library
                        code (the SDK's host decides its own collector settings).

Why: both processes allocate several short-lived containers per listed entry, FUSE request and
call (Attrs, DirEntries, protobuf messages, trio tasks); nearly all are freed by reference
counting, yet each allocation counts towards gen 0, so at the default threshold (700) a
collection ran every few hundred entries, and every 10th of those also walked gen 1, every
100th the whole heap (the start-up objects included: tens of thousands of module, class and
function objects). A listing spent 20-25% of its CPU per entry in the collector (py-spy,
readdir_bench). Cycles are rare on these paths, so collecting them less often costs little
memory: what a cycle holds waits at most GEN0_THRESHOLD allocations longer.
"""

from __future__ import annotations

import gc
import os

GEN0_THRESHOLD = 50_000
_tuned = False


def tune_gc() -> bool:
    """Freeze the start-up heap and raise the gen-0 threshold (idempotent)."""
    global _tuned
    if _tuned:
        return True
    try:
        gen0 = int(os.environ.get("AIFS_GC_GEN0", GEN0_THRESHOLD))
    except ValueError:
        gen0 = GEN0_THRESHOLD
    if gen0 <= 0:
        return False
    gc.collect()        # what start-up left as garbage goes now, not into the frozen set
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(gen0, gen1, gen2)
    _tuned = True
    return True
