"""Tests that pin three promises an independent mutation run found unpinned (issue 9).

Each test names the curated mutant it kills (``tests/mutants/curated.py``):

* ``data-online-no-liveness``: data received while ``online`` no longer resets the
  silence clock. "Any frame counts as liveness" held only because the one test of it
  also fed a pong; here the peer sends data and nothing else, and never answers a ping.
* ``deadline-no-drain``: the driver reports a deadline without first draining the frames
  its transport already buffered. Invisible with the shipped transports (their reader
  surfaces a frame within the loop turn it arrives in), fatal with one that takes several
  loop turns to surface a frame (:class:`tests.lagging.LaggingTransport`), which the
  conformance suite accepts.
* ``generation-filter-off``: the driver accepts events from an old transport generation.
  A task of a dead transport that reports after the next transport is online must not
  be heard.
"""

from __future__ import annotations

import asyncio
import random

import pytest

from adapters.link import Link
from adapters.memory import MemoryDialer, MemoryServer, ServerConnection, echo
from adapters.transport import Dialer
from fsm import Backoff, Heartbeat, Lifecycle, State, StateChange
from fsm.actions import Deliver, SendPing
from fsm.events import Connected, DeadlineReached, MessageReceived, Rebuilt, Started
from tests.conformance import CHECKS, Check
from tests.lagging import LaggingDialer, SilentPingsDialer
from tests.virtual import now, run

pytestmark = pytest.mark.timeout(20)

HB = Heartbeat(interval=1.0, timeout=1.0)
FAST = Backoff(initial=0.05, cap=0.5, grace=2.0)


def _states(link: Link) -> list[str]:
    seen: list[str] = []

    def changed(change: StateChange) -> None:
        seen.append(change.new)

    link.on_state_change(changed)
    return seen


# -- any frame counts as liveness: data alone, no pong ----------------------------------


def test_core_data_alone_keeps_an_online_link_online() -> None:
    """A peer that sends data every 0.75 s and never a pong: the silence clock restarts
    at each message, no probe goes out, the deadline is always last message + interval."""
    lc = Lifecycle(rand=lambda: 0.5, heartbeat=HB, backoff=FAST)
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    lc.handle(Rebuilt(), 0.5)
    t = 0.5
    for n in range(20):
        t += 0.75
        actions = lc.handle(DeadlineReached(), t - 0.01)  # the driver's timer, if due
        assert not any(isinstance(a, SendPing) for a in actions), f"probed at {t - 0.01}"
        actions = lc.handle(MessageReceived(n), t)
        assert actions == [Deliver(n)]
        assert lc.state == State.ONLINE, f"{lc.state} at {t}"
        assert lc.last_heard == t
        assert lc.next_deadline() == t + HB.interval


def test_link_stays_online_with_a_server_that_streams_data_and_never_answers_pings() -> None:
    """The server streams a message every 0.5 s for 20 s and never answers a ping: the
    link never even suspects it (no ``waiting``), never probes, and hears every message.
    Then the stream stops: with pings unanswered, the link declares the peer dead within
    the bound after the last message."""
    sent: list[int] = []

    async def stream(conn: ServerConnection) -> None:
        for n in range(40):
            await asyncio.sleep(0.5)
            await conn.send(str(n))
            sent.append(n)
        await asyncio.sleep(3600)  # then silence, the connection still open

    async def main() -> None:
        server = MemoryServer(stream)
        dialer = SilentPingsDialer(MemoryDialer(server, open_timeout=None))
        link = Link(dialer, heartbeat=HB, backoff=FAST, rng=random.Random(3))
        states = _states(link)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        got: list[int] = []
        while len(got) < 40:
            got.append(await link.receive())
        last = now()
        assert got == list(range(40))
        assert states == ["connecting", "online"], states
        assert dialer.transports[0].pings == 0, "probed a peer that was talking"
        await link.wait_for(State.STALE, timeout=5)
        assert now() - last <= HB.bound + 0.01
        assert states[-2:] == ["waiting", "stale"]
        await link.close()
        await server.aclose()

    run(main)


# -- the deadline path drains what the transport buffered ---------------------------------


class _LaggingFixture:
    """The conformance suite's echo fixture, every transport a LaggingTransport."""

    def __init__(self) -> None:
        self.server = MemoryServer(echo)
        self.memory_dialer = MemoryDialer(self.server)
        self.lagging = LaggingDialer(self.memory_dialer)

    @property
    def dialer(self) -> Dialer:
        return self.lagging

    async def close_all(self, code: int) -> None:
        self.server.close_all(code)

    async def stop(self) -> None:
        self.server.refuse()

    async def start(self) -> None:
        self.server.accept()


@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_a_transport_slow_to_surface_frames_passes_the_conformance_suite(check: Check) -> None:
    """The awkward transport is a legitimate one: the driver must work with it."""

    async def main() -> None:
        fixture = _LaggingFixture()
        await check(fixture)
        assert fixture.memory_dialer.open_transports == 0
        await fixture.server.aclose()

    run(main)


def test_deadline_reads_a_frame_the_transport_buffered_but_has_not_surfaced() -> None:
    """The peer is silent for the interval (the link probes; pings go unanswered), then
    sends one message 20 ms before the probe deadline. The transport buffers it at once
    but surfaces it through ``receive()`` only 50 ms and five loop turns later, after the
    deadline. The driver must read it with ``receive_nowait()`` before reporting the
    deadline: the peer was talking, and ``stale`` would be a false verdict."""
    async def late_word(conn: ServerConnection) -> None:
        await asyncio.sleep(HB.bound - 0.02)  # from the handshake, i.e. from last heard
        await conn.send("still here")
        await asyncio.sleep(3600)

    async def main() -> None:
        server = MemoryServer(late_word)
        dialer = LaggingDialer(SilentPingsDialer(MemoryDialer(server, open_timeout=None)),
                               turns=5, lag=0.05)
        link = Link(dialer, heartbeat=HB, backoff=FAST, rng=random.Random(3))
        states = _states(link)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        assert await asyncio.wait_for(link.receive(), HB.bound + 1) == "still here"
        await asyncio.sleep(0.2)
        assert states == ["connecting", "online", "waiting", "online"], states
        assert link.lifecycle.reconnects == 0
        await link.close()
        await server.aclose()

    run(main)


# -- events from an old transport generation are dropped ----------------------------------


def test_a_frame_reported_for_an_old_transport_is_dropped() -> None:
    """Transport #1 died and #2 is online; a task of #1 that the driver did not get to
    cancel (a reader of a transport that does not stop on abort, a user's handler that
    swallows its cancellation and was spawned after its transport was dropped) reports
    a frame. The driver must drop it: it proves nothing about the peer of #2, and in
    session mode its numbers belong to another connection. (The driver's release waits
    for the tasks it tracks, so only such an untracked task can report this late: the
    filter is the defence in depth, and this test plays that task.)"""
    async def main() -> None:
        server = MemoryServer(echo)
        dialer = MemoryDialer(server, open_timeout=None)
        link = Link(dialer, heartbeat=HB, backoff=FAST, rng=random.Random(3))
        states = _states(link)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        server.reset()
        await link.wait_for(State.STALE, timeout=5)
        await link.wait_for(State.ONLINE, timeout=5)
        assert dialer.opened == 2
        await asyncio.sleep(0.5)
        heard = link.lifecycle.last_heard
        link._received('{"ghost": "from transport #1"}', 1)  # the late task of #1
        await asyncio.sleep(0)
        assert link.statistics()["inbound_depth"] == 0, "a frame of #1 was delivered"
        assert link.lifecycle.last_heard == heard, "a frame of #1 counted as liveness"
        link._received('{"live": "from transport #2"}', 2)
        assert link.statistics()["inbound_depth"] == 1
        assert await link.receive() == {"live": "from transport #2"}
        assert states == ["connecting", "online", "stale", "recovering", "online"]
        await link.close()
        await server.aclose()

    run(main)
