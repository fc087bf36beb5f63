"""An in-memory transport with fault injection, for tests on a virtual clock.

:class:`MemoryServer` stands in for the UI server; :class:`MemoryDialer` opens
:class:`MemoryTransport` objects to it (the client side, which implements
:class:`~adapters.transport.Transport` exactly), and each connection's server side is a
:class:`ServerConnection` handed to the server's handler (:func:`echo` by default). Only
asyncio primitives are used (events, futures, ``loop.call_at``): no socket, no wall clock,
and randomness only from the injected ``random.Random``. Under the ``async_solipsism``
loop a test that waits ten minutes runs in microseconds and every run is the same.

Faults, switched on and off at any time; wire faults apply to open and new connections
alike, per direction (``"up"`` client to server, ``"down"`` server to client, ``"both"``):

========================  ==============================================================
``refuse`` / ``accept``   new dials fail with ``Refused`` (TCP refused or an HTTP status)
``slow_handshake(s)``     every dial takes ``s`` more seconds
``freeze`` / ``thaw``     half-open peer (SIGSTOP): nothing is read, answered or sent
``crash`` / ``restart``   process death: connections break, dials refused; ``epoch``
``close_all``             polite close of every connection with a close code
``reset``                 every open connection breaks now (TCP RST)
``drop(rate)``            frames and pings vanish with probability ``rate``
``delay(s, jitter)``      latency, order kept
``blackhole``             nothing is delivered; the connection stays open
``garbage(rate)``         data frames replaced by bytes or text nobody can parse
``clear``                 remove the wire faults
========================  ==============================================================

The client side checks what websockets checks on a real socket: a frame larger than the
dialer's ``max_size`` closes the connection with 1009, a text frame that is not valid
Unicode (a lone surrogate: invalid UTF-8 on a real wire) with 1007.

What it cannot model: there is no TCP below, so no backpressure (buffers are unbounded
and ``send`` never blocks), no partial frames, no keepalive from the kernel. A reset or
an abort reaches the other end at once, even through a delay or a black hole, and a
handshake sees ``delay`` (one round trip) and ``blackhole`` but never ``drop`` or
``garbage``. A frozen server's connections stay open forever; a real one's would
eventually meet a kernel or NAT timeout.
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from adapters.transport import Frame
from fsm.errors import Broken, Closed, Refused, TimedOut, TransportError

__all__ = ["MemoryDialer", "MemoryServer", "MemoryStatistics", "MemoryTransport"]
__all__ += ["ServerConnection", "echo"]

Direction = Literal["up", "down", "both"]
Handler = Callable[["ServerConnection"], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Ping:
    id: int


@dataclass(frozen=True, slots=True)
class _Pong:
    id: int


@dataclass(frozen=True, slots=True)
class _CloseFrame:
    code: int
    reason: str


_Item = str | bytes | _Ping | _Pong | _CloseFrame


@dataclass(frozen=True, slots=True)
class MemoryStatistics:
    """Counters since the server was made. Fault counters include pings and close frames."""

    dials: int
    accepted: int
    refused: int
    open: int
    frames_up: int
    frames_down: int
    dropped: int
    garbled: int
    blackholed: int


@dataclass(slots=True)
class _Faults:
    drop: float = 0.0
    garbage: float = 0.0
    delay: float = 0.0
    jitter: float = 0.0
    blackhole: bool = False


def _garble(frame: Frame, rng: random.Random) -> Frame:
    """A frame of the same type that no JSON (or UTF-8) parser accepts."""
    noise = rng.randbytes(8)
    if isinstance(frame, bytes):
        return b"\xff\xfe" + noise
    return "\x00{" + noise.hex()


class _Wire:
    """One direction of one connection: faults in order (black hole, drop, garbage, delay),
    then delivery. Delayed items wait in a queue behind one timer, so order is kept."""

    def __init__(self, server: MemoryServer, direction: Literal["up", "down"],
                 deliver: Callable[[_Item], None]) -> None:
        self._server, self._direction, self._deliver = server, direction, deliver
        self._pending: deque[tuple[float, _Item]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._last = 0.0

    def transmit(self, item: _Item) -> None:
        server, faults = self._server, self._server._faults[self._direction]
        rng, loop = server._random, asyncio.get_running_loop()
        if isinstance(item, str | bytes):
            server._count[f"frames_{self._direction}"] += 1
        if faults.blackhole:
            server._count["blackholed"] += 1
            return
        if faults.drop and rng.random() < faults.drop:
            server._count["dropped"] += 1
            return
        if isinstance(item, str | bytes) and faults.garbage and rng.random() < faults.garbage:
            server._count["garbled"] += 1
            item = _garble(item, rng)
        now = loop.time()
        at = now + faults.delay + (rng.uniform(0.0, faults.jitter) if faults.jitter else 0.0)
        if not self._pending and at <= now:
            self._deliver(item)
            return
        self._last = max(at, self._last)
        self._pending.append((self._last, item))
        if self._timer is None:
            self._timer = loop.call_at(self._pending[0][0], self._flush)

    def _flush(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        due = max(loop.time(), self._pending[0][0])  # a timer may fire a hair early
        while self._pending and self._pending[0][0] <= due:
            self._deliver(self._pending.popleft()[1])
        if self._pending and self._timer is None:
            self._timer = loop.call_at(self._pending[0][0], self._flush)

    def cut(self) -> None:
        """Forget everything in flight (the connection is gone)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()


class _End:
    """What both sides share: a buffer of received frames and the error that ended it."""

    _out: _Wire

    def __init__(self) -> None:
        self._frames: deque[Frame] = deque()
        self._ready = asyncio.Event()
        self._error: TransportError | None = None

    @property
    def closed(self) -> bool:
        """True once the connection closed or broke, seen from this side."""
        return self._error is not None

    async def receive(self) -> Frame:
        """The next frame; once none is left, raise the error that ended the connection."""
        while not self._frames and self._error is None:
            await self._ready.wait()
        frame = self.receive_nowait()
        if frame is None:
            assert self._error is not None
            raise self._error
        return frame

    def receive_nowait(self) -> Frame | None:
        """A frame already received, or ``None``."""
        if not self._frames:
            return None
        frame = self._frames.popleft()
        if not self._frames and self._error is None:
            self._ready.clear()
        return frame

    def _push(self, frame: Frame) -> None:
        if self._error is None:
            self._frames.append(frame)
            self._ready.set()

    def _fail(self, error: TransportError, *, discard: bool = False) -> None:
        if discard:
            self._frames.clear()
        if self._error is None:
            self._error = error
        self._ready.set()


class ServerConnection(_End):
    """The server side of one connection, as the handler sees it."""

    def __init__(self, server: MemoryServer, headers: dict[str, str]) -> None:
        super().__init__()
        self.headers = headers
        self._server = server
        self._stalled: list[_Item] = []  # arrived while frozen, processed on thaw
        self._peer: MemoryTransport

    async def receive(self) -> Frame:
        await self._server._wait_running()
        return await super().receive()

    async def send(self, frame: Frame) -> None:
        """Send a frame to the client (waits while the server is frozen)."""
        await self._server._wait_running()
        if self._error is not None:
            raise self._error
        self._out.transmit(frame)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close politely: the client's ``receive`` raises ``Closed`` with ``code``."""
        self._close_now(code, reason)

    def abort(self) -> None:
        """Drop the connection: the client sees ``Broken``."""
        self._peer._reset(Broken("connection reset by the memory server"))

    def _close_now(self, code: int, reason: str) -> None:
        if self._error is None:
            self._fail(Closed(f"server closed the connection with code {code}", code=code))
            self._out.transmit(_CloseFrame(code, reason))
            self._server._forget(self)

    def _arrive(self, item: _Item) -> None:
        if self._server._frozen:
            self._stalled.append(item)
        elif self._error is None:
            if isinstance(item, _Ping):
                self._out.transmit(_Pong(item.id))  # answered by the protocol, not the handler
            elif isinstance(item, _CloseFrame):
                error = Closed(f"client closed the connection with code {item.code}",
                               code=item.code)
                self._fail(error)
                self._out.transmit(item)  # the closing handshake's answer
                self._server._forget(self)
            elif isinstance(item, str | bytes):
                self._server.received.append(item)
                self._push(item)

    def _thaw(self) -> None:
        stalled, self._stalled = self._stalled, []
        for item in stalled:
            self._arrive(item)


class MemoryTransport(_End):
    """The client side of one in-memory connection; a :class:`Transport`."""

    def __init__(self, close_timeout: float = 10.0, max_size: int | None = None) -> None:
        super().__init__()
        self._close_timeout = close_timeout
        self._max_size = max_size
        self._peer: ServerConnection
        self._pings: dict[int, tuple[asyncio.Future[float], float]] = {}
        self._next_ping = 0
        self._close_ack: asyncio.Future[None] | None = None
        self.released = False  # close() or abort() was called: counted as no longer open

    async def send(self, frame: Frame) -> None:
        if self._error is not None:
            raise self._error
        if not isinstance(frame, str | bytes):
            raise TypeError(f"a frame is str or bytes, not {type(frame).__name__}")
        self._out.transmit(frame)

    async def ping(self) -> Awaitable[float]:
        if self._error is not None:
            raise self._error
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[float] = loop.create_future()
        waiter.add_done_callback(_consume)
        self._next_ping += 1
        self._pings[self._next_ping] = (waiter, loop.time())
        self._out.transmit(_Ping(self._next_ping))
        return waiter

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Closing handshake, bounded by ``close_timeout``; then the connection is aborted."""
        if self.released:
            return
        if self._error is not None:  # the peer closed or broke it already
            self.abort()
            return
        self._fail(Closed(f"transport closed locally with code {code}", code=code), discard=True)
        self._close_ack = asyncio.get_running_loop().create_future()
        self._out.transmit(_CloseFrame(code, reason))
        try:
            async with asyncio.timeout(self._close_timeout):
                await self._close_ack
        except TimeoutError:
            pass
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the connection at once (the server sees a reset). Never raises."""
        if not self.released:
            self.released = True
            self._fail(Broken("transport aborted"), discard=True)
            self._peer._fail(Broken("connection reset by the client"), discard=True)
            self._cut()

    def _reset(self, error: TransportError) -> None:
        """The connection broke under us: both sides see ``error``."""
        self._fail(error)
        self._peer._fail(error, discard=True)
        self._cut()

    def _cut(self) -> None:
        self._out.cut()
        self._peer._out.cut()
        self._peer._stalled.clear()
        self._peer._server._forget(self._peer)

    def _fail(self, error: TransportError, *, discard: bool = False) -> None:
        super()._fail(error, discard=discard)
        self._fail_pings()

    def _fail_pings(self) -> None:
        pings, self._pings = self._pings, {}
        for waiter, _ in pings.values():
            if not waiter.done():
                assert self._error is not None
                waiter.set_exception(self._error)

    def _arrive(self, item: _Item) -> None:
        if isinstance(item, _Pong):
            waiter, sent = self._pings.pop(item.id, (None, 0.0))
            if waiter is not None and not waiter.done():
                waiter.set_result(asyncio.get_running_loop().time() - sent)
        elif isinstance(item, _CloseFrame):
            if self._close_ack is not None:
                if not self._close_ack.done():
                    self._close_ack.set_result(None)
            elif self._error is None:
                self._fail(Closed(f"server closed the connection with code {item.code}",
                                  code=item.code))
                self._out.transmit(item)  # answer the closing handshake
        elif isinstance(item, str | bytes):
            problem = self._refuse(item)
            if problem is None:
                self._push(item)
            elif self._error is None:  # as websockets: fail the connection with a close
                code, why = problem
                self._fail(Closed(f"closed the connection with code {code} ({why})",
                                  code=code))
                self._out.transmit(_CloseFrame(code, why))

    def _refuse(self, frame: Frame) -> tuple[int, str] | None:
        """What websockets would refuse in an incoming frame: too big (1009), or text
        that is not valid Unicode (1007)."""
        if self._max_size is not None and len(frame) > self._max_size:
            return 1009, f"frame of {len(frame)} characters over max_size {self._max_size}"
        if isinstance(frame, str):
            try:
                frame.encode("utf-8")
            except UnicodeEncodeError:
                return 1007, "invalid UTF-8"
        return None


def _consume(waiter: asyncio.Future[float]) -> None:
    """Mark a ping's failure as retrieved: nobody has to await a ping they gave up on."""
    if not waiter.cancelled():
        waiter.exception()


async def echo(conn: ServerConnection) -> None:
    """A handler that sends every frame it receives back, until the connection ends."""
    while True:
        await conn.send(await conn.receive())


class MemoryServer:
    """An in-memory server: runs ``handler`` once per connection, in its own task."""

    def __init__(self, handler: Handler = echo, *, rng: random.Random | None = None) -> None:
        self._handler = handler
        self._random = rng if rng is not None else random.Random(0)
        self._faults = {"up": _Faults(), "down": _Faults()}
        self._refusal: tuple[int | None, float | None] | None = None
        self._handshake = 0.0
        self._frozen = False
        self._crashed = False
        self._changed = asyncio.Event()
        self._open: list[ServerConnection] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._count = dict.fromkeys(MemoryStatistics.__slots__, 0)
        self.epoch = 0  #: incremented by every crash that loses the server's state
        self.received: list[Frame] = []  #: every frame the server read, in order
        self.errors: list[Exception] = []  #: exceptions the handler raised (bugs)

    @property
    def connections(self) -> list[ServerConnection]:
        """The server-side connections open now."""
        return list(self._open)

    def statistics(self) -> MemoryStatistics:
        return MemoryStatistics(**{**self._count, "open": len(self._open)})

    # -- process and handshake faults -------------------------------------------------
    def refuse(self, status: int | None = None, retry_after: float | None = None) -> None:
        """New dials fail with ``Refused``: TCP refused (``status`` None) or an HTTP status
        at the handshake, with its Retry-After. Open connections stay. Unrealistic: the
        refusal is instant, with none of a real round trip."""
        self._refusal = (status, retry_after)

    def accept(self) -> None:
        """Undo :meth:`refuse`."""
        self._refusal = None

    def slow_handshake(self, seconds: float) -> None:
        """Every dial takes ``seconds`` more (an overloaded server or a slow TLS handshake);
        0 undoes it. Unrealistic: the time is the same for every dial."""
        self._handshake = seconds

    def freeze(self) -> None:
        """Half-open peer, like SIGSTOP: connections stay open, but the server reads
        nothing, answers no ping, sends nothing and completes no handshake. What clients
        send meanwhile is buffered and processed on :meth:`thaw`. Unrealistic: buffers are
        unbounded, and no kernel or NAT timeout ever ends a frozen connection."""
        self._frozen = True

    def thaw(self) -> None:
        """Undo :meth:`freeze`: buffered frames, pings and closes are processed in order."""
        self._frozen = False
        self._notify()
        for conn in list(self._open):
            conn._thaw()

    def crash(self, keep_state: bool = False) -> None:
        """The server process dies: every connection breaks (clients see ``Broken``) and
        dials are refused until :meth:`restart`. ``keep_state=False`` models a restart that
        loses the server's sessions and increments ``epoch``. Unrealistic: every client
        learns of the crash at once, as if each got a RST; a dead host sends none."""
        self._crashed, self._frozen = True, False
        if not keep_state:
            self.epoch += 1
        self.reset()
        self._notify()

    def restart(self) -> None:
        """The crashed server is back and accepts dials."""
        self._crashed = False
        self._notify()

    def close_all(self, code: int = 1001, reason: str = "") -> None:
        """Polite close of every connection (a server going away): after the frames sent
        before it, each client's ``receive`` raises ``Closed`` with ``code``. Unrealistic:
        the server forgets each connection at once instead of awaiting the client's answer."""
        for conn in list(self._open):
            conn._close_now(code, reason)

    def reset(self) -> None:
        """Break every open connection now, like a TCP RST: both sides see ``Broken``.
        Frames in flight are lost; new dials are still accepted. Unrealistic: the RST
        reaches both ends at once, whatever the delay or black hole on the wire."""
        for conn in list(self._open):
            conn._peer._reset(Broken("connection reset"))

    # -- wire faults ------------------------------------------------------------------
    def drop(self, rate: float, direction: Direction = "both") -> None:
        """Drop frames, pings and pongs with probability ``rate``. Unrealistic: TCP never
        loses a frame inside a live stream; this models what is lost on a socket that died
        (or a proxy that lost it) while the connection still looks open."""
        for faults in self._select(direction):
            faults.drop = rate

    def delay(self, seconds: float, jitter: float = 0.0, direction: Direction = "both") -> None:
        """Latency of ``seconds`` plus up to ``jitter`` at random, per frame; order is kept
        (a frame never overtakes an earlier one, as in TCP). Unrealistic: no bandwidth
        limit, so a large frame is as fast as a small one."""
        for faults in self._select(direction):
            faults.delay, faults.jitter = seconds, jitter

    def blackhole(self, direction: Direction = "both") -> None:
        """Deliver nothing (a dead route): frames vanish, the connection stays open and no
        error is seen. Unrealistic: the frames are gone for good even after :meth:`clear`,
        where TCP would retransmit them."""
        for faults in self._select(direction):
            faults.blackhole = True

    def garbage(self, rate: float, direction: Direction = "both") -> None:
        """Replace data frames, with probability ``rate``, by bytes or text of the same
        type that parse neither as JSON nor (bytes) as UTF-8: a buggy or hostile peer.
        Unrealistic: the framing itself stays intact; pings and closes are untouched."""
        for faults in self._select(direction):
            faults.garbage = rate

    def clear(self, direction: Direction = "both") -> None:
        """Remove every wire fault (drop, delay, black hole, garbage)."""
        for faults in self._select(direction):
            faults.drop = faults.garbage = faults.delay = faults.jitter = 0.0
            faults.blackhole = False
        self._notify()

    async def aclose(self) -> None:
        """Reset every connection and wait for the handler tasks to finish."""
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- internals --------------------------------------------------------------------
    def _select(self, direction: Direction) -> list[_Faults]:
        names = ("up", "down") if direction == "both" else (direction,)
        return [self._faults[name] for name in names]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_running(self) -> None:
        while self._frozen:
            await self._changed.wait()

    def _forget(self, conn: ServerConnection) -> None:
        if conn in self._open:
            self._open.remove(conn)

    def _check_refusal(self) -> None:
        if self._crashed:
            self._count["refused"] += 1
            raise Refused("connection refused: the memory server is down")
        if self._refusal is not None:
            status, retry_after = self._refusal
            what = "connection refused" if status is None else f"HTTP {status} at handshake"
            self._count["refused"] += 1
            raise Refused(f"{what} (memory server)", status=status, retry_after=retry_after)

    async def _connect(self, transport: MemoryTransport, headers: dict[str, str]) -> None:
        self._count["dials"] += 1
        self._check_refusal()
        up, down = self._faults["up"], self._faults["down"]
        await asyncio.sleep(self._handshake + up.delay + down.delay)
        while self._frozen or up.blackhole or down.blackhole:
            await self._changed.wait()
        self._check_refusal()  # it may have crashed or started refusing meanwhile
        conn = ServerConnection(self, headers)
        conn._peer, transport._peer = transport, conn
        transport._out = _Wire(self, "up", conn._arrive)
        conn._out = _Wire(self, "down", transport._arrive)
        self._open.append(conn)
        self._count["accepted"] += 1
        task = asyncio.get_running_loop().create_task(self._serve(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, conn: ServerConnection) -> None:
        try:
            await self._handler(conn)
        except TransportError:
            pass
        except Exception as exc:
            self.errors.append(exc)
        conn._close_now(1000, "")  # a handler that returns closes, as in websockets


class MemoryDialer:
    """A :class:`Dialer` to one :class:`MemoryServer` that remembers what it opened."""

    def __init__(self, server: MemoryServer, *, open_timeout: float | None = 10.0,
                 close_timeout: float = 10.0, max_size: int | None = 2**20) -> None:
        self.server = server
        self.open_timeout, self.close_timeout = open_timeout, close_timeout
        self.max_size = max_size  #: as websockets' default: 1 MiB
        self.dials: list[dict[str, str]] = []  #: the headers of every dial, in order
        self.transports: list[MemoryTransport] = []  #: every transport opened

    @property
    def opened(self) -> int:
        """How many transports were opened."""
        return len(self.transports)

    @property
    def open_transports(self) -> int:
        """Transports opened and not yet released by ``close()`` or ``abort()``; a transport
        the server closed still counts, since its owner must release it."""
        return sum(not t.released for t in self.transports)

    async def dial(self, headers: Mapping[str, str]) -> MemoryTransport:
        """Open a transport; ``Refused`` if refused, ``TimedOut`` after ``open_timeout``."""
        self.dials.append(dict(headers))
        transport = MemoryTransport(self.close_timeout, self.max_size)
        try:
            async with asyncio.timeout(self.open_timeout):
                await self.server._connect(transport, dict(headers))
        except TimeoutError:
            raise TimedOut(f"memory handshake took over {self.open_timeout}s") from None
        self.transports.append(transport)
        return transport
