"""Maintenance of a data dir's storage: fsck and GC, online (the Admin RPCs) or offline.

Interface:
    fsck(parts, namespaces=None, *, read_data=False, deadline=NEVER) -> FsckResult
        Every chunk recorded in each namespace must be in the chunk store (one has_many per
        FSCK_BATCH ids); with read_data each is also read whole (opened, decrypted, verified).
    gc(parts, namespaces=None, *, grace_seconds=GC_GRACE_DEFAULT, dry_run=False,
       deadline=NEVER) -> GCResult
        Deletes (a) orphan inodes (nlink 0, left by a mount that crashed while a file was
        open) of every branch tree whose ctime is older than the grace, then (b) chunks
        unreferenced for longer than the grace. The grace protects an unlinked file still
        open by a live mount and a commit racing the GC. A dry run counts what it would
        delete (chunks_deleted, orphans_deleted; bytes_freed stays 0).
    FsckResult(ok, problems, chunks_checked, complete)
    GCResult(chunks_deleted, bytes_freed, orphans_deleted, complete)
        complete is False when the deadline (or, for fsck, MAX_PROBLEMS) stopped the work
        early; what the result counts was done (or found) before that.
    GC_GRACE_DEFAULT = 3600, MAX_PROBLEMS = 1000, FSCK_BATCH = 1000

`parts`: anything with .meta (metadata engine) and .chunks (chunks.ChunkService): a DataDir
(offline: `aifs fsck --data DIR`) or the server's Backend. `namespaces`: names to cover; None
means all of them. Every loop checks `deadline` (deadline.Deadline) once per unit of work and
stops there, returning what it did.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from typing import Protocol

from aifs_core.errors import AIFSError, NotFound
from aifs_server.chunks import ChunkService
from aifs_server.deadline import NEVER, Deadline
from aifs_server.metadata.base import MetadataEngine

GC_GRACE_DEFAULT = 3600
MAX_PROBLEMS = 1000
FSCK_BATCH = 1000


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


@dataclass
class GCResult:
    chunks_deleted: int = 0
    bytes_freed: int = 0
    orphans_deleted: int = 0
    complete: bool = True


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
                if read_data and _passed(deadline):  # a whole read per chunk: check each
                    return _out_of_time(result, read_data)
                result.chunks_checked += 1
                if not there:
                    problems.append(f"namespace {ns}: chunk {cid.hex()} is recorded but "
                                    f"missing from the chunk store")
                elif read_data and (problem := _read_problem(parts, ns, cid)):
                    problems.append(problem)
                if len(problems) >= MAX_PROBLEMS:
                    return _stopped(result, f"more than {MAX_PROBLEMS} problems; stopped "
                                            f"listing")
    result.ok = not problems
    return result


def _out_of_time(result: FsckResult, read_data: bool) -> FsckResult:
    flag = " --read-data" if read_data else ""
    return _stopped(result, f"stopped at the call's deadline after checking "
                            f"{result.chunks_checked} chunks; the rest were not checked: give "
                            f"it a longer --timeout, or run `aifs fsck --data DIR{flag}` "
                            f"offline")


def _read_problem(parts: StorageParts, ns: str, cid: bytes) -> str | None:
    try:
        parts.chunks.read(ns, cid, 0, None)  # opens, decrypts, verifies
    except AIFSError as e:
        return f"namespace {ns}: chunk {cid.hex()}: {e.message}"
    except (ValueError, OSError) as e:
        return f"namespace {ns}: chunk {cid.hex()}: {e}"
    return None


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
        for cid in meta.gc_candidates(ns, cutoff):
            if _passed(deadline):
                result.complete = False
                return result
            if dry_run:
                result.chunks_deleted += 1
                continue
            if not meta.forget_chunk(ns, cid):
                continue  # referenced again meanwhile
            try:
                size = int(chunks.stored_size(ns, cid))
            except NotFound:
                size = 0
            if chunks.delete(ns, cid):
                result.bytes_freed += size
            result.chunks_deleted += 1
    return result
