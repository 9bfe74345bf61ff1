"""Snapshots as lineage parents (issue 11 item 7): a model asset whose parent is the snapshot of
the data it was trained on, `aifs-snap://NS/ID`.

Interface (over a store.Tx, so the checks run inside the caller's transaction):
    is_snapshot_parent(parent_id) -> bool
    canonical_parent(tx, namespace, parent_id) -> "aifs-snap://NS/<id>"
        resolves a tag to the snapshot it names (a citation: the id is stored, never the tag);
        InvalidArgument for another namespace's snapshot or a URI with a path;
        ParentNotCommitted when no such snapshot or tag exists
    parent_exists(tx, namespace, parent_id) -> bool      an asset, or a snapshot (stored form)
    lineage_record(tx, namespace, parent_id) -> AssetRecord | None
        the lineage entry of a parent: the asset, or for a snapshot a record of kind
        "snapshot" (asset_id = its URI, size 0, metadata: branch, message, root hash)

Lineage rows keep a pruned or deleted parent's name (as for assets), but a parent must exist
when the child is put: strong causality, checked in the transaction that stores the child.
"""

from __future__ import annotations

import json
import re

from aifs_core.errors import InvalidArgument, ParentNotCommitted
from aifs_core.merkle import SNAP_SCHEME, parse_snap_uri, snap_uri
from aifs_core.types import AssetRecord
from aifs_server.metadata.store import Tx

_ID = re.compile(r"[0-9a-f]{32}")


def is_snapshot_parent(parent_id: str) -> bool:
    return parent_id.startswith(SNAP_SCHEME)


def _parse(parent_id: str) -> tuple[str, str, str]:
    try:
        return parse_snap_uri(parent_id)
    except ValueError as e:
        raise InvalidArgument(f"parent: {e}") from None


def canonical_parent(tx: Tx, namespace: str, parent_id: str) -> str:
    ns, ref, path = _parse(parent_id)
    if path:
        raise InvalidArgument(f"parent {parent_id}: a snapshot parent names a whole snapshot "
                              f"({SNAP_SCHEME}NS/ID), not a path in it")
    if ns != namespace:
        raise InvalidArgument(f"parent {parent_id} is a snapshot of namespace {ns!r}; an asset "
                              f"of {namespace!r} may only name its own namespace's snapshots")
    sid = ref.lower() if _ID.fullmatch(ref.lower()) else tx.tag(namespace, ref)
    if sid is None or tx.snapshot(namespace, sid) is None:
        raise ParentNotCommitted(f"parent snapshot {parent_id} does not exist in namespace "
                                 f"{namespace!r} (no such snapshot id or tag); nothing was "
                                 "stored")
    return snap_uri(namespace, sid)


def parent_exists(tx: Tx, namespace: str, parent_id: str) -> bool:
    if not is_snapshot_parent(parent_id):
        return tx.asset_exists(namespace, parent_id)
    ns, sid, path = _parse(parent_id)
    return ns == namespace and not path and tx.snapshot(namespace, sid) is not None


def lineage_record(tx: Tx, namespace: str, parent_id: str) -> AssetRecord | None:
    if not is_snapshot_parent(parent_id):
        return tx.asset(namespace, parent_id)
    row = tx.snapshot(namespace, _parse(parent_id)[1])
    if row is None:
        return None   # pruned since: its name stays in the child's parents
    _, _, branch, _, created, message, root, _ = row
    meta = {"branch": str(branch), "message": str(message), "root_hash": bytes(root).hex()}
    return AssetRecord(asset_id=parent_id, kind="snapshot", size=0, chunks=[],
                       metadata_json=json.dumps(meta, sort_keys=True), created_ns=int(created))
