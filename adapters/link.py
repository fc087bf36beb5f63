"""The asyncio driver: a :class:`Link` runs one :class:`fsm.Lifecycle` over real I/O.

The driver translates; the core decides (websockets' ``keepalive()`` is the model). It
reports what happened (a dial finished, a frame arrived, a timer fired) to the core with
``loop.time()`` as ``now``, performs the actions the core returns, and sleeps until
``next_deadline()``. Every call into the core is synchronous and happens on the loop's
thread, so actions are performed in order and no event is ever handled twice at once.

Each transport gets a *generation* number; the tasks that serve it (dial, reader,
writer, probes) carry it, and whatever they report after the core moved on to another
transport is dropped. The core never dials while a transport is still held, and the
driver reports ``TransportReleased`` only after the old transport's tasks are gone, so
there is at most one transport per link and nothing leaks.

A late timer is not evidence against the peer: when the deadline timer fires, the
driver first yields to the loop and reads whatever the transport already buffered, and
only then tells the core the time. An agent runtime that blocked the loop for ten
seconds gets its peer's frames counted before anyone is declared dead.

Plain mode (``session=False``) guarantees, with any WebSocket server: the link's state
never claims ``online`` for a peer silent longer than ``interval + timeout``; it
reconnects forever (or until ``backoff.budget``) with jittered backoff; the rebuild hooks
run on every new connection before queued messages flow; messages sent while the link
is not live wait in the bounded outbox and go out after the rebuild, in order, once
each; messages the transport had not yet written when it died are sent again on the
next connection; on close or failure, everything not written is handed back. Plain mode
never writes a message twice, so the server sees each at most once. What it cannot
promise: a message written into a socket that then died may be lost, because nothing
tells the client whether the server read it. Use ``session=True`` (sequence numbers and
acknowledgements) for exactly-once delivery.

Session mode (``session=True``, ``models/PROTOCOL.md``) adds what plain mode cannot know:
the dial includes a ``hello``/``welcome`` handshake; messages travel as numbered ``msg``
frames and stay in the outbox until the server acknowledges them; unacknowledged ones are
replayed on resume with the same numbers and the server drops duplicates, so delivery is
exactly once and in order while the server's session store survives. Inbound messages
are de-duplicated the same way, and acknowledged on every outgoing frame or in small
batches. A new server epoch means the server lost the session: the rebuild hooks run
once for that epoch, then the held messages go out again (at-least-once for those the
lost server had taken but not acknowledged).

No task dies silently (trio's nurseries, OTP's supervisors): every task the driver
runs (dial, reader, writer, probe, rebuild, custom actions, the deadline) is supervised.
An exception it did not expect ends its transport as broken (``TransportLost``, the
reason names the exception), and the deadline timer is re-armed in a ``finally``: a live
state never goes without an armed deadline, which is exactly the bug tether exists to
fix. If the core itself raises on an event the driver reports, the link cannot be
trusted any more and fails with that reason. User callbacks (``correlate``,
``on_state_change``, ``on_undelivered``) that raise are logged and the link carries on.

Everything is bounded. The outbox, in messages and bytes (``outbox_limit``,
``outbox_bytes``); messages are encoded once, in :meth:`Link.send`, so a payload that
cannot be sent is refused there with a clear error instead of poisoning the queue. The
inbound queue, in messages and bytes (``inbound_limit``, ``inbound_bytes``): in plain mode
the reader stops reading while it is full (the transport and TCP push back on the
server; an application that does not read for longer than ``interval + timeout`` will
see the peer declared silent); in session mode the link acknowledges only what the
application has taken and tells the server its window (``inbound_limit``) in ``hello``,
so the server's unacknowledged messages are real end-to-end backpressure and the reader
never has to stop for the count (a server that sends beyond the window breaks the
protocol: ``overflow``); only ``inbound_bytes`` stops it. The history of handed-back
messages keeps the most recent ``outbox_limit``; ``on_undelivered`` hears of every one.

Frames that cannot be decoded are named, never fatal to a task: plain mode delivers a
frame that is not JSON (or JSON nested deeper than the decoder follows) raw, as the text
or bytes it was; session mode treats any frame it cannot decode as the server breaking
the protocol (the transport is dropped and the session resumed on a new one).

Logging follows websockets' arrows on the ``tether.link`` logger: ``>`` sent, ``<``
received, ``=`` state change, ``!`` error.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import difflib
import json
import logging
import math
import random
import secrets
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

from adapters.transport import Dialer, Frame, Transport
from fsm import (
    AbortTransport,
    Action,
    Backoff,
    CloseTransport,
    Deliver,
    Envelope,
    HandBack,
    Heartbeat,
    Lifecycle,
    NotifyStateChange,
    OpenTransport,
    Outbox,
    Overflow,
    RunRebuild,
    SendPing,
    Spec,
    State,
    StateChange,
    Transmit,
    protocol,
)
from fsm.checks import count, seconds
from fsm.errors import (
    Broken,
    Closed,
    LinkClosedError,
    LinkCorrupt,
    RebuildError,
    Refused,
    RequestTimeout,
    TetherError,
    TransportError,
)
from fsm.events import (
    CloseRequested,
    Connected,
    ConnectFailed,
    Crashed,
    DeadlineReached,
    Event,
    MessageReceived,
    MessagesAcked,
    MessagesWritten,
    PongReceived,
    RebuildFailed,
    Rebuilt,
    SendRequested,
    Started,
    TransportLost,
    TransportReleased,
)
from fsm.lifecycle import DEFAULT_HANDSHAKE_TIMEOUT
from fsm.outbox import DEFAULT_LIMIT, DEFAULT_MAX_BYTES
from fsm.protocol import Ack, Msg, Ping, Pong, ProtocolViolation, Welcome
from fsm.protocol import Error as ErrorFrame
from fsm.session import ClientSession
from fsm.spec import DEFAULT_SPEC

__all__ = ["DEFAULT_INBOUND_BYTES", "DEFAULT_INBOUND_LIMIT", "Headers", "Link", "LinkFailed",
           "RebuildHook", "Undelivered"]

logger = logging.getLogger("tether.link")

RebuildHook: TypeAlias = Callable[["Link"], Awaitable[None]]
Headers: TypeAlias = (
    Mapping[str, str]
    | Callable[[], Mapping[str, str]]
    | Callable[[], Awaitable[Mapping[str, str]]]
)
ActionHandler: TypeAlias = Callable[["Link", Action], Awaitable[Event | None]]
Correlate: TypeAlias = Callable[[Any], str | None]

# Bytes a msg frame adds around its data, numbers at their largest.
_MSG_OVERHEAD = len(protocol.msg_text(2**53 - 1, 2**53 - 1, ""))

#: Inbound messages the link holds for an application that has not read them yet: 1,000
#: messages (as the outbox) or 16 MiB, whichever is reached first.
DEFAULT_INBOUND_LIMIT = 1000
DEFAULT_INBOUND_BYTES = 16 * 2**20

# Set inside the rebuild task: sends made by a rebuild hook go out at once, ahead of the
# outbox, on the transport being rebuilt.
_rebuilding: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "tether_rebuilding", default=None
)


class LinkFailed(TetherError):
    """The link is FAILED: a fatal error or an exhausted retry budget. ``reason`` says why."""

    def __init__(self, reason: str, cause: BaseException | None = None) -> None:
        super().__init__(f"link failed: {reason}")
        self.reason = reason
        self.__cause__ = cause


@dataclass(frozen=True, slots=True)
class Undelivered:
    """A message the link gives back: it was not written to any transport."""

    payload: Any
    reason: str


def _reply_to(message: Any) -> str | None:
    """Default request correlation: a dict response names its request in ``reply_to``."""
    if isinstance(message, dict):
        value = message.get("reply_to")
        return value if isinstance(value, str) else None
    return None


def encode(payload: Any) -> Frame:
    """Plain-mode encoding: ``str`` and ``bytes`` go as they are, anything else as JSON.
    Raises ``TypeError`` for what JSON cannot carry, ``ValueError`` for NaN, infinities,
    nesting deeper than :data:`fsm.protocol.MAX_DEPTH` and text that is not valid Unicode
    (a lone surrogate has no UTF-8 form)."""
    if isinstance(payload, bytes):
        return payload
    text = payload if isinstance(payload, str) else protocol.encode_data(payload)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"text is not valid Unicode: {error.reason} at character "
                         f"{error.start}") from None
    return text


def decode(frame: Frame) -> Any:
    """Plain-mode decoding: JSON text becomes objects; anything else (not JSON, or JSON
    nested deeper than Python's decoder follows) is delivered raw, as it came."""
    if isinstance(frame, str):
        try:
            return json.loads(frame)
        except (ValueError, RecursionError):
            return frame
    return frame


class _Out:
    """A message as the link holds it: the user's ``payload`` (what is handed back if it
    is not delivered) and its ``text``, encoded once, in :meth:`Link.send` (plain mode:
    the frame; session mode: the JSON of the ``msg`` data), with its size in bytes."""

    __slots__ = ("payload", "size", "text")

    def __init__(self, payload: Any, text: Frame) -> None:
        self.payload, self.text = payload, text
        self.size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8"))

    def __repr__(self) -> str:
        return f"_Out({self.payload!r})"


def _size_of(out: Any) -> int:
    size: int = out.size
    return size


def _frame_size(frame: Frame) -> int:
    # Characters, not UTF-8 bytes: close enough for a memory bound, and free.
    return len(frame)


def _check_arguments(dialer: Any, *, session: Any, on_rebuild: Any, close_timeout: Any,
                     correlate: Any) -> None:
    """The checks of :class:`Link`'s arguments that its fields do not make themselves."""
    seconds("close_timeout", close_timeout)
    for what, value in (("correlate", correlate), ("dialer.dial", getattr(dialer, "dial", None))):
        if not callable(value):
            raise TypeError(f"{what} must be callable, got {type(value).__name__}")
    if on_rebuild is not None and not callable(on_rebuild) and not (
            isinstance(on_rebuild, Sequence) and all(callable(h) for h in on_rebuild)):
        raise TypeError(f"on_rebuild must be an async callable or a sequence of them, got "
                        f"{type(on_rebuild).__name__}")
    if not isinstance(session, bool):
        raise TypeError(f"session must be True or False, got {session!r}")


class _Pending:
    """A request waiting for its response."""

    __slots__ = ("future", "out", "seq")

    def __init__(self, out: _Out, future: asyncio.Future[Any], seq: int) -> None:
        self.out, self.future = out, future
        self.seq = seq  # outbox sequence number of its latest copy


class Link:
    """One resilient link to a peer. Build it with :func:`adapters.websocket.connect`."""

    def __init__(
        self,
        dialer: Dialer,
        *,
        heartbeat: Heartbeat | None = None,
        backoff: Backoff | None = None,
        session: bool = False,
        on_rebuild: RebuildHook | Sequence[RebuildHook] | None = None,
        headers: Headers | None = None,
        outbox_limit: int = DEFAULT_LIMIT,
        outbox_bytes: int = DEFAULT_MAX_BYTES,
        overflow: Overflow = Overflow.RAISE,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        close_timeout: float = 2.0,
        inbound_limit: int = DEFAULT_INBOUND_LIMIT,
        inbound_bytes: int = DEFAULT_INBOUND_BYTES,
        spec: Spec = DEFAULT_SPEC,
        on_action: Mapping[type[Action], ActionHandler] | None = None,
        correlate: Correlate = _reply_to,
        rng: random.Random | None = None,
        name: str = "link",
    ) -> None:
        _check_arguments(dialer, session=session, on_rebuild=on_rebuild,
                         close_timeout=close_timeout, correlate=correlate)
        self._inbound_limit = count("inbound_limit", inbound_limit, what="messages")
        self._inbound_bytes = count("inbound_bytes", inbound_bytes, what="bytes")
        self.name = name
        self._session = ClientSession(window=inbound_limit) if session else None
        self._ping_sent_at: float | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._acked = 0  # highest wire number the server acknowledged on this connection
        self._dialer = dialer
        self._headers = headers
        self._hooks: list[RebuildHook] = (
            [] if on_rebuild is None
            else [on_rebuild] if callable(on_rebuild) else list(on_rebuild)
        )
        self._on_action = dict(on_action or {})
        self._correlate = correlate
        self._close_timeout = close_timeout
        self._rng = rng or random.Random(secrets.randbits(64))
        self._core = Lifecycle(
            rand=self._rng.random,
            heartbeat=heartbeat,
            backoff=backoff,
            outbox=Outbox(outbox_limit, overflow, max_bytes=outbox_bytes, size_of=_size_of),
            spec=spec,
            session=session,
            handshake_timeout=handshake_timeout,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._generation = 0
        self._transport: Transport | None = None
        self._tasks: dict[int, set[asyncio.Task[Any]]] = {}
        self._reapers: set[asyncio.Task[None]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._last_now = 0.0
        self._writes: deque[tuple[Frame, int | None]] = deque()
        self._write_ready = asyncio.Event()
        # What the application has not read yet: (payload, session id, seq, size).
        self._inbound: deque[tuple[Any, str | None, int, int]] = deque()
        self._inbound_size = 0
        self._inbound_ready = asyncio.Event()  # set while _inbound holds something
        self._inbound_room = asyncio.Event()  # set while _inbound has room
        self._inbound_room.set()
        self._listeners: list[Callable[[StateChange], object]] = []
        self._waiters: list[tuple[str, asyncio.Future[None]]] = []
        # The most recent hand-backs (on_undelivered hears of every one).
        self._undelivered: deque[Undelivered] = deque(maxlen=outbox_limit)
        self._forgotten = 0  # hand-backs that fell out of that history
        self._undelivered_listeners: list[Callable[[Undelivered], object]] = []
        self._pending: dict[str, _Pending] = {}
        # The inbound frame being reported: its size and, in session mode, its seq.
        self._frame_size = 0
        self._frame_seq = 0
        self._crashing = False  # failing the link after the core raised
        self._broken: str | None = None  # set if even that failed (see _abandon)
        self._wakeup: float | None = None  # the deadline being handled by a timer task
        self._deadline_task: asyncio.Task[None] | None = None  # ... and that task
        self._released = asyncio.Event()
        self._released.set()
        self._ended = asyncio.Event()  # set on entering a final state
        self._settled = asyncio.Event()  # set whenever the outbox empties

    def __repr__(self) -> str:
        return f"Link(name={self.name!r}, state={self.state!r})"

    # -- reading ---------------------------------------------------------------------------

    @property
    def state(self) -> str:
        """The current state: a :class:`fsm.State` member, or a custom state's name."""
        try:
            return State(self._core.state)
        except ValueError:
            return self._core.state

    @property
    def reason(self) -> str:
        """Why the link is in its current state."""
        return self._core.reason

    @property
    def session_id(self) -> str | None:
        """Session mode: the id of the session the server gave us (``None`` before the
        first welcome, and always in plain mode). Not secret; the resume token is."""
        return self._session.session_id if self._session is not None else None

    @property
    def lifecycle(self) -> Lifecycle:
        """The core, for inspection (tests, dashboards). Do not feed it events."""
        return self._core

    def statistics(self) -> dict[str, Any]:
        """Reconnects, attempts, time in each state, last round-trip time, outbox depth."""
        stats = dict(self._core.statistics(self._now()))
        stats["undelivered"] = len(self._undelivered) + self._forgotten
        stats["pending_requests"] = len(self._pending)
        stats["outbox_bytes"] = self._core.outbox.bytes
        stats["inbound_depth"] = len(self._inbound)
        stats["inbound_bytes"] = self._inbound_size
        return stats

    def on_state_change(self, callback: Callable[[StateChange], object]) -> Callable[[], None]:
        """Call ``callback(change)`` on every change (``change.old``, ``.new``, ``.reason``).
        Returns a function that unsubscribes. A callback that raises is logged."""
        self._listeners.append(callback)
        return lambda: self._listeners.remove(callback) if callback in self._listeners else None

    def on_undelivered(self, callback: Callable[[Undelivered], object]) -> None:
        """Call ``callback(item)`` for each message handed back (overflow, close, failure).
        A callback that raises is logged."""
        self._undelivered_listeners.append(callback)

    def undelivered(self) -> list[Undelivered]:
        """The messages handed back so far, oldest first (also returned by ``close()``):
        the most recent ``outbox_limit`` of them, which always includes everything the
        close or failure itself handed back. ``on_undelivered`` hears of every one."""
        return list(self._undelivered)

    def held(self) -> list[Any]:
        """The messages the link still holds for sending (queued, or sent and not yet
        settled), oldest first."""
        return [envelope.payload.payload for envelope in self._core.outbox.peek()]

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start dialing. Returns at once; use :meth:`wait_for` to wait for ONLINE."""
        self._loop = asyncio.get_running_loop()
        self._feed(Started())

    async def close(self, *, drain: float | bool = False) -> list[Undelivered]:
        """Close the link and return every message that was not delivered.

        ``drain``: wait up to that many seconds (``True``: ``close_timeout``) for queued
        messages to be written before closing. Safe to call twice.
        """
        if drain and not self._core.tags.final:
            limit = self._close_timeout if drain is True else float(drain)
            try:
                await asyncio.wait_for(self._drained(), limit)
            except TimeoutError:
                logger.info("%s: close: %d messages not drained in %.1f s", self.name,
                            len(self._core.outbox), limit)
        if not self._core.tags.final:
            self._feed(CloseRequested())
        await self._released.wait()
        if self._reapers:
            await asyncio.gather(*self._reapers, return_exceptions=True)
        self._cancel_timer()
        return list(self._undelivered)

    async def __aenter__(self) -> Link:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def wait_for(self, state: str, timeout: float | None = None) -> None:
        """Wait until the link is in ``state``. Raises :class:`TimeoutError` naming the
        state it is in instead, or :class:`LinkFailed` / :class:`LinkClosedError` if the
        link ends in another final state first."""
        if self._core.state == state:
            return
        if state not in self._core.spec.state_names:
            close = difflib.get_close_matches(str(state), self._core.spec.state_names, 1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"wait_for({state!r}): not a state of spec "
                             f"{self._core.spec.name!r}{hint} (states: "
                             f"{', '.join(self._core.spec.state_names)})")
        self._check_final(state)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (str(state), future)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} did not reach {state} within {timeout} s; it is "
                f"{self.state} ({self.reason})"
            ) from None
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    # -- sending and receiving -------------------------------------------------------------

    def fire(self, event: Event) -> None:
        """Report a user event of a custom spec (``PauseRequested()``, ...) to the core
        and perform what it decides. Raises what the core raises on it: an event the
        spec does not know (``LocalProtocolError``), a send refused by the state."""
        self._submit(event)

    async def send(self, payload: Any) -> None:
        """Queue ``payload`` for delivery; it goes out as soon as the link is live.

        Inside a rebuild hook, the message is written at once on the new connection,
        ahead of everything queued. The payload is encoded here, once: ``str`` and
        ``bytes`` go as they are (plain mode), anything else as JSON. Raises
        ``TypeError``/``ValueError`` for a payload that cannot be sent (not JSON, NaN,
        nested deeper than :data:`fsm.protocol.MAX_DEPTH`, not valid Unicode, bigger than
        the server's ``max_frame`` in session mode), :class:`LinkClosedError` on a closed
        or failed link and :class:`fsm.errors.OutboxFull` when the outbox is full (policy
        ``raise``).
        """
        out = self._encode(payload)
        self._submit(SendRequested(out, urgent=self._in_rebuild()))

    def _encode(self, payload: Any) -> _Out:
        """Encode ``payload`` once; refuse, now and clearly, what could never be sent (a
        queued message that cannot be encoded would block every one behind it, and in
        session mode a replayed one the server refuses would block the session)."""
        if self._session is None:
            try:
                return _Out(payload, encode(payload))
            except (TypeError, ValueError) as error:
                raise type(error)(f"cannot send {type(payload).__name__}: {error}") from None
        try:
            out = _Out(payload, protocol.encode_data(payload))
        except (TypeError, ValueError) as error:
            raise type(error)(f"session mode sends JSON values; this "
                              f"{type(payload).__name__} cannot be sent: {error}") from None
        size = out.size + _MSG_OVERHEAD
        if size > self._session.max_frame:
            raise ValueError(f"message of {size} bytes as a frame exceeds the server's "
                             f"max_frame of {self._session.max_frame} bytes")
        return out

    def _in_rebuild(self) -> bool:
        """True when called from the rebuild task of the current connection: its
        messages go out at once, ahead of the outbox. A hook whose
        connection is already gone is cancelled here, so that its messages are not
        queued as ordinary ones and doubled by the next rebuild."""
        generation = _rebuilding.get()
        if generation is None:
            return False
        if generation != self._generation:
            raise asyncio.CancelledError("the connection this hook rebuilt is gone")
        return True

    async def request(self, payload: dict[str, Any], *, id: str | None = None,
                      timeout: float | None = 30.0) -> Any:
        """Send ``payload`` with an ``id`` and wait for the response carrying that id
        (``reply_to`` by default). The request survives reconnects: it travels like any
        message, and after every rebuild it is sent again unless its copy is still
        waiting in the outbox (a new server never saw the old one's). Raises
        :class:`RequestTimeout` after ``timeout`` seconds (``None`` or ``math.inf``: wait
        as long as the link lives)."""
        if not isinstance(payload, dict):
            raise TypeError(f"request() takes a dict payload (the link adds its 'id'), got "
                            f"{type(payload).__name__}")
        if timeout is not None and timeout != math.inf:
            seconds("request timeout", timeout)
        if self._core.tags.final:
            raise LinkClosedError(f"cannot request: the link is {self.state} ({self.reason})")
        request_id = id if id is not None else secrets.token_hex(8)
        if request_id in self._pending:
            raise ValueError(f"a request with id {request_id!r} is already pending")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        out = self._encode({**payload, "id": request_id})
        pending = _Pending(out, future, self._core.outbox.next_seq)
        self._submit(SendRequested(out, urgent=self._in_rebuild()))  # may raise: then
        # nothing is pending
        self._pending[request_id] = pending
        try:
            return await asyncio.wait_for(asyncio.shield(future),
                                          None if timeout == math.inf else timeout)
        except TimeoutError:
            raise RequestTimeout(
                f"request {request_id!r} got no response in {timeout} s; the link is "
                f"{self.state} ({self.reason}) after {self._core.reconnects} reconnects"
            ) from None
        finally:
            self._pending.pop(request_id, None)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def _messages(self) -> AsyncIterator[Any]:
        while True:
            if self._inbound:
                yield self._take()
                continue
            if self._core.tags.final:
                self._check_final(None)
                return
            ready = asyncio.ensure_future(self._inbound_ready.wait())
            ended = asyncio.ensure_future(self._ended.wait())
            try:
                await asyncio.wait({ready, ended}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                ready.cancel()
                ended.cancel()

    def _take(self) -> Any:
        """The application takes the oldest inbound message: room for the reader, and in
        session mode an acknowledgement (what the application took, nothing more)."""
        payload, session_id, seq, size = self._inbound.popleft()
        self._inbound_size -= size
        if not self._inbound:
            self._inbound_ready.clear()
        if self._inbound_has_room():
            self._inbound_room.set()
        if self._session is not None and session_id == self._session.session_id:
            self._session.take(seq, self._now())
            self._owe_ack()
        return payload

    def _inbound_has_room(self) -> bool:
        """May the reader take another frame? In session mode the server's side of the
        window bounds the count (a msg beyond it is a protocol error), so only bytes
        stop the reader there: a reader that stops also stops hearing pongs."""
        if self._inbound_size >= self._inbound_bytes:
            return False
        return self._session is not None or len(self._inbound) < self._inbound_limit

    async def receive(self) -> Any:
        """The next message from the peer (same as one step of ``async for``)."""
        async for message in self:
            return message
        raise LinkClosedError(f"the link is {self.state} ({self.reason})")

    # -- the engine --------------------------------------------------------------------------

    def _now(self) -> float:
        # asyncio runs a timer up to one clock resolution *before* its deadline; the
        # deadline path reports the deadline itself, so never report less than that.
        now = max((self._loop or asyncio.get_running_loop()).time(), self._last_now)
        self._last_now = now
        return now

    def _submit(self, event: Event) -> None:
        """Report an event the *user* caused (a send): the core may refuse it (a closed
        link, a full outbox), and that refusal is the caller's to hear."""
        try:
            actions = self._core.handle(event, self._now())
        except BaseException:
            self._arm_timer()  # the event was refused, but deadlines may have fired
            raise
        self._perform_all(actions)

    def _feed(self, event: Event, generation: int | None = None, *,
              at_least: float = 0.0) -> None:
        """Report ``event`` to the core and perform its actions. ``generation`` names the
        transport the event came from; events from a transport already dropped are
        stale and ignored. ``at_least``: the time is no earlier than this (a deadline).

        Never raises: the driver's own reports have nobody to hear an exception. If the
        core raises on one, the link is corrupt and fails with that reason; the deadline
        timer is re-armed whatever happens."""
        if generation is not None and generation != self._generation:
            logger.debug("%s: dropped %s from old transport #%d", self.name,
                         type(event).__name__, generation)
            return
        self._last_now = max(self._last_now, at_least)
        try:
            actions = self._core.handle(event, self._now())
        except Exception as error:
            self._corrupt(f"the core raised {error!r} on {type(event).__name__} in state "
                          f"{self._core.state}", error)
            return
        finally:
            self._arm_timer()
        self._perform_all(actions)

    def _perform_all(self, actions: list[Action]) -> None:
        """Perform every action, in order. One that raises (a driver bug) does not stop
        the others (a hidden state announcement would hang every ``wait_for``); the
        transport it concerned counts as broken afterwards."""
        failure: tuple[Action, Exception] | None = None
        try:
            for action in actions:
                try:
                    self._perform(action)
                except Exception as error:
                    logger.exception("! %s: performing %r raised", self.name, action)
                    failure = failure or (action, error)
            if not len(self._core.outbox) or self._core.tags.final:
                self._settled.set()
            if self._core.tags.final:
                self._ended.set()
        finally:
            self._arm_timer()
        if failure is not None:
            failed, cause = failure
            self._feed(TransportLost(Broken(f"performing {type(failed).__name__} raised "
                                            f"{cause!r}")), self._generation)

    def _corrupt(self, reason: str, error: BaseException) -> None:
        """The core raised on an event the driver reported: its state can no longer be
        trusted. Fail the link through the table (``Crashed`` from any active state), or,
        if even that raises, tear everything down by hand so nothing waits forever."""
        logger.error("! %s: %s; the link fails", self.name, reason, exc_info=error)
        if self._crashing:
            return
        self._crashing = True
        try:
            actions = self._core.handle(Crashed(LinkCorrupt(reason)), self._now())
        except Exception:
            logger.critical("! %s: the core cannot even fail; dropping everything",
                            self.name, exc_info=True)
            self._abandon(reason)
            return
        finally:
            self._crashing = False
            self._arm_timer()
        self._perform_all(actions)

    def _abandon(self, reason: str) -> None:
        """Last resort when the core is unusable: drop the transport, wake every waiter
        with the reason, end iteration. The core's state is left as it is."""
        self._cancel_timer()
        if self._transport is not None or self._tasks.get(self._generation):
            self._drop_transport(reason, polite=False)
        failure = LinkFailed(reason)
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(failure)
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(failure)
                pending.future.exception()
        self._broken = reason
        self._ended.set()
        self._settled.set()

    def _perform(self, action: Action) -> None:
        if isinstance(action, OpenTransport):
            self._generation += 1
            self._released.clear()
            self._spawn("the dial", self._dial, self._generation, action.attempt)
        elif isinstance(action, Transmit):
            for envelope in action.envelopes:
                self._write(self._outgoing(envelope), envelope.wire)
        elif isinstance(action, SendPing):
            if self._session is not None:
                self._ping_sent_at = self._now()
                self._write(protocol.encode(Ping(ack=self._session.acknowledged())))
            else:
                self._spawn("the probe", self._probe, self._generation)
        elif isinstance(action, Deliver):
            self._deliver(action.payload)
        elif isinstance(action, RunRebuild):
            self._spawn("the rebuild", self._rebuild, self._generation, action.reason)
        elif isinstance(action, AbortTransport | CloseTransport):
            self._drop_transport(action.reason, polite=isinstance(action, CloseTransport))
        elif isinstance(action, HandBack):
            self._hand_back(action.envelopes, action.reason)
        elif isinstance(action, NotifyStateChange):
            self._announce(action.change)
        elif type(action) in self._on_action:
            self._spawn(f"the handler for {type(action).__name__}", self._custom,
                        self._generation, action)
        else:
            logger.error("! %s: no handler for action %r; pass on_action={%s: ...}",
                         self.name, action, type(action).__name__)

    @property
    def armed_deadline(self) -> float | None:
        """When the driver will next wake the core: its timer's deadline, or the one a
        timer task is handling right now; ``None`` if nothing is armed. In a live state
        this is never ``None`` (the property-test kit checks it after every step)."""
        if self._timer is not None:
            return self._timer_at
        if self._deadline_task is not None and not self._deadline_task.done():
            return self._wakeup
        return None

    def _arm_timer(self) -> None:
        deadline = self._core.next_deadline()
        if self._timer is not None and self._timer_at == deadline:
            return  # most events leave the deadline where it was
        self._cancel_timer()
        if deadline is not None and self._loop is not None:
            self._timer = self._loop.call_at(deadline, self._timer_fired, deadline,
                                             context=contextvars.Context())
            self._timer_at = deadline

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _timer_fired(self, deadline: float) -> None:
        self._timer = None
        self._wakeup = deadline
        self._deadline_task = self._spawn_detached(self._deadline_reached, self._generation,
                                                   deadline)

    async def _deadline_reached(self, generation: int, deadline: float) -> None:
        """Report a deadline. Whatever happens while reading what is buffered, the core
        hears the time and the timer is re-armed (``_feed`` arms it in a ``finally``):
        a live state without an armed deadline is the bug tether exists to fix."""
        try:
            if self._core.transport == "open" and self._transport is not None:
                await self._read_buffered(generation)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._crashed("reading buffered frames at a deadline", generation, error)
        finally:
            self._wakeup = None
            if self._broken is None:
                self._feed(DeadlineReached(), at_least=deadline)

    async def _read_buffered(self, generation: int) -> None:
        """A late timer is not evidence against the peer: let the reader run, then take
        whatever the transport already buffered, before the core sees the time. (Only
        where a transport is open: nothing can be buffered during a backoff.)"""
        for _ in range(3):
            await asyncio.sleep(0)
        transport = self._transport
        while transport is not None and generation == self._generation:
            if not self._inbound_has_room():
                break  # the application is behind: the reader waits for room too
            try:
                frame = transport.receive_nowait()
            except TransportError:
                break  # the reader reports the loss
            if frame is None:
                break
            self._received(frame, generation)

    # -- tasks per transport -----------------------------------------------------------------

    def _task(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Every task and timer of the driver starts from an empty context: whatever the
        code that triggered it carried (the rebuild marker above all) must not leak into
        the tasks of later connections."""
        return asyncio.get_running_loop().create_task(coro, context=contextvars.Context())

    def _spawn(self, what: str, function: Callable[..., Coroutine[Any, Any, None]],
               *args: Any) -> None:
        """Run ``function(*args)`` for the current transport, supervised."""
        generation = self._generation
        task = self._task(self._supervise(what, generation, function, args))
        self._tasks.setdefault(generation, set()).add(task)
        task.add_done_callback(self._task_done)

    def _spawn_detached(self, function: Callable[..., Coroutine[Any, Any, None]],
                        *args: Any) -> asyncio.Task[None]:
        task = self._task(self._supervise(function.__name__, None, function, args))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
        return task

    async def _supervise(self, what: str, generation: int | None,
                         function: Callable[..., Coroutine[Any, Any, None]],
                         args: tuple[Any, ...]) -> None:
        """No task dies silently: an exception the task did not expect is an ordinary
        input to the core (its transport is broken, the reason names the exception).
        The coroutine is made here, so a task cancelled before it ran leaves none
        un-awaited behind."""
        try:
            await function(*args)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            self._crashed(what, generation, error)

    def _crashed(self, what: str, generation: int | None, error: Exception) -> None:
        logger.error("! %s: %s raised %r; the transport counts as broken", self.name, what,
                     error, exc_info=error)
        self._feed(TransportLost(Broken(f"{what} raised {error!r}")),
                   self._generation if generation is None else generation)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        for tasks in self._tasks.values():
            tasks.discard(task)

    async def _dial(self, generation: int, attempt: int) -> None:
        try:
            headers = await self._resolve_headers()
            transport = await self._dialer.dial(headers)
        except TransportError as error:
            logger.info("! %s: dial #%d failed: %s", self.name, attempt, error)
            self._dial_failed(ConnectFailed(error), generation)
            return
        except Exception as error:  # a bug in a headers callable or dialer
            logger.exception("! %s: dial #%d raised", self.name, attempt)
            self._dial_failed(ConnectFailed(Broken(f"dial raised {error!r}")), generation)
            return
        if generation != self._generation:  # aborted while dialing
            transport.abort()
            return
        self._transport = transport  # from here on, an abort releases it
        connected = Connected()
        if self._session is not None:
            try:
                welcome = await self._handshake(transport)
            except TransportError as error:
                logger.info("! %s: session handshake #%d failed: %s", self.name, attempt, error)
                self._transport = None
                transport.abort()
                self._dial_failed(ConnectFailed(error), generation)
                return
            connected = Connected(resumed=welcome.resumed, epoch=welcome.epoch,
                                  acked=welcome.ack, max_inflight=self._session.max_inflight)
            self._acked = welcome.ack if welcome.resumed else 0
        self._spawn("the reader", self._reader, generation, transport)
        self._spawn("the writer", self._writer, generation, transport)
        logger.debug("= %s: transport #%d open", self.name, generation)
        self._feed(connected, generation)

    async def _handshake(self, transport: Transport) -> Welcome:
        """Session mode: ``hello`` out, ``welcome`` (or ``error``) back, before anything."""
        assert self._session is not None
        await transport.send(protocol.encode(self._session.hello()))
        frame = protocol.decode(await transport.receive())
        if isinstance(frame, ErrorFrame):
            if frame.code == "unauthorized":
                self._session.forget()  # our token is no good: a new session next time
            raise Refused(f"server refused the session: {frame.code}: {frame.message}",
                          retry_after=frame.retry_after, fatal=frame.fatal)
        if not isinstance(frame, Welcome):
            raise ProtocolViolation("handshake",
                                    f"expected welcome, got {type(frame).__name__.lower()}")
        self._session.welcomed(frame)  # checks the session is the one we asked for
        if frame.resumed:
            self._check_ack(frame.ack, "welcome acknowledges")
        return frame

    def _check_ack(self, ack: int, what: str = "server acknowledged") -> None:
        """PROTOCOL.md 4.5: an ack beyond what we sent on this session is an error."""
        highest = self._core.outbox.next_wire - 1
        if ack > highest:
            raise ProtocolViolation("ack", f"{what} {ack}, but we sent only up to {highest} "
                                           f"on this session")

    def _dial_failed(self, event: ConnectFailed, generation: int) -> None:
        if generation == self._generation:
            self._released.set()  # nothing was opened, so nothing is held
        self._feed(event, generation)

    async def _resolve_headers(self) -> Mapping[str, str]:
        if self._headers is None:
            return {}
        if callable(self._headers):
            value = self._headers()
            if isinstance(value, Awaitable):
                return await value
            return value
        return self._headers

    async def _reader(self, generation: int, transport: Transport) -> None:
        while True:
            if not self._inbound_has_room():
                # The application is behind: stop reading, so the transport (and TCP
                # below it) pushes back on the peer instead of our memory growing.
                self._inbound_room.clear()
                await self._inbound_room.wait()
                continue
            try:
                frame = await transport.receive()
            except TransportError as error:
                logger.info("! %s: transport #%d lost: %s", self.name, generation, error)
                self._feed(TransportLost(error), generation)
                return
            self._received(frame, generation)

    def _received(self, frame: Frame, generation: int) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("< %s: %r", self.name, frame[:200])
        self._frame_size = _frame_size(frame)
        if self._session is None:
            self._feed(MessageReceived(decode(frame)), generation)
            return
        try:
            self._on_frame(protocol.decode(frame), generation)
        except ProtocolViolation as violation:
            logger.warning("! %s: the server broke the protocol: %s", self.name, violation)
            self._feed(TransportLost(violation), generation)

    def _on_frame(self, frame: protocol.Frame, generation: int) -> None:
        """Session mode: one decoded frame from the server. Every frame is proof of life
        and carries a cumulative ack of our messages."""
        assert self._session is not None
        receiver = self._session.receiver
        if isinstance(frame, ErrorFrame):
            self._feed(TransportLost(Closed(f"server error {frame.code}: {frame.message}",
                                            retry_after=frame.retry_after,
                                            fatal=frame.fatal)), generation)
            return
        if not isinstance(frame, Msg | Ack | Ping | Pong):
            raise ProtocolViolation("handshake", f"unexpected {type(frame).__name__.lower()} "
                                                 f"after the handshake")
        self._check_ack(frame.ack)
        # The frame first: it proves the peer alive, so no deadline may fire before it.
        if isinstance(frame, Msg):
            if frame.seq == receiver.last + 1 and \
                    frame.seq > self._session.taken + self._inbound_limit:
                raise ProtocolViolation(
                    "overflow", f"msg {frame.seq} while the application has taken "
                                f"{self._session.taken}: beyond the window of "
                                f"{self._inbound_limit} we announced in hello")
            if receiver.receive(frame, self._now()):
                self._frame_seq = frame.seq
                self._feed(MessageReceived(frame.data), generation)
            else:
                self._feed(PongReceived(), generation)  # a duplicate still proves life
            self._owe_ack()
        elif isinstance(frame, Ping):
            self._write(protocol.encode(Pong(ack=self._session.acknowledged())))
            self._feed(PongReceived(), generation)
        elif isinstance(frame, Pong) and self._ping_sent_at is not None:
            rtt, self._ping_sent_at = self._now() - self._ping_sent_at, None
            self._feed(PongReceived(rtt=rtt), generation)
        else:
            self._feed(PongReceived(), generation)
        if frame.ack > self._acked:
            self._acked = frame.ack
            self._feed(MessagesAcked(upto=frame.ack), generation)

    def _outgoing(self, envelope: Envelope) -> Frame:
        out: _Out = envelope.payload
        if self._session is None:
            return out.text
        assert envelope.wire is not None and isinstance(out.text, str)
        return protocol.msg_text(envelope.wire, self._session.acknowledged(), out.text)

    def _owe_ack(self) -> None:
        """Acks ride on outgoing frames; with nothing to send, a standalone ``ack`` goes
        out after ``ack_delay`` or ``ack_every`` messages (see :mod:`fsm.session`)."""
        assert self._session is not None
        receiver = self._session.receiver
        if receiver.ack_due(self._now()):
            self._send_ack()
        elif self._ack_timer is None and self._loop is not None:
            deadline = receiver.ack_deadline()
            if deadline is not None:
                self._ack_timer = self._loop.call_at(deadline, self._send_ack,
                                                     context=contextvars.Context())

    def _cancel_ack_timer(self) -> None:
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None

    def _send_ack(self) -> None:
        self._cancel_ack_timer()
        if self._session is not None and self._session.receiver.owed and \
                self._transport is not None:
            self._write(protocol.encode(Ack(ack=self._session.acknowledged())))

    async def _writer(self, generation: int, transport: Transport) -> None:
        while True:
            while not self._writes:
                self._write_ready.clear()
                await self._write_ready.wait()
            frame, seq = self._writes[0]
            try:
                await transport.send(frame)
            except TransportError as error:
                self._feed(TransportLost(error), generation)
                return
            self._writes.popleft()
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("> %s: %r", self.name, frame[:200])
            if seq is not None and self._session is None:  # session mode settles by ack
                self._feed(MessagesWritten(upto=seq), generation)

    def _write(self, frame: Frame, seq: int | None = None) -> None:
        if self._transport is None:
            return  # no connection: control frames are moot, messages stay in the outbox
        self._writes.append((frame, seq))
        self._write_ready.set()

    async def _probe(self, generation: int) -> None:
        transport = self._transport
        if transport is None:
            return
        try:
            pong = await transport.ping()
            rtt = await pong
        except TransportError:
            return  # the reader reports the loss
        self._feed(PongReceived(rtt=rtt), generation)

    async def _rebuild(self, generation: int, reason: str) -> None:
        _rebuilding.set(generation)
        try:
            for hook in self._hooks:
                await hook(self)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception("! %s: rebuild hook %r raised", self.name, hook)
            failure = RebuildError(f"rebuild hook {getattr(hook, '__name__', hook)} raised "
                                   f"{error!r} ({reason})")
            failure.__cause__ = error
            self._feed(RebuildFailed(failure), generation)
            return
        for pending in list(self._pending.values()):
            if not self._core.outbox.holds(pending.seq):
                pending.seq = self._core.outbox.next_seq
                self._feed(SendRequested(pending.out, urgent=True), generation)
        self._feed(Rebuilt(), generation)

    async def _custom(self, generation: int, action: Action) -> None:
        """A user's action handler. If it raises, the supervisor counts the transport as
        broken (the handler's work on it is in an unknown state); an event it returns
        that the spec does not know fails the link, naming the event."""
        event = await self._on_action[type(action)](self, action)
        if event is not None:
            self._feed(event, generation)

    def _drop_transport(self, reason: str, *, polite: bool) -> None:
        generation, transport = self._generation, self._transport
        self._transport = None
        self._writes.clear()
        self._cancel_ack_timer()
        tasks = self._tasks.pop(generation, set())
        for task in tasks:
            # The current task too: if it caused this drop (a writer whose report fired a
            # deadline, a hook that closed the link), it ends at its next await instead of
            # serving a dead transport, and _release, which waits for all of them, ends.
            task.cancel()
        if transport is not None and not polite:
            transport.abort()
        logger.info("! %s: dropping transport #%d: %s", self.name, generation, reason)
        self._spawn_detached(self._release, generation, transport, tasks, polite)

    async def _release(self, generation: int, transport: Transport | None,
                       tasks: set[asyncio.Task[Any]], polite: bool) -> None:
        if transport is not None and polite:
            with contextlib.suppress(TimeoutError, TransportError):
                await asyncio.wait_for(transport.close(), self._close_timeout)
            transport.abort()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if generation == self._generation:
            self._feed(TransportReleased())
            self._released.set()

    # -- delivering to the user ----------------------------------------------------------------

    def _deliver(self, payload: Any) -> None:
        session_id = self._session.session_id if self._session is not None else None
        try:
            request_id = self._correlate(payload)
        except Exception:
            logger.exception("! %s: correlate=%r raised; the message is delivered as an "
                             "ordinary one", self.name, self._correlate)
            request_id = None
        if request_id is not None and request_id in self._pending:
            future = self._pending[request_id].future
            if not future.done():
                future.set_result(payload)
            if self._session is not None:  # taken by the request that waited for it
                self._session.take(self._frame_seq, self._now())
                self._owe_ack()
            return
        self._inbound.append((payload, session_id, self._frame_seq, self._frame_size))
        self._inbound_size += self._frame_size
        self._inbound_ready.set()

    def _hand_back(self, envelopes: tuple[Envelope, ...], reason: str) -> None:
        for envelope in envelopes:
            item = Undelivered(envelope.payload.payload, reason)
            if len(self._undelivered) == self._undelivered.maxlen:
                self._forgotten += 1
                if not self._undelivered_listeners and (
                        self._forgotten in (1, 10, 100) or self._forgotten % 1000 == 0):
                    logger.warning("! %s: %d handed-back messages fell out of "
                                   "undelivered() (it keeps the last %d); register "
                                   "on_undelivered to hear of every one", self.name,
                                   self._forgotten, self._undelivered.maxlen)
            self._undelivered.append(item)
            for callback in self._undelivered_listeners:
                self._call_safely(callback, item)

    def _announce(self, change: StateChange) -> None:
        level = logging.WARNING if change.new in (State.STALE, State.FAILED) else logging.INFO
        logger.log(level, "= %s: %s -> %s: %s", self.name, change.old, change.new,
                   change.reason)
        for callback in list(self._listeners):
            self._call_safely(callback, change)
        for state, future in list(self._waiters):
            if future.done():
                continue
            if state == change.new:
                future.set_result(None)
            elif self._core.tags.final:
                future.set_exception(self._final_error())
        if self._core.tags.final:
            for pending in self._pending.values():
                if not pending.future.done():
                    pending.future.set_exception(self._final_error())
                    pending.future.exception()  # retrieved: the awaiting request re-raises

    def _call_safely(self, callback: Callable[[Any], object], argument: Any) -> None:
        try:
            callback(argument)
        except Exception:
            logger.exception("! %s: callback %r raised; the link carries on", self.name,
                             callback)

    def _final_error(self) -> TetherError:
        if self._core.state == State.FAILED:
            return LinkFailed(self.reason, self._core.last_error)
        return LinkClosedError(f"the link is {self.state} ({self.reason})")

    def _check_final(self, wanted: str | None) -> None:
        if self._core.tags.final and self._core.state != wanted:
            if self._core.state == State.CLOSED and wanted is None:
                return
            raise self._final_error()

    async def _drained(self) -> None:
        while len(self._core.outbox) and not self._core.tags.final:
            self._settled.clear()
            await self._settled.wait()

