"""Issue 7, the client side: hostile peers and careless callers must not break the link.

Each test is a regression test for a defect found by attacking the link on loopback: it
failed on the code before the fix. They run on a virtual clock (``tests.virtual``) against
the in-memory server, or its session-mode peer (:mod:`adapters.session_peer`), except the
URL-redaction test, which needs websockets' own request-line logging.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from transitions import EventData

from adapters.link import Link, LinkFailed, Undelivered
from adapters.memory import MemoryDialer, MemoryServer, MemoryTransport, ServerConnection, echo
from adapters.session_peer import SessionPeer
from adapters.websocket import WebSocketDialer, connect, redact_url
from fsm import Backoff, Heartbeat, Overflow, State, protocol
from fsm.actions import Action
from fsm.events import Event
from fsm.examples.authenticating import AUTH_SPEC, Authenticate, Authenticated
from fsm.spec import DEFAULT_SPEC
from tests.virtual import now, run

pytestmark = pytest.mark.timeout(30)

HB = Heartbeat(interval=1.0, timeout=1.0)
FAST = Backoff(initial=0.05, cap=1.0, grace=2.0)
DEEP = "[" * 200_000  # under websockets' 1 MiB max_size; past json's recursion limit


def make(server: MemoryServer, **options: Any) -> tuple[Link, MemoryDialer]:
    dialer = MemoryDialer(server, open_timeout=None)
    options.setdefault("heartbeat", HB)
    options.setdefault("backoff", FAST)
    options.setdefault("rng", random.Random(7))
    return Link(dialer, **options), dialer


async def silent(conn: ServerConnection) -> None:
    while True:
        await conn.receive()


async def detected_within_bound(link: Link, server: MemoryServer) -> float:
    """Freeze the server; the link must be stale no later than the bound after it last
    heard the peer (the seed bug: 'online for 8 s and counting')."""
    server.freeze()
    heard = link.lifecycle.last_heard
    await link.wait_for(State.STALE, timeout=HB.bound + 1.0)
    detected = now() - heard
    assert detected <= HB.bound + 0.05, detected
    server.thaw()
    return detected


# -- 1. no driver task dies silently --------------------------------------------------------


def test_deeply_nested_frames_are_delivered_raw_and_cost_nothing_of_the_heartbeat() -> None:
    """Plain mode: one frame of 200 KB of '[' killed the reader (``RecursionError``), a
    second one read on the deadline path killed the timer task, and a peer that then
    froze was shown online forever."""
    async def main() -> None:
        server = MemoryServer(silent)
        link, _ = make(server)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        for conn in server.connections:
            await conn.send(DEEP)
            await conn.send(DEEP)
        assert await link.receive() == DEEP  # plain mode: not JSON we can follow -> raw
        await asyncio.sleep(0.1)
        assert link.state == State.ONLINE
        await detected_within_bound(link, server)
        await link.wait_for(State.ONLINE, timeout=5)
        await link.close()
        await server.aclose()

    run(main)


class _Faulty(MemoryTransport):
    """A transport with a bug: ``receive`` or ``receive_nowait`` raises something no
    transport is allowed to raise."""

    fail_receive = False
    fail_receive_nowait = False

    async def receive(self) -> Any:
        if self.fail_receive:
            raise RuntimeError("transport bug in receive")
        return await super().receive()

    def receive_nowait(self) -> Any:
        if self.fail_receive_nowait:
            raise RuntimeError("transport bug in receive_nowait")
        return super().receive_nowait()


class _FaultyDialer(MemoryDialer):
    def __init__(self, server: MemoryServer, **flags: bool) -> None:
        super().__init__(server, open_timeout=None)
        self.flags = flags

    async def dial(self, headers: Mapping[str, str]) -> MemoryTransport:
        transport = await super().dial(headers)
        transport.__class__ = _Faulty
        for name, value in self.flags.items():
            setattr(transport, name, value)
        self.flags = {}  # only the first transport is faulty
        return transport


@pytest.mark.parametrize("flag", ["fail_receive", "fail_receive_nowait"])
def test_a_task_that_raises_breaks_its_transport_and_the_link_recovers(flag: str) -> None:
    """An exception nobody expected, in the reader or on the deadline path, is the
    transport breaking: the reason names it, the deadline stays armed, the link
    reconnects."""
    async def main() -> None:
        server = MemoryServer(echo)
        dialer = _FaultyDialer(server, **{flag: True})
        link = Link(dialer, heartbeat=HB, backoff=FAST, rng=random.Random(1))
        reasons: list[str] = []
        link.on_state_change(lambda change: reasons.append(change.reason))
        await link.start()
        if flag == "fail_receive_nowait":
            await link.wait_for(State.ONLINE, timeout=5)
            await link.send("buffered before the deadline")
        await link.wait_for(State.STALE, timeout=5)
        assert "RuntimeError" in link.reason and "transport bug" in link.reason
        await link.wait_for(State.ONLINE, timeout=5)
        assert link.armed_deadline is not None
        await link.close()
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_a_correlate_callback_that_raises_is_contained_in_session_mode() -> None:
    """A raising ``correlate=`` killed the session-mode reader. Now it is logged, the
    message is delivered as an ordinary one, and the heartbeat still detects a freeze."""
    async def main() -> None:
        peer = SessionPeer()
        server = peer.attach(MemoryServer(peer))

        def correlate(message: Any) -> str | None:
            raise ValueError("correlate bug")

        link, _ = make(server, session=True, correlate=correlate)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        (session_id,) = peer.sessions
        await peer.send(session_id, {"reply_to": "x", "n": 1})
        assert await asyncio.wait_for(link.receive(), 5) == {"reply_to": "x", "n": 1}
        assert link.state == State.ONLINE
        await detected_within_bound(link, server)
        await link.close()
        await server.aclose()

    run(main)


@dataclass(frozen=True)
class Poked(Event):
    """An event no spec here declares."""


def _boom(event_data: EventData) -> bool:
    raise RuntimeError("a custom condition with a bug")


#: A custom row whose condition raises whenever a message arrives while online.
BUGGY_SPEC = DEFAULT_SPEC.derive(
    name="buggy",
    transitions=[{"trigger": "MessageReceived", "source": State.ONLINE, "dest": None,
                  "conditions": _boom}],
)


def test_a_core_that_raises_on_a_drivers_report_fails_the_link_naming_why() -> None:
    """The core itself raised (a custom condition's bug): nothing about the link can be
    trusted, so it fails through the table (``Crashed``), handing back what it held."""
    async def main() -> None:
        server = MemoryServer(echo)
        link, dialer = make(server, spec=BUGGY_SPEC)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        await link.send("echo me")
        with pytest.raises(LinkFailed, match="a custom condition with a bug"):
            await link.wait_for(State.CLOSED, timeout=5)
        assert link.state == State.FAILED
        assert "LinkCorrupt" in link.reason and "MessageReceived" in link.reason
        await link.close()
        assert dialer.open_transports == 0
        await server.aclose()

    run(main)


def test_an_action_handler_that_raises_breaks_the_transport_then_succeeds() -> None:
    async def main() -> None:
        server = MemoryServer(silent)
        calls: list[float] = []

        async def authenticate(link: Link, action: Action) -> Event:
            calls.append(now())
            if len(calls) == 1:
                raise ConnectionError("auth server hiccup")
            return Authenticated()

        link, _ = make(server, spec=AUTH_SPEC, on_action={Authenticate: authenticate})
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        assert len(calls) == 2
        assert link.statistics()["attempts"] == 2
        await link.close()
        await server.aclose()

    run(main)


def test_an_action_handler_returning_an_unknown_event_fails_the_link_naming_it() -> None:
    async def main() -> None:
        server = MemoryServer(silent)

        async def authenticate(link: Link, action: Action) -> Event:
            return Poked()  # not an event of AUTH_SPEC

        link, _ = make(server, spec=AUTH_SPEC, on_action={Authenticate: authenticate})
        await link.start()
        with pytest.raises(LinkFailed, match="Poked is not an event of spec"):
            await link.wait_for(State.ONLINE, timeout=5)
        await link.close()
        await server.aclose()

    run(main)


# -- 7. encode at send(): a bad payload never poisons the queue -------------------------------


def test_a_payload_that_cannot_be_sent_is_refused_at_send_and_blocks_nothing() -> None:
    """Plain mode encoded at transmit time: a non-JSON payload queued while offline
    aborted the action list, hid the connecting -> online announcement and blocked every
    later message."""
    async def main() -> None:
        server = MemoryServer(echo)
        link, _ = make(server)
        states: list[str] = []
        link.on_state_change(lambda change: states.append(change.new))
        await link.send({"n": 1})
        with pytest.raises(TypeError, match="cannot send object"):
            await link.send(object())
        with pytest.raises(ValueError, match="not valid Unicode"):
            await link.send("lone \udcff surrogate")
        with pytest.raises(ValueError, match=f"deeper than {protocol.MAX_DEPTH}"):
            await link.send(nested(protocol.MAX_DEPTH + 1))
        await link.send({"n": 2})
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        assert states == ["connecting", "online"]
        assert [await link.receive(), await link.receive()] == [{"n": 1}, {"n": 2}]
        await link.close()
        await server.aclose()

    run(main)


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def test_session_mode_refuses_data_the_protocol_refuses_naming_the_limit() -> None:
    async def main() -> None:
        link = Link(MemoryDialer(MemoryServer(echo)), session=True)
        await link.send(nested(protocol.MAX_DEPTH))
        with pytest.raises(ValueError, match=f"nested deeper than {protocol.MAX_DEPTH} "
                                             f"levels"):
            await link.send(nested(protocol.MAX_DEPTH + 1))
        with pytest.raises(ValueError, match="not valid Unicode"):
            await link.send({"text": "\udcff"})
        assert link.held() == [nested(protocol.MAX_DEPTH)]
        await link.close()

    run(main)


# -- 6. every queue has a bound ---------------------------------------------------------------


def test_plain_mode_stops_reading_while_the_application_is_behind() -> None:
    """The inbound queue was unbounded: 155,393 unread messages cost +208 MB."""
    async def main() -> None:
        async def flood(conn: ServerConnection) -> None:
            for n in range(500):
                await conn.send(str(n))
            await silent(conn)

        server = MemoryServer(flood)
        link, _ = make(server, inbound_limit=20, inbound_bytes=10_000)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        await asyncio.sleep(0.5)
        assert link.statistics()["inbound_depth"] == 20
        got = [await link.receive() for _ in range(500)]
        assert got == list(range(500))  # plain mode decodes JSON: "7" is 7
        await link.close()
        await server.aclose()

    run(main)


def test_session_mode_acknowledges_only_what_the_application_took() -> None:
    """Session mode acknowledged on arrival, so the server saw nothing unacknowledged
    while the client's memory grew. Now the window announced in hello holds the server
    back, the link stays online (no flapping while the application is slow) and
    everything arrives once, in order, when it reads."""
    async def main() -> None:
        peer = SessionPeer()
        server = peer.attach(MemoryServer(peer))
        link, _ = make(server, session=True, inbound_limit=10)
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        (session_id,) = peer.sessions
        for n in range(50):
            await peer.send(session_id, n)
        await asyncio.sleep(30)
        session = peer.sessions[session_id]
        assert len(session.unacked) == 50  # nothing taken, nothing acknowledged
        assert link.statistics()["inbound_depth"] == 10  # the window: no more came
        assert link.state in (State.ONLINE, State.WAITING)
        assert link.statistics()["reconnects"] == 0
        got = [await asyncio.wait_for(link.receive(), 5) for _ in range(50)]
        assert got == list(range(50))
        await asyncio.sleep(0.5)
        assert session.unacked == []
        await link.close()
        await server.aclose()

    run(main)


def test_a_server_that_ignores_the_window_breaks_the_protocol_and_nothing_is_lost() -> None:
    async def main() -> None:
        peer = SessionPeer()
        server = peer.attach(MemoryServer(peer))
        link, _ = make(server, session=True, inbound_limit=5)
        reasons: list[str] = []
        link.on_state_change(lambda change: reasons.append(change.reason))
        await link.start()
        await link.wait_for(State.ONLINE, timeout=5)
        (session_id,) = peer.sessions
        peer.sessions[session_id].window = None  # a server that does not know the window
        for n in range(8):
            await peer.send(session_id, n)
        await link.wait_for(State.STALE, timeout=5)
        assert any("overflow" in r and "window of 5" in r for r in reasons), reasons
        got = [await asyncio.wait_for(link.receive(), 5) for _ in range(8)]
        assert got == list(range(8))
        await link.close()
        await server.aclose()

    run(main)


def test_the_history_of_handed_back_messages_is_bounded_and_callbacks_hear_all() -> None:
    """``undelivered()`` kept every message ever handed back (299,990, +68 MB)."""
    async def main() -> None:
        server = MemoryServer(echo)
        server.refuse()
        link, _ = make(server, outbox_limit=5, overflow=Overflow.HAND_BACK)
        heard: list[Undelivered] = []
        link.on_undelivered(heard.append)
        await link.start()
        for n in range(100):
            await link.send(n)
        undelivered = await link.close()
        assert [u.payload for u in heard] == list(range(100))
        assert [u.payload for u in undelivered] == [95, 96, 97, 98, 99]
        assert link.statistics()["undelivered"] == 100
        await server.aclose()

    run(main)


# -- 7. arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"close_timeout": -1}, ValueError, "close_timeout must be a finite number"),
    ({"close_timeout": math.inf}, ValueError, "close_timeout"),
    ({"outbox_limit": 2.5}, TypeError, "outbox limit must be an int"),
    ({"outbox_bytes": 0}, ValueError, "outbox max_bytes must be an int >= 1"),
    ({"inbound_limit": 0}, ValueError, "inbound_limit must be an int >= 1"),
    ({"inbound_bytes": True}, TypeError, "inbound_bytes must be an int"),
    ({"heartbeat": (1, 1)}, TypeError, "heartbeat must be a fsm.heartbeat.Heartbeat"),
    ({"backoff": {"cap": 1}}, TypeError, "backoff must be a fsm.backoff.Backoff"),
    ({"handshake_timeout": math.inf}, ValueError, "handshake_timeout"),
    ({"overflow": "drop"}, ValueError, "overflow must be one of"),
    ({"session": "yes"}, TypeError, "session must be True or False"),
    ({"on_rebuild": 3}, TypeError, "on_rebuild must be an async callable"),
    ({"correlate": "reply_to"}, TypeError, "correlate must be callable"),
])
def test_link_arguments_are_checked_with_a_clear_error(options: dict[str, Any],
                                                       error: type[Exception],
                                                       match: str) -> None:
    with pytest.raises(error, match=match):
        Link(MemoryDialer(MemoryServer(echo)), **options)


@pytest.mark.parametrize(("options", "error", "match"), [
    ({"max_size": -5}, ValueError, "max_size must be an int >= 1"),
    ({"max_size": 1.5}, TypeError, "max_size must be an int"),
    ({"close_timeout": -1}, ValueError, "close_timeout"),
    ({"ssl": True}, TypeError, "ssl must be an ssl.SSLContext"),
])
def test_connect_arguments_are_checked_with_a_clear_error(options: dict[str, Any],
                                                          error: type[Exception],
                                                          match: str) -> None:
    with pytest.raises(error, match=match):
        connect("ws://127.0.0.1:1/", **options)


def test_wait_for_an_unknown_state_says_so_instead_of_hanging() -> None:
    async def main() -> None:
        link = Link(MemoryDialer(MemoryServer(echo)))
        with pytest.raises(ValueError, match="did you mean 'online'"):
            await link.wait_for("onlnie", timeout=1)
        await link.close()

    run(main)


def test_request_checks_its_payload_and_timeout() -> None:
    async def main() -> None:
        link = Link(MemoryDialer(MemoryServer(echo)))
        with pytest.raises(TypeError, match="request\\(\\) takes a dict payload"):
            await link.request([1, 2])  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="request timeout"):
            await link.request({"q": 1}, timeout=-1)
        assert link.held() == []
        await link.close()

    run(main)


# -- 7. credentials in URLs --------------------------------------------------------------------


def test_credentials_in_a_url_stay_out_of_reprs_names_and_reasons() -> None:
    url = "wss://bob:hunter2@studio.example:8765/agents?access_token=s3cret&room=7"
    redacted = redact_url(url)
    assert "hunter2" not in redacted and "s3cret" not in redacted
    assert redacted == "wss://bob:***@studio.example:8765/agents?access_token=***&room=7"
    assert "s3cret" not in repr(WebSocketDialer(url))
    link = connect(url)
    assert "s3cret" not in link.name and "hunter2" not in link.name
    assert "s3cret" not in repr(link)


@pytest.mark.realsocket
def test_credentials_in_the_request_line_stay_out_of_debug_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    """websockets logs the request line at DEBUG, query string included, on both ends."""
    from tests.servers import LoopbackServer

    async def main() -> None:
        async with LoopbackServer() as server:
            transport = await WebSocketDialer(f"{server.url}?access_token=s3cret").dial({})
            transport.abort()

    caplog.set_level(logging.DEBUG)
    asyncio.run(main())
    # The test server logs on websockets' own logger; tether's loggers must not leak.
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("tether")]
    assert any("GET /?access_token=***" in line for line in lines), lines
    assert not any("s3cret" in line for line in lines)


@pytest.mark.realsocket
def test_credentials_in_a_request_path_stay_out_of_the_hubs_debug_logs(
        caplog: pytest.LogCaptureFixture) -> None:
    """The hub logs the request line it receives ("< GET /?access_token=... HTTP/1.1")."""
    from adapters.hub import serve

    async def main() -> None:
        hub = await serve(lambda session, data: None)
        try:
            url = f"ws://127.0.0.1:{hub.port}/agents?access_token=s3cret&room=7"
            transport = await WebSocketDialer(url).dial({})
            await transport.close()
        finally:
            await hub.close()

    caplog.set_level(logging.DEBUG)
    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name.startswith("tether")]
    assert any("/agents?access_token=***&room=7" in line for line in lines), lines
    assert not any("s3cret" in line for line in lines)
