"""One suite every transport passes, in the manner of trio's ``check_two_way_stream``.

An adapter's tests provide an :class:`EchoFixture` (a dialer to a server that echoes
every frame, and three server controls) and run :func:`check_transport`, or each
function of :data:`CHECKS` on its own fixture to see failures one by one::

    @pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
    def test_conformance(check):
        run(lambda: check(make_fixture()))

Nothing here assumes an in-memory peer: frames arrive when they arrive (every wait is
bounded by :data:`TIMEOUT`), and the server may run handler tasks in the same event loop
(the task check waits for them to end). Every check releases what it opened.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from adapters.transport import Closed, Dialer, Frame, Refused, Transport, TransportError

__all__ = ["CHECKS", "TIMEOUT", "EchoFixture", "check_transport"]

TIMEOUT = 5.0  # seconds for any one wait: generous for loopback, instant on a virtual clock
HEADERS = {"Authorization": "Bearer conformance", "X-Tether-Test": "1"}


class EchoFixture(Protocol):
    """A server that echoes every frame back, and how to steer it."""

    @property
    def dialer(self) -> Dialer:
        """Dials the echo server."""
        ...

    async def close_all(self, code: int) -> None:
        """The server closes every open connection politely with ``code``."""

    async def stop(self) -> None:
        """The server stops accepting: dials raise ``Refused`` until :meth:`start`."""

    async def start(self) -> None:
        """The server accepts dials again."""


@contextlib.asynccontextmanager
async def _dialed(fixture: EchoFixture) -> AsyncIterator[Transport]:
    """A transport that is aborted on the way out, whatever the check did to it."""
    async with asyncio.timeout(TIMEOUT):
        transport = await fixture.dialer.dial(HEADERS)
    assert isinstance(transport, Transport), f"{transport!r} lacks Transport's methods"
    try:
        yield transport
    finally:
        transport.abort()


async def _raises_transport_error(what: str, step: Awaitable[object]) -> TransportError:
    try:
        async with asyncio.timeout(TIMEOUT):
            await step
    except TransportError as error:
        return error
    raise AssertionError(f"{what} did not raise a TransportError")


def _closed(transport: Transport) -> bool:
    return transport.closed  # through a call, so mypy does not narrow the property


def _frames(count: int) -> list[Frame]:
    """Text and binary frames of many sizes, empty and non-ASCII ones included."""
    frames: list[Frame] = ["", b"", "héllo ✓ 🧵", bytes(range(256)), "x" * 65536]
    for i in range(count - len(frames)):
        frames.append(f'{{"seq": {i}}}' if i % 2 else i.to_bytes(4, "big") * (i % 7))
    return frames


async def check_echo(fixture: EchoFixture) -> None:
    """Frames come back in order, each as the type it was sent (text stays ``str``)."""
    frames = _frames(200)
    async with _dialed(fixture) as transport:

        async def send_all() -> None:
            for frame in frames:
                await transport.send(frame)

        async def receive_all() -> list[Frame]:
            return [await transport.receive() for _ in frames]

        # Send while receiving (one receiver): a real peer's flow control may wait for us.
        async with asyncio.timeout(TIMEOUT):
            _, echoed = await asyncio.gather(send_all(), receive_all())
        assert echoed == frames
        assert [type(f) for f in echoed] == [type(f) for f in frames]
        await transport.close()


async def check_ping(fixture: EchoFixture) -> None:
    """``ping()`` returns an awaitable that resolves to a round trip time >= 0."""
    async with _dialed(fixture) as transport:
        async with asyncio.timeout(TIMEOUT):
            first = await transport.ping()
            second = await transport.ping()
            rtts = [await first, await second]
        assert all(rtt >= 0.0 for rtt in rtts), rtts
        await transport.close()


async def check_receive_nowait(fixture: EchoFixture) -> None:
    """``receive_nowait()`` returns a buffered frame, and ``None`` when nothing is."""
    async with _dialed(fixture) as transport:
        assert transport.receive_nowait() is None
        await transport.send("buffered")
        async with asyncio.timeout(TIMEOUT):
            while (frame := transport.receive_nowait()) is None:
                await asyncio.sleep(0.001)
        assert frame == "buffered"
        assert transport.receive_nowait() is None
        await transport.close()


async def check_receive_mixed(fixture: EchoFixture) -> None:
    """``receive()`` and ``receive_nowait()`` take from one buffer, in order: a frame taken
    by one is never returned by the other, and none is skipped. The driver relies on it:
    at a deadline it drains what is buffered with ``receive_nowait()`` while its reader
    may be waiting in ``receive()`` (a transport that takes several loop turns to surface
    a frame must not hand it over twice, nor lose the one taken meanwhile)."""
    frames: list[Frame] = [f"mixed {i}" for i in range(12)]
    async with _dialed(fixture) as transport:
        pending = asyncio.ensure_future(transport.receive())
        got: list[Frame] = []
        async with asyncio.timeout(TIMEOUT):
            for frame in frames:
                await transport.send(frame)
            while len(got) + pending.done() < len(frames):
                frame_now = transport.receive_nowait()
                if frame_now is None:
                    await asyncio.sleep(0.001)
                else:
                    got.append(frame_now)
                    await asyncio.sleep(0)  # let receive() compete for the next one
        if pending.done():
            got.append(await pending)
        else:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await pending
        # Each frame exactly once, whichever of the two took it; receive_nowait() alone
        # keeps the order of what it took.
        assert sorted(got, key=frames.index) == frames, f"got {got}"
        taken_nowait = got[:-1] if len(got) == len(frames) and pending.done() and \
            not pending.cancelled() else got
        assert taken_nowait == sorted(taken_nowait, key=frames.index), f"out of order: {got}"
        assert transport.receive_nowait() is None
        await transport.close()


async def check_close(fixture: EchoFixture) -> None:
    """After ``close()``: ``closed`` is true, send and receive raise, close again is a no-op."""
    async with _dialed(fixture) as transport:
        assert not _closed(transport)
        async with asyncio.timeout(TIMEOUT):
            await transport.close()
        assert _closed(transport)
        await _raises_transport_error("send() after close()", transport.send("late"))
        await _raises_transport_error("receive() after close()", transport.receive())
        async with asyncio.timeout(TIMEOUT):
            await transport.close()
        transport.abort()


async def check_abort(fixture: EchoFixture) -> None:
    """``abort()`` is immediate (no await), idempotent, never raises; then all else raises."""
    async with _dialed(fixture) as transport:
        await transport.send("in flight")
        transport.abort()
        assert transport.closed, "closed must be true as soon as abort() returns"
        transport.abort()
        await _raises_transport_error("send() after abort()", transport.send("late"))
        await _raises_transport_error("receive() after abort()", transport.receive())
        await _raises_transport_error("ping() after abort()", transport.ping())
        async with asyncio.timeout(TIMEOUT):
            await transport.close()  # closing an aborted transport is harmless
        transport.abort()


async def check_server_close(fixture: EchoFixture) -> None:
    """A server's polite close makes a pending ``receive()`` raise ``Closed`` with its code."""
    async with _dialed(fixture) as transport:
        pending = asyncio.ensure_future(transport.receive())
        await asyncio.sleep(0)  # let receive() start waiting
        await fixture.close_all(1001)
        error = await _raises_transport_error("receive() after the server closed", pending)
        assert isinstance(error, Closed), f"expected Closed, got {error!r}"
        assert error.code == 1001, f"expected close code 1001, got {error.code}"
        assert transport.closed
        await _raises_transport_error("send() after the server closed", transport.send("x"))


async def check_refused(fixture: EchoFixture) -> None:
    """A dial while the server does not accept raises ``Refused``; after start, it works."""
    await fixture.stop()
    try:
        error = await _raises_transport_error("dial() to a stopped server",
                                              fixture.dialer.dial(HEADERS))
        assert isinstance(error, Refused), f"expected Refused, got {error!r}"
    finally:
        await fixture.start()
    async with _dialed(fixture) as transport:
        await transport.send("back")
        async with asyncio.timeout(TIMEOUT):
            assert await transport.receive() == "back"
        await transport.close()


async def _settled(before: set[asyncio.Task[object]]) -> set[asyncio.Task[object]]:
    """Tasks not in ``before`` still alive after giving them up to TIMEOUT to finish."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while (extra := {t for t in asyncio.all_tasks() if t not in before and not t.done()}):
        if loop.time() >= deadline:
            break
        await asyncio.sleep(0.01)
    return extra


async def check_no_task_survives(fixture: EchoFixture) -> None:
    """No task started for a transport outlives its ``close()`` or ``abort()``."""
    for end in ("close", "abort"):
        before: set[asyncio.Task[object]] = set(asyncio.all_tasks())
        async with _dialed(fixture) as transport:
            await transport.send("hello")
            async with asyncio.timeout(TIMEOUT):
                await transport.receive()
                await (await transport.ping())
            if end == "close":
                async with asyncio.timeout(TIMEOUT):
                    await transport.close()
            else:
                transport.abort()
        leftover = await _settled(before)
        assert not leftover, f"tasks alive after {end}(): {sorted(map(repr, leftover))}"


Check = Callable[[EchoFixture], Awaitable[None]]

CHECKS: tuple[Check, ...] = (
    check_echo,
    check_ping,
    check_receive_nowait,
    check_receive_mixed,
    check_close,
    check_abort,
    check_server_close,
    check_refused,
    check_no_task_survives,
)


async def check_transport(fixture: EchoFixture) -> None:
    """Run every check of :data:`CHECKS` in turn on one fixture."""
    for check in CHECKS:
        await check(fixture)
