"""Maintenance of a data dir's storage: fsck and GC, online (the Admin RPCs) or offline.

Interface:
    fsck(parts, namespaces=None, *, read_data=False, deadline=NEVER) -> FsckResult
        Every chunk recorded in each namespace must be in the chunk store (one has_many per
        FSCK_BATCH ids) with the size its envelope header describes (one small header read:
        a truncated chunk is found without --read-data); with read_data each is read whole
        (opened, decrypted, verified). Then every file of every branch (path, or "unlinked
        inode N") and every asset is walked: each chunk-map slot must name a recorded chunk,
        and each bad chunk is reported with the files and assets that use it. Every inode and
        chunk-map row of every tree (branches and snapshots) must match its keyed checksum
        (metadata/row_mac.py): a row that does not is reported with the file's path (or
        inode number) and the slot. Temp files older than STALE_TEMP_SECONDS in a local store
        are reported (gc removes them).
    check_rows(meta, ns, problems, deadline=NEVER) -> bool
        that row check alone for one namespace (False: the deadline stopped it)
    gc(parts, namespaces=None, *, grace_seconds=GC_GRACE_DEFAULT, dry_run=False,
       deadline=NEVER) -> GCResult
        Deletes (a) orphan inodes (nlink 0, left by a mount that crashed while a file was
        open) of every branch tree whose ctime is older than the grace, then (b) chunks
        unreferenced for longer than the grace. The grace protects an unlinked file still
        open by a live mount and a commit racing the GC; on a running server (the Admin RPC)
        a chunk an upload has in flight or a live session holds is never deleted, whatever
        the grace (`parts.chunks.pins`, upload_pins.py). Then (c) temp chunk files a crashed
        writer left (older than STALE_TEMP_SECONDS, whatever the grace). A dry run counts what
        it would delete (chunks_deleted, orphans_deleted, temp_files_deleted; bytes_freed 0).
    delete_chunk(parts, pins, ns, cid, since_ns, result, grace_seconds=None)
        one chunk, honouring `pins`
        (collector.py's background passes use it too)
    FsckResult(ok, problems, chunks_checked, complete, files_checked)
    GCResult(chunks_deleted, bytes_freed, orphans_deleted, complete, temp_files_deleted)
        complete is False when the deadline (or, for fsck, MAX_PROBLEMS) stopped the work
        early; what the result counts was done (or found) before that.
    GC_GRACE_DEFAULT = 3600, MAX_PROBLEMS = 1000, FSCK_BATCH = 1000

`parts`: anything with .meta (metadata engine) and .chunks (chunks.ChunkService): a DataDir
(offline: `aifs fsck --data DIR`) or the server's Backend. `namespaces`: names to cover; None
means all of them. Every loop checks `deadline` (deadline.Deadline) once per unit of work and
stops there, returning what it did.
"""

from __future__ import annotations

import stat
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Any, Protocol

from aifs_core.errors import AIFSError, CorruptMetadata, NotFound
from aifs_core.types import ROOT_INO, ChunkRef
from aifs_server.chunks import ChunkService
from aifs_server.deadline import NEVER, Deadline
from aifs_server.metadata.base import MetadataEngine
from aifs_server.metadata.posix import FROZEN_PREFIX
from aifs_server.upload_pins import UploadPins

GC_GRACE_DEFAULT = 3600
GC_PASS_MAX = 1_000_000   # candidates one gc call takes per namespace (a later call goes on)
MAX_PROBLEMS = 1000
FSCK_BATCH = 1000
# A temp chunk file lives for one write (milliseconds, a stalled disk: seconds): one this old
# was left by a crashed writer. Not the GC grace: `--grace 0` must not race a live PutChunks.
STALE_TEMP_SECONDS = 900


class StorageParts(Protocol):
    @property
    def meta(self) -> MetadataEngine: ...
    @property
    def chunks(self) -> ChunkService: ...


@dataclass
class FsckResult:
    ok: bool = True
    problems: list[str] = field(default_factory=list)
    chunks_checked: int = 0
    complete: bool = True
    files_checked: int = 0


@dataclass
class GCResult:
    chunks_deleted: int = 0
    bytes_freed: int = 0
    orphans_deleted: int = 0
    complete: bool = True
    temp_files_deleted: int = 0


def _passed(deadline: Deadline) -> bool:
    left = deadline.remaining()
    return left is not None and left <= 0


def _names(parts: StorageParts, namespaces: Iterable[str] | None) -> list[str]:
    if namespaces is None:
        return [ns.name for ns in parts.meta.list_namespaces()]
    return list(namespaces)


def _batches(ids: Iterator[bytes], n: int) -> Iterator[list[bytes]]:
    while batch := list(islice(ids, n)):
        yield batch


def fsck(parts: StorageParts, namespaces: Iterable[str] | None = None, *,
         read_data: bool = False, deadline: Deadline = NEVER) -> FsckResult:
    result = FsckResult()
    problems = result.problems
    for ns in _names(parts, namespaces):
        # 1. every recorded chunk: stored, and its stored size the one its (digest-protected)
        #    envelope header describes; with read_data, read whole and verified too
        bad: dict[bytes, str] = {}   # chunk id -> what is wrong with it
        for batch in _batches(iter(parts.meta.iter_chunks(ns)), FSCK_BATCH):
            if _passed(deadline):
                return _out_of_time(result, read_data)
            try:
                present = parts.chunks.has(ns, batch)
            except (AIFSError, OSError) as e:
                msg = e.message if isinstance(e, AIFSError) else str(e)
                present = [False] * len(batch)
                problems.append(f"namespace {ns}: {len(batch)} chunks could not be looked up "
                                f"in the chunk store: {msg}")
            for cid, there in zip(batch, present, strict=True):
                if _passed(deadline):  # a read per chunk: check each
                    return _out_of_time(result, read_data)
                result.chunks_checked += 1
                if not there:
                    bad[cid] = "is recorded but missing from the chunk store"
                elif problem := _chunk_problem(parts, ns, cid, read_data):
                    bad[cid] = problem
                if len(bad) + len(problems) >= MAX_PROBLEMS:
                    _report_chunks(problems, ns, bad, {})
                    return _stopped(result, f"more than {MAX_PROBLEMS} problems; stopped "
                                            f"listing")
        # 2. the metadata rows that decide files' bytes: each must match its keyed checksum
        if not check_rows(parts.meta, ns, problems, deadline):
            return _out_of_time(result, read_data)
        # 3. every file of every branch and every asset: each slot must name a recorded chunk;
        #    who uses a bad chunk is what an operator must restore or delete
        users: dict[bytes, list[str]] = {}
        if not _check_users(parts, ns, bad, users, result, deadline):
            _report_chunks(problems, ns, bad, users)
            return _out_of_time(result, read_data)
        _report_chunks(problems, ns, bad, users)
        if len(problems) >= MAX_PROBLEMS:
            return _stopped(result, f"more than {MAX_PROBLEMS} problems; stopped listing")
    # 4. temp files a crashed writer left in the store (GC removes them)
    stale, complete = stale_temp_files(parts.chunks.store, deadline)
    if not complete:
        return _out_of_time(result, read_data)
    if stale:
        problems.append(f"{len(stale)} temp files older than {STALE_TEMP_SECONDS} s in the "
                        f"chunk store (left by a crash; `aifs gc` removes them), e.g. "
                        f"{stale[0]}")
    result.ok = not problems
    return result


USERS_SHOWN = 10   # files named per bad chunk; the rest are counted
PATH_DEPTH_MAX = 4096   # parents walked to name a damaged row's file (a cycle cannot hang it)


def check_rows(meta: MetadataEngine, ns: str, problems: list[str],
               deadline: Deadline = NEVER) -> bool:
    """Append a problem for every inode or chunk-map row of a tree of `ns` (branches and
    snapshots' frozen trees) whose keyed checksum does not match; False when the deadline
    stopped it. Engines without row checksums (no `store`) are skipped."""
    store = getattr(meta, "store", None)
    if store is None:
        return True
    tx = store.single()
    for tree in meta.list_trees(ns):
        if _passed(deadline):
            return False
        got = tx.get_tree(ns, tree.branch)
        if got is None:
            continue   # deleted meanwhile
        tid = got[0]
        for ino, idx in tx.corrupt_rows(tid):
            row = "inode row" if idx is None else f"chunk-map slot {idx}"
            problems.append(f"namespace {ns}: {tree.branch}:{_path_of(tx, tid, ino)} (inode "
                            f"{ino}): its {row} fails its keyed checksum (altered at rest); "
                            f"reads of it are EIO: restore the file from a snapshot or backup, "
                            f"or delete it")
            if len(problems) >= MAX_PROBLEMS:
                return True
    return True


def _path_of(tx: Any, tree_id: int, ino: int) -> str:
    """The file's path from its names (one of them, for a hard link); "?" where a name is
    missing (an unlinked inode, a broken parent chain)."""
    parts: list[str] = []
    for _ in range(PATH_DEPTH_MAX):
        if ino == ROOT_INO:
            return "/" + "/".join(reversed(parts))
        got = tx.dentry_of(tree_id, ino)
        if got is None:
            break
        ino, name = got[0], got[1].decode("utf-8", "backslashreplace")
        parts.append(name)
    return "?/" + "/".join(reversed(parts)) if parts else "(unlinked)"


def _report_chunks(problems: list[str], ns: str, bad: dict[bytes, str],
                   users: dict[bytes, list[str]]) -> None:
    for cid, what in bad.items():
        who = users.get(cid, [])
        if who:
            more = f" and {len(who) - USERS_SHOWN} more" if len(who) > USERS_SHOWN else ""
            used = f"; used by {', '.join(who[:USERS_SHOWN])}{more}"
        else:
            used = "; no file or asset uses it (gc will collect it)"
        problems.append(f"namespace {ns}: chunk {cid.hex()} {what}{used}")
    bad.clear()


def _check_users(parts: StorageParts, ns: str, bad: dict[bytes, str],
                 users: dict[bytes, list[str]], result: FsckResult, deadline: Deadline
                 ) -> bool:
    """Walk every branch tree (and the unlinked inodes still kept) and every asset of `ns`:
    a slot naming an unrecorded chunk is a problem; users of a `bad` chunk go into `users`.
    False when the deadline stopped the walk."""
    meta = parts.meta

    def check(where: str, refs: list[ChunkRef]) -> None:
        ids = {r.chunk_id for r in refs if r.chunk_id}
        if not ids:
            return
        ordered = sorted(ids)
        for cid, ok in zip(ordered, meta.has_chunks(ns, ordered), strict=True):
            if not ok:
                slots = sorted(r.index for r in refs if r.chunk_id == cid)
                result.problems.append(
                    f"namespace {ns}: {where}: slot {slots[0]} names chunk {cid.hex()}, which "
                    f"is not recorded in the namespace (its bytes read as an error)")
            if cid in bad:
                users.setdefault(cid, []).append(where)

    for tree in meta.list_trees(ns):
        seen: set[int] = set()
        todo: list[tuple[int, str]] = [(ROOT_INO, "/")]
        while todo:
            ino, path = todo.pop()
            cookie = 0
            while True:
                if _passed(deadline):
                    return False
                try:
                    entries, eof = meta.readdir(tree, ino, cookie, FSCK_BATCH)
                except CorruptMetadata:
                    break   # a damaged row in this directory: check_rows reported it
                for e in entries:
                    child = path.rstrip("/") + "/" + e.name.decode("utf-8", "backslashreplace")
                    if stat.S_ISDIR(e.attr.mode):
                        todo.append((e.attr.ino, child))
                    elif stat.S_ISREG(e.attr.mode) and e.attr.ino not in seen:
                        seen.add(e.attr.ino)   # a hard link: its chunks were checked already
                        if _passed(deadline):
                            return False
                        try:
                            _, refs = meta.get_chunk_map(tree, e.attr.ino)
                        except CorruptMetadata:
                            continue   # reported by check_rows
                        result.files_checked += 1
                        check(f"{tree.branch}:{child}", refs)
                    cookie = e.cookie
                if eof or not entries:
                    break
        for ino in meta.orphan_inodes(tree):
            if _passed(deadline):
                return False
            try:
                a, refs = meta.get_chunk_map(tree, ino)
            except AIFSError:
                continue   # gone meanwhile, or not a file
            if stat.S_ISREG(a.mode):
                result.files_checked += 1
                check(f"{tree.branch}: unlinked inode {ino}", refs)
    after = ""
    while True:
        if _passed(deadline):
            return False
        page = meta.list_assets(ns, limit=ASSET_PAGE, after=after)
        for rec in page:
            check(f"asset {rec.asset_id}", rec.chunks)
        if len(page) < ASSET_PAGE:
            return True
        after = page[-1].asset_id


ASSET_PAGE = 500


def stale_temp_files(store: object, deadline: Deadline = NEVER) -> tuple[list[str], bool]:
    """(paths, complete): temp files older than STALE_TEMP_SECONDS that a crashed writer left
    in a store that has them (the local store; [] for S3, whose PUTs leave nothing)."""
    find = getattr(store, "stale_temp_files", None)
    if find is None:
        return [], True
    paths, complete = find(STALE_TEMP_SECONDS, lambda: _passed(deadline))
    return list(paths), bool(complete)


def _chunk_problem(parts: StorageParts, ns: str, cid: bytes, read_data: bool) -> str | None:
    """What is wrong with a stored chunk, or None. Without read_data only the envelope's
    header is read (one small read): a truncated or extended chunk file no longer has the size
    its header describes. With read_data the whole chunk is opened, decrypted and verified."""
    try:
        parts.chunks.read(ns, cid, 0, None if read_data else 0)
    except AIFSError as e:
        return f"is damaged: {e.message}"
    except (ValueError, OSError) as e:
        return f"could not be read: {e}"
    return None


def _out_of_time(result: FsckResult, read_data: bool) -> FsckResult:
    flag = " --read-data" if read_data else ""
    return _stopped(result, f"stopped at the call's deadline after checking "
                            f"{result.chunks_checked} chunks; the rest were not checked: give "
                            f"it a longer --timeout, or run `aifs fsck --data DIR{flag}` "
                            f"offline")


def _stopped(result: FsckResult, why: str) -> FsckResult:
    result.problems.append(why)
    result.ok = result.complete = False
    return result


def gc(parts: StorageParts, namespaces: Iterable[str] | None = None, *,
       grace_seconds: int = GC_GRACE_DEFAULT, dry_run: bool = False,
       deadline: Deadline = NEVER) -> GCResult:
    meta, chunks = parts.meta, parts.chunks
    cutoff = time.time_ns() - grace_seconds * 1_000_000_000
    result = GCResult()
    for ns in _names(parts, namespaces):
        for tree in meta.list_trees(ns):  # every branch: a crash can orphan inodes in any
            if tree.branch.startswith(FROZEN_PREFIX):
                continue   # a snapshot's tree (or a deleted branch's kept for its snapshots)
            for ino in meta.orphan_inodes(tree):
                if _passed(deadline):
                    result.complete = False
                    return result
                try:
                    a = meta.getattr(tree, ino)
                except NotFound:
                    continue
                if a.ctime_ns >= cutoff:
                    continue  # may still be open by a mount: wait for the grace
                result.orphans_deleted += 1
                if not dry_run:
                    meta.forget(tree, ino)
        pins = getattr(chunks, "pins", None)
        for cid, since in meta.gc_candidate_times(ns, 0, cutoff, GC_PASS_MAX):
            if _passed(deadline):
                result.complete = False
                return result
            if dry_run:
                grace_ns = int(grace_seconds * 1e9)
                if pins is None or pins.deleting(ns, cid, since, grace_ns):
                    result.chunks_deleted += 1   # what a real run would delete now
                    if pins is not None:
                        pins.deleted(ns, cid)
                continue
            delete_chunk(parts, pins, ns, cid, since, result, grace_seconds)
    # temp files a crashed writer left: no record names them, so nothing else ever would
    stale, complete = stale_temp_files(chunks.store, deadline)
    for path in stale:
        if dry_run:
            result.temp_files_deleted += 1
            continue
        size = chunks.store.remove_temp_file(path)  # type: ignore[attr-defined]
        if size is not None:
            result.temp_files_deleted += 1
            result.bytes_freed += size
    if not complete:
        result.complete = False
    return result


def delete_chunk(parts: StorageParts, pins: UploadPins | None, ns: str, cid: bytes,
                 since_ns: int, result: GCResult, grace_seconds: float | None = None) -> None:
    """Delete one unreferenced chunk (its record, then its stored copy) unless an upload of
    it is in flight or a live session holds it (`pins`, a running server's; None offline).
    While it is being deleted, an upload of the same chunk waits, then stores it again.
    `grace_seconds` (gc's): what session-less uploads get, instead of the server's."""
    grace_ns = None if grace_seconds is None else int(grace_seconds * 1e9)
    if pins is not None and not pins.deleting(ns, cid, since_ns, grace_ns):
        return
    try:
        if not parts.meta.forget_chunk(ns, cid):
            return  # referenced again meanwhile
        try:
            size = int(parts.chunks.stored_size(ns, cid))
        except NotFound:
            size = 0
        if parts.chunks.delete(ns, cid):
            result.bytes_freed += size
        result.chunks_deleted += 1
    finally:
        if pins is not None:
            pins.deleted(ns, cid)
