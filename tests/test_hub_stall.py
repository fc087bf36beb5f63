"""Issue 7 section 5: the hub's own stall rule, and liveness independent of handlers.

The hub condemned a client on timer lateness alone: after a handler stalled the loop for
1.05 s (heartbeat 1 s / 1 s), a client that had answered the probe within milliseconds
was aborted, 3 runs of 3. The client's rule applies now on the hub too
(:mod:`fsm.presence`, rule 3): read what is buffered before condemning. And reading is
separate from delivering: a slow handler no longer keeps the hub from reading pings
and pongs, and messages waiting for delivery count as hearing from the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.hub import Hub, Limits, Presence, Session, serve
from fsm import Heartbeat, State
from fsm.protocol import Ack, Msg, Ping, Pong
from tests.test_hub import Peer, run

pytestmark = pytest.mark.realsocket


class HubThread:
    """A hub on its own event loop in a thread: its handler may block *its* loop while
    the test's client (on the test's loop) goes on talking."""

    def __init__(self, handler: Any, **options: Any) -> None:
        self.handler, self.options = handler, options
        self.changes: list[tuple[str, Presence, Presence]] = []
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()
            hub: Hub = await serve(self.handler, **self.options)
            hub.on_presence(lambda sid, old, new: self.changes.append((sid, old, new)))
            self.port = hub.port
            self._ready.set()
            try:
                await self._stop.wait()
            finally:
                await hub.close()

        try:
            asyncio.run(main())
        except BaseException as error:  # reported by stop()
            self._error = error
            self._ready.set()

    @contextlib.contextmanager
    def running(self) -> Iterator[HubThread]:
        self._thread.start()
        assert self._ready.wait(5) and self._error is None, self._error
        try:
            yield self
        finally:
            assert self._loop is not None and self._stop is not None
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(5)
            assert self._error is None, self._error


def test_a_handler_stalling_the_loop_does_not_condemn_a_client_that_answered() -> None:
    """The issue's case: the hub probes a quiet client X; X answers at once, but its pong
    arrives while another session's handler blocks the hub's loop for 1.05 s, across the
    probe's deadline. The timer fires only some 50 ms late, within grace, so lateness
    alone does not excuse it: the hub must read X's buffered pong before judging."""
    def handler(session: Session, data: Any) -> None:
        if data == "stall":
            time.sleep(1.05)  # an agent runtime blocking the loop

    async def main(hub: HubThread) -> None:
        staller = await Peer.open(hub.port)
        await staller.hello()
        quiet = await Peer.open(hub.port)
        sid = (await quiet.hello()).session
        probe = await quiet.recv(timeout=3)  # after interval (1 s) of silence
        assert isinstance(probe, Ping)
        await staller.send(Msg(seq=1, ack=0, data="stall"))  # the hub's loop stops on it
        await asyncio.sleep(0.05)
        await quiet.send(Pong(ack=0))  # buffered in the kernel while the loop is stalled
        # Delivered: the ack rides on the first frame after the commit (an ack or a ping).
        await staller.recv_until(lambda f: isinstance(f, Ack | Ping) and f.ack == 1,
                                 timeout=4)
        await asyncio.sleep(0.3)  # the hub has decided about the quiet client by now
        await quiet.send(Ping(ack=0))
        assert await quiet.recv_until(lambda f: isinstance(f, Pong), timeout=2)
        assert quiet.ws.close_code is None
        assert (sid, Presence.PRESENT, Presence.STALE) not in hub.changes
        await quiet.close()
        await staller.close()

    with HubThread(handler, heartbeat=Heartbeat(interval=1.0, timeout=1.0)).running() as hub:
        run(main(hub), timeout=15)


def test_a_slow_handler_does_not_stop_the_hub_answering_pings() -> None:
    """The client probes while its message is being handled (3 s); the hub reads the
    ping and answers: no reconnect, and the hub never shows the client stale."""
    from adapters.websocket import connect

    async def slow(session: Session, data: Any) -> None:
        await asyncio.sleep(3.0)
        session.send({"done": data})

    async def main() -> None:
        heartbeat = Heartbeat(interval=0.3, timeout=0.3)
        hub = await serve(slow, heartbeat=heartbeat)
        changes: list[tuple[str, Presence, Presence]] = []
        hub.on_presence(lambda sid, old, new: changes.append((sid, old, new)))
        try:
            async with connect(f"ws://127.0.0.1:{hub.port}/", session=True,
                               heartbeat=heartbeat) as link:
                await link.wait_for(State.ONLINE, timeout=5)
                await link.send("slow")
                assert await asyncio.wait_for(link.receive(), 6) == {"done": "slow"}
                assert link.statistics()["reconnects"] == 0
            assert [c for c in changes if c[2] is Presence.STALE] == []
        finally:
            await hub.close()

    run(main())


def test_messages_waiting_for_delivery_are_not_silence() -> None:
    """The handler takes 1.5 s; the client's messages fill the hub's read-ahead, so the
    hub stops reading (its probes' answers wait behind them). It must not call the
    client silent meanwhile (heartbeat 0.2 s / 0.2 s): the session is busy, not gone."""
    async def slow(session: Session, data: Any) -> None:
        if data == 0:
            await asyncio.sleep(1.5)

    async def main() -> None:
        limits = Limits(max_frame=1024, read_ahead=1024)
        hub = await serve(slow, heartbeat=Heartbeat(interval=0.2, timeout=0.2),
                          limits=limits)
        changes: list[tuple[str, Presence, Presence]] = []
        hub.on_presence(lambda sid, old, new: changes.append((sid, old, new)))
        try:
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            for seq in range(1, 9):
                await peer.send(Msg(seq=seq, ack=0, data=0 if seq == 1 else "x" * 400))
            frames = await peer.recv_until(lambda f: getattr(f, "ack", 0) == 8, timeout=5)
            for frame in frames:
                if isinstance(frame, Ping):
                    await peer.send(Pong(ack=0))
            assert hub.sessions[sid].last_in == 8
            assert (sid, Presence.PRESENT, Presence.STALE) not in changes
            assert peer.ws.close_code is None
            await peer.close()
        finally:
            await hub.close()

    run(main())
