"""The reference hub (``adapters/hub.py``), driven by a raw WebSocket client that speaks
the session protocol by hand with :mod:`fsm.protocol`'s codec.

Each test runs its own event loop (``asyncio.run``) on loopback with short timeouts. The
delivery guarantee the hub documents is checked three ways: duplicates by ``seq`` are
dropped on a live hub; a hub SIGKILLed and restarted on the same SQLite file resumes the
session with the same epoch and delivers nothing twice; and a handler whose commit never
happened (the hub stopped mid-handler) is called again while its recorded effect happens
once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from adapters.hub import Hub, Limits, Presence, Session, serve
from adapters.stores import MemoryStore, SQLiteStore
from fsm import Heartbeat, protocol
from fsm.errors import OutboxFull
from fsm.protocol import Ack, Frame, Hello, Msg, Ping, Pong, Welcome
from fsm.protocol import Error as ErrorFrame

pytestmark = pytest.mark.realsocket

REPO = Path(__file__).resolve().parent.parent
T = TypeVar("T")
Received = list[tuple[str, Any]]


def run(coro: Awaitable[T], timeout: float = 10.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return asyncio.run(bounded())


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tether-hub-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


class Peer:
    """A hand-driven client: frames out with ``send``, frames in with ``recv``."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.session: str | None = None
        self.token: str | None = None

    @classmethod
    async def open(cls, port: int) -> Peer:
        ws = await connect(f"ws://127.0.0.1:{port}/", ping_interval=None, open_timeout=2,
                           close_timeout=0.5)
        return cls(ws)

    async def send(self, frame: Frame | str | bytes) -> None:
        await self.ws.send(frame if isinstance(frame, str | bytes) else protocol.encode(frame))

    async def recv(self, timeout: float = 2.0) -> Frame:
        async with asyncio.timeout(timeout):
            return protocol.decode(await self.ws.recv(), max_frame=2**24)

    async def recv_until(self, accept: Callable[[Frame], bool], timeout: float = 2.0
                         ) -> list[Frame]:
        """Every frame up to and including the first one ``accept`` takes."""
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                frames.append(await self.recv(timeout))
                if accept(frames[-1]):
                    return frames

    async def hello(self, session: str | None = None, token: str | None = None,
                    ack: int = 0) -> Welcome:
        await self.send(Hello(ack=ack, session=session, token=token))
        welcome = await self.recv()
        assert isinstance(welcome, Welcome), welcome
        if not welcome.resumed:
            self.session, self.token = welcome.session, welcome.token
        return welcome

    async def error(self) -> ErrorFrame:
        """The next frame is an ``error``, and the hub then closes the connection."""
        frame = await self.recv()
        assert isinstance(frame, ErrorFrame), frame
        await self.closed()
        return frame

    async def closed(self, timeout: float = 2.0) -> None:
        with pytest.raises(ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()

    async def close(self) -> None:
        await self.ws.close()


def msgs(frames: list[Frame]) -> list[tuple[int, Any]]:
    return [(f.seq, f.data) for f in frames if isinstance(f, Msg)]


@contextlib.asynccontextmanager
async def hub_with(handler: Callable[[Session, Any], Any] | None = None,
                   **options: Any) -> AsyncIterator[tuple[Hub, Received]]:
    """A hub whose default handler records ``(session_id, data)``."""
    received: Received = []

    def record(session: Session, data: Any) -> None:
        received.append((session.id, data))

    hub = await serve(handler or record, **options)
    try:
        yield hub, received
    finally:
        await hub.close()


def echo(session: Session, data: Any) -> None:
    session.send(data)


# -- handshake, delivery, acknowledgement ----------------------------------------------------


def test_hello_opens_a_new_session() -> None:
    async def main() -> None:
        async with hub_with() as (hub, _):
            changes: list[tuple[str, Presence, Presence]] = []
            hub.on_presence(lambda sid, old, new: changes.append((sid, old, new)))
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            assert not welcome.resumed and welcome.ack == 0
            assert welcome.epoch == hub.epoch
            assert welcome.token is not None and len(welcome.token) >= 22
            assert welcome.limits == {"max_frame": 2**20, "max_inflight": 1000}
            assert hub.presence == {welcome.session: Presence.PRESENT}
            assert hub.sessions[welcome.session].connected
            assert changes == [(welcome.session, Presence.GONE, Presence.PRESENT)]
            # Unknown session (lost, expired, never existed): a new one, not an error.
            other = await Peer.open(hub.port)
            fresh = await other.hello(session="unknown", token="x" * 22, ack=7)
            assert not fresh.resumed and fresh.session != welcome.session
            await peer.close()
            await other.close()

    run(main())


def test_messages_are_delivered_in_order_and_acknowledged_in_batches() -> None:
    async def main() -> None:
        async with hub_with(ack_delay=0.05) as (hub, received):
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            for seq in (1, 2, 3):
                await peer.send(Msg(seq=seq, ack=0, data={"n": seq}))
            frames = await peer.recv_until(lambda f: isinstance(f, Ack) and f.ack == 3)
            assert all(isinstance(f, Ack) for f in frames)
            assert len(frames) == 1  # one batched ack for three messages
            assert received == [(welcome.session, {"n": n}) for n in (1, 2, 3)]
            assert hub.sessions[welcome.session].last_in == 3
            await peer.close()

    run(main())


def test_replies_piggyback_the_ack() -> None:
    async def main() -> None:
        async with hub_with(echo) as (hub, _):
            peer = await Peer.open(hub.port)
            await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="hi"))
            reply = await peer.recv()
            assert reply == Msg(seq=1, ack=1, data="hi")
            await peer.send(Ack(ack=1))
            with pytest.raises(TimeoutError):  # nothing more: the ack rode on the reply
                await peer.recv(timeout=0.2)
            await peer.close()

    run(main())


def test_duplicate_msg_is_delivered_once_and_acknowledged_again() -> None:
    async def main() -> None:
        async with hub_with() as (hub, received):
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="once"))
            assert await peer.recv() == Ack(ack=1)
            await peer.send(Msg(seq=1, ack=0, data="once"))
            assert await peer.recv() == Ack(ack=1)  # acknowledged again
            assert received == [(welcome.session, "once")]
            assert hub.sessions[welcome.session].duplicates == 1
            await peer.close()

    run(main())


def test_resume_replays_unacknowledged_server_messages() -> None:
    async def main() -> None:
        async with hub_with() as (hub, _):
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            sid = welcome.session
            hub.send(sid, "a")  # not awaited: committed soon, in order
            await hub.send(sid, {"b": [1, None]})
            assert msgs(await peer.recv_until(lambda f: isinstance(f, Msg) and f.seq == 2)) \
                == [(1, "a"), (2, {"b": [1, None]})]
            await peer.send(Ack(ack=1))
            await asyncio.sleep(0.05)
            await peer.close()
            hub.send(sid, "c")  # while the client is away
            await hub.send(sid, None)  # JSON null is a payload like any other
            assert hub.sessions[sid].unacked == 3

            again = await Peer.open(hub.port)
            resumed = await again.hello(sid, peer.token, ack=1)
            assert resumed.resumed and resumed.session == sid and resumed.token is None
            assert resumed.epoch == welcome.epoch
            replay = await again.recv_until(lambda f: isinstance(f, Msg) and f.seq == 4)
            assert msgs(replay) == [(2, {"b": [1, None]}), (3, "c"), (4, None)]
            await again.send(Ack(ack=4))
            await asyncio.sleep(0.05)
            assert hub.sessions[sid].unacked == 0
            await again.close()

    run(main())


def test_a_new_connection_takes_the_session_over() -> None:
    async def main() -> None:
        async with hub_with() as (hub, received):
            first = await Peer.open(hub.port)
            welcome = await first.hello()
            hub.send(welcome.session, "x")
            assert msgs([await first.recv()]) == [(1, "x")]
            second = await Peer.open(hub.port)
            resumed = await second.hello(first.session, first.token)
            assert resumed.resumed
            assert msgs([await second.recv()]) == [(1, "x")]
            await first.closed()  # the old connection is dropped
            await second.send(Msg(seq=1, ack=1, data="from second"))
            third = await Peer.open(hub.port)  # right token, impossible ack: refused ...
            await third.send(Hello(ack=9, session=first.session, token=first.token))
            assert (await third.error()).code == "ack"
            assert await second.recv() == Ack(ack=1)  # ... and the session stays put
            assert received == [(welcome.session, "from second")]
            await second.close()

    run(main())


# -- the hijacker ------------------------------------------------------------------------------


def test_wrong_token_is_refused_and_the_session_untouched() -> None:
    async def main() -> None:
        async with hub_with() as (hub, received):
            victim = await Peer.open(hub.port)
            welcome = await victim.hello()
            sid = welcome.session
            await hub.send(sid, "secret for the victim")
            assert msgs([await victim.recv()]) == [(1, "secret for the victim")]
            changes: list[Any] = []
            hub.on_presence(lambda *change: changes.append(change))
            session = hub.sessions[sid]
            before = (session.last_in, session.unacked, session.connected)
            record = await hub.store.get(sid)

            thief = await Peer.open(hub.port)
            await thief.send(Hello(ack=0, session=sid, token="A" * 32))
            frame = await thief.recv()
            assert isinstance(frame, ErrorFrame)
            assert frame.code == "unauthorized" and not frame.fatal
            # No replay reaches the thief, and whatever it sends next goes nowhere.
            with contextlib.suppress(ConnectionClosed):
                await thief.send(Msg(seq=1, ack=0, data="injected"))
            await thief.closed()

            assert (session.last_in, session.unacked, session.connected) == before
            assert await hub.store.get(sid) == record  # not even last_seen moved
            assert changes == [] and hub.sessions[sid] is session
            await victim.send(Msg(seq=1, ack=1, data="mine"))
            assert await victim.recv() == Ack(ack=1)
            assert received == [(sid, "mine")]  # never "injected"
            await victim.close()

    run(main())


def test_tokens_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> tuple[str, str]:
        async with hub_with() as (hub, _):
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            assert peer.token is not None
            await peer.close()
            again = await Peer.open(hub.port)
            await again.hello(welcome.session, peer.token)
            thief = await Peer.open(hub.port)
            await thief.send(Hello(ack=0, session=welcome.session, token="WRONG" * 5))
            await thief.error()
            await again.close()
            return peer.token, repr(hub.sessions[welcome.session]) + repr(hub)

    with caplog.at_level(logging.DEBUG, logger="tether.hub"):
        token, reprs = run(main())
    assert any("resumed" in r.getMessage() for r in caplog.records)  # we did log
    for record in caplog.records:
        assert token not in record.getMessage() and "WRONG" not in record.getMessage()
    assert token not in reprs


# -- protocol errors ---------------------------------------------------------------------------

_BEFORE_HELLO = [
    ("not json", "not JSON at all", "malformed"),
    ("array", "[1, 2]", "malformed"),
    ("binary", b'{"type":"hello","v":1,"ack":0}', "malformed"),
    ("unknown type", '{"type":"subscribe","ack":0}', "type"),
    ("msg before hello", '{"type":"msg","seq":1,"ack":0,"data":1}', "handshake"),
    ("hello without ack", '{"type":"hello","v":1}', "malformed"),
    ("half a resume", '{"type":"hello","v":1,"ack":0,"session":"abc"}', "malformed"),
    ("oversize", '{"type":"hello","v":1,"ack":0,"pad":"' + "x" * 2000 + '"}', "too_big"),
]
_AFTER_HELLO = [
    ("not json", "{oops", "malformed"),
    ("unknown type", '{"type":"subscribe","ack":0}', "type"),
    ("second hello", '{"type":"hello","v":1,"ack":0}', "handshake"),
    ("gap", '{"type":"msg","seq":2,"ack":0,"data":1}', "gap"),
    ("ack beyond sent", '{"type":"ack","ack":5}', "ack"),
    ("seq as string", '{"type":"msg","seq":"1","ack":0,"data":1}', "malformed"),
    ("binary", b"\x00\x01", "malformed"),
    ("NaN is not JSON", '{"type":"msg","seq":1,"ack":0,"data":NaN}', "malformed"),
    ("oversize", '{"type":"msg","seq":1,"ack":0,"data":"' + "x" * 2000 + '"}', "too_big"),
]


@pytest.mark.parametrize(("case", "text", "code"), _BEFORE_HELLO, ids=[c[0] for c in _BEFORE_HELLO])
def test_bad_first_frame_is_an_error_and_the_hub_serves_on(case: str, text: str | bytes,
                                                           code: str) -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(max_frame=1024)) as (hub, _):
            bad = await Peer.open(hub.port)
            await bad.send(text)
            error = await bad.error()
            assert error.code == code and not error.fatal
            assert hub.sessions == {}
            good = await Peer.open(hub.port)
            assert not (await good.hello()).resumed
            await good.close()

    run(main())


@pytest.mark.parametrize(("case", "text", "code"), _AFTER_HELLO, ids=[c[0] for c in _AFTER_HELLO])
def test_bad_frame_in_a_session_is_an_error_and_the_session_kept(case: str, text: str | bytes,
                                                                 code: str) -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(max_frame=1024)) as (hub, received):
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            bystander = await Peer.open(hub.port)
            await bystander.hello()
            await peer.send(text)
            error = await peer.error()
            assert error.code == code and not error.fatal
            # The session survives the bad connection; the bystander never noticed.
            again = await Peer.open(hub.port)
            assert (await again.hello(peer.session, peer.token)).resumed
            await again.send(Msg(seq=1, ack=0, data="after"))
            await bystander.send(Msg(seq=1, ack=0, data="bystander"))
            assert await again.recv() == Ack(ack=1)
            assert await bystander.recv() == Ack(ack=1)
            assert (welcome.session, "after") in received and len(received) == 2
            await again.close()
            await bystander.close()

    run(main())


def test_wrong_version_is_fatal() -> None:
    async def main() -> None:
        async with hub_with() as (hub, _):
            peer = await Peer.open(hub.port)
            await peer.send('{"type":"hello","v":2,"ack":0}')
            error = await peer.error()
            assert error.code == "version" and error.fatal

    run(main())


def test_a_huge_frame_is_cut_off_by_websockets_and_the_hub_serves_on() -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(max_frame=1024)) as (hub, _):
            peer = await Peer.open(hub.port)
            await peer.hello()
            await peer.send("x" * 4096)  # over twice max_frame: never buffered whole
            await peer.closed()
            assert peer.ws.close_code == 1009
            good = await Peer.open(hub.port)
            assert (await good.hello(peer.session, peer.token)).resumed
            await good.close()

    run(main())


def test_more_than_max_inflight_is_overflow() -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(max_inflight=2), ack_delay=10.0) as (hub, received):
            peer = await Peer.open(hub.port)
            await peer.hello()
            for seq in (1, 2, 3):  # the hub acknowledged nothing yet: 3 > 2 in flight
                await peer.send(Msg(seq=seq, ack=0, data=seq))
            error = await peer.error()
            assert error.code == "overflow"
            assert [data for _, data in received] == [1, 2]

    run(main())


def test_hello_rate_per_address_is_limited() -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(hello_rate=2, retry_after=1.5)) as (hub, _):
            peers = [await Peer.open(hub.port) for _ in range(3)]
            await peers[0].hello()
            await peers[1].hello()
            await peers[2].send(Hello(ack=0))
            error = await peers[2].error()
            assert error.code == "busy" and error.retry_after == 1.5 and not error.fatal
            assert len(hub.sessions) == 2
            for peer in peers[:2]:
                await peer.close()

    run(main())


def test_session_count_is_limited_but_resume_still_works() -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(max_sessions=1)) as (hub, _):
            first = await Peer.open(hub.port)
            await first.hello()
            await first.send(Msg(seq=1, ack=0, data="keep me"))  # not empty: it stays
            assert await first.recv() == Ack(ack=1)
            await first.close()
            second = await Peer.open(hub.port)
            await second.send(Hello(ack=0))
            error = await second.error()
            assert error.code == "busy" and error.retry_after == 1.0
            again = await Peer.open(hub.port)
            assert (await again.hello(first.session, first.token, ack=0)).resumed
            await again.close()

    run(main())


def test_no_hello_in_time_is_a_handshake_error() -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(hello_timeout=0.1)) as (hub, _):
            peer = await Peer.open(hub.port)
            assert (await peer.error()).code == "handshake"

    run(main())


# -- liveness and presence ---------------------------------------------------------------------


def test_ping_is_answered_with_pong_at_once() -> None:
    async def main() -> None:
        async with hub_with(ack_delay=5.0) as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            await peer.send(Msg(seq=1, ack=0, data="x"))
            while hub.sessions[sid].last_in < 1:  # delivered and committed
                await asyncio.sleep(0.005)
            await peer.send(Ping(ack=0))
            # At once, not after ack_delay, and carrying the ack the hub owed.
            assert await peer.recv(timeout=0.5) == Pong(ack=1)
            await peer.close()

    run(main())


def test_presence_goes_stale_for_a_silent_client_then_gone() -> None:
    heartbeat = Heartbeat(interval=0.1, timeout=0.1)

    async def main() -> None:
        async with hub_with(heartbeat=heartbeat, expire_after=0.3) as (hub, _):
            changes: list[tuple[str, Presence, Presence, float]] = []
            loop = asyncio.get_running_loop()
            hub.on_presence(lambda sid, old, new: changes.append((sid, old, new, loop.time())))
            talker = await Peer.open(hub.port)
            await talker.hello()
            silent = await Peer.open(hub.port)
            start = loop.time()
            welcome = await silent.hello()
            sid = welcome.session
            # The hub probes the silent client after `interval`.
            probe = await silent.recv(timeout=1.0)
            assert isinstance(probe, Ping)
            assert loop.time() - start >= heartbeat.interval * 0.9
            # The talker answers its probes and stays present.
            stale_seen = False
            while not stale_seen:
                with contextlib.suppress(TimeoutError):
                    frame = await talker.recv(timeout=0.05)
                    if isinstance(frame, Ping):
                        await talker.send(Pong(ack=0))
                stale_seen = hub.presence.get(sid) is Presence.STALE
                assert loop.time() - start < 2.0
            stale_after = changes[-1][3] - start
            assert heartbeat.bound * 0.9 <= stale_after < heartbeat.bound + 0.3
            await silent.closed()  # a stale client's connection is aborted
            assert not hub.sessions[sid].connected
            # Stale for expire_after: gone, and forgotten by the store too.
            while sid in hub.sessions:
                await talker.send(Ping(ack=0))
                await talker.recv()
                assert loop.time() - start < 3.0
            await asyncio.sleep(0.01)  # the store forgets it as soon as it answers
            assert sid not in hub.presence and await hub.store.get(sid) is None
            mine = [(old, new) for s, old, new, _ in changes if s == sid]
            assert mine == [(Presence.GONE, Presence.PRESENT),
                            (Presence.PRESENT, Presence.STALE),
                            (Presence.STALE, Presence.GONE)]
            assert hub.presence == {talker.session: Presence.PRESENT}
            # The expired client comes back to a new session.
            back = await Peer.open(hub.port)
            assert not (await back.hello(sid, silent.token)).resumed
            await back.close()
            await talker.close()

    run(main())


def test_a_stale_session_that_resumes_is_present_again() -> None:
    async def main() -> None:
        heartbeat = Heartbeat(interval=0.05, timeout=0.05)
        async with hub_with(heartbeat=heartbeat) as (hub, _):
            changes: list[tuple[Presence, Presence]] = []
            hub.on_presence(lambda sid, old, new: changes.append((old, new)))
            peer = await Peer.open(hub.port)
            welcome = await peer.hello()
            await peer.closed(timeout=1.0)  # never answered the probe
            assert hub.presence[welcome.session] is Presence.STALE
            again = await Peer.open(hub.port)
            assert (await again.hello(peer.session, peer.token)).resumed
            assert hub.presence[welcome.session] is Presence.PRESENT
            assert changes[-2:] == [(Presence.PRESENT, Presence.STALE),
                                    (Presence.STALE, Presence.PRESENT)]
            await again.close()

    run(main())


# -- sending from the application --------------------------------------------------------------


def test_send_refuses_what_cannot_be_delivered() -> None:
    async def main() -> None:
        async with hub_with(limits=Limits(max_frame=1024, outbox=2)) as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            with pytest.raises(LookupError):
                hub.send("nobody", 1)
            with pytest.raises(TypeError):
                hub.send(sid, object())
            with pytest.raises(ValueError, match="max_frame"):
                hub.send(sid, "x" * 1024)
            with pytest.raises(ValueError):
                hub.send(sid, float("nan"))  # not JSON
            hub.send(sid, 1)
            await hub.send(sid, 2)
            with pytest.raises(OutboxFull):  # the client acknowledged nothing yet
                hub.send(sid, 3)
            assert msgs(await peer.recv_until(lambda f: isinstance(f, Msg) and f.seq == 2)) \
                == [(1, 1), (2, 2)]
            await peer.send(Ack(ack=2))
            await asyncio.sleep(0.05)
            await hub.send(sid, 3)  # room again
            assert msgs([await peer.recv()]) == [(3, 3)]
            with pytest.raises(RuntimeError):  # no delivery is being handled
                hub.sessions[sid].record(lambda db: None)
            await peer.close()

    run(main())


def test_sends_made_by_a_handler_go_out_after_its_commit() -> None:
    async def main() -> None:
        peers: dict[str, Peer] = {}

        async def fan_out(session: Session, data: Any) -> None:
            for other in sorted(peers):
                hub.send(other, {"from": session.id, "data": data})
            await asyncio.sleep(0.05)
            # Nothing left yet: the hub has not committed the delivery.
            assert all(hub.sessions[s].unacked == 0 for s in peers)

        async with hub_with(fan_out) as (hub, _):
            for _ in range(2):
                peer = await Peer.open(hub.port)
                sid = (await peer.hello()).session
                peers[sid] = peer
            first = sorted(peers)[0]
            await peers[first].send(Msg(seq=1, ack=0, data="hello all"))
            for sid, peer in peers.items():
                frames = await peer.recv_until(lambda f: isinstance(f, Msg))
                assert msgs(frames) == [(1, {"from": first, "data": "hello all"})]
                last = frames[-1]
                assert isinstance(last, Msg)
                assert last.ack == (1 if sid == first else 0)  # the sender's ack rides along
                await peer.close()

    run(main())


def test_no_ack_covers_a_message_before_its_commit() -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def slow(session: Session, data: Any) -> None:
            if data == "slow":
                await release.wait()

        async with hub_with(slow) as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            await peer.send(Msg(seq=1, ack=0, data="fast"))
            assert await peer.recv() == Ack(ack=1)
            await peer.send(Msg(seq=2, ack=0, data="slow"))
            await asyncio.sleep(0.05)  # the handler now waits
            hub.send(sid, "meanwhile")  # a frame to this client, mid-delivery
            assert await peer.recv() == Msg(seq=1, ack=1, data="meanwhile")  # not ack 2
            release.set()
            assert await peer.recv() == Ack(ack=2)  # after the commit
            await peer.close()

    run(main())


def test_a_failing_handler_has_not_delivered() -> None:
    async def main() -> None:
        calls: list[Any] = []

        def flaky(session: Session, data: Any) -> None:
            calls.append(data)
            if len(calls) == 1:
                session.send("lost with the failure")
                raise RuntimeError("handler bug")
            session.send(f"ok {data}")

        async with hub_with(flaky) as (hub, _):
            peer = await Peer.open(hub.port)
            await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="m"))
            await peer.closed()
            assert peer.ws.close_code == 1011
            again = await Peer.open(hub.port)
            welcome = await again.hello(peer.session, peer.token)
            assert welcome.resumed and welcome.ack == 0  # not delivered
            await again.send(Msg(seq=1, ack=0, data="m"))
            assert msgs([await again.recv()]) == [(1, "ok m")]
            assert calls == ["m", "m"]
            await again.close()

    run(main())


def test_link_in_session_mode_talks_to_the_hub() -> None:
    from adapters.websocket import connect as tether_connect

    async def main() -> None:
        async with hub_with(echo) as (hub, _):
            url = f"ws://127.0.0.1:{hub.port}/"
            async with tether_connect(url, session=True,
                                      heartbeat=Heartbeat(interval=1, timeout=1)) as link:
                for n in range(3):
                    await link.send({"n": n})
                got = []
                async for message in link:
                    got.append(message)
                    if len(got) == 3:
                        break
                assert got == [{"n": 0}, {"n": 1}, {"n": 2}]

    run(main())


# -- the store across restarts -----------------------------------------------------------------


def test_stopped_mid_handler_the_message_is_handled_again_and_recorded_once(
        workdir: Path) -> None:
    """At-least-once calls, exactly-once recorded effects (``session.record``)."""
    path = workdir / "hub.sqlite"
    with contextlib.closing(sqlite3.connect(path)) as setup:  # the application's table
        setup.execute("CREATE TABLE IF NOT EXISTS effects (sid TEXT, data TEXT)")
    calls: list[Any] = []

    async def main() -> None:
        block = asyncio.Event()

        async def handler(session: Session, data: Any) -> None:
            calls.append(data)
            session.record(lambda db: None if db is None else db.execute(
                "INSERT INTO effects VALUES (?, ?)", (session.id, json.dumps(data))))
            session.send({"done": data})
            if data == "slow" and len(calls) == 2:
                await block.wait()  # the hub stops while this call is here

        store = SQLiteStore(path)
        hub = await serve(handler, store=store)
        peer = await Peer.open(hub.port)
        welcome = await peer.hello()
        await peer.send(Msg(seq=1, ack=0, data="fast"))
        assert msgs([await peer.recv()]) == [(1, {"done": "fast"})]
        await peer.send(Msg(seq=2, ack=1, data="slow"))
        while len(calls) < 2:
            await asyncio.sleep(0.01)
        await hub.close()  # like a crash: the running handler never commits
        await store.aclose()
        with contextlib.suppress(ConnectionClosed):
            await peer.closed()

        store = SQLiteStore(path)
        hub = await serve(handler, store=store)
        again = await Peer.open(hub.port)
        resumed = await again.hello(welcome.session, peer.token, ack=1)
        assert resumed.resumed and resumed.ack == 1 and resumed.epoch == welcome.epoch
        await again.send(Msg(seq=2, ack=1, data="slow"))  # replayed: not acknowledged
        assert msgs([await again.recv()]) == [(2, {"done": "slow"})]
        await again.close()
        await hub.close()
        rows = await store.run(
            lambda db: db.execute("SELECT data FROM effects ORDER BY rowid").fetchall())
        await store.aclose()
        assert calls == ["fast", "slow", "slow"]  # the handler ran twice for "slow"
        assert rows == [('"fast"',), ('"slow"',)]  # its recorded effect happened once

    run(main())


async def _start_hub_process(*args: str, port: int = 0
                             ) -> tuple[asyncio.subprocess.Process, int]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "adapters.cli", "hub", "--port", str(port), *args, cwd=REPO,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    try:
        async with asyncio.timeout(5):
            line = await process.stdout.readline()
    except BaseException:
        process.kill()
        await process.wait()
        raise
    if not line.startswith(b"listening "):
        await _kill(process)
        raise AssertionError(f"the hub did not start: {line!r}")
    return process, int(line.split()[1])


async def _kill(process: asyncio.subprocess.Process) -> int:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    return await process.wait()


def test_cli_echo_hub() -> None:
    async def main() -> None:
        process, port = await _start_hub_process("--echo")
        try:
            peer = await Peer.open(port)
            await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data={"text": "héllo"}))
            assert await peer.recv() == Msg(seq=1, ack=1, data={"text": "héllo"})
            await peer.close()
        finally:
            await _kill(process)

    run(main())


def test_sqlite_hub_killed_and_restarted_resumes_without_duplicates(workdir: Path) -> None:
    store = str(workdir / "hub.sqlite")

    async def main() -> None:
        process, port = await _start_hub_process("--echo", "--store", store)
        try:
            peer = await Peer.open(port)
            welcome = await peer.hello()
            await peer.send(Msg(seq=1, ack=0, data="one"))
            assert await peer.recv() == Msg(seq=1, ack=1, data="one")
            await peer.send(Msg(seq=2, ack=1, data="two"))
            assert await peer.recv() == Msg(seq=2, ack=2, data="two")
        finally:
            assert await _kill(process) == -signal.SIGKILL
        await peer.closed()

        process, port = await _start_hub_process("--echo", "--store", store)
        try:
            again = await Peer.open(port)
            # As if the client had lost the echo of "two" and the ack of its msg 2.
            resumed = await again.hello(welcome.session, peer.token, ack=1)
            assert resumed.resumed and resumed.epoch == welcome.epoch and resumed.ack == 2
            assert await again.recv() == Msg(seq=2, ack=2, data="two")  # replayed
            await again.send(Msg(seq=2, ack=2, data="two"))  # a duplicate: dropped
            await again.send(Msg(seq=3, ack=2, data="three"))
            frames = await again.recv_until(lambda f: isinstance(f, Msg))
            assert msgs(frames) == [(3, "three")]  # no second echo of "two"
            assert all(f == Ack(ack=2) for f in frames[:-1])
            await again.close()
        finally:
            await _kill(process)

    run(main(), timeout=15)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def _start_hub_on(port: int, *args: str) -> asyncio.subprocess.Process:
    """The CLI hub on ``port``, retrying while the port is still held (after a kill)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        try:
            process, _ = await _start_hub_process(*args, port=port)
            return process
        except AssertionError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.05)


def test_link_through_two_hub_kills_gets_every_echo_once(workdir: Path) -> None:
    """The real client (``Link``, session mode) and the CLI hub on SQLite, SIGKILLed
    twice mid-stream and restarted on the same port and file."""
    from adapters.websocket import connect as tether_connect
    from fsm import Backoff

    store = str(workdir / "hub.sqlite")

    async def main() -> None:
        port = _free_port()
        process = await _start_hub_on(port, "--echo", "--store", store)
        rebuilds: list[int] = []
        got: list[Any] = []

        async def rebuild(_: Any) -> None:
            rebuilds.append(1)

        try:
            async with tether_connect(f"ws://127.0.0.1:{port}/", session=True,
                                      on_rebuild=rebuild, backoff=Backoff(initial=0.05, cap=0.2),
                                      heartbeat=Heartbeat(interval=0.5, timeout=0.5)) as link:
                async def read() -> None:
                    async for message in link:
                        got.append(message)
                        if len(got) == 30:
                            return

                reader = asyncio.create_task(read())
                for n in range(30):
                    await link.send(n)
                    await asyncio.sleep(0.005)
                    if n in (8, 19):
                        await _kill(process)
                        process = await _start_hub_on(port, "--echo", "--store", store)
                async with asyncio.timeout(8):
                    await reader
                await asyncio.sleep(0.2)  # a duplicate would arrive about now
                assert got == list(range(30))
                assert link.statistics()["undelivered"] == 0
            assert rebuilds == [1]  # the first session only: the epoch survived the kills
        finally:
            await _kill(process)

    run(main(), timeout=15)


def test_memory_hub_restart_is_a_new_epoch() -> None:
    async def main() -> None:
        first = await serve(echo, store=MemoryStore())
        peer = await Peer.open(first.port)
        welcome = await peer.hello()
        await first.close()
        second = await serve(echo)
        again = await Peer.open(second.port)
        fresh = await again.hello(welcome.session, peer.token)
        assert not fresh.resumed and fresh.epoch != welcome.epoch
        await again.close()
        await second.close()

    run(main())


# -- bugs found outside the hub, pinned ----------------------------------------------------------


def test_protocol_msg_with_null_data_round_trips() -> None:
    frame = Msg(seq=1, ack=0, data=None)
    assert protocol.decode(protocol.encode(frame)) == frame


def test_protocol_refuses_nan() -> None:
    with pytest.raises(protocol.ProtocolViolation):
        protocol.decode('{"type":"msg","seq":1,"ack":0,"data":NaN}')


def test_protocol_welcome_limits_are_positive_integers() -> None:
    welcome = protocol.decode('{"type":"welcome","v":1,"session":"s","epoch":"e",'
                              '"resumed":false,"ack":0,"token":"t",'
                              '"limits":{"max_inflight":true,"max_frame":-5}}')
    assert isinstance(welcome, Welcome) and welcome.limits == {}


def test_hub_works_around_the_null_data_encoding() -> None:
    async def main() -> None:
        async with hub_with() as (hub, _):
            peer = await Peer.open(hub.port)
            sid = (await peer.hello()).session
            hub.send(sid, None)
            assert await peer.recv() == Msg(seq=1, ack=0, data=None)
            await peer.close()

    run(main())
