"""Shared fixtures: real data directories and real server processes (always stopped).

Fixtures:
    data_dir            a formatted AIFS data dir under tmp_path (function scope)
    server              a running `aifs server` on a short unix socket over `data_dir`:
                        .address, .token, .token_file, .data_dir, .proc (see tests/helpers.py)
    server_module       the same, one per test module (for read-mostly tests)
    seaweedfs, s3_bucket, postgres, pg_dsn   real services, once per session (see below)
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from xdist.scheduler import LoadFileScheduling

from tests.helpers import ServerProc, make_data_dir, start_server, stop_server
from tests.services import (
    Postgres,
    S3Location,
    SeaweedFS,
    s3_location_for,
    session_postgres,
    session_seaweedfs,
    session_start_times,
    stop_session_services,
)


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


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[ServerProc]:
    """A server of its own (not the `server` fixture's data dir) publishing its metrics on a
    free port (read them with tests.integration.test_snapshot_open.metric). Environment set
    before it starts (e.g. an autouse monkeypatch.setenv) reaches the server. Ask for it before
    mount_factory so mounts are torn down while it still runs."""
    sp = start_server(make_data_dir(tmp_path / "metered"), args=["--metrics-port", "0"])
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


# --- real services, once per session, started by the first test that needs them ------------
# (tests/services.py: SeaweedFS S3 and PostgreSQL 15 on loopback / unix sockets only)
#   seaweedfs   the session SeaweedFS (.endpoint, .bucket, admin and read-only keys)
#   s3_bucket   a fresh, empty key prefix in the session bucket: .store(**kw), .url, .prefix
#   postgres    the session PostgreSQL (.dsn(), .create_database(name))
#   pg_dsn      the DSN of a fresh database for one test

@pytest.fixture(scope="session")
def seaweedfs() -> SeaweedFS:
    return session_seaweedfs()


@pytest.fixture
def s3_bucket(tmp_path: Path) -> S3Location:
    return s3_location_for(tmp_path)


@pytest.fixture(scope="session")
def postgres() -> Postgres:
    return session_postgres()


@pytest.fixture
def pg_dsn(postgres: Postgres, request: pytest.FixtureRequest) -> str:
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:16]
    return postgres.create_database(f"t_{digest}_{os.urandom(3).hex()}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    started = session_start_times()
    took = stop_session_services()
    if took and session.config.getoption("verbose") > 0:
        print("\nsession services: " + ", ".join(
            f"{k} started in {started.get(k, 0):.1f} s, stopped in {v:.1f} s"
            for k, v in took.items()))


# --- scheduling (pytest-xdist) -------------------------------------------------------------------
_CACHE_FIXTURES = ("caches_kept", "drops_caches")    # tests/e2e/conftest.py


class _CacheGroupScheduling(LoadFileScheduling):
    """`--dist loadfile`, except that every module using the page-cache lock (`caches_kept`,
    `drops_caches`) is one unit, run by one worker one after the other. Why: a test holding
    `drops_caches` (the bench's) made the other worker's `caches_kept` test wait on the lock
    for its whole run (40 s in CI); run in one unit, they never wait, and the other worker
    runs everything else meanwhile. The lock stays: it is what keeps them apart when run
    another way."""

    def _split_scope(self, nodeid: str) -> str:
        path = nodeid.split("::", 1)[0]
        return "page-cache-lock-group" if _uses_cache_lock(self.config.rootpath / path) else path


@functools.cache
def _uses_cache_lock(module: Path) -> bool:
    try:
        text = module.read_text(errors="replace")
    except OSError:
        return False
    return any(name in text for name in _CACHE_FIXTURES)


@pytest.hookimpl(tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    return _CacheGroupScheduling(config, log) if config.getvalue("dist") == "loadfile" else None
