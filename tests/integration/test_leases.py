"""The lease protocol over a real server process (docs/LEASES.md), with SDK clients: a reply is
leased only with a live session; a change by a client without a session (the SDK, the CLI)
recalls the holder's lease before it answers; the holder's own changes do not recall it; a
session's stream closing ends its leases; another tree's session id is ignored."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from aifs_core.types import ROOT_INO, SET_MODE
from aifsfs.client import AIFSClient
from aifsfs.rpc.session import LeaseSession
from tests.helpers import ServerProc


class Holder:
    """A LeaseSession that records the recalls it got (and acks them, as a mount does)."""

    def __init__(self, sp: ServerProc) -> None:
        self.client = AIFSClient(sp.address, token_file=sp.token_file)
        self.recalls: list[tuple[float, list[int]]] = []
        self.resets = 0
        self.s = LeaseSession(self.client.channel, self._recall, self._reset)
        self.s.start()
        until = time.monotonic() + 10
        while self.s.valid_until <= time.monotonic():
            assert time.monotonic() < until, "no session"
            time.sleep(0.02)

    def _recall(self, inos: list[int]) -> None:
        self.recalls.append((time.monotonic(), inos))

    def _reset(self) -> None:
        self.resets += 1

    def leased_getattr(self, ino: int) -> bool:
        box: list[bool] = []

        def run() -> None:       # the lease answer is per thread, as in the mount's workers
            self.s.fs.getattr(ino)
            box.append(self.s.granted())
        t = threading.Thread(target=run)
        t.start()
        t.join()
        return box[0]

    def close(self) -> None:
        self.s.close()
        self.client.close()


@pytest.fixture
def holder(server: ServerProc) -> Iterator[Holder]:
    h = Holder(server)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def sdk(server: ServerProc) -> Iterator[AIFSClient]:
    c = AIFSClient(server.address, token_file=server.token_file)
    try:
        yield c
    finally:
        c.close()


def test_a_change_by_another_client_recalls_before_it_answers(holder: Holder,
                                                              sdk: AIFSClient) -> None:
    a = sdk.fs.create(ROOT_INO, b"f", 0o100644)
    assert holder.leased_getattr(a.ino)
    assert holder.recalls == []
    sdk.fs.setattr(a.ino, SET_MODE, mode=0o600)
    answered = time.monotonic()
    assert [inos for _, inos in holder.recalls] == [[a.ino]]
    assert holder.recalls[0][0] <= answered
    # recalled means gone: the next change sends nothing
    sdk.fs.setattr(a.ino, SET_MODE, mode=0o644)
    assert len(holder.recalls) == 1


def test_plain_calls_are_not_leased_and_own_changes_do_not_recall(holder: Holder,
                                                                   sdk: AIFSClient) -> None:
    a = sdk.fs.create(ROOT_INO, b"g", 0o100644)
    assert holder.leased_getattr(a.ino)
    holder.s.fs.setattr(a.ino, SET_MODE, mode=0o600)   # the holder's own session
    assert holder.recalls == []
    # a reply read while no session is given is never marked leased
    box: list[bool] = []
    t = threading.Thread(target=lambda: (sdk.fs.getattr(a.ino), box.append(holder.s.granted())))
    t.start()
    t.join()
    assert box == [False]


def test_a_negative_lookup_leases_the_parent(holder: Holder, sdk: AIFSClient) -> None:
    box: list[bool] = []

    def run() -> None:
        try:
            holder.s.fs.lookup(ROOT_INO, b"absent")
        except Exception:  # noqa: BLE001 - NotFound expected
            box.append(holder.s.granted())
    t = threading.Thread(target=run)
    t.start()
    t.join()
    assert box == [True]
    sdk.fs.create(ROOT_INO, b"absent", 0o100644)
    assert [inos for _, inos in holder.recalls] == [[ROOT_INO]]


@pytest.fixture
def long_term(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lease term (300 s) far past the SDK's call deadline (30 s), set before `server` starts
    (ask for it first): a change that waited out a lease fails with a deadline error instead
    of succeeding late, so no clock reading is needed to tell."""
    monkeypatch.setenv("AIFS_LEASE_TERM_SECONDS", "300")


def test_closed_session_costs_the_writer_nothing(long_term: None, server: ServerProc,
                                                 sdk: AIFSClient) -> None:
    h = Holder(server)
    a = sdk.fs.create(ROOT_INO, b"h", 0o100644)
    assert h.leased_getattr(a.ino)
    h.close()
    assert sdk.timeout < 300
    # succeeds within its deadline: the server did not wait for the closed session's lease
    sdk.fs.setattr(a.ino, SET_MODE, mode=0o600)
    assert h.recalls == []
