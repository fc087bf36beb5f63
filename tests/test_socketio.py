"""The Socket.IO transport: the shared conformance suite against Node's real ``socket.io``
4 server, events and acks both ways, binary attachments, refusals, a server's kick, a
frozen server with default engine settings, and hostile packets from a fake server.

Tests that need Node skip with :data:`tests.studio.SKIP_REASON` where it is missing.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import pytest
from websockets.asyncio.server import ServerConnection, serve

from adapters.link import Link
from adapters.socketio import (
    Emit,
    SocketIODialer,
    SocketIOTransport,
    answer,
    connect,
    emit,
    encode_frame,
    engineio_url,
)
from adapters.transport import Dialer
from fsm import Backoff, Heartbeat, State, StateChange
from fsm.errors import Closed, Refused, RemoteProtocolError, TransportError, classify
from tests.conformance import CHECKS, HEADERS, Check, check_transport
from tests.studio import SKIP_REASON, NodeStudio

T = TypeVar("T")
pytestmark = pytest.mark.timeout(60)
node = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")

TOKEN = HEADERS["Authorization"].removeprefix("Bearer ")
HB = Heartbeat(interval=0.5, timeout=0.5)
FAST = Backoff(initial=0.05, cap=0.3, grace=1.0)
TOL = 1.5  # slack on upper time bounds only (a loaded 2-core machine)


def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 30.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()

    return asyncio.run(bounded())


async def settled(before: set[asyncio.Task[Any]], within: float = 2.0) -> set[asyncio.Task[Any]]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while extra := {t for t in asyncio.all_tasks() if t not in before and not t.done()}:
        if loop.time() >= deadline:
            return extra
        await asyncio.sleep(0.01)
    return set()


class RecordingSocketIODialer(SocketIODialer):
    """A SocketIODialer that remembers every transport it opened."""

    def __init__(self, urls: Any, **options: Any) -> None:
        super().__init__(urls, **options)
        self.transports: list[SocketIOTransport] = []

    async def dial(self, headers: Mapping[str, str]) -> SocketIOTransport:
        transport = await super().dial(headers)
        self.transports.append(transport)
        return transport

    @property
    def open_transports(self) -> list[SocketIOTransport]:
        return [t for t in self.transports
                if not t.closed or not t._ws.transport.is_closing()]


# -- the conformance suite, against Node's socket.io -----------------------------------------


class NodeEchoFixture:
    """The conformance suite's EchoFixture: our dialer to ``studio.js --mode echo``."""

    def __init__(self, server: NodeStudio) -> None:
        self.server = server
        self.recording = RecordingSocketIODialer(server.url, open_timeout=3.0,
                                                 close_timeout=1.0)

    @property
    def dialer(self) -> Dialer:
        return self.recording

    async def close_all(self, code: int) -> None:
        await self.server.command(f"close-all {code}")

    async def stop(self) -> None:
        await self.server.command("stop")

    async def start(self) -> None:
        await self.server.command("start")


def conformance(check: Check) -> None:
    async def main() -> None:
        before = set(asyncio.all_tasks())
        async with NodeStudio("echo", token=TOKEN) as server:
            fixture = NodeEchoFixture(server)
            await check(fixture)
            assert fixture.recording.transports, "the check opened no transport"
            assert fixture.recording.open_transports == [], "the suite leaked a transport"
        assert not await settled(before)

    run(main)


@node
@pytest.mark.realsocket
@pytest.mark.parametrize("check", CHECKS, ids=lambda check: check.__name__)
def test_conformance(check: Check) -> None:
    conformance(check)


@node
@pytest.mark.realsocket
def test_conformance_whole_suite_on_one_fixture() -> None:
    conformance(check_transport)


@node
@pytest.mark.realsocket
def test_a_wrong_token_is_refused_by_the_server_with_its_http_status() -> None:
    async def main() -> None:
        async with NodeStudio("echo", token=TOKEN) as server:
            with pytest.raises(Refused) as refused:
                await SocketIODialer(server.url).dial({"Authorization": "Bearer nope"})
            assert refused.value.status == 400  # engine.io refuses a forbidden upgrade so
            assert not classify(refused.value).retry

    run(main)


@node
@pytest.mark.realsocket
def test_an_unknown_namespace_is_a_fatal_refusal_naming_it() -> None:
    async def main() -> None:
        async with NodeStudio("echo") as server:
            with pytest.raises(Refused) as refused:
                await SocketIODialer(server.url, namespace="/nope").dial({})
            assert "'/nope'" in str(refused.value)
            assert "Invalid namespace" in str(refused.value)
            assert not classify(refused.value).retry

    run(main)


# -- events, acks and binary, through a Link --------------------------------------------------


async def _online(link: Link) -> Link:
    await link.start()
    await link.wait_for(State.ONLINE, timeout=10)
    return link


@node
@pytest.mark.realsocket
def test_events_acks_and_binary_arguments_round_trip_through_a_link() -> None:
    async def main() -> None:
        async with NodeStudio("echo") as server:
            link = await _online(connect(server.url, heartbeat=HB, backoff=FAST))
            try:
                await link.send(emit("greet", {"who": "alice"}, [1, 2], None))
                assert await asyncio.wait_for(link.receive(), 5) == {
                    "event": "greet", "args": [{"who": "alice"}, [1, 2], None]}
                # The echo server answers an ack request with the event's arguments.
                await link.send(emit("add", 2, 3, ack=7))
                assert await asyncio.wait_for(link.receive(), 5) == {"ack": 7, "args": [2, 3]}
                # Binary attachments inside an event come back as {"$bytes": base64}.
                blob = bytes(range(256))
                await link.send(emit("file", {"name": "x", "data": blob}))
                got = await asyncio.wait_for(link.receive(), 5)
                assert got["event"] == "file"
                assert base64.b64decode(got["args"][0]["data"]["$bytes"]) == blob
                # Plain frames are the "message" event: text stays text, bytes stay bytes.
                await link.send("plain")
                await link.send(b"\x00\x01")
                assert await asyncio.wait_for(link.receive(), 5) == "plain"
                assert await asyncio.wait_for(link.receive(), 5) == b"\x00\x01"
            finally:
                assert await link.close() == []

    run(main)


@node
@pytest.mark.realsocket
def test_a_server_event_asking_for_an_ack_is_answered() -> None:
    async def main() -> None:
        async with NodeStudio("echo") as server:
            link = await _online(connect(server.url, heartbeat=HB, backoff=FAST))
            try:
                await server.command('ask question ["what?", {"n": 1}]')
                event = await asyncio.wait_for(link.receive(), 5)
                assert event["event"] == "question"
                assert event["args"] == ["what?", {"n": 1}]
                await link.send(answer(event["ack"], "fine", 42))
                assert await server.expect("answered") == 'answered ["fine",42]'
            finally:
                await link.close()

    run(main)


def test_emit_refuses_what_socket_io_cannot_carry() -> None:
    with pytest.raises(ValueError, match="event name"):
        emit("")
    with pytest.raises(ValueError, match="ack"):
        emit("x", ack=-1)
    with pytest.raises(TypeError, match="JSON or bytes"):
        emit("x", object())
    with pytest.raises(ValueError, match="ack"):
        answer(-2)
    assert repr(emit("x", 1, ack=2)) == "emit('x', *(1,), ack=2)"
    assert isinstance(emit("x"), str)


def test_encoding_follows_the_socket_io_wire_format() -> None:
    assert encode_frame("hi", "/python") == ['42/python,["message","hi"]']
    assert encode_frame(emit("e", 1, ack=12), "/") == ['4212["e",1]']
    assert encode_frame(answer(5, "ok"), "/python") == ['43/python,5["ok"]']
    assert encode_frame(b"\x01", "/") == [
        '451-["message",{"_placeholder":true,"num":0}]', b"\x01"]
    assert engineio_url("http://127.0.0.1:3000") == \
        "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
    assert engineio_url("https://studio.example/", "io") == \
        "wss://studio.example/io/?EIO=4&transport=websocket"
    with pytest.raises(Refused):
        engineio_url("ftp://x")


# -- the server kicks us; the server freezes ----------------------------------------------------


@node
@pytest.mark.realsocket
def test_a_server_disconnect_is_closed_and_the_link_comes_back_and_rebuilds() -> None:
    async def main() -> None:
        async with NodeStudio("echo") as server:
            rebuilds: list[int] = []

            async def rebuild(link: Link) -> None:
                rebuilds.append(len(rebuilds))

            changes: list[StateChange] = []
            link = connect(server.url, heartbeat=HB, backoff=FAST, on_rebuild=rebuild)
            link.on_state_change(changes.append)
            await _online(link)
            await server.command("kick")
            async with asyncio.timeout(5):  # it may be back before the command's "ok"
                while not (stale := [c for c in changes if c.new == State.STALE]) \
                        or link.state != State.ONLINE:
                    await asyncio.sleep(0.01)
            assert "disconnected us from namespace '/'" in stale[0].reason
            assert rebuilds == [0, 1]
            await link.send("after")
            assert await asyncio.wait_for(link.receive(), 5) == "after"
            await link.close()

    run(main)


@node
@pytest.mark.realsocket
def test_a_frozen_server_with_default_engine_settings_is_stale_within_the_bound() -> None:
    """Node's defaults (ping 25 s, timeout 20 s) would take 45 s; tether's RFC 6455 probe
    needs interval + timeout. Lower bound firm, upper bound loose (timing is measured in
    the benchmark)."""

    async def main() -> None:
        async with NodeStudio("studio") as server:
            changes: list[StateChange] = []
            dialer = SocketIODialer(server.url, namespace="/python", auth={"run_id": "r"})
            link = Link(dialer, heartbeat=HB, backoff=FAST, handshake_timeout=1.0,
                        close_timeout=0.3, rng=random.Random(3))
            link.on_state_change(changes.append)
            await _online(link)
            transport = link._transport
            assert isinstance(transport, SocketIOTransport)
            assert transport.handshake.ping_interval == 25.0  # the server's defaults
            assert transport.handshake.ping_timeout == 20.0
            await asyncio.sleep(HB.bound)  # idle: probes are answered by the WebSocket layer
            assert link.state in (State.ONLINE, State.WAITING)
            loop = asyncio.get_running_loop()
            server.freeze()
            frozen = loop.time()
            try:
                await link.wait_for(State.STALE, timeout=HB.bound + 5)
                stale = next(c for c in changes if c.new == State.STALE)
                assert stale.at - frozen <= HB.bound + TOL
                assert "no frame" in stale.reason or "probe" in stale.reason, stale.reason
            finally:
                server.thaw()
            await link.wait_for(State.ONLINE, timeout=10)
            await link.close()

    run(main)


# -- hostile packets, from a fake server -------------------------------------------------------

OPEN = '0{"sid":"s1","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}'


@contextlib.asynccontextmanager
async def fake_server(script: Callable[[ServerConnection], Coroutine[Any, Any, None]]
                      ) -> AsyncIterator[str]:
    """A websockets server speaking Engine.IO as ``script`` says; yields its base URL."""

    async def handler(connection: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            await script(connection)
            await connection.wait_closed()

    async with serve(handler, "127.0.0.1", 0, ping_interval=None) as server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


def greeting(*after: str | bytes) -> Callable[[ServerConnection], Coroutine[Any, Any, None]]:
    """Open, accept the namespace connect, then send ``after``."""

    async def script(connection: ServerConnection) -> None:
        await connection.send(OPEN)
        await connection.recv()  # our connect
        await connection.send('40{"sid":"x"}')
        for frame in after:
            await connection.send(frame)

    return script


GARBAGE: list[tuple[tuple[str | bytes, ...], str]] = [
    (("9",), "not an Engine.IO packet"),
    (("",), "not an Engine.IO packet"),
    (("4",), "event is a JSON array"),
    (("4x",), "undecodable Socket.IO packet"),
    (('42{"not":"a list"}',), "event is a JSON array"),
    (("42[1,2]",), "event is a JSON array"),
    (('42["e",',), "undecodable Socket.IO packet"),
    (("43[1]",), "ack is a JSON array with an ack id"),
    (('42/other,["e"]',), "namespace '/other'"),
    (("40",), "connect packet after the namespace was joined"),
    (("0{}",), "unexpected Engine.IO open packet"),
    (("5",), "unexpected Engine.IO upgrade packet"),
    ((b"\x00",), "binary frame with no binary packet"),
    (('451-["e",{"_placeholder":true,"num":0}]', "42[\"e\"]"), "text frame while 1 binary"),
    (('4599-["e"]',), "99 binary attachments"),
    (('421-["e"]',), "binary attachments on a packet that carries none"),
    (("4" + "[" * 5000 + "]" * 5000,), "undecodable"),
    (("42" + "[" * 5000 + "]" * 5000,), "undecodable Socket.IO packet"),
    (("4[1]",), "carrying no Socket.IO packet"),
]


@pytest.mark.realsocket
@pytest.mark.parametrize(("frames", "complaint"), GARBAGE,
                         ids=[repr(g[0])[:30] for g in GARBAGE])
def test_garbage_from_the_server_is_a_remote_protocol_error_naming_it(
        frames: tuple[str | bytes, ...], complaint: str) -> None:
    async def main() -> None:
        async with fake_server(greeting(*frames)) as url:
            transport = await SocketIODialer(url, open_timeout=2).dial({})
            try:
                with pytest.raises(RemoteProtocolError) as error:
                    async with asyncio.timeout(5):
                        while True:
                            await transport.receive()
                assert complaint in str(error.value), str(error.value)
                assert "broke the protocol" in str(error.value)
                assert classify(error.value).retry  # a new connection may meet a sane server
                assert transport.closed
            finally:
                transport.abort()

    run(main)


HANDSHAKE_GARBAGE: list[tuple[list[str | bytes], type[TransportError], str]] = [
    ([b"\x00"], RemoteProtocolError, "binary frame instead of the Engine.IO open"),
    (['0{"sid":1}'], RemoteProtocolError, "lacks a valid sid"),
    (['0{"sid":"s","pingInterval":0,"pingTimeout":1}'], RemoteProtocolError, "pingInterval"),
    (["40"], RemoteProtocolError, "expected the Engine.IO open packet"),
    ([OPEN, '42["early"]'], RemoteProtocolError, "expected the Socket.IO connect answer"),
    ([OPEN, '40/elsewhere,{}'], RemoteProtocolError, "before the connect answer"),
    ([OPEN, '44{"message":"not authorized"}'], Refused, "not authorized"),
]


@pytest.mark.realsocket
@pytest.mark.parametrize(("frames", "kind", "complaint"), HANDSHAKE_GARBAGE,
                         ids=[repr(g[0])[:30] for g in HANDSHAKE_GARBAGE])
def test_a_bad_handshake_fails_the_dial_with_a_clear_error(
        frames: list[str | bytes], kind: type[TransportError], complaint: str) -> None:
    async def script(connection: ServerConnection) -> None:
        for i, frame in enumerate(frames):
            await connection.send(frame)
            if i == 0 and frame == OPEN:
                await connection.recv()

    async def main() -> None:
        async with fake_server(script) as url:
            with pytest.raises(kind) as error:
                await SocketIODialer(url, open_timeout=2).dial({})
            assert complaint in str(error.value), str(error.value)

    run(main)


@pytest.mark.realsocket
def test_a_silent_handshake_times_out() -> None:
    async def script(connection: ServerConnection) -> None:
        await connection.wait_closed()

    async def main() -> None:
        async with fake_server(script) as url:
            started = time.monotonic()
            with pytest.raises(TransportError, match="timed out"):
                await SocketIODialer(url, open_timeout=0.3).dial({})
            assert time.monotonic() - started >= 0.29

    run(main)


@pytest.mark.realsocket
def test_engineio_pings_are_answered_and_answer_a_probe_that_is_out() -> None:
    pongs: list[str | bytes] = []

    async def script(connection: ServerConnection) -> None:
        await greeting()(connection)
        await asyncio.sleep(0.2)
        await connection.send("2")
        pongs.append(await connection.recv())

    async def main() -> None:
        async with fake_server(script) as url:
            transport = await SocketIODialer(url, open_timeout=2).dial({})
            try:
                # websockets answers our RFC 6455 ping too, so take the server's first:
                probe = await transport.ping()
                rtt = await asyncio.wait_for(probe, 5)
                assert rtt >= 0
                async with asyncio.timeout(5):
                    while not pongs:
                        await asyncio.sleep(0.01)
                assert pongs == ["3"]
            finally:
                transport.abort()

    run(main)


@pytest.mark.realsocket
def test_an_engineio_close_or_namespace_disconnect_ends_the_transport_as_closed() -> None:
    async def main() -> None:
        for frames, complaint in ((("1",), "closed the Engine.IO session"),
                                  (("41",), "disconnected us from namespace '/'")):
            async with fake_server(greeting(*frames)) as url:
                transport = await SocketIODialer(url, open_timeout=2).dial({})
                try:
                    with pytest.raises(Closed, match=complaint):
                        await asyncio.wait_for(transport.receive(), 5)
                finally:
                    transport.abort()

    run(main)


@pytest.mark.realsocket
def test_after_garbage_the_link_recovers_on_a_sane_connection() -> None:
    """The first connection gets garbage; the link goes stale with the reason, reconnects
    and the next connection works."""
    connections: list[int] = []

    async def script(connection: ServerConnection) -> None:
        connections.append(1)
        if len(connections) == 1:
            await greeting('42{"bad"')(connection)
            return
        await greeting('42["hello",1]')(connection)

    async def main() -> None:
        async with fake_server(script) as url:
            changes: list[StateChange] = []
            link = connect(url, heartbeat=HB, backoff=FAST)
            link.on_state_change(changes.append)
            await link.start()
            assert await asyncio.wait_for(link.receive(), 5) == {"event": "hello", "args": [1]}
            stale = [c for c in changes if c.new == State.STALE]
            assert len(stale) == 1 and "broke the protocol" in stale[0].reason
            await link.close()

    run(main)


@pytest.mark.realsocket
def test_several_urls_are_tried_in_turn_and_the_good_one_first_next_time() -> None:
    async def main() -> None:
        async with fake_server(greeting()) as good:
            bad = "http://127.0.0.1:1"
            dialer = SocketIODialer([bad, good], open_timeout=2)
            assert await dialer.candidates() == [bad, good]
            transport = await dialer.dial({})
            transport.abort()
            assert dialer.url == good
            assert await dialer.candidates() == [good, bad]
        # All down: one retryable refusal naming each.
        with pytest.raises(Refused) as refused:
            await dialer.dial({})
        assert bad in str(refused.value) and good in str(refused.value)
        assert classify(refused.value).retry

        calls: list[int] = []

        async def discover() -> list[str]:
            calls.append(1)
            return [bad]

        with pytest.raises(Refused):
            await SocketIODialer(discover).dial({})
        assert calls == [1]

    run(main)


def test_emit_is_a_str_the_link_queues_as_it_is() -> None:
    frame = emit("e", b"\x00", {"k": 1})
    assert type(frame) is Emit
    assert json.loads(frame) == ["e", "<1 bytes>", {"k": 1}]
