"""`aifs migrate`: move an embedded deployment (a data dir: SQLite + local chunks) to a shared
one (PostgreSQL + a chunk store such as S3), nothing decrypted on the way.

Interface:
    migrate(data_dir, meta_url, store_url, master, *, batch=64, log=print) -> MigrateResult
        data_dir: a formatted data dir whose server is stopped. The target database must hold
        no AIFS data yet (InvalidArgument otherwise). Steps, in this order:
          1. the secrets (KMS keyring, macaroon root key, storage naming key, signing key,
             namespace keys) re-wrapped into the database under `master` (secrets.py), the
             config marked "migrating" so that no server starts on a half-copied deployment;
          2. every metadata row copied (one transaction, every table the SQLite database has,
             in foreign-key order; identity sequences moved past the copied ids);
          3. every stored chunk copied as it is (sealed bytes, the same stored name: the
             naming key moved with the secrets), batch by batch, skipping what the target
             already has (a re-run after a failure in this step resumes);
          4. the "migrating" mark removed.
    MigrateResult: .tables {name: rows}, .chunks_copied, .chunks_present, .bytes_copied,
        .namespace_keys

Why copy sealed chunks: the envelope names its namespace key by id and the data keys are
wrapped by it; moving the namespace keys (still wrapped by the same KMS keys, the keyring moved
too) keeps every envelope readable, so the copy needs no decryption and proves nothing new.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aifs_core.errors import InvalidArgument
from aifs_server import backends, delegated_inos, request_log

MIGRATING = "migrating"


@dataclass
class MigrateResult:
    tables: dict[str, int] = field(default_factory=dict)
    chunks_copied: int = 0
    chunks_present: int = 0
    bytes_copied: int = 0
    namespace_keys: int = 0


def _sqlite_tables(conn: sqlite3.Connection) -> dict[str, list[str]]:
    # not the request log: its rows answer retries of the old deployment's calls, for minutes;
    # nor the inode numbers given out to the old deployment's mounts (delegated_inos.py)
    names = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")
        if r[0] not in (request_log.TABLE, delegated_inos.TABLE)]
    return {n: [r[1] for r in conn.execute(f'PRAGMA table_info("{n}")')] for n in names}


def _pg_order(pg: Any, tables: list[str]) -> list[str]:
    """`tables` with every table after the ones its foreign keys name (Kahn's algorithm)."""
    deps: dict[str, set[str]] = {t: set() for t in tables}
    for child, parent in pg.execute(
            "SELECT c.conrelid::regclass::text, c.confrelid::regclass::text "
            "FROM pg_constraint c WHERE c.contype = 'f'").fetchall():
        if child in deps and parent in deps and parent != child:
            deps[child].add(parent)
    order: list[str] = []
    ready = sorted(t for t, d in deps.items() if not d)
    while ready:
        t = ready.pop(0)
        order.append(t)
        for other, d in deps.items():
            if t in d:
                d.discard(t)
                if not d and other not in order and other not in ready:
                    ready.append(other)
    if len(order) != len(tables):
        raise InvalidArgument("the metadata tables' foreign keys form a cycle: cannot order "
                              "the copy")
    return order


def _copy_rows(src: sqlite3.Connection, dsn: str, log: Callable[[str], None]) -> dict[str, int]:
    import psycopg

    tables = _sqlite_tables(src)
    counts: dict[str, int] = {}
    with psycopg.connect(dsn) as pg, pg.transaction():
        pg_cols = {}
        for t in tables:
            cols = [r[0] for r in pg.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "current_schema() AND table_name = %s", (t,)).fetchall()]
            if not cols:
                raise InvalidArgument(f"the metadata table {t!r} of the data dir has no "
                                      f"counterpart in the PostgreSQL schema: upgrade aifs-fs")
            missing = set(tables[t]) - set(cols)
            if missing:
                raise InvalidArgument(f"the PostgreSQL table {t!r} lacks column(s) "
                                      f"{', '.join(sorted(missing))}: upgrade aifs-fs")
            pg_cols[t] = cols
        for t in _pg_order(pg, list(tables)):
            cols = tables[t]
            collist = ", ".join(f'"{c}"' for c in cols)
            n = 0
            # the rows arrive as they are, history and epochs included: the triggers that keep
            # history and mark changes (history_schema.py) must not act on the copy itself
            pg.execute(f'ALTER TABLE "{t}" DISABLE TRIGGER USER')
            with pg.cursor() as cur, cur.copy(f'COPY "{t}" ({collist}) FROM STDIN') as copy:
                for row in src.execute(f'SELECT {collist} FROM "{t}"'):
                    copy.write_row(row)
                    n += 1
            pg.execute(f'ALTER TABLE "{t}" ENABLE TRIGGER USER')
            counts[t] = n
            # identity columns: the next generated id must follow the copied ones
            for (col,) in pg.execute(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                    "current_schema() AND table_name = %s AND is_identity = 'YES'",
                    (t,)).fetchall():
                pg.execute(f'SELECT setval(pg_get_serial_sequence(%s, %s), '
                           f'COALESCE((SELECT MAX("{col}") FROM "{t}"), 0) + 1, false)',
                           (t, col))
            log(f"copied {n} rows of {t}")
    return counts


def _target_is_empty(dsn: str) -> bool:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as pg:
        r = pg.execute("SELECT to_regclass('namespaces') IS NOT NULL").fetchone()
        if not r or not r[0]:
            return True
        return pg.execute("SELECT 1 FROM namespaces LIMIT 1").fetchone() is None


def _copy_chunks(src: Any, dst: Any, batch: int, result: MigrateResult,
                 log: Callable[[str], None]) -> None:
    names: list[str] = []

    def flush() -> None:
        present = dst.has_many(names)
        todo = [n for n, p in zip(names, present, strict=True) if not p]
        result.chunks_present += len(names) - len(todo)
        if todo:
            items = [(n, src.get(n)) for n in todo]
            dst.put_many(items)
            result.chunks_copied += len(items)
            result.bytes_copied += sum(len(d) for _, d in items)
        names.clear()

    for name in src.list_names():
        names.append(name)
        if len(names) >= batch:
            flush()
            if result.chunks_copied and result.chunks_copied % (batch * 16) == 0:
                log(f"copied {result.chunks_copied} chunks ({result.bytes_copied} bytes)")
    if names:
        flush()


def migrate(data_dir: str | Path, meta_url: str, store_url: str, master: Any, *,
            batch: int = 64, log: Callable[[str], None] = print) -> MigrateResult:
    from aifs_server.datadir import FORMAT_VERSION, SHARED_FORMAT, open_data_dir
    from aifs_server.kms import NamespaceKeyFile
    from aifs_server.secrets import Initial, SecretsDB

    result = MigrateResult()
    db = SecretsDB(meta_url)
    if db.has_secrets() or not _target_is_empty(meta_url):
        raise InvalidArgument(f"{db.where} already holds an AIFS deployment: migrate into an "
                              f"empty database")
    src = open_data_dir(data_dir)  # also brings its schema to this version (as a server would)
    try:
        meta_path = backends.local_path(backends.meta_url(src.path or Path(), src.config.get(
            "meta")))
        if meta_path is None or not meta_path.endswith(".db"):
            raise InvalidArgument(f"{data_dir} does not keep its metadata in SQLite: nothing "
                                  f"to migrate from")
        backends.open_meta(meta_url).close()  # creates the target's schema
        current, keys = src.kms.export_keys()
        config = {k: v for k, v in src.config.items() if k not in ("meta", "chunks", "keyring")}
        config.update(format=SHARED_FORMAT, format_version=FORMAT_VERSION,
                      migrated_from=str(src.path))
        config[MIGRATING] = True
        db.bootstrap(master, Initial(
            config=config, keyring_current=current, keyring=keys, root_key=src.root_key,
            storage_key=src.storage_key, signing_key=src.signing_key.private_bytes_raw()))
        ns_file = src.keys.records
        assert isinstance(ns_file, NamespaceKeyFile)
        result.namespace_keys = db.add_namespace_keys(ns_file.scopes())
        log(f"moved the secrets into {db.where} ({len(keys)} KMS key(s), "
            f"{result.namespace_keys} namespace key(s)), sealed by the master key")
        src_db = sqlite3.connect(f"file:{meta_path}?mode=ro", uri=True)
        try:
            result.tables = _copy_rows(src_db, meta_url, log)
        finally:
            src_db.close()
        dst = backends.open_store(store_url)
        _copy_chunks(src.store, dst, batch, result, log)
        log(f"copied {result.chunks_copied} chunks ({result.bytes_copied} bytes) to "
            f"{dst.url}; {result.chunks_present} were there already")
        del config[MIGRATING]
        db.put(master, "config", json.dumps(config, sort_keys=True).encode())
    finally:
        src.close()
    return result
