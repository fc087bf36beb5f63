"""A stalled event loop is not evidence against the peer (real sockets, loopback).

Agent runtimes block their event loop (a synchronous model call, a big JSON parse). When
the loop wakes, every heartbeat deadline has long passed. A naive keepalive declares the
peer dead; tether reads what is buffered and probes afresh first (``TimerFiredLate``),
so a healthy peer survives the stall, and a peer that really died meanwhile is still
declared dead, one ``timeout`` after the fresh probe.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from adapters.websocket import connect
from fsm import Backoff, Heartbeat, State, StateChange
from tests.servers import ServerProcess

pytestmark = [pytest.mark.realsocket, pytest.mark.timeout(30)]

HB = Heartbeat(interval=0.3, timeout=0.3)
STALL = 1.5  # five times the whole bound: every deadline is long past on waking


def test_a_healthy_peer_survives_a_stalled_loop() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server:
            changes: list[StateChange] = []
            async with connect(server.url, heartbeat=HB,
                               backoff=Backoff(initial=0.05, cap=0.5)) as link:
                link.on_state_change(changes.append)
                await link.wait_for(State.ONLINE, timeout=5)
                time.sleep(STALL)  # block the loop, as agents do
                await asyncio.sleep(1.0)  # the fresh probe and its pong
                assert link.state == State.ONLINE
                assert [c.new for c in changes].count("stale") == 0, changes
                late = [c for c in changes if "late" in c.reason]
                assert late and late[0].new == "waiting", changes
                assert link.statistics()["reconnects"] == 0

    asyncio.run(main())


def test_a_peer_that_died_during_the_stall_is_still_declared_dead() -> None:
    async def main() -> None:
        async with ServerProcess("echo") as server:
            changes: list[StateChange] = []
            async with connect(server.url, heartbeat=HB,
                               backoff=Backoff(initial=0.05, cap=0.5)) as link:
                link.on_state_change(changes.append)
                await link.wait_for(State.ONLINE, timeout=5)
                server.stop()  # frozen: its socket stays open, nothing answers
                time.sleep(STALL)
                woke = time.monotonic()
                await link.wait_for(State.STALE, timeout=5)
                detected = time.monotonic() - woke
                assert detected >= HB.timeout * 0.9, detected  # it waited for the probe
                stale = next(c for c in changes if c.new == "stale")
                assert "no frame from the peer" in stale.reason
                server.cont()

    asyncio.run(main())
