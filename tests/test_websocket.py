"""The websockets transport: the shared conformance suite on loopback, and the mapping of
websockets' and the OS's exceptions to tether's vocabulary (``translate``).

The conformance suite runs against :class:`~adapters.websocket.WebSocketDialer` and an
in-process echo server (:class:`tests.servers.LoopbackServer`) that requires the suite's
bearer token, so the dial headers are checked too. Tests that open sockets bind
127.0.0.1 only and are marked ``realsocket``; the pure ``translate()`` tests are not.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import random
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from http import HTTPStatus
from typing import Any, TypeVar

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosedError,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.frames import Close
from websockets.http11 import Request, Response

from adapters.link import Link
from adapters.transport import Dialer, Transport
from adapters.websocket import DEFAULT_MAX_SIZE, _retry_after, translate
from fsm import Backoff, Heartbeat, State, StateChange
from fsm.errors import (
    Broken,
    Closed,
    Refused,
    RemoteProtocolError,
    TimedOut,
    TransportError,
    classify,
)
from tests.conformance import CHECKS, HEADERS, Check, check_transport
from tests.servers import ANSWER, SLAM_CODE, LoopbackServer, RecordingDialer

T = TypeVar("T")
pytestmark = pytest.mark.timeout(30)

TOKEN = HEADERS["Authorization"].removeprefix("Bearer ")
HB = Heartbeat(interval=1.0, timeout=1.0)
FAST = Backoff(initial=0.05, cap=0.5, grace=1.0)

def run(main: Callable[[], Coroutine[Any, Any, T]], timeout: float = 20.0) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await main()

    return asyncio.run(bounded())


async def settled(before: set[asyncio.Task[Any]], within: float = 2.0) -> set[asyncio.Task[Any]]:
    """Tasks not in ``before`` still alive after giving them ``within`` s to end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while extra := {t for t in asyncio.all_tasks() if t not in before and not t.done()}:
        if loop.time() >= deadline:
            return extra
        await asyncio.sleep(0.01)
    return set()


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    async with asyncio.timeout(within):
        while not predicate():
            await asyncio.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def collapse(states: list[str]) -> list[str]:
    """States without the heartbeat's online <-> waiting round trips."""
    out: list[str] = []
    for state in states:
        if state != State.WAITING and (not out or out[-1] != state):
            out.append(state)
    return out


# -- the conformance suite -----------------------------------------------------------------


class WebSocketFixture:
    """The conformance suite's EchoFixture: a WebSocketDialer to a LoopbackServer."""

    def __init__(self, server: LoopbackServer) -> None:
        self.server = server
        self.recording = RecordingDialer(server.url, open_timeout=2.0, close_timeout=1.0)

    @property
    def dialer(self) -> Dialer:
        return self.recording

    async def close_all(self, code: int) -> None:
        await self.server.close_all(code)

    async def stop(self) -> None:
        await self.server.stop()

    async def start(self) -> None:
        await self.server.start()


def conformance(check: Check) -> None:
    async def main() -> None:
        before = set(asyncio.all_tasks())
        async with LoopbackServer("echo", token=TOKEN) as server:
            fixture = WebSocketFixture(server)
            await check(fixture)
            assert fixture.recording.transports, "the check opened no transport"
            assert fixture.recording.open_transports == [], "the suite leaked a transport"
            await until(lambda: not server.connections)  # the server saw each one end
        leftover = await settled(before)
        assert not leftover, f"tasks alive after the check: {leftover}"

    run(main)


@pytest.mark.realsocket
@pytest.mark.parametrize("check", [
    check
    for check in CHECKS
], ids=lambda check: check.__name__)
def test_conformance(check: Check) -> None:
    conformance(check)


@pytest.mark.realsocket
def test_conformance_whole_suite_on_one_fixture() -> None:
    conformance(check_transport)


@pytest.mark.realsocket
def test_conformance_without_the_token_is_refused_with_401() -> None:
    """The fixture's server really checks the suite's headers (so they are sent)."""

    async def main() -> None:
        async with LoopbackServer("echo", token=TOKEN) as server:
            with pytest.raises(Refused) as refused:
                await RecordingDialer(server.url).dial({"Authorization": "Bearer nope"})
            assert refused.value.status == 401

    run(main)


# -- translate(): HTTP statuses at the handshake --------------------------------------------


def invalid_status(code: int, **headers: str) -> InvalidStatus:
    response = Response(code, HTTPStatus(code).phrase, Headers(**headers))
    return InvalidStatus(response)


def http_date(seconds_from_now: float) -> str:
    return email.utils.formatdate(time.time() + seconds_from_now, usegmt=True)


def test_http_401_is_refused_with_its_status_and_is_fatal() -> None:
    error = translate(invalid_status(401))
    assert isinstance(error, Refused)
    assert error.status == 401 and error.retry_after is None
    assert "HTTP 401 Unauthorized" in str(error)
    verdict = classify(error)
    assert not verdict.retry and "401" in verdict.reason


def test_http_503_with_retry_after_seconds_is_retryable_after_the_hint() -> None:
    error = translate(invalid_status(503, **{"Retry-After": "7"}))
    assert isinstance(error, Refused)
    assert error.status == 503 and error.retry_after == 7.0
    verdict = classify(error)
    assert verdict.retry and verdict.retry_after == 7.0


def test_http_429_with_retry_after_http_date() -> None:
    error = translate(invalid_status(429, **{"Retry-After": http_date(30)}))
    assert isinstance(error, Refused) and error.status == 429
    assert error.retry_after == pytest.approx(30, abs=2)
    assert classify(error).retry


def test_http_503_without_retry_after_has_no_hint() -> None:
    error = translate(invalid_status(503))
    assert isinstance(error, Refused) and error.retry_after is None
    assert classify(error).retry


@pytest.mark.parametrize(("value", "expected"), [
    (None, None),
    ("", None),
    ("0", 0.0),
    ("120", 120.0),
    ("  12 ", 12.0),
    ("1.5", None),  # delta-seconds is 1*DIGIT
    ("-3", None),
    ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),  # a date in the past: retry now
])
def test_retry_after_parsing(value: str | None, expected: float | None) -> None:
    assert _retry_after(value) == expected


def test_retry_after_http_date_in_the_future_is_seconds_from_now() -> None:
    parsed = _retry_after(http_date(90))
    assert parsed is not None and parsed == pytest.approx(90, abs=2)


def test_retry_after_with_a_non_ascii_digit_is_ignored_not_raised() -> None:
    assert _retry_after("\u00b2") is None
    error = translate(invalid_status(401, **{"Retry-After": "\u00b2"}))
    assert isinstance(error, Refused) and error.status == 401


# -- translate(): everything else -------------------------------------------------------------


def test_closed_with_a_received_code_is_closed_with_that_code() -> None:
    error = translate(ConnectionClosedError(Close(4000, "bye"), Close(4000, "bye"), True))
    assert isinstance(error, Closed) and error.code == 4000
    assert "4000" in str(error) and "bye" in str(error)
    assert classify(error).retry


def test_closed_with_a_fatal_code_is_not_retried() -> None:
    error = translate(ConnectionClosedError(Close(1008, "token revoked"), None, None))
    assert isinstance(error, Closed) and error.code == 1008
    assert not classify(error).retry


def test_closed_without_any_close_frame_is_broken() -> None:
    error = translate(ConnectionClosedError(None, None, None))
    assert isinstance(error, Broken)
    assert classify(error).retry


def test_closed_by_us_with_1009_is_closed_1009() -> None:
    error = translate(ConnectionClosedError(None, Close(1009, "frame too big"), None))
    assert isinstance(error, Closed) and error.code == 1009


def test_other_errors_map_to_the_vocabulary() -> None:
    refused = translate(ConnectionRefusedError(111, "Connection refused"))
    assert isinstance(refused, Refused) and refused.status is None
    assert classify(refused).retry
    timed_out = translate(TimeoutError())
    assert isinstance(timed_out, TimedOut) and classify(timed_out).retry
    uri = translate(InvalidURI("http://example", "scheme isn't ws or wss"))
    assert isinstance(uri, Refused) and uri.fatal is True
    assert not classify(uri).retry
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed")
    cert.verify_message = "self-signed certificate"
    tls = translate(cert)
    assert isinstance(tls, Refused) and not classify(tls).retry
    assert "self-signed certificate" in str(tls)
    garbled = translate(InvalidMessage("did not receive a valid HTTP response"))
    assert isinstance(garbled, RemoteProtocolError) and classify(garbled).retry
    reset = translate(ConnectionResetError(104, "Connection reset by peer"))
    assert isinstance(reset, Broken) and classify(reset).retry
    odd = translate(RuntimeError("what"))
    assert isinstance(odd, Broken) and "RuntimeError" in str(odd)
    already = Closed("x", code=1001)
    assert translate(already) is already


# -- translate() on real dials ----------------------------------------------------------------


@pytest.mark.realsocket
def test_dial_to_a_refused_port_is_refused_and_retryable() -> None:
    async def main() -> None:
        port = free_port()
        with pytest.raises(Refused) as refused:
            await RecordingDialer(f"ws://127.0.0.1:{port}/", open_timeout=2).dial({})
        assert refused.value.status is None
        assert classify(refused.value).retry

    run(main)


@pytest.mark.realsocket
def test_dial_with_an_invalid_uri_is_fatal() -> None:
    async def main() -> None:
        with pytest.raises(Refused) as refused:
            await RecordingDialer("http://127.0.0.1:1/").dial({})
        assert not classify(refused.value).retry

    run(main)


@contextlib.asynccontextmanager
async def raw_tcp_server(answer: bytes | None) -> AsyncIterator[int]:
    """A TCP server that reads a request head, writes ``answer`` (None: nothing, ever)
    and holds the connection until the client goes. Yields its port."""
    tasks: set[asyncio.Task[Any]] = set()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        try:
            await reader.readuntil(b"\r\n\r\n")
            if answer is not None:
                writer.write(answer)
                await writer.drain()
            await reader.read()  # until the client closes
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.realsocket
def test_dial_to_a_silent_server_times_out() -> None:
    async def main() -> None:
        async with raw_tcp_server(None) as port:
            dialer = RecordingDialer(f"ws://127.0.0.1:{port}/", open_timeout=0.3)
            started = time.monotonic()
            with pytest.raises(TimedOut):
                await dialer.dial({})
            assert time.monotonic() - started >= 0.29
        assert classify(TimedOut("x")).retry

    run(main)


@pytest.mark.realsocket
def test_dial_to_a_server_answering_garbage_is_a_remote_protocol_error() -> None:
    async def main() -> None:
        async with raw_tcp_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as port:
            with pytest.raises(RemoteProtocolError) as error:
                await RecordingDialer(f"ws://127.0.0.1:{port}/", open_timeout=2).dial({})
            assert classify(error.value).retry

    run(main)


Reply = tuple[int, dict[str, str]] | None  # an HTTP refusal, or None: accept


@contextlib.asynccontextmanager
async def scripted_server(replies: list[Reply]) -> AsyncIterator[tuple[str, list[float]]]:
    """An echo server that answers the n-th handshake with ``replies[n]`` (the last one
    repeats): an HTTP status with headers, or None to accept. Yields its URL and the
    loop time of each handshake request."""
    seen: list[float] = []

    def process_request(connection: ServerConnection, request: Request) -> Response | None:
        seen.append(asyncio.get_running_loop().time())
        reply = replies[min(len(seen), len(replies)) - 1]
        if reply is None:
            return None
        status, headers = reply
        response = connection.respond(status, "come back later\n")
        for name, value in headers.items():
            response.headers[name] = value
        return response

    async def echo(connection: ServerConnection) -> None:
        with contextlib.suppress(Exception):
            async for message in connection:
                await connection.send(message)

    async with serve(echo, "127.0.0.1", 0, process_request=process_request,
                     ping_interval=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", seen


@pytest.mark.realsocket
@pytest.mark.parametrize(("status", "retry_after", "expected"), [
    (503, "7", 7.0),
    (429, 60.0, 60.0),  # a float: sent as the HTTP date that many seconds from now
    (401, None, None),
])
def test_dial_refused_with_a_real_http_status(status: int, retry_after: str | float | None,
                                              expected: float | None) -> None:
    async def main() -> None:
        value = http_date(retry_after) if isinstance(retry_after, float) else retry_after
        headers = {"Retry-After": value} if value is not None else {}
        async with scripted_server([(status, headers)]) as (url, _):
            with pytest.raises(Refused) as refused:
                await RecordingDialer(url, open_timeout=2).dial({})
        assert refused.value.status == status
        if expected is None:
            assert refused.value.retry_after is None
            assert not classify(refused.value).retry
        else:
            assert refused.value.retry_after == pytest.approx(expected, abs=3)
            assert classify(refused.value).retry

    run(main)


@pytest.mark.realsocket
def test_link_honours_a_real_retry_after() -> None:
    async def main() -> None:
        async with scripted_server([(503, {"Retry-After": "1"}), None]) as (url, seen):
            dialer = RecordingDialer(url, open_timeout=2, close_timeout=0.5)
            link = Link(dialer, heartbeat=HB, backoff=FAST, handshake_timeout=2,
                        close_timeout=0.5, rng=random.Random(1))
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            assert len(seen) == 2
            # Firm lower bound: the backoff alone would have retried within 0.05 s.
            assert seen[1] - seen[0] >= 1.0 - 0.01, seen
            assert link.statistics()["attempts"] == 2
            await link.close()
            assert dialer.open_transports == []

    run(main)


# -- a server's close codes, and frames over max_size ------------------------------------------


async def closed_by_server(code: int) -> TransportError:
    """Dial an echo server, let it close with ``code``; what does receive() raise?"""
    async with LoopbackServer("echo") as server:
        dialer = RecordingDialer(server.url, open_timeout=2, close_timeout=1)
        transport: Transport = await dialer.dial({})
        try:
            pending = asyncio.ensure_future(transport.receive())
            await asyncio.sleep(0)
            await server.close_all(code, "server says so")
            try:
                await asyncio.wait_for(pending, 5)
            except TransportError as error:
                assert transport.closed
                return error
            raise AssertionError("receive() returned after the server closed")
        finally:
            transport.abort()


@pytest.mark.realsocket
@pytest.mark.parametrize("code", [
    1000,
    1001,
    1008, 1011, 4000,
])
def test_server_close_code_reaches_the_link_as_closed_with_that_code(code: int) -> None:
    error = run(lambda: closed_by_server(code))
    assert isinstance(error, Closed), repr(error)
    assert error.code == code
    assert classify(error).retry == (code != 1008)


@pytest.mark.realsocket
def test_frame_over_max_size_is_closed_1009() -> None:
    async def main() -> TransportError:
        async with LoopbackServer("echo", max_size=None) as server:
            transport = await RecordingDialer(server.url, open_timeout=2).dial({})
            try:
                await transport.send("x" * (DEFAULT_MAX_SIZE + 1))
                with pytest.raises(TransportError) as error:
                    await asyncio.wait_for(transport.receive(), 5)
                return error.value
            finally:
                transport.abort()

    error = run(main)
    assert isinstance(error, Closed), repr(error)
    assert error.code == 1009


@pytest.mark.realsocket
def test_frame_over_max_size_drops_the_connection_and_the_link_recovers() -> None:
    async def main() -> None:
        before = set(asyncio.all_tasks())
        async with LoopbackServer("echo", max_size=None) as server:  # echoes anything
            dialer = RecordingDialer(server.url, open_timeout=2, close_timeout=0.5)
            link = Link(dialer, heartbeat=HB, backoff=FAST, handshake_timeout=2,
                        close_timeout=0.5, rng=random.Random(2))
            changes: list[StateChange] = []
            link.on_state_change(changes.append)
            await link.start()
            await link.wait_for(State.ONLINE, timeout=5)
            await link.send("x" * (DEFAULT_MAX_SIZE + 1))  # comes back too big
            await link.wait_for(State.STALE, timeout=5)
            await link.wait_for(State.ONLINE, timeout=5)
            stale = [c for c in changes if c.new == State.STALE]
            assert len(stale) == 1 and "1009" in stale[0].reason, stale
            await link.send("small")
            assert await asyncio.wait_for(link.receive(), 5) == "small"
            # The big message was written once, not re-sent: no second drop.
            await asyncio.sleep(0.5)
            assert link.statistics()["reconnects"] == 1
            assert len(dialer.transports) == 2
            assert collapse([c.new for c in changes]) == [
                "connecting", "online", "stale", "recovering", "online"]
            assert await link.close() == []
            assert dialer.open_transports == []
        assert not await settled(before)

    run(main)


# -- the test servers themselves ----------------------------------------------------------------


@pytest.mark.realsocket
def test_studio_answers_asks_and_echoes_everything_else() -> None:
    async def main() -> None:
        async with LoopbackServer("studio") as server:
            transport = await RecordingDialer(server.url).dial({})
            try:
                await transport.send(json.dumps({"type": "ask", "id": "q7"}))
                assert json.loads(await asyncio.wait_for(transport.receive(), 5)) == {
                    "reply_to": "q7", "text": ANSWER}
                for frame in ('{"type": "chat"}', "plain", b"\x00\xff"):
                    await transport.send(frame)
                    assert await asyncio.wait_for(transport.receive(), 5) == frame
                await transport.close()
            finally:
                transport.abort()

    run(main)


@pytest.mark.realsocket
def test_slam_accepts_then_closes_at_once() -> None:
    async def main() -> None:
        async with LoopbackServer("slam") as server:
            transport = await RecordingDialer(server.url).dial({})
            try:
                with pytest.raises(Closed) as closed:
                    await asyncio.wait_for(transport.receive(), 5)
                assert closed.value.code == SLAM_CODE
            finally:
                transport.abort()

    run(main)
