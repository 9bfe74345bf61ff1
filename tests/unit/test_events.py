"""server/events.py without a server: prefixes, the bounded queue and its overflow, paths from
the resolver, and that a change nobody watches asks the resolver nothing."""

from __future__ import annotations

import time

from aifs_core.types import TreeRef
from aifs_server.events import CHANGED, CREATED, REMOVED, EventHub, normalize_prefix, under

T = TreeRef("ns")
PATHS = {1: b"/", 2: b"/a", 3: b"/a/f", 4: b"/ab"}


def hub(events_max: int = 100) -> tuple[EventHub, list[int]]:
    asked: list[int] = []

    def path_of(tree: TreeRef, ino: int) -> bytes | None:
        asked.append(ino)
        return PATHS.get(ino)
    return EventHub(path_of, events_max), asked


def test_prefixes() -> None:
    assert normalize_prefix("/a/") == b"/a" and normalize_prefix("a") == b"/a"
    assert normalize_prefix("/") == b"" and normalize_prefix("") == b""
    assert under(b"/a", b"/a") and under(b"/a/b", b"/a") and under(b"/x", b"")
    assert not under(b"/ab", b"/a") and not under(b"/", b"/a")


def test_events_of_paths_under_the_prefix_in_order() -> None:
    h, _ = hub()
    woken = []
    w = h.watch(T, "/a", woken.append)
    h.entry(T, CREATED, 2, b"new", 9, False)       # /a/new
    h.entry(T, CREATED, 1, b"ab", 4, True)         # /ab: not under /a
    h.inode(T, CHANGED, 3, False)                  # /a/f
    h.entry(T, REMOVED, 1, b"a", 2, True)          # /a itself
    h.inode(T, CHANGED, 77, False)                 # unnamed: nothing
    events, overflow = w.take(10)
    assert [(e.kind, e.path, e.ino, e.is_dir) for e in events] == [
        (CREATED, "/a/new", 9, False), (CHANGED, "/a/f", 3, False), (REMOVED, "/a", 2, True)]
    assert not overflow
    assert woken == [w]                            # once: the queue went from empty to not


def test_a_full_queue_drops_the_newest_and_says_overflow_once() -> None:
    h, _ = hub(events_max=3)
    w = h.watch(T, "", lambda _w: None)
    for i in range(10):
        h.entry(T, CREATED, 1, b"f%d" % i, 10 + i, False)
    events, overflow = w.take(100)
    assert [e.path for e in events] == ["/f0", "/f1", "/f2"] and overflow
    h.entry(T, CREATED, 1, b"later", 99, False)
    events, overflow = w.take(100)
    assert [e.path for e in events] == ["/later"] and not overflow


def test_nobody_watching_costs_no_path_lookup() -> None:
    h, asked = hub()
    h.entry(T, CREATED, 2, b"x", 9, False)
    h.inode(T, CHANGED, 3, False)
    assert asked == [] and not h.watching(T)
    w = h.watch(T, "", lambda _w: None)
    h.watch(TreeRef("ns", "other"), "", lambda _w: None)
    assert h.watchers == 2
    h.unwatch(w)
    h.entry(T, CREATED, 2, b"x", 9, False)
    assert asked == [] and h.watchers == 1        # the other tree's watcher does not ask


def test_events_go_to_other_servers_only_while_one_watches_there() -> None:
    h, asked = hub()
    sent: list[tuple[int, bytes]] = []
    announced: list[TreeRef] = []
    h.forward = lambda tree, kind, path, ino, is_dir: sent.append((kind, path))
    h.on_watch = announced.append
    h.entry(T, CREATED, 2, b"x", 9, False)
    assert sent == [] and asked == []              # nobody anywhere: not even resolved
    h.remote_watch(T, time.monotonic() + 60)
    h.entry(T, CREATED, 2, b"x", 9, False)         # a peer watches: resolved and forwarded
    assert sent == [(CREATED, b"/a/x")]
    h.remote_watch(T, time.monotonic() - 1)        # an older announcement does not shorten it
    h.inode(T, CHANGED, 3, False)
    assert sent[-1] == (CHANGED, b"/a/f")
    w = h.watch(T, "", lambda _w: None)
    h.watch(T, "/a", lambda _w: None)
    assert announced == [T]                        # the tree's first watcher only
    h.remote_event(T, REMOVED, b"/a/y", 5, False)  # a peer's event: here, not sent back
    assert [e.path for e in w.take(10)[0]] == ["/a/y"] and len(sent) == 2


def test_an_announcement_runs_out() -> None:
    h, _ = hub()
    sent: list[bytes] = []
    h.forward = lambda tree, kind, path, ino, is_dir: sent.append(path)
    h.remote_watch(T, time.monotonic() + 0.05)
    time.sleep(0.1)
    h.entry(T, CREATED, 2, b"x", 9, False)
    assert sent == [] and not h.watching(T)


def test_a_second_watcher_waits_for_the_first_ones_announcement() -> None:
    import threading
    h, _ = hub()
    release = threading.Event()
    calls: list[TreeRef] = []

    def slow_announce(tree: TreeRef) -> None:     # peers acking (lease_bus._announce_heard)
        calls.append(tree)
        release.wait(10)
    h.on_watch = slow_announce
    done: list[str] = []
    first = threading.Thread(target=lambda: (h.watch(T, "", lambda _w: None),
                                             done.append("first")))
    first.start()
    while not calls:
        time.sleep(0.01)
    second = threading.Thread(target=lambda: (h.watch(T, "/a", lambda _w: None),
                                              done.append("second")))
    second.start()
    time.sleep(0.2)
    assert done == []                             # neither answered before the peers heard
    release.set()
    first.join(5)
    second.join(5)
    assert sorted(done) == ["first", "second"] and calls == [T]    # announced once


def test_while_joining_every_event_is_resolved_and_forwarded() -> None:
    h, asked = hub()
    sent: list[bytes] = []
    joining = [True]
    h.forward = lambda tree, kind, path, ino, is_dir: sent.append(path)
    h.forward_all = lambda: joining[0]
    h.entry(T, CREATED, 2, b"x", 9, False)         # no peer announced anything yet
    assert sent == [b"/a/x"] and asked == [2]
    joining[0] = False                             # joined: only announced trees
    h.entry(T, CREATED, 2, b"y", 10, False)
    assert sent == [b"/a/x"] and asked == [2]
