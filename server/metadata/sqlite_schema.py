"""Schema of the SQLite metadata engine and its migration hook.

Interface:
    SCHEMA_VERSION          the version this code writes (stored in PRAGMA user_version)
    migrate(conn, mac=None) bring a database to SCHEMA_VERSION (creates it when empty); raises
                            InvalidArgument for a database written by a newer version; `mac`
                            (row_mac.RowMac) seals the rows a version-2 database holds

A later schema change adds an entry to `MIGRATIONS` (version reached -> statements) and bumps
`SCHEMA_VERSION`; `migrate` applies the missing steps in order, in one transaction.

Layout notes (why the tables look the way they do):
- `inodes.data_bytes` is the sum of the file's chunk-map slot lengths, kept up to date by every
  change of the map, so getattr computes `blocks` from one row (no aggregate on the hot path).
- `inodes.parent` is the parent directory of a directory (directories have exactly one name);
  rename walks it upwards to refuse moving a directory into its own subtree.
- `dentries.id` (AUTOINCREMENT: never reused) is the readdir cookie; the (tree_id, parent, id)
  index serves paged readdir in cookie order; the (tree_id, ino) index (version 5) finds the
  names of an inode (the path of a change event).
- Chunk records carry `unreferenced_since_ns` (set when recorded and whenever the count drops
  to 0, cleared while referenced); GC takes only chunks unreferenced for longer than a grace
  period, so a commit racing a GC never loses data.
- Lineage rows (`asset_parents.parent_id`) have no foreign key on purpose: deleting an asset
  leaves its children's edges naming it.
- `inodes.mac` and `chunk_maps.mac` (version 3) are the keyed checksums of row_mac.py; NULL
  only between the ALTER and the sealing of the same migration, so a NULL read later fails
  the check like any other mismatch.
"""

from __future__ import annotations

import re
import sqlite3

from aifs_core.errors import InvalidArgument
from aifs_server.metadata import history_schema
from aifs_server.metadata.row_mac import RowMac, seal_rows

SCHEMA_VERSION = 5

_V1 = [
    """CREATE TABLE IF NOT EXISTS namespaces (
        name TEXT PRIMARY KEY,
        chunk_size INTEGER NOT NULL,
        zstd_level INTEGER NOT NULL,
        kms_key_id TEXT NOT NULL,
        created_ns INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS trees (
        tree_id INTEGER PRIMARY KEY AUTOINCREMENT,
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        branch TEXT NOT NULL,
        next_ino INTEGER NOT NULL,
        created_ns INTEGER NOT NULL,
        UNIQUE (namespace, branch)
    )""",
    """CREATE TABLE IF NOT EXISTS inodes (
        tree_id INTEGER NOT NULL REFERENCES trees(tree_id),
        ino INTEGER NOT NULL,
        mode INTEGER NOT NULL,
        nlink INTEGER NOT NULL CHECK (nlink >= 0),
        uid INTEGER NOT NULL,
        gid INTEGER NOT NULL,
        rdev INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL DEFAULT 0,
        atime_ns INTEGER NOT NULL,
        mtime_ns INTEGER NOT NULL,
        ctime_ns INTEGER NOT NULL,
        data_bytes INTEGER NOT NULL DEFAULT 0,
        generation INTEGER NOT NULL DEFAULT 0,
        parent INTEGER NOT NULL DEFAULT 0,
        symlink BLOB,
        asset_id TEXT NOT NULL DEFAULT '',
        asset_gen INTEGER NOT NULL DEFAULT -1,
        PRIMARY KEY (tree_id, ino)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS inodes_orphans ON inodes(tree_id, ino) WHERE nlink = 0",
    """CREATE TABLE IF NOT EXISTS dentries (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        tree_id INTEGER NOT NULL REFERENCES trees(tree_id),
        parent INTEGER NOT NULL,
        name BLOB NOT NULL,
        ino INTEGER NOT NULL,
        UNIQUE (tree_id, parent, name)
    )""",
    "CREATE INDEX IF NOT EXISTS dentries_readdir ON dentries(tree_id, parent, id)",
    """CREATE TABLE IF NOT EXISTS xattrs (
        tree_id INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        name BLOB NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (tree_id, ino, name),
        FOREIGN KEY (tree_id, ino) REFERENCES inodes(tree_id, ino) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chunk_maps (
        tree_id INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        idx INTEGER NOT NULL,
        chunk_id BLOB NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (tree_id, ino, idx),
        FOREIGN KEY (tree_id, ino) REFERENCES inodes(tree_id, ino) ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS chunks (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        chunk_id BLOB NOT NULL,
        raw_len INTEGER NOT NULL,
        stored_len INTEGER NOT NULL,
        refcount INTEGER NOT NULL DEFAULT 0 CHECK (refcount >= 0),
        recorded_ns INTEGER NOT NULL,
        unreferenced_since_ns INTEGER,
        PRIMARY KEY (namespace, chunk_id)
    ) WITHOUT ROWID""",
    """CREATE INDEX IF NOT EXISTS chunks_unreferenced
        ON chunks(namespace, unreferenced_since_ns) WHERE refcount = 0""",
    """CREATE TABLE IF NOT EXISTS assets (
        namespace TEXT NOT NULL REFERENCES namespaces(name),
        asset_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        size INTEGER NOT NULL,
        stored_bytes INTEGER NOT NULL,
        metadata_json TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        PRIMARY KEY (namespace, asset_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS assets_kind ON assets(namespace, kind, asset_id)",
    """CREATE TABLE IF NOT EXISTS asset_chunks (
        namespace TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        idx INTEGER NOT NULL,
        chunk_id BLOB NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (namespace, asset_id, idx),
        FOREIGN KEY (namespace, asset_id) REFERENCES assets(namespace, asset_id)
            ON DELETE CASCADE
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS asset_parents (
        namespace TEXT NOT NULL,
        asset_id TEXT NOT NULL,
        pos INTEGER NOT NULL,
        parent_id TEXT NOT NULL,
        transform TEXT NOT NULL,
        transform_digest TEXT NOT NULL,
        PRIMARY KEY (namespace, asset_id, pos),
        FOREIGN KEY (namespace, asset_id) REFERENCES assets(namespace, asset_id)
            ON DELETE CASCADE
    ) WITHOUT ROWID""",
]

# Versions (docs/FORMAT.md §6.4): a snapshot is a frozen tree (branch "@snap:<id>") plus its
# row here; node_hashes holds the stored hash of every node of a frozen tree; a tag never
# changes; a branch's head is the snapshot of its last branch_log entry
_V2 = [
    """CREATE TABLE IF NOT EXISTS snapshots (
        namespace TEXT NOT NULL,
        snap_id TEXT NOT NULL,
        tree_id INTEGER NOT NULL,
        branch TEXT NOT NULL,
        parents TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        message TEXT NOT NULL,
        root_hash BLOB NOT NULL,
        signature BLOB NOT NULL,
        PRIMARY KEY (namespace, snap_id)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS snapshots_time ON snapshots(namespace, created_ns)",
    """CREATE TABLE IF NOT EXISTS node_hashes (
        tree_id INTEGER NOT NULL,
        ino INTEGER NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (tree_id, ino)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS tags (
        namespace TEXT NOT NULL,
        name TEXT NOT NULL,
        snap_id TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        PRIMARY KEY (namespace, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS branch_log (
        namespace TEXT NOT NULL,
        branch TEXT NOT NULL,
        seq INTEGER NOT NULL,
        action TEXT NOT NULL,
        snap_id TEXT NOT NULL,
        at_ns INTEGER NOT NULL,
        PRIMARY KEY (namespace, branch, seq)
    ) WITHOUT ROWID""",
]

# Row MACs (row_mac.py): the rows already there are sealed by the same migration (seal_rows)
_V3 = [
    "ALTER TABLE inodes ADD COLUMN mac BLOB",
    "ALTER TABLE chunk_maps ADD COLUMN mac BLOB",
]

# Epochs (history_schema.py, FORMAT.md §6.4): a snapshot records its tree's epoch instead of
# copying the tree; old copied snapshots stay as they are (trees without base_tree)
_V4 = history_schema.statements("sqlite")

# The name(s) of an inode: change events give the path of a file changed by its number
# (events.py; a commit names the inode only)
_V5 = ["CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(tree_id, ino)"]

# version reached -> statements that take the previous version there
MIGRATIONS: dict[int, list[str]] = {1: _V1, 2: _V2, 3: _V3, 4: _V4, 5: _V5}
ROW_MACS = 3   # the version whose migration seals the rows written before it


_ADD_COLUMN = re.compile(r"ALTER TABLE (\w+) ADD COLUMN (\w+)")


def _apply(conn: sqlite3.Connection, stmt: str) -> None:
    """One step; an ADD COLUMN of a column the table has is skipped (SQLite has no IF NOT
    EXISTS there; every other statement of the steps has one)."""
    m = _ADD_COLUMN.match(stmt)
    if m and m.group(2) in {r[1] for r in conn.execute(f"PRAGMA table_info({m.group(1)})")}:
        return
    conn.execute(stmt)


def migrate(conn: sqlite3.Connection, mac: RowMac | None = None) -> None:
    """Create or upgrade the schema; `conn` must be in autocommit mode (isolation_level None)."""
    conn.execute("PRAGMA journal_mode=WAL")  # persistent in the file; cheap when already set
    conn.execute("BEGIN IMMEDIATE")  # re-read the version under the write lock: two openers race
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise InvalidArgument(
                f"metadata database schema version {version} is newer than this server "
                f"understands ({SCHEMA_VERSION}); upgrade aifs-fs before opening it")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            for stmt in MIGRATIONS[target]:
                _apply(conn, stmt)
            if target == ROW_MACS:
                seal_rows(conn, mac or RowMac())
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
