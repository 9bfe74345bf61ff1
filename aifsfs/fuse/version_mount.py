"""Mounting a snapshot or a tag read-only (`aifs mount --snapshot ID | --tag NAME`).

Interface:
    add_version_arguments(parser)       --snapshot ID, --tag NAME
    resolve_version(opts, snapshot="", tag="") -> None
        checks the snapshot's signature against the namespace's pinned key (aifsfs.keypin)
        and its root directory against the signed root hash, then points `opts` at its frozen
        tree: opts.branch = "@snap:<id>", opts.read_only = True. MountError if it does not
        verify, the pinned key changed, or it does not exist.

The mount itself is the ordinary one over the Filesystem RPCs on that tree; the server refuses
every change to a frozen tree anyway, `read_only` makes the kernel answer EROFS first.
"""

from __future__ import annotations

import argparse
from typing import Any

from aifs_core import merkle
from aifs_core.errors import AIFSError


def add_version_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--snapshot", default="", metavar="ID",
                   help="mount this snapshot read-only (its signature checked first)")
    g.add_argument("--tag", default="", metavar="NAME",
                   help="mount the snapshot this tag names read-only")


def resolve_version(opts: Any, snapshot: str = "", tag: str = "") -> None:
    from aifsfs.fuse.mounter import MountError, _client

    if not snapshot and not tag:
        return
    ref = snapshot or f"tag:{tag}"
    client = _client(opts, 5.0)
    try:
        v = client.versions
        info = v.get_verified(ref)
        root = v.list_tree(info["id"], 1)
        a = root.attr
        got = merkle.node_hash(a.mode, a.uid, a.gid, 0, merkle.dir_body(
            (bytes(e.name), bytes(e.hash)) for e in root.entries),
            dict(zip(root.xattr_names, root.xattr_values, strict=True)))
        if got != info["root_hash"]:
            raise MountError(f"snapshot {info['id']}: its root directory does not match the "
                             f"signed root hash (the metadata was altered); not mounted")
    except AIFSError as exc:
        raise MountError(f"cannot mount {ref}: {exc}") from None
    finally:
        client.close()
    opts.branch = info["tree_branch"]
    opts.read_only = True
