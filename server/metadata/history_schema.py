"""Epoch history of the tree tables (docs/FORMAT.md §6.4): the schema step both engines apply.

Interface:
    TABLES                  table -> (columns in the live table's order, born included; key
                            columns of one live row; key columns of a history row)
    HISTORY_COLUMNS         table -> the columns its `<table>_hist` copy has (live ones + died)
    statements(engine)      the DDL ("sqlite" or "postgresql") that adds epochs to an existing
                            schema: the `born` columns, `trees.epoch/base_tree/base_epoch`, the
                            history tables, `tree_hashes`, their indexes and the triggers

Why triggers: the live write path keeps its statements (no extra round trip per write); the
database itself keeps the old version of a row a snapshot can still see. A row of `inodes`,
`dentries`, `xattrs` or `chunk_maps` carries `born`, the tree's epoch when it was written. A
snapshot of a tree at epoch E records E and moves the tree to E + 1. When a live row born before
the tree's current epoch is updated or deleted, a trigger first copies it, as it was, into
`<table>_hist` with `died` = the current epoch, and an update sets the row's `born` to the
current epoch. A snapshot at E sees live rows born <= E and history rows with born <= E < died.
A history row of `chunk_maps` holds a chunk reference like a live one (the trigger adds it).
`trees.epoch` 0 turns the copying off: a tree being deleted as a whole keeps no history.

Marks: a new row of `dentries` (its directory), `xattrs` or `chunk_maps` (its inode) updates
its owner inode's `born` to the current epoch when it is older, which keeps the owner's old row
in history like any update. So every node whose hashed rows changed in epoch E has a history
row dying at E (or is new in E, and its directory has one): the changes since the last
snapshot are the history rows of one epoch (`<table>_hist(tree_id, died)`), with no index on
the live tables' `born` (a create or commit writes no more index pages than before but the
`dentries(tree_id, ino)` one, which finds a changed file's directories).
"""

from __future__ import annotations

_T = {"symlink": "B", "asset_id": "T", "mac": "B", "name": "B", "value": "B", "chunk_id": "B"}
_TYPES = {"sqlite": {"I": "INTEGER", "B": "BLOB", "T": "TEXT"},
          "postgresql": {"I": "BIGINT", "B": "BYTEA", "T": "TEXT"}}

TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]] = {
    "inodes": (("tree_id", "ino", "mode", "nlink", "uid", "gid", "rdev", "size", "atime_ns",
                "mtime_ns", "ctime_ns", "data_bytes", "generation", "parent", "symlink",
                "asset_id", "asset_gen", "mac", "born"),
               ("tree_id", "ino"), ("tree_id", "ino", "died")),
    "dentries": (("id", "tree_id", "parent", "name", "ino", "born"),
                 ("id",), ("tree_id", "parent", "name", "died")),
    "xattrs": (("tree_id", "ino", "name", "value", "born"),
               ("tree_id", "ino", "name"), ("tree_id", "ino", "name", "died")),
    "chunk_maps": (("tree_id", "ino", "idx", "chunk_id", "length", "mac", "born"),
                   ("tree_id", "ino", "idx"), ("tree_id", "ino", "idx", "died")),
}
HISTORY_COLUMNS = {t: (*cols, "died") for t, (cols, _, _) in TABLES.items()}
# the inode a new row of these tables belongs to (its insert marks that inode changed)
OWNER = {"dentries": "parent", "xattrs": "ino", "chunk_maps": "ino"}
LIVE = 2**63 - 1   # tree_hashes.died of a hash still current

# a chunk-map row kept in history keeps its chunk referenced (records' rule: > 0 stops the GC
# clock)
_REF = ("UPDATE chunks SET refcount = refcount + 1, unreferenced_since_ns = NULL WHERE "
        "namespace = (SELECT namespace FROM trees WHERE tree_id = OLD.tree_id) AND "
        "chunk_id = OLD.chunk_id")


def _tables(engine: str) -> list[str]:
    ty = _TYPES[engine]
    out = []
    for t, (cols, _, hkey) in TABLES.items():
        defs = ", ".join(f"{c} {ty[_T.get(c, 'I')]}" for c in (*cols, "died"))
        rowid = " WITHOUT ROWID" if engine == "sqlite" else ""
        out.append(f"CREATE TABLE IF NOT EXISTS {t}_hist ({defs}, PRIMARY KEY "
                   f"({', '.join(hkey)})){rowid}")
        # the changes of an epoch (incremental hashing): history rows dying in it
        out.append(f"CREATE INDEX IF NOT EXISTS {t}_hist_died ON {t}_hist(tree_id, died)")
    out.append("CREATE INDEX IF NOT EXISTS dentries_hist_readdir "
               "ON dentries_hist(tree_id, parent, id)")
    # the names of a changed file (its directories are rehashed)
    out.append("CREATE INDEX IF NOT EXISTS dentries_ino ON dentries(tree_id, ino)")
    i, b = ty["I"], ty["B"]
    out.append(f"CREATE TABLE IF NOT EXISTS tree_hashes (tree_id {i} NOT NULL, ino {i} NOT NULL, "
               f"born {i} NOT NULL, died {i} NOT NULL, hash {b} NOT NULL, "
               f"PRIMARY KEY (tree_id, ino, born)){' WITHOUT ROWID' if engine == 'sqlite' else ''}")
    out.append("CREATE INDEX IF NOT EXISTS tree_hashes_died ON tree_hashes(tree_id, died)")
    out.append("CREATE INDEX IF NOT EXISTS trees_base ON trees(base_tree, base_epoch) "
               "WHERE base_tree IS NOT NULL")
    return out


def _sqlite_triggers() -> list[str]:
    ep = "(SELECT epoch FROM trees WHERE tree_id = OLD.tree_id)"
    out = []
    for t, (cols, key, _) in TABLES.items():
        copy = (f"INSERT INTO {t}_hist ({', '.join(cols)}, died) VALUES "
                f"({', '.join('OLD.' + c for c in cols)}, {ep});")
        ref = _REF + ";" if t == "chunk_maps" else ""
        where = " AND ".join(f"{k} = NEW.{k}" for k in key)
        # the inner UPDATE does not fire this trigger again (recursive_triggers is off)
        out.append(f"CREATE TRIGGER IF NOT EXISTS {t}_keep_u AFTER UPDATE ON {t} "
                   f"WHEN OLD.born < {ep} BEGIN {copy} {ref} "
                   f"UPDATE {t} SET born = {ep} WHERE {where}; END")
        out.append(f"CREATE TRIGGER IF NOT EXISTS {t}_keep_d AFTER DELETE ON {t} "
                   f"WHEN OLD.born < {ep} BEGIN {copy} {ref} END")
    for t, owner in OWNER.items():
        new = "(SELECT epoch FROM trees WHERE tree_id = NEW.tree_id)"
        # fires inodes_keep_u (another trigger: nested triggers run) when the owner changes
        # a tree never snapshotted (epoch 1) has nothing older to mark: a branch's copy and
        # the creates of such a tree skip the UPDATE
        out.append(f"CREATE TRIGGER IF NOT EXISTS {t}_mark AFTER INSERT ON {t} "
                   f"WHEN {new} > 1 BEGIN "
                   f"UPDATE inodes SET born = {new} WHERE tree_id = NEW.tree_id AND "
                   f"ino = NEW.{owner} AND born < {new}; END")
    return out


def _postgres_triggers() -> list[str]:
    out = []
    for t, (cols, _, _) in TABLES.items():
        ref = _REF + ";" if t == "chunk_maps" else ""
        out.append(
            f"CREATE OR REPLACE FUNCTION {t}_keep() RETURNS trigger LANGUAGE plpgsql AS $f$ "
            "DECLARE ep BIGINT; BEGIN "
            "SELECT epoch INTO ep FROM trees WHERE tree_id = OLD.tree_id; "
            "IF OLD.born < ep THEN "
            f"INSERT INTO {t}_hist ({', '.join(cols)}, died) VALUES "
            f"({', '.join('OLD.' + c for c in cols)}, ep); {ref} "
            "IF TG_OP = 'UPDATE' THEN NEW.born := ep; END IF; END IF; "
            "IF TG_OP = 'DELETE' THEN RETURN OLD; END IF; RETURN NEW; END $f$")
        out.append(f"CREATE OR REPLACE TRIGGER {t}_keep BEFORE UPDATE OR DELETE ON {t} "
                   f"FOR EACH ROW EXECUTE FUNCTION {t}_keep()")
    for t, owner in OWNER.items():
        out.append(
            f"CREATE OR REPLACE FUNCTION {t}_mark() RETURNS trigger LANGUAGE plpgsql AS $f$ "
            "DECLARE ep BIGINT; BEGIN "
            "SELECT epoch INTO ep FROM trees WHERE tree_id = NEW.tree_id; "
            f"IF ep > 1 THEN UPDATE inodes SET born = ep WHERE tree_id = NEW.tree_id AND "
            f"ino = NEW.{owner} AND born < ep; END IF; RETURN NULL; END $f$")
        out.append(f"CREATE OR REPLACE TRIGGER {t}_mark AFTER INSERT ON {t} "
                   f"FOR EACH ROW EXECUTE FUNCTION {t}_mark()")
    return out


def statements(engine: str) -> list[str]:
    exists = " IF NOT EXISTS" if engine == "postgresql" else ""
    i = _TYPES[engine]["I"]
    out = [f"ALTER TABLE trees ADD COLUMN{exists} epoch {i} NOT NULL DEFAULT 1",
           f"ALTER TABLE trees ADD COLUMN{exists} base_tree {i}",
           f"ALTER TABLE trees ADD COLUMN{exists} base_epoch {i}"]
    out += [f"ALTER TABLE {t} ADD COLUMN{exists} born {i} NOT NULL DEFAULT 1" for t in TABLES]
    out += _tables(engine)
    out += _sqlite_triggers() if engine == "sqlite" else _postgres_triggers()
    return out
