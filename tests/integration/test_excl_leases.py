"""Exclusive directory leases in the server's lease manager (server/leases.py; protocol in
docs/LEASES.md "Exclusive directory leases"): granted only to a lone holder, recalled by
another client's read of the directory or of a covered child (the read waits for the ack),
never by the holder's own, and gone with the holder's stream."""

from __future__ import annotations

import threading
from typing import Any

from aifs_server.leases import LeaseManager

TREE = ("ns", "main")
D, A, B = 10, 11, 12


def _ack_recalls(mgr: LeaseManager, sess: Any, seen: list[list[int]], stop: threading.Event) -> None:
    """A client that acks every recall after 'flushing' (recording what it was told)."""
    while not stop.is_set():
        try:
            item = sess.outbox.get(timeout=0.05)
        except Exception:  # noqa: BLE001 - queue.Empty
            continue
        if item is None:
            return
        if item[0] == "recall":
            seen.append(list(item[2]))
            mgr.ack(sess.id, item[1])


def test_granted_only_when_nobody_else_caches_the_directory_or_a_child() -> None:
    mgr = LeaseManager(term=5)
    s1, s2 = mgr.open_session(TREE), mgr.open_session(TREE)
    since = mgr.mark()
    assert mgr.grant(s2, TREE, [B], since)             # s2 caches a child
    assert mgr.may_excl(s1, TREE, D)
    assert not mgr.grant_excl(s1, TREE, D, [A, B], mgr.mark())
    assert not mgr.may_excl(s1, TREE, D)     # not listed again for a term after a refusal
    mgr.release(s2.id, [B])
    assert mgr.grant_excl(s1, TREE, D, [A, B], mgr.mark())
    assert mgr.holds_excl(s1, TREE, D)
    # while s1 holds it, s2's reads are not leased (they might miss s1's pending unlinks)
    assert not mgr.grant(s2, TREE, [D], mgr.mark())
    assert mgr.grant(s1, TREE, [D, A], mgr.mark())     # the holder's own reads are
    assert not mgr.grant_excl(s2, TREE, D, [A, B], mgr.mark())


def test_a_change_since_the_listing_refuses_the_grant() -> None:
    mgr = LeaseManager(term=5)
    s1 = mgr.open_session(TREE)
    since = mgr.mark()
    with mgr.change(TREE, [A], None, None):
        pass
    assert not mgr.grant_excl(s1, TREE, D, [A], since)


def test_another_read_recalls_it_and_waits_for_the_ack() -> None:
    mgr = LeaseManager(term=5)
    s1, s2 = mgr.open_session(TREE), mgr.open_session(TREE)
    assert mgr.grant_excl(s1, TREE, D, [A], mgr.mark())
    assert not mgr.read_excl(TREE, [D, A], s1, None)   # its own read: nothing to recall
    assert s1.outbox.empty()
    seen: list[list[int]] = []
    stop = threading.Event()
    t = threading.Thread(target=_ack_recalls, args=(mgr, s1, seen, stop))
    t.start()
    try:
        assert mgr.read_excl(TREE, [A], s2, None)       # a child, by inode: recalls D's lease
        assert seen == [[D]]
        assert not mgr.holds_excl(s1, TREE, D)
        assert not mgr.read_excl(TREE, [A], s2, None)   # recalled once, not again
        # a session-less client (SDK, CLI) recalls too; so does any change of the directory
        assert mgr.grant_excl(s1, TREE, D, [A], mgr.mark())
        assert mgr.read_excl(TREE, [D], None, None)
        assert mgr.grant_excl(s1, TREE, D, [A], mgr.mark())
        with mgr.change(TREE, [D], s2, None):
            pass
        assert seen == [[D], [D], [D]]
    finally:
        stop.set()
        t.join()


def test_a_dead_holder_is_not_waited_for() -> None:
    mgr = LeaseManager(term=30)
    s1 = mgr.open_session(TREE)
    assert mgr.grant_excl(s1, TREE, D, [A], mgr.mark())
    mgr.close_session(s1.id)            # its stream ended: the lease and its queue are gone
    assert mgr.stats()["exclusive"] == 0
    assert not mgr.read_excl(TREE, [D], None, None)     # nothing left to recall or wait for


def test_a_directory_held_inside_another_stays_held_when_the_outer_one_is_recalled() -> None:
    """Nested: D is held with its child A (a directory made there), then A is held too (its
    first create). A read of D recalls D's lease only; A's stays, and a read of A's child B
    must still recall it (the holder may have changes of B pending)."""
    mgr = LeaseManager(term=5)
    s1, s2 = mgr.open_session(TREE), mgr.open_session(TREE)
    assert mgr.grant_excl(s1, TREE, D, [A], mgr.mark())
    assert mgr.grant_excl(s1, TREE, A, [B], mgr.mark())
    seen: list[list[int]] = []
    stop = threading.Event()
    t = threading.Thread(target=_ack_recalls, args=(mgr, s1, seen, stop))
    t.start()
    try:
        assert mgr.read_excl(TREE, [D], s2, None)
        assert seen == [[D]]
        assert not mgr.holds_excl(s1, TREE, D) and mgr.holds_excl(s1, TREE, A)
        assert mgr.read_excl(TREE, [B], s2, None)        # A's child: A's lease recalled
        assert seen == [[D], [A]]
        assert not mgr.holds_excl(s1, TREE, A)
        # the other way round: the inner one recalled first leaves the outer one whole
        assert mgr.grant_excl(s1, TREE, D, [A], mgr.mark())
        assert mgr.grant_excl(s1, TREE, A, [B], mgr.mark())
        assert mgr.read_excl(TREE, [B], s2, None)
        assert seen[-1] == [A] and mgr.holds_excl(s1, TREE, D)
        assert mgr.read_excl(TREE, [A], s2, None)        # still D's child: D's recalled
        assert seen[-1] == [D] and not mgr.holds_excl(s1, TREE, D)
    finally:
        stop.set()
        t.join(5)
