"""Progress bars for long transfers, shown only when stderr is a terminal.

Interface:
    progress(total: int | None, desc: str, stream=sys.stderr) -> Progress
        a context manager with `.update(n)`; a tqdm bar when `stream` is a TTY, else silent
        (scripts and pipes get clean output).
"""

from __future__ import annotations

import os
import sys
from typing import Any, TextIO


class Progress:
    def __init__(self, total: int | None, desc: str, stream: TextIO | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self._bar: Any = None
        isatty = getattr(stream, "isatty", None)
        if callable(isatty) and isatty():
            from tqdm import tqdm
            cols, rows = _size(stream)
            self._bar = tqdm(total=total, desc=desc, unit="B", unit_scale=True,
                             unit_divisor=1024, file=stream, leave=False, ncols=cols,
                             nrows=rows)

    @property
    def shown(self) -> bool:
        return self._bar is not None

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _size(stream: TextIO) -> tuple[int, int]:
    """The terminal's size; a terminal that reports 0x0 (a fresh pty, some containers) would
    make tqdm hide the bar, so fall back to 80x24."""
    try:
        size = os.get_terminal_size(stream.fileno())
        cols, rows = size.columns, size.lines
    except (OSError, ValueError, AttributeError):
        cols, rows = 0, 0
    return cols or 80, rows or 24


def progress(total: int | None, desc: str, stream: TextIO | None = None) -> Progress:
    return Progress(total, desc, stream)
