"""Shared fixtures: real data directories and real server processes (always stopped).

Fixtures:
    data_dir            a formatted AIFS data dir under tmp_path (function scope)
    server              a running `aifs server` on a short unix socket over `data_dir`:
                        .address, .token, .token_file, .data_dir, .proc (see tests/helpers.py)
    server_module       the same, one per test module (for read-mostly tests)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import ServerProc, make_data_dir, start_server, stop_server


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return make_data_dir(tmp_path / "data")


@pytest.fixture
def server(data_dir: Path) -> Iterator[ServerProc]:
    sp = start_server(data_dir)
    try:
        yield sp
    finally:
        stop_server(sp)


@pytest.fixture(scope="module")
def server_module(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProc]:
    d = make_data_dir(tmp_path_factory.mktemp("srv") / "data")
    sp = start_server(d)
    try:
        yield sp
    finally:
        stop_server(sp)
