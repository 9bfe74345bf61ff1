"""server/events.py without a server: prefixes, the bounded queue and its overflow, paths from
the resolver, that a change nobody watches asks the resolver nothing, and resuming from a
cursor: exactly the missed events, or overflow when they are not all kept."""

from __future__ import annotations

import time

from aifs_core.types import TreeRef
from aifs_server.events import CHANGED, CREATED, REMOVED, EventHub, normalize_prefix, under

T = TreeRef("ns")
PATHS = {1: b"/", 2: b"/a", 3: b"/a/f", 4: b"/ab"}


def hub(events_max: int = 100, resume_events: int = 100, resume_seconds: float = 0.0
        ) -> tuple[EventHub, list[int]]:
    asked: list[int] = []

    def path_of(tree: TreeRef, ino: int) -> bytes | None:
        asked.append(ino)
        return PATHS.get(ino)
    return EventHub(path_of, events_max, resume_events, resume_seconds), asked


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
    events, overflow, _ = w.take(10)
    assert [(e.kind, e.path, e.ino, e.is_dir) for e in events] == [
        (CREATED, "/a/new", 9, False), (CHANGED, "/a/f", 3, False), (REMOVED, "/a", 2, True)]
    assert not overflow
    assert woken == [w]                            # once: the queue went from empty to not


def test_a_full_queue_drops_the_newest_and_says_overflow_once_where_it_happened() -> None:
    """The events queued before the loss first, then one batch saying overflow (with what
    came after the loss), then as usual."""
    h, _ = hub(events_max=3)
    w = h.watch(T, "", lambda _w: None)
    for i in range(10):
        h.entry(T, CREATED, 1, b"f%d" % i, 10 + i, False)
    events, overflow, _ = w.take(100)
    assert [e.path for e in events] == ["/f0", "/f1", "/f2"] and not overflow
    h.entry(T, CREATED, 1, b"later", 99, False)
    events, overflow, _ = w.take(100)
    assert [e.path for e in events] == ["/later"] and overflow
    h.entry(T, CREATED, 1, b"last", 98, False)
    events, overflow, _ = w.take(100)
    assert [e.path for e in events] == ["/last"] and not overflow


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


def _taken(h: EventHub, w: object) -> tuple[list[str], bool, str]:
    events, overflow, seq = w.take(100)  # type: ignore[attr-defined]
    return [f"{e.kind}{e.path}" for e in events], overflow, h.cursor(seq)


def test_a_resume_gets_exactly_the_events_missed_in_order() -> None:
    h, _ = hub(resume_seconds=60)
    w = h.watch(T, "/a", lambda _w: None)
    h.entry(T, CREATED, 2, b"x", 9, False)
    got, overflow, cursor = _taken(h, w)
    assert got == [f"{CREATED}/a/x"] and not overflow
    h.unwatch(w)                                   # the stream broke
    h.entry(T, CREATED, 2, b"y", 10, False)        # /a/y
    h.entry(T, CREATED, 1, b"ab", 4, True)         # /ab: not under /a
    h.inode(T, CHANGED, 3, False)                  # /a/f
    assert h.watching(T)                           # still recorded for a resume
    for _ in range(2):                             # the same cursor twice: the same events
        w2 = h.watch(T, "/a", lambda _w: None, resume=cursor)
        got, overflow, _ = _taken(h, w2)
        assert got == [f"{CREATED}/a/y", f"{CHANGED}/a/f"] and not overflow
        h.unwatch(w2)
    w3 = h.watch(T, "/a", lambda _w: None, resume=cursor)
    h.entry(T, REMOVED, 2, b"y", 10, False)        # live after the replay, never before it
    got, overflow, cursor3 = _taken(h, w3)
    assert got == [f"{CREATED}/a/y", f"{CHANGED}/a/f", f"{REMOVED}/a/y"] and not overflow
    h.unwatch(w3)
    w4 = h.watch(T, "/a", lambda _w: None, resume=cursor3)   # nothing since: nothing, no loss
    assert _taken(h, w4)[:2] == ([], False)


def test_a_resume_that_cannot_be_exact_says_overflow() -> None:
    h, asked = hub(resume_events=2, resume_seconds=0.2)
    w = h.watch(T, "", lambda _w: None)
    _, _, cursor = _taken(h, w)
    other, _ = hub(resume_seconds=60)
    assert _taken(h, h.watch(T, "", lambda _w: None, resume=other.cursor(0)))[1]
    assert _taken(h, h.watch(T, "", lambda _w: None, resume="junk"))[1]
    assert _taken(h, h.watch(T, "", lambda _w: None, resume=h.cursor(10**9)))[1]
    for name in (b"p", b"q", b"r"):                # more than the 2 the ring keeps
        h.entry(T, CREATED, 1, name, 20, False)
    got, overflow, _ = _taken(h, h.watch(T, "", lambda _w: None, resume=cursor))
    assert overflow and got == []
    # a whole-tree change in the gap: overflow, then what came after it
    w = h.watch(T, "", lambda _w: None)
    _, _, cursor = _taken(h, w)
    h.tree_changed(T)
    h.entry(T, CREATED, 1, b"s", 21, False)
    got, overflow, _ = _taken(h, h.watch(T, "", lambda _w: None, resume=cursor))
    assert overflow and got == [f"{CREATED}/s"]


def test_a_tree_nobody_resumes_stops_being_recorded() -> None:
    h, asked = hub(resume_seconds=0.1)
    w = h.watch(T, "", lambda _w: None)
    _, _, cursor = _taken(h, w)
    h.unwatch(w)
    time.sleep(0.2)
    h.entry(T, CREATED, 2, b"x", 9, False)
    assert asked == [] and not h.watching(T) and h.local_trees() == []
    # the change above was not numbered: a resume from before it must not look exact
    got, overflow, _ = _taken(h, h.watch(T, "", lambda _w: None, resume=cursor))
    assert overflow and got == []


def test_resuming_at_random_never_loses_nor_repeats_an_event() -> None:
    """Random changes, broken streams and resumes (hypothesis): what a watcher gets across its
    resumes is exactly the changes under its prefix, in order, each once; a whole-tree change
    or a ring too short for the gap shows as overflow, after which it goes on from there."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    paths = {10: b"/a", 11: b"/a/x", 12: b"/b", 13: b"/ab"}
    step = st.one_of(st.tuples(st.just("change"), st.sampled_from(sorted(paths))),
                     st.tuples(st.just("break"), st.integers(0, 3)),
                     st.tuples(st.just("take"), st.integers(1, 4)),
                     st.tuples(st.just("tree"), st.just(0)))

    @settings(max_examples=300, deadline=None)
    @given(st.lists(step, max_size=60), st.sampled_from(["", "/a"]), st.integers(2, 8))
    def run(steps: list[tuple[str, int]], prefix: str, ring: int) -> None:
        h = EventHub(lambda tree, ino: paths.get(ino), 1000, ring, 60.0)
        w = h.watch(T, prefix, lambda _w: None)
        want: list[str] = []       # what the watcher must still get, in order
        got: list[str] = []
        cursor = h.cursor(w.take(0)[2])    # the Watch's answer carries the first cursor
        for kind, arg in steps:
            if kind == "change":
                h.inode(T, CHANGED, arg, False)
                if under(paths[arg], normalize_prefix(prefix)):
                    want.append(paths[arg].decode())
            elif kind == "tree":
                h.tree_changed(T)
                want.append("overflow")
            elif kind == "take":
                events, overflow, seq = w.take(arg)
                cursor = h.cursor(seq)
                got += (["overflow"] if overflow else []) + [e.path for e in events]
            else:                  # the stream breaks: what was not taken is lost with it
                h.unwatch(w)
                w = h.watch(T, prefix, lambda _w: None, resume=cursor)
        while True:
            events, overflow, _ = w.take(10_000)
            if not events and not overflow:
                break
            got += (["overflow"] if overflow else []) + [e.path for e in events]
        # exact, except where the watcher was told to list again: from each overflow on it
        # must see a tail of what happened (nothing after it lost, nothing twice)
        if "overflow" not in got:
            assert got == want
        else:
            last = len(got) - 1 - got[::-1].index("overflow")
            tail = got[last + 1:]
            assert tail == want[len(want) - len(tail):] if tail else True
            assert got[:got.index("overflow")] == want[:got.index("overflow")]
    run()
