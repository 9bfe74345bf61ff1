"""The machine description recorded with every `aifs bench` run.

Interface: `machine() -> dict` with cpu model, logical cores, memory (GiB), kernel, OS,
Python, numpy and fio versions, and whether drop_caches is writable.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / (1 << 20), 1)
    except (OSError, ValueError):
        pass
    return 0.0


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (out.stdout or out.stderr).decode(errors="replace").strip()
    return text.splitlines()[0] if text else "unknown"


def machine() -> dict[str, object]:
    import numpy

    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _mem_gib(),
        "kernel": platform.release(),
        "os": _os_name(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "fio": _tool_version(["fio", "--version"]),
        "fuse": _tool_version(["fusermount3", "--version"]),
        "drop_caches_writable": os.access("/proc/sys/vm/drop_caches", os.W_OK),
    }
