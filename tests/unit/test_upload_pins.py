"""UploadPins (server/upload_pins.py): what the background collector may delete, with real
lease sessions (leases.LeaseManager) and real threads."""

from __future__ import annotations

import threading
import time

from aifs_core.types import TreeRef
from aifs_server.leases import LeaseManager
from aifs_server.upload_pins import UploadPins, call_scope

NS = "default"
C1, C2 = b"\x01" * 32, b"\x02" * 32


def _now() -> int:
    return time.time_ns()


def test_a_live_sessions_upload_is_kept_until_committed_and_freed_again() -> None:
    pins = UploadPins(sdk_grace=0, ended_grace=0)
    leases = LeaseManager()
    sess = leases.open_session(TreeRef(NS, "main"))
    recorded = _now()                       # the record's unreferenced-since
    pins.hold(sess, NS, [C1])
    assert not pins.deleting(NS, C1, recorded)          # uncommitted: kept
    # committed, then dropped by a later change: unreferenced since after the hold
    assert pins.deleting(NS, C1, _now())
    pins.deleted(NS, C1)


def test_an_ended_session_leaves_a_grace_then_nothing() -> None:
    pins = UploadPins(sdk_grace=0, ended_grace=3600)
    leases = LeaseManager()
    sess = leases.open_session(TreeRef(NS, "main"))
    since = _now()
    pins.hold(sess, NS, [C1])
    leases.close_session(sess.id)
    assert not pins.deleting(NS, C1, since)             # the ended grace
    short = UploadPins(sdk_grace=0, ended_grace=0)
    s2 = leases.open_session(TreeRef(NS, "main"))
    since = _now()
    short.hold(s2, NS, [C2])
    leases.close_session(s2.id)
    assert short.deleting(NS, C2, since)


def test_an_sdk_upload_keeps_its_grace_unless_gc_gives_a_shorter_one() -> None:
    pins = UploadPins(sdk_grace=3600)
    since = _now()
    pins.hold(None, NS, [C1])
    assert not pins.deleting(NS, C1, since)
    assert pins.deleting(NS, C1, since, grace_ns=0)     # `aifs gc --grace 0`
    pins.deleted(NS, C1)


def test_an_upload_in_flight_is_never_deleted_and_waits_for_a_deletion() -> None:
    pins = UploadPins(sdk_grace=0)
    with call_scope():
        pins.inflight(NS, [C1])
        assert not pins.deleting(NS, C1, 0)
    # the call ended: deletable; while it is being deleted an upload of it waits
    assert pins.deleting(NS, C1, 0)
    started, done = threading.Event(), threading.Event()

    def upload() -> None:
        with call_scope():
            started.set()
            pins.inflight(NS, [C1])
            done.set()

    t = threading.Thread(target=upload)
    t.start()
    started.wait(10)
    assert not done.wait(0.2)       # still deleting
    pins.deleted(NS, C1)
    assert done.wait(10)
    t.join(10)


def test_outside_a_call_nothing_is_pinned() -> None:
    pins = UploadPins()
    pins.inflight(NS, [C1])          # offline tools: no call scope, no pin
    assert pins.stats()["inflight"] == 0


def test_holds_are_bounded() -> None:
    pins = UploadPins(max_holds=10)
    pins.hold(None, NS, [bytes([i]) * 32 for i in range(25)])
    assert pins.stats()["holds"] == 10
