"""Engines under test for the metadata conformance suite (test_metadata_posix.py,
test_metadata_records.py): every engine runs the same tests.

Interface:
    ENGINES                     name -> factory(request) -> Harness; a new engine plugs in by
                                adding one factory here (it takes the fixtures it needs with
                                request.getfixturevalue: tmp_path, pg_dsn, ...)
    Harness.open(row_key=None)  a new engine over the harness's storage (the same data on every
                                call, so reopening is testable); the caller closes it; row_key:
                                the secret its row MACs are keyed from (None: unkeyed)
    Harness.scalar(sql, *args)  one value read with plain SQL ("?" placeholders) from that
                                storage, None when no row: for what the engine's API does not
                                show (refcounts, grace clocks, rows left behind)
    Harness.execute(sql, *args) one statement ("?" placeholders) on a separate connection,
                                committed; its rowcount: to damage rows at rest
    harness_fixture             the pytest fixture `harness`, parametrised over ENGINES (import
                                it into a test module to use it there)
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import psycopg
import pytest

from aifs_server.metadata.base import MetadataEngine
from aifs_server.metadata.postgres import PostgresMetadata
from aifs_server.metadata.sqlite import SQLiteMetadata


class Harness(Protocol):
    def open(self, row_key: bytes | None = None) -> MetadataEngine: ...
    def scalar(self, sql: str, *args: Any) -> Any: ...
    def execute(self, sql: str, *args: Any) -> int: ...
    def close(self) -> None: ...


class SQLiteHarness:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "meta.db"

    def open(self, row_key: bytes | None = None) -> SQLiteMetadata:
        return SQLiteMetadata(self.path, row_key=row_key)

    def execute(self, sql: str, *args: Any) -> int:
        with sqlite3.connect(self.path) as c:
            return int(c.execute(sql, args).rowcount)

    def scalar(self, sql: str, *args: Any) -> Any:
        # a separate connection: what is committed, not what the engine's connection caches
        with sqlite3.connect(self.path) as c:
            r = c.execute(sql, args).fetchone()
        return None if r is None else r[0]

    def close(self) -> None:
        pass  # tmp_path goes with the test


class PostgresHarness:
    """A fresh database of the session's PostgreSQL 15 (the `pg_dsn` fixture)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn

    def open(self, row_key: bytes | None = None) -> PostgresMetadata:
        return PostgresMetadata(self.dsn, pool_size=8, row_key=row_key)

    def execute(self, sql: str, *args: Any) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as c:
            return int(c.execute(sql.replace("?", "%s"), args).rowcount)

    def scalar(self, sql: str, *args: Any) -> Any:
        # a separate connection, as for SQLite; the tests write "?" (SQLite's placeholder)
        with psycopg.connect(self.dsn, autocommit=True) as c:
            r = c.execute(sql.replace("?", "%s"), args).fetchone()
        return None if r is None else r[0]

    def close(self) -> None:
        pass  # the database is one per test; the session's server goes at session end


ENGINES: dict[str, Callable[[pytest.FixtureRequest], Harness]] = {
    "sqlite": lambda request: SQLiteHarness(request.getfixturevalue("tmp_path")),
    "postgresql": lambda request: PostgresHarness(request.getfixturevalue("pg_dsn")),
}


@pytest.fixture(name="harness", params=sorted(ENGINES))
def harness_fixture(request: pytest.FixtureRequest) -> Iterator[Harness]:
    h = ENGINES[request.param](request)
    try:
        yield h
    finally:
        h.close()
