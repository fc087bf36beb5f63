"""The reference server for session mode (``models/PROTOCOL.md``), on ``websockets``.

``hub = await serve(handler)`` listens; every client ``msg`` reaches
``handler(session, data)`` once and in order; ``session.send(data)`` or
``hub.send(session_id, data)`` reaches the client once and in order, across dropped
connections, and across hub restarts when the store is durable (:class:`SQLiteStore`).

Theory of operation
-------------------
A connection must open with ``hello``. The hub resumes the named session when the token
matches (compared in constant time against the stored SHA-256), refuses a wrong token
with ``error unauthorized`` without touching the session, and opens a new session
otherwise. It answers ``welcome`` (the store's epoch, its own ``ack``, the ``limits``),
then replays every server message the client has not acknowledged, with its wire number.

Server-to-client messages get their wire number when they are *accepted* (not when they
are written): they are persisted with it at once and kept in the session's
:class:`fsm.outbox.Outbox` (always in flight) until the client acknowledges them, so the
outbox and the store hold the same list. On resume the outbox is rewound and replayed.

Client-to-server messages go through a :class:`fsm.session.Receiver` (duplicates dropped,
gaps refused, acknowledgements owed and batched). Frames of one connection are handled
one at a time, so the handler sees one message of a session at a time.

Delivery guarantee (what the tests in ``tests/test_hub.py`` check)
-------------------------------------------------------------------
A client message counts as delivered when ``handler(session, data)`` *returned* and the
hub *committed*, in one store transaction: ``last_in = seq``, every message the handler
sent while handling it (``session.send``/``hub.send``, to any session, buffered until
then), and every effect it registered with ``session.record(effect)`` (run inside that
transaction: with :class:`SQLiteStore`, ``effect(connection)`` may write the handler's own
tables). Only then does any acknowledgement of ``seq`` leave the hub. Therefore, with a
durable store, across SIGKILL of the hub at any instant:

* what the commit records (sends, recorded effects, ``last_in``) happens **exactly once**:
  killed before the commit, nothing was recorded and nothing acknowledged, so the client
  replays the message and it is handled afresh; killed after it, ``last_in`` covers the
  message and the replay is dropped as a duplicate (acknowledged again, not delivered);
* the handler *call* is **at-least-once** across a kill: a call whose commit never
  happened is made again. Effects outside the transaction (an HTTP call, a print) may
  therefore repeat; make them idempotent or route them through ``record``. Without a
  kill, every call is made exactly once.
* A handler that raises has not delivered: nothing is committed, the connection is
  closed (1011), and the message is handled again after the client resumes. A handler
  that raises on every attempt therefore holds its session up (a poison message, retried
  at the client's backoff pace): catch what the application can settle otherwise.

With :class:`MemoryStore` the same holds while the process lives; a restart changes the
epoch and the protocol's rebuild takes over (at-least-once for what was in flight).

Presence follows the client's heartbeat policy: a session is ``present`` while heard from
within ``interval + timeout``; the hub probes a connected client with ``ping`` after
``interval`` of silence, and declares it ``stale`` (aborting its connection) when the
probe stays unanswered ``timeout`` longer. A timer that fires more than ``grace`` late was
held up by our own loop, so the hub probes afresh instead. A session stale for
``expire_after`` seconds is ``gone``: dropped from the store. Changes are reported to
``on_presence`` callbacks as ``(session_id, old, new)``; a new session appears as
``gone -> present``.

Tokens never reach a log line or a ``repr``: frames are logged decoded (their dataclasses
hide tokens), never as raw text. Log arrows as in websockets: ``>`` sent, ``<`` received,
``=`` state, ``!`` error, on the ``tether.hub`` logger.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import math
import ssl as ssl_module
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType, TracebackType
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed

from adapters.stores import (
    Commit,
    Effect,
    MemoryStore,
    SessionRecord,
    SessionStore,
    SQLiteStore,
    Unauthorized,
)
from adapters.websocket import wire_logger
from fsm import protocol
from fsm.errors import OutboxFull
from fsm.heartbeat import Heartbeat
from fsm.outbox import Envelope, Outbox
from fsm.protocol import DEFAULT_MAX_FRAME, Ack, Hello, Msg, Ping, Pong, ProtocolViolation, Welcome
from fsm.protocol import Error as ErrorFrame
from fsm.session import DEFAULT_ACK_DELAY, DEFAULT_ACK_EVERY, Receiver

__all__ = ["DEFAULT_EXPIRE_AFTER", "Handler", "Hub", "Limits", "Presence", "Session",
           "main", "run_command", "serve"]

logger = logging.getLogger("tether.hub")

#: A session stale for 5 minutes is forgotten (the protocol's default).
DEFAULT_EXPIRE_AFTER = 300.0

Handler = Callable[["Session", Any], Awaitable[None] | None]
PresenceCallback = Callable[[str, "Presence", "Presence"], object]

# Bytes a msg frame adds around its data, numbers at their largest.
_MSG_OVERHEAD = len(protocol.encode(Msg(seq=2**53 - 1, ack=2**53 - 1, data=0))) - 1
# Close codes after an error frame: policy (1008) for refusals, too big (1009), try again
# later (1013) for busy, protocol error (1002) for the rest.
_CLOSE_CODES = {"unauthorized": 1008, "too_big": 1009, "busy": 1013}


class Presence(StrEnum):
    """A session's liveness as the hub sees it."""

    #: Heard from within ``interval + timeout``.
    PRESENT = "present"
    #: Silent longer than that; its connection, if any, was aborted.
    STALE = "stale"
    #: Stale for ``expire_after``: forgotten. Also the "before" of a new session.
    GONE = "gone"


@dataclass(frozen=True, slots=True)
class Limits:
    """What the hub accepts (protocol section 4.9 gives the defaults).

    ``max_frame`` bounds every frame in both directions (``hub.send`` refuses data that
    would not fit); frames up to twice that are read and answered ``error too_big``,
    larger ones are cut off by websockets (close 1009) before they are buffered whole.
    ``max_inflight`` is announced in ``welcome``. ``max_sessions`` and ``hello_rate``
    (hellos per second per remote address) answer ``error busy`` with ``retry_after``.
    ``outbox`` bounds each session's unacknowledged server messages (``OutboxFull``).
    ``hello_timeout``: a connection that sends no ``hello`` within it is refused.
    """

    max_frame: int = DEFAULT_MAX_FRAME
    max_inflight: int = 1000
    max_sessions: int = 10_000
    hello_rate: int = 20
    outbox: int = 1000
    hello_timeout: float = 10.0
    retry_after: float = 1.0

    def __post_init__(self) -> None:
        for name in ("max_frame", "max_inflight", "max_sessions", "hello_rate", "outbox",
                     "hello_timeout", "retry_after"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"Limits.{name} must be > 0, got {value!r}")


class _Busy(ProtocolViolation):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__("busy", message)
        self.retry_after = retry_after


class _HandlerFailed(Exception):
    """The handler (or the commit after it) raised: the message was not delivered."""


@dataclass(slots=True)
class _Delivery:
    """One client message being handled: what its commit will record."""

    session: Session
    seq: int
    sends: list[tuple[Session, str]] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    open: bool = True


_current: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar(
    "tether_hub_delivery", default=None)


class _Connection:
    """One WebSocket: a writer task drains a queue so that sends never block callers."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        address = ws.remote_address
        self.address = str(address[0]) if address else "?"
        self.ack_sent = 0  # highest ack written on this connection (the client's view)
        self.closing = False
        self._queue: deque[str | tuple[int, str]] = deque()
        self._ready = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop())

    def send_frame(self, frame: Welcome | Msg | Ack | Ping | Pong | ErrorFrame) -> None:
        if self.closing:
            return
        if not isinstance(frame, ErrorFrame):
            self.ack_sent = max(self.ack_sent, frame.ack)
        logger.debug("> %s %.200r", self.address, frame)
        self._queue.append(protocol.encode(frame))
        self._ready.set()

    async def _write_loop(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                while not self._queue:
                    self._ready.clear()
                    await self._ready.wait()
                item = self._queue.popleft()
                if isinstance(item, str):
                    await self.ws.send(item)
                else:
                    await self.ws.close(*item)
                    return

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """Write what is queued, then close; abort if that takes longer than ``timeout``."""
        if not self.closing:
            self.closing = True
            self._queue.append((code, reason))
            self._ready.set()
        done, _ = await asyncio.wait({self._writer}, timeout=timeout)
        if not done:
            self.abort()

    async def fail(self, violation: ProtocolViolation) -> None:
        """``error`` with the violation's code, then close."""
        retry_after = violation.retry_after if isinstance(violation, _Busy) else None
        self.send_frame(ErrorFrame(code=violation.code, message=violation.detail,
                                   fatal=bool(violation.fatal), retry_after=retry_after))
        await self.close(_CLOSE_CODES.get(violation.code, 1002), violation.code)

    def abort(self) -> None:
        self.closing = True
        self._writer.cancel()
        self.ws.transport.abort()


class Session:
    """One client session held by the hub: the handler's view of its peer.

    ``send(data)`` queues a message for this client; ``record(effect)`` adds an effect to
    the transaction that will record the delivery being handled. ``repr`` shows no secret
    (the hub never holds the token after the ``welcome``).
    """

    def __init__(self, hub: Hub, record: SessionRecord, last_heard: float,
                 presence: Presence, stale_since: float | None) -> None:
        self.id = record.session_id
        self.created = record.created
        self.delivered = 0
        self._hub = hub
        self._outbox = Outbox(hub.limits.outbox)
        self._receiver = Receiver(last=record.last_in, ack_delay=hub.ack_delay,
                                  ack_every=hub.ack_every)
        self._committed = record.last_in
        self._store_acked = record.acked_out
        self._conn: _Connection | None = None
        self._lock = asyncio.Lock()
        self._delivering = False
        self._last_heard = last_heard
        self._flushed = last_heard  # last_heard as last written to the store
        self._probe_base: float | None = None
        self._presence = presence
        self._stale_since = stale_since
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._ack_timer: asyncio.TimerHandle | None = None

    def __repr__(self) -> str:
        return (f"Session({self.id!r}, presence={self._presence.value!r}, "
                f"connected={self.connected}, last_in={self._committed}, "
                f"unacked={self._outbox.inflight})")

    @property
    def presence(self) -> Presence:
        return self._presence

    @property
    def connected(self) -> bool:
        return self._conn is not None

    @property
    def last_in(self) -> int:
        """Highest client ``seq`` whose delivery is committed."""
        return self._committed

    @property
    def unacked(self) -> int:
        """Server messages the client has not acknowledged yet."""
        return self._outbox.inflight

    @property
    def duplicates(self) -> int:
        """Replayed client messages dropped by ``seq`` (on this hub's watch)."""
        return self._receiver.duplicates

    def send(self, data: Any) -> None:
        """Queue ``data`` (any JSON value) for this client; see :meth:`Hub.send`."""
        self._hub.send(self.id, data)

    def record(self, effect: Effect) -> None:
        """Run ``effect`` inside the transaction that records the delivery being handled
        (the message whose handler is running in this task). With :class:`SQLiteStore` it
        gets the ``sqlite3.Connection`` (execute; never commit); with :class:`MemoryStore`,
        ``None``. Raises ``RuntimeError`` outside a handler."""
        delivery = _current.get()
        if delivery is None or not delivery.open:
            raise RuntimeError("Session.record() is only valid while a handler runs")
        delivery.effects.append(effect)

    # -- the hub's side ---------------------------------------------------------------------

    def _ack_value(self) -> int:
        """The ack for an outgoing frame: never beyond what is committed."""
        if self._delivering:
            return self._committed  # the message being handled is not delivered yet
        return self._receiver.acknowledged()

    def _transmit(self, envelope: Envelope) -> None:
        assert envelope.wire is not None
        if self._conn is not None:
            self._conn.send_frame(Msg(seq=envelope.wire, ack=self._ack_value(),
                                      data=envelope.payload))

    def _accept(self, wire: int, text: str) -> None:
        """A message is persisted with ``wire``: hold it in flight and transmit it."""
        _, evicted = self._outbox.push(json.loads(text))  # a private copy of the data
        assert not evicted
        (envelope,) = self._outbox.take(track=True)
        assert envelope.wire == wire, (envelope.wire, wire)
        self._transmit(envelope)

    def _next_deadline(self) -> float:
        heartbeat = self._hub.heartbeat
        if self._presence is not Presence.PRESENT:
            assert self._stale_since is not None
            return self._stale_since + self._hub.expire_after
        if self._conn is None:
            return self._last_heard + heartbeat.bound
        if self._probe_base is None:
            return heartbeat.silence_deadline(self._last_heard)
        return heartbeat.probe_deadline(self._probe_base)

    def _schedule(self) -> None:
        """Arm the presence timer for the next deadline. Lazy: a timer that is earlier
        than needed stays; it fires, finds nothing due, and re-arms."""
        deadline = self._next_deadline()
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = asyncio.get_running_loop().call_at(deadline, self._hub._tick, self)

    def _cancel_timers(self) -> None:
        for timer in (self._timer, self._ack_timer):
            if timer is not None:
                timer.cancel()
        self._timer = self._ack_timer = None


class Hub:
    """A running session server; see :func:`serve`. ``async with`` closes it."""

    def __init__(self, handler: Handler, store: SessionStore, *, owns_store: bool,
                 heartbeat: Heartbeat, limits: Limits, expire_after: float,
                 ack_delay: float, ack_every: int) -> None:
        if not expire_after > 0:
            raise ValueError(f"expire_after must be > 0 s, got {expire_after!r}")
        self.store = store
        self.heartbeat = heartbeat
        self.limits = limits
        self.expire_after = expire_after
        self.ack_delay = ack_delay
        self.ack_every = ack_every
        self._handler = handler
        self._owns_store = owns_store
        self._sessions: dict[str, Session] = {}
        self._presence: dict[str, Presence] = {}
        self._callbacks: list[PresenceCallback] = []
        self._hellos: dict[str, deque[float]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self._housekeeper: asyncio.Task[None] | None = None
        self._closed = False
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        port = self.port if self._server is not None else None
        return f"Hub(port={port}, epoch={self.epoch!r}, sessions={len(self._sessions)})"

    # -- public surface -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._server is not None
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def epoch(self) -> str:
        return self.store.epoch

    @property
    def sessions(self) -> Mapping[str, Session]:
        """The sessions the hub holds (read-only, live)."""
        return MappingProxyType(self._sessions)

    @property
    def presence(self) -> Mapping[str, Presence]:
        """Each held session's presence (read-only, live); gone sessions are absent."""
        return MappingProxyType(self._presence)

    def on_presence(self, callback: PresenceCallback) -> Callable[[], None]:
        """Call ``callback(session_id, old, new)`` on every presence change; returns a
        function that unsubscribes it. A callback that raises is logged and kept."""
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def send(self, session_id: str, data: Any) -> None:
        """Queue ``data`` (any JSON value) for the session's client, exactly once, in
        order. Inside a handler, the message is committed with the delivery being
        handled (and goes out after it); elsewhere it is committed now. Raises
        ``LookupError`` for an unknown session, ``TypeError``/``ValueError`` for data
        that is not JSON or would make a frame over ``max_frame``, and
        :class:`fsm.errors.OutboxFull` when the client has ``limits.outbox`` messages
        unacknowledged."""
        session = self._sessions.get(session_id)
        if session is None:
            raise LookupError(f"no session {session_id!r}")
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        size = len(text.encode("utf-8")) + _MSG_OVERHEAD
        if size > self.limits.max_frame:
            raise ValueError(f"a msg frame of {size} bytes exceeds max_frame "
                             f"{self.limits.max_frame}")
        delivery = _current.get()
        queued = sum(1 for target, _ in delivery.sends if target is session) \
            if delivery is not None and delivery.open else 0
        if len(session._outbox) + queued >= self.limits.outbox:
            raise OutboxFull(f"session {session_id} has {len(session._outbox) + queued} "
                             f"messages unacknowledged (limit {self.limits.outbox})")
        if delivery is not None and delivery.open:
            delivery.sends.append((session, text))
            return
        wire = session._outbox.next_wire
        self.store.commit(Commit(now=time.time(), sends=[(session_id, wire, text)]))
        session._accept(wire, text)

    async def close(self) -> None:
        """Stop: no new connections; running handlers are cancelled (their messages are
        not committed, so clients replay them to the next hub). Closes the store only
        if the hub created it."""
        if self._closed:
            return
        self._closed = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
        for session in self._sessions.values():
            session._cancel_timers()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._server.wait_closed()
        if self._housekeeper is not None:
            await asyncio.wait({self._housekeeper})
        if self._owns_store:
            self.store.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- start-up -----------------------------------------------------------------------------

    async def _start(self, host: str, port: int, ssl: ssl_module.SSLContext | None) -> None:
        self._load()
        options: dict[str, Any] = {}
        if ssl is not None:
            options["ssl"] = ssl
        self._server = await ws_serve(
            self._connection, host, port, ping_interval=None, ping_timeout=None,
            max_size=2 * self.limits.max_frame, close_timeout=1.0, compression=None,
            logger=wire_logger, **options)
        self._housekeeper = asyncio.create_task(self._housekeeping())
        logger.info("= hub listening on %s:%d, epoch %s, %d sessions", host, self.port,
                    self.epoch, len(self._sessions))

    def _load(self) -> None:
        """Take over the store's sessions: expire those gone while the hub was down,
        rebuild presence from their wall-clock ``last_seen``, refill their outboxes."""
        wall, now = time.time(), self._loop.time()
        bound = self.heartbeat.bound
        expired = self.store.expire(wall - bound - self.expire_after)
        if expired:
            logger.info("= %d sessions expired while the hub was down", len(expired))
        for record in self.store.sessions():
            silent = max(0.0, wall - record.last_seen)
            if silent < bound:
                presence, stale_since = Presence.PRESENT, None
            else:
                presence, stale_since = Presence.STALE, now - (silent - bound)
            session = Session(self, record, now - silent, presence, stale_since)
            unacked = self.store.unacked(record.session_id)
            session._outbox.restore(record.next_wire, [(o.wire, o.data) for o in unacked])
            self._sessions[session.id] = session
            self._presence[session.id] = presence
            session._schedule()

    # -- connections --------------------------------------------------------------------------

    async def _connection(self, ws: ServerConnection) -> None:
        """websockets' handler: run the connection in a task the hub can cancel."""
        task = asyncio.create_task(self._serve(ws))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _serve(self, ws: ServerConnection) -> None:
        conn = _Connection(ws)
        session: Session | None = None
        try:
            session = await self._handshake(conn)
            await self._read(conn, session)
            await conn.close()
        except ProtocolViolation as violation:
            who = session.id if session is not None else conn.address
            logger.info("! %s: %s", who, violation)
            await conn.fail(violation)
        except ConnectionClosed:
            pass
        except _HandlerFailed:
            await conn.close(1011, "handler failed")
        except Exception:
            logger.exception("! %s: hub error", conn.address)
            await conn.close(1011, "hub error")
        finally:
            if session is not None:
                self._detach(session, conn)
            if not conn.closing:  # cancelled: websockets closes once we return
                conn.abort()

    async def _handshake(self, conn: _Connection) -> Session:
        try:
            async with asyncio.timeout(self.limits.hello_timeout):
                text = await conn.ws.recv()
        except TimeoutError:
            raise ProtocolViolation("handshake", f"no hello within "
                                                 f"{self.limits.hello_timeout} s") from None
        frame = protocol.decode(text, max_frame=self.limits.max_frame)
        if not isinstance(frame, Hello):
            raise ProtocolViolation("handshake", f"expected hello, got "
                                                 f"{type(frame).__name__.lower()}")
        logger.debug("< %s %r", conn.address, frame)  # Hello's repr hides the token
        self._check_rate(conn.address)
        if (frame.session is None) != (frame.token is None):
            raise ProtocolViolation("malformed", "hello needs both 'session' and 'token' to "
                                                 "resume, or neither")
        if frame.session is not None and frame.token is not None:
            session = self._sessions.get(frame.session)
            if session is not None:
                try:
                    record = self.store.resume(frame.session, frame.token, time.time())
                except Unauthorized:
                    logger.warning("! %s: wrong token for session %s: refused", conn.address,
                                   frame.session)
                    raise ProtocolViolation("unauthorized",
                                            "wrong token for this session") from None
                if record is not None:
                    resumed = await self._resume(conn, session, frame)
                    if resumed is not None:
                        return resumed
        return self._open(conn)

    def _check_rate(self, address: str) -> None:
        now = self._loop.time()
        recent = self._hellos.setdefault(address, deque())
        while recent and recent[0] <= now - 1.0:
            recent.popleft()
        if len(recent) >= self.limits.hello_rate:
            raise _Busy(f"more than {self.limits.hello_rate} hellos per second from "
                        f"{address}", self.limits.retry_after)
        recent.append(now)

    def _open(self, conn: _Connection) -> Session:
        if len(self._sessions) >= self.limits.max_sessions:
            raise _Busy(f"the hub holds {len(self._sessions)} sessions, its limit",
                        self.limits.retry_after)
        record, token = self.store.create(time.time())
        now = self._loop.time()
        session = Session(self, record, now, Presence.PRESENT, None)
        self._sessions[session.id] = session
        self._presence[session.id] = Presence.PRESENT
        self._attach(session, conn, now)
        self._notify(session.id, Presence.GONE, Presence.PRESENT)
        conn.send_frame(Welcome(session=session.id, epoch=self.epoch, resumed=False, ack=0,
                                token=token, limits=self._announced()))
        logger.info("= %s: new session %s", conn.address, session.id)
        return session

    async def _resume(self, conn: _Connection, session: Session, hello: Hello) -> Session | None:
        async with session._lock:  # wait for a delivery on an older connection to end
            if self._sessions.get(session.id) is not session:
                return None  # it expired meanwhile: the caller opens a new one
            self._acked(session, hello.ack, persist=True)  # a bad ack changes nothing
            old = session._conn
            if old is not None:
                logger.info("= %s: session %s moves to a new connection", conn.address,
                            session.id)
                self._detach(session, old)
                old.abort()
            self._attach(session, conn, self._loop.time())
            conn.send_frame(Welcome(session=session.id, epoch=self.epoch, resumed=True,
                                    ack=session._receiver.acknowledged(),
                                    limits=self._announced()))
            session._outbox.rewind()
            replay = session._outbox.take(track=True)
            for envelope in replay:
                session._transmit(envelope)
        logger.info("= %s: session %s resumed, %d replayed", conn.address, session.id,
                    len(replay))
        return session

    def _announced(self) -> dict[str, int]:
        return {"max_frame": self.limits.max_frame, "max_inflight": self.limits.max_inflight}

    def _attach(self, session: Session, conn: _Connection, now: float) -> None:
        session._conn = conn
        self._heard(session, now)
        session._schedule()

    def _detach(self, session: Session, conn: _Connection) -> None:
        if session._conn is not conn:
            return
        session._conn = None
        session._probe_base = None
        if session._ack_timer is not None:
            session._ack_timer.cancel()
            session._ack_timer = None
        if self._sessions.get(session.id) is session and not self._closed:
            session._schedule()

    async def _read(self, conn: _Connection, session: Session) -> None:
        while True:
            text = await conn.ws.recv()
            if session._conn is not conn:
                return  # taken over by a newer connection
            frame = protocol.decode(text, max_frame=self.limits.max_frame)
            logger.debug("< %s %.200r", session.id, frame)
            self._heard(session, self._loop.time())
            if isinstance(frame, ErrorFrame):
                logger.info("< %s: client error %s: %s", session.id, frame.code, frame.message)
                return
            if not isinstance(frame, Msg | Ack | Ping | Pong):
                raise ProtocolViolation("handshake", f"unexpected "
                                                     f"{type(frame).__name__.lower()} after "
                                                     f"the handshake")
            self._acked(session, frame.ack, persist=not isinstance(frame, Msg))
            if isinstance(frame, Msg):
                await self._on_msg(conn, session, frame)
            elif isinstance(frame, Ping):
                conn.send_frame(Pong(ack=session._ack_value()))

    def _heard(self, session: Session, now: float) -> None:
        session._last_heard = now
        session._probe_base = None
        if session._presence is Presence.STALE:
            session._stale_since = None
            self._set_presence(session, Presence.PRESENT)
            session._schedule()

    def _acked(self, session: Session, upto: int, *, persist: bool) -> None:
        highest = session._outbox.next_wire - 1
        if upto > highest:
            raise ProtocolViolation("ack", f"client acknowledged {upto}, but the hub sent "
                                           f"only up to {highest}")
        session._outbox.ack(upto)
        if persist and upto > session._store_acked:
            self.store.ack(session.id, upto)
            session._store_acked = upto

    async def _on_msg(self, conn: _Connection, session: Session, msg: Msg) -> None:
        async with session._lock:
            if session._conn is not conn:
                return  # taken over: the client replays it on the new connection
            receiver = session._receiver
            if msg.seq > receiver.last and msg.seq - conn.ack_sent > self.limits.max_inflight:
                raise ProtocolViolation(
                    "overflow", f"msg {msg.seq} while the hub acknowledged {conn.ack_sent}: "
                                f"more than max_inflight {self.limits.max_inflight}")
            if receiver.receive(msg, self._loop.time()):
                await self._deliver(session, msg)
            else:
                logger.debug("= %s: duplicate msg %d dropped", session.id, msg.seq)
                self._acked(session, msg.ack, persist=True)
        self._owe_ack(session)

    async def _deliver(self, session: Session, msg: Msg) -> None:
        delivery = _Delivery(session, msg.seq)
        token = _current.set(delivery)
        session._delivering = True
        committed = False
        try:
            result = self._handler(session, msg.data)
            if inspect.isawaitable(result):
                await result
            delivery.open = False
            self._commit(delivery, acked=msg.ack)
            committed = True
        except Exception as error:
            logger.exception("! %s: handler failed on msg %d; not delivered, the client "
                             "will send it again", session.id, msg.seq)
            raise _HandlerFailed from error
        finally:
            delivery.open = False
            _current.reset(token)
            session._delivering = False
            if not committed:
                session._receiver.last = msg.seq - 1

    def _commit(self, delivery: _Delivery, *, acked: int) -> None:
        """Record the delivery, its sends and effects in one transaction; then (only
        then) hand the sends to their sessions."""
        session = delivery.session
        plan: list[tuple[Session, int, str]] = []
        wires: dict[str, int] = {}
        for target, text in delivery.sends:
            if self._sessions.get(target.id) is not target:
                logger.warning("! %s: send to session %s dropped: it is gone", session.id,
                               target.id)
                continue
            wire = wires.get(target.id, target._outbox.next_wire)
            wires[target.id] = wire + 1
            plan.append((target, wire, text))
        for target_id, count in Counter(target.id for target, _, _ in plan).items():
            target = self._sessions[target_id]
            if len(target._outbox) + count > self.limits.outbox:
                raise OutboxFull(f"session {target_id} cannot take {count} more messages")
        trim = (session.id, acked) if acked > session._store_acked else None
        self.store.commit(Commit(now=time.time(), inbound=(session.id, delivery.seq),
                                 sends=[(t.id, wire, text) for t, wire, text in plan],
                                 acked=trim, effects=delivery.effects))
        session._committed = delivery.seq
        session._delivering = False
        session.delivered += 1
        if trim is not None:
            session._store_acked = acked
        for target, wire, text in plan:
            target._accept(wire, text)

    def _owe_ack(self, session: Session) -> None:
        receiver = session._receiver
        if not receiver.owed or session._conn is None or session._delivering:
            return
        if receiver.ack_due(self._loop.time()):
            self._send_ack(session)
        elif session._ack_timer is None:
            deadline = receiver.ack_deadline()
            assert deadline is not None
            session._ack_timer = self._loop.call_at(deadline, self._send_ack, session)

    def _send_ack(self, session: Session) -> None:
        if session._ack_timer is not None:
            session._ack_timer.cancel()
            session._ack_timer = None
        if session._receiver.owed and session._conn is not None and not session._delivering:
            session._conn.send_frame(Ack(ack=session._receiver.acknowledged()))

    # -- presence -----------------------------------------------------------------------------

    def _tick(self, session: Session) -> None:
        """A session's presence deadline (see the module docstring)."""
        session._timer = None
        if self._closed or self._sessions.get(session.id) is not session:
            return
        heartbeat = self.heartbeat
        now = self._loop.time()
        late = now - session._timer_at > heartbeat.grace
        conn = session._conn
        if session._presence is Presence.PRESENT:
            if conn is not None and session._probe_base is None:
                silence = heartbeat.silence_deadline(session._last_heard)
                if now >= silence:
                    session._probe_base = now if late else silence
                    conn.send_frame(Ping(ack=session._ack_value()))
            elif conn is not None:
                assert session._probe_base is not None
                if now >= heartbeat.probe_deadline(session._probe_base):
                    if late:  # our loop was stalled: the answer may be unread; ask again
                        session._probe_base = now
                        conn.send_frame(Ping(ack=session._ack_value()))
                    else:
                        self._stale(session, now)
                        logger.info("! %s: silent for %.2f s: connection aborted",
                                    session.id, now - session._last_heard)
                        self._detach(session, conn)
                        conn.abort()
            elif now >= session._last_heard + heartbeat.bound:
                self._stale(session, now)
        elif session._stale_since is not None and \
                now >= session._stale_since + self.expire_after:
            self._drop(session)
            return
        session._schedule()

    def _stale(self, session: Session, now: float) -> None:
        session._stale_since = now
        self._set_presence(session, Presence.STALE)

    def _drop(self, session: Session) -> None:
        session._cancel_timers()
        if session._conn is not None:
            session._conn.abort()
            session._conn = None
        del self._sessions[session.id]
        self.store.drop([session.id])
        self._set_presence(session, Presence.GONE)
        logger.info("= session %s expired", session.id)

    def _set_presence(self, session: Session, new: Presence) -> None:
        old, session._presence = session._presence, new
        if new is Presence.GONE:
            self._presence.pop(session.id, None)
        else:
            self._presence[session.id] = new
        self._notify(session.id, old, new)

    def _notify(self, session_id: str, old: Presence, new: Presence) -> None:
        logger.debug("= %s: %s -> %s", session_id, old.value, new.value)
        for callback in list(self._callbacks):
            try:
                callback(session_id, old, new)
            except Exception:
                logger.exception("! presence callback %r raised", callback)

    async def _housekeeping(self) -> None:
        """Now and then: write when each session was last heard (for expiry across
        restarts), and forget hello counts of quiet addresses."""
        period = max(self.heartbeat.interval, min(60.0, self.expire_after / 4))
        while True:
            await asyncio.sleep(period)
            now, wall = self._loop.time(), time.time()
            seen: dict[str, float] = {}
            for session in self._sessions.values():
                if session._last_heard > session._flushed:
                    seen[session.id] = wall - (now - session._last_heard)
                    session._flushed = session._last_heard
            try:
                self.store.touch(seen)
            except Exception:
                logger.exception("! could not record last-seen times")
            for address in [a for a, t in self._hellos.items() if not t or t[-1] <= now - 1]:
                del self._hellos[address]


async def serve(
    handler: Handler,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    store: SessionStore | None = None,
    heartbeat: Heartbeat | None = None,
    limits: Limits | None = None,
    ssl: ssl_module.SSLContext | None = None,
    expire_after: float = DEFAULT_EXPIRE_AFTER,
    ack_delay: float = DEFAULT_ACK_DELAY,
    ack_every: int = DEFAULT_ACK_EVERY,
) -> Hub:
    """Start a hub on ``host:port`` (``port=0`` picks a free one: ``hub.port``).

    ``handler(session, data)`` (sync or async) gets every client message once, in order
    per session. ``store`` defaults to a fresh :class:`MemoryStore` (owned, closed with the
    hub); a store passed in stays open. ``heartbeat`` (default ``Heartbeat()``, 5 s / 5 s)
    drives probes and presence; ``limits`` the bounds (:class:`Limits`).
    """
    hub = Hub(handler, store if store is not None else MemoryStore(),
              owns_store=store is None, heartbeat=heartbeat or Heartbeat(),
              limits=limits or Limits(), expire_after=expire_after, ack_delay=ack_delay,
              ack_every=ack_every)
    try:
        await hub._start(host, port, ssl)
    except BaseException:
        await hub.close()
        raise
    return hub


# -- the command: tether hub ----------------------------------------------------------------


def _echo(session: Session, data: Any) -> None:
    session.send(data)


def _discard(session: Session, data: Any) -> None:
    logger.debug("= %s: message delivered (not echoed)", session.id)


async def _run(args: argparse.Namespace) -> None:
    store = SQLiteStore(args.store) if args.store else MemoryStore()
    try:
        hub = await serve(_echo if args.echo else _discard, args.host, args.port, store=store,
                          expire_after=args.expire_after)
        async with hub:
            sys.stdout.write(f"listening {hub.port}\n")
            sys.stdout.flush()
            await asyncio.Future()  # until interrupted
    finally:
        store.close()


def run_command(args: argparse.Namespace) -> int:
    """``tether hub``: run until interrupted; print ``listening PORT`` (flushed) once
    ready. ``args``: ``host``, ``port``, ``store``, ``echo``, ``expire_after``,
    ``log_level`` (see ``adapters/cli.py``)."""
    logging.basicConfig(level=args.log_level.upper(),
                        format="hub %(name)s %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_run(args))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m adapters.hub ...`` is ``tether hub ...`` (the options live in the CLI)."""
    from adapters.cli import main as cli_main  # noqa: PLC0415 (the CLI imports us lazily)

    return cli_main(["hub", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
