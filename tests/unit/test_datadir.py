"""Data directory format/open: layout, permissions, idempotence, dry run, refusals."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import blake3
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from aifs_core.errors import InvalidArgument
from aifs_core.types import ROOT_INO, TreeRef
from aifs_server import datadir
from aifs_server.datadir import DataDirError, format_data_dir, open_data_dir
from aifs_server.kms import LocalKeyring


def _snapshot(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every path under root -> (mode, mtime_ns, sha256 of the content for files)."""
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in [*files, "."]:
            p = Path(dirpath) / name
            st = p.stat()
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else ""
            out[str(p.relative_to(root))] = (st.st_mode, st.st_mtime_ns, digest)
    return out


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_format_creates_layout_with_private_permissions(tmp_path: Path) -> None:
    root = tmp_path / "data"
    res = format_data_dir(root)
    assert res.created and "formatted" in res.message and not res.dry_run
    assert _mode(root) == 0o700 and _mode(root / "chunks") == 0o700
    for name in ("keyring.json", "storage.key", "macaroon.key", "signing.key", "config.json",
                 "meta.db"):
        assert _mode(root / name) == 0o600, name
    assert len((root / "storage.key").read_bytes()) == 32
    assert len((root / "macaroon.key").read_bytes()) == 32
    config = json.loads((root / "config.json").read_text())
    assert config["format_version"] == datadir.FORMAT_VERSION
    assert config["chunk_size"] == 1 << 20 and config["zstd_level"] == 1

    with open_data_dir(root) as dd:
        assert dd.path == root and dd.config == config
        assert dd.root_key == (root / "macaroon.key").read_bytes()
        ns = dd.meta.get_namespace("default")
        assert ns.chunk_size == 1 << 20 and ns.zstd_level == 1
        assert ns.kms_key_id == dd.kms.current_key_id()
        assert stat.S_ISDIR(dd.meta.getattr(TreeRef("default", "main"), ROOT_INO).mode)
        # The signing key matches the published public key.
        pub = Ed25519PublicKey.from_public_bytes((root / "signing.pub").read_bytes())
        pub.verify(dd.signing_key.sign(b"root"), b"root")
        assert dd.signing_public_key.public_bytes_raw() == pub.public_bytes_raw()
        # Chunks go through the real service into chunks/, sealed.
        text = b"chunk through the data dir " * 100
        cid = blake3.blake3(text).digest()
        new, stored = dd.chunks.put("default", cid, text)
        assert new and 0 < stored < len(text)
        assert dd.chunks.read("default", cid) == text
        assert dd.kms is not None and dd.meta is not None


def test_format_options_are_recorded(tmp_path: Path) -> None:
    root = tmp_path / "d"
    format_data_dir(root, chunk_size=1 << 16, zstd_level=5, namespace="team-a")
    with open_data_dir(root) as dd:
        ns = dd.meta.get_namespace("team-a")
        assert (ns.chunk_size, ns.zstd_level) == (1 << 16, 5)
        dd.meta.getattr(TreeRef("team-a", "main"), ROOT_INO)


def test_format_twice_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "d"
    assert format_data_dir(root).created
    before = _snapshot(root)
    again = format_data_dir(root, chunk_size=1 << 16)
    assert not again.created
    assert "already formatted" in again.message
    assert _snapshot(root) == before
    assert format_data_dir(root, dry_run=True).message.startswith(f"{root} is already formatted")


def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    new = tmp_path / "a" / "b"
    res = format_data_dir(new, dry_run=True)
    assert res.dry_run and not res.created and "nothing was written" in res.message
    assert res.actions and not (tmp_path / "a").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    format_data_dir(empty, dry_run=True)
    assert list(empty.iterdir()) == []


def test_refuses_foreign_or_bad_targets(tmp_path: Path) -> None:
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    before = _snapshot(foreign)
    for dry in (True, False):
        with pytest.raises(DataDirError, match="not empty and is not an AIFS data directory"):
            format_data_dir(foreign, dry_run=dry)
    assert _snapshot(foreign) == before

    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(DataDirError, match="not a directory"):
        format_data_dir(a_file)

    with pytest.raises(InvalidArgument, match="chunk size"):
        format_data_dir(tmp_path / "x", chunk_size=1000)
    with pytest.raises(ValueError, match="1-22"):
        format_data_dir(tmp_path / "x", zstd_level=23)
    with pytest.raises(InvalidArgument, match="namespace name"):
        format_data_dir(tmp_path / "x", namespace="no/slash")
    assert not (tmp_path / "x").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_dry_run_reports_unwritable_parent(tmp_path: Path) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(DataDirError, match="not a writable directory"):
            format_data_dir(ro / "data", dry_run=True)
    finally:
        ro.chmod(0o700)


def test_open_unformatted_says_how_to_format(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match=r"aifs format --data"):
        open_data_dir(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataDirError, match=r"aifs format --data .*empty"):
        open_data_dir(tmp_path / "empty")


def test_open_refuses_readable_key_files(tmp_path: Path) -> None:
    root = tmp_path / "d"
    format_data_dir(root)
    for name in ("macaroon.key", "storage.key", "signing.key", "keyring.json"):
        (root / name).chmod(0o640)
        with pytest.raises(DataDirError, match=rf"chmod 600 {root / name}"):
            open_data_dir(root)
        (root / name).chmod(0o600)
    open_data_dir(root).close()


def test_open_refuses_newer_format_version(tmp_path: Path) -> None:
    root = tmp_path / "d"
    format_data_dir(root)
    config = json.loads((root / "config.json").read_text())
    config["format_version"] = 99
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataDirError, match="version 99"):
        open_data_dir(root)


def test_interrupted_format_resumes_keeping_keys(tmp_path: Path) -> None:
    root = tmp_path / "d"
    root.mkdir(mode=0o700)
    LocalKeyring.create(root / "keyring.json")  # a format that died after the keyring
    keyring_bytes = (root / "keyring.json").read_bytes()
    res = format_data_dir(root)
    assert res.created and "resume" in res.actions[0]
    assert (root / "keyring.json").read_bytes() == keyring_bytes
    open_data_dir(root).close()


def test_open_refuses_incomplete_directory(tmp_path: Path) -> None:
    root = tmp_path / "d"
    format_data_dir(root)
    (root / "meta.db").rename(tmp_path / "meta.db.bak")
    with pytest.raises(DataDirError, match="meta.db is missing"):
        open_data_dir(root)
    assert not (root / "meta.db").exists()  # not silently recreated empty
    (tmp_path / "meta.db.bak").rename(root / "meta.db")
    (root / "macaroon.key").unlink()
    with pytest.raises(DataDirError, match="macaroon.key is missing"):
        open_data_dir(root)


def test_open_uses_the_backends_the_config_records(tmp_path: Path) -> None:
    root = tmp_path / "d"
    format_data_dir(root)
    text = b"stored before the move " * 50
    cid = blake3.blake3(text).digest()
    with open_data_dir(root) as dd:
        dd.chunks.put("default", cid, text)
        assert dd.store.url == f"file://{root / 'chunks'}"
    # the config, not the layout, says where the store and the database are
    (root / "chunks").rename(root / "moved-chunks")
    (root / "meta.db").rename(tmp_path / "elsewhere.db")
    config = json.loads((root / "config.json").read_text())
    config["chunks"] = {"store": "local", "path": "moved-chunks"}
    config["meta"] = {"url": f"sqlite://{tmp_path / 'elsewhere.db'}"}
    (root / "config.json").write_text(json.dumps(config))
    with open_data_dir(root) as dd:
        assert dd.chunks.read("default", cid) == text
        assert dd.meta.get_namespace("default").chunk_size == 1 << 20
    assert not (root / "chunks").exists() and not (root / "meta.db").exists()


@pytest.mark.parametrize(("section", "value", "named", "known"), [
    ("meta", {"engine": "oracle", "path": "meta.db"}, "'oracle'", "postgres, postgresql, sqlite"),
    ("chunks", {"store": "tape", "path": "chunks"}, "'tape'", "local"),
    ("chunks", {"url": "gopher://host/x"}, "'gopher'", "file://"),
])
def test_an_unknown_backend_in_the_config_is_a_clear_error(
        tmp_path: Path, section: str, value: dict[str, str], named: str, known: str) -> None:
    root = tmp_path / "d"
    format_data_dir(root)
    config = json.loads((root / "config.json").read_text())
    config[section] = value
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataDirError) as exc:
        open_data_dir(root)
    msg = str(exc.value)
    assert named in msg and f"known are {known}" in msg and "config.json" in msg


def test_a_store_the_config_names_must_exist(tmp_path: Path) -> None:
    root = tmp_path / "d"
    format_data_dir(root)
    config = json.loads((root / "config.json").read_text())
    config["chunks"] = {"url": f"file://{tmp_path / 'gone'}"}
    (root / "config.json").write_text(json.dumps(config))
    with pytest.raises(DataDirError, match=f"{tmp_path / 'gone'} is missing"):
        open_data_dir(root)
    assert not (tmp_path / "gone").exists()
