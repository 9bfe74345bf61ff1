"""tune_gc (core/gc_tuning.py): the server and the mount freeze their start-up heap and collect
cycles less often; AIFS_GC_GEN0=0 leaves the collector alone. Process-wide, so each case runs
in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys

_PROBE = r"""
import gc
from aifs_core.gc_tuning import tune_gc
before = gc.get_freeze_count()
print(tune_gc(), gc.get_threshold()[0], gc.get_freeze_count() > before)
"""


def _probe(gen0: str | None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "AIFS_GC_GEN0"}
    if gen0 is not None:
        env["AIFS_GC_GEN0"] = gen0
    out = subprocess.run([sys.executable, "-c", _PROBE], env=env, check=True,
                         capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_tune_gc_freezes_and_raises_the_gen0_threshold() -> None:
    from aifs_core.gc_tuning import GEN0_THRESHOLD

    assert _probe(None) == ["True", str(GEN0_THRESHOLD), "True"]
    assert _probe("12345") == ["True", "12345", "True"]


def test_aifs_gc_gen0_0_leaves_the_collector_alone() -> None:
    default = subprocess.run([sys.executable, "-c", "import gc; print(gc.get_threshold()[0])"],
                             check=True, capture_output=True, text=True, timeout=60).stdout
    assert _probe("0") == ["False", default.strip(), "False"]
    # a value that is not a number: the default threshold, not a crash
    assert _probe("many")[:2] == ["True", "50000"]
