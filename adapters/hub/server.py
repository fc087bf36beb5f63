""":class:`Hub` and :func:`serve`: the driver that runs sessions over websockets.

See :mod:`adapters.hub` for the theory of operation and the guarantees. This module is
the asyncio side: one task per connection reads frames (and answers pings) while a second
delivers the messages read, one at a time per session; one task commits the sends made
outside handlers, in order, in batches; presence deadlines are timers feeding each
session's :class:`fsm.presence.PresenceWatch`.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import json
import logging
import secrets
import ssl as ssl_module
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from types import MappingProxyType, TracebackType
from typing import Any, Self, cast

from websockets.asyncio.server import Server, ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from adapters.hub.guard import (
    CalmLog,
    Guard,
    HandshakeRequest,
    RateLimitedLog,
    Refuse,
    calm_accept_errors,
    connection_cap,
)
from adapters.hub.limits import Limits
from adapters.hub.session import Session
from adapters.hub.wire import Channel, WireConnection
from adapters.stores import (
    Commit,
    CommitRefused,
    Dropped,
    Duplicate,
    Effect,
    EpochChanged,
    Fenced,
    Gap,
    MemoryStore,
    SessionGone,
    SessionRecord,
    SessionStore,
    StoreBusy,
    StoreLost,
    Unauthorized,
    Wire,
)
from adapters.websocket import wire_logger
from fsm import protocol
from fsm.checks import count, seconds
from fsm.errors import OutboxFull
from fsm.heartbeat import Heartbeat
from fsm.presence import (
    AbortConnection,
    Announce,
    Attached,
    DeadlineReached,
    Detached,
    Event,
    Forget,
    Heard,
    Phase,
    Presence,
    PresenceWatch,
    SendPing,
)
from fsm.protocol import MAX_DEPTH, Ack, Hello, Msg, Ping, Pong, ProtocolViolation, Welcome
from fsm.protocol import Error as ErrorFrame
from fsm.serving import Verdict, hello_kind, store_forgot
from fsm.session import DEFAULT_ACK_DELAY, DEFAULT_ACK_EVERY

__all__ = ["DEFAULT_EXPIRE_AFTER", "Authenticate", "Handler", "Hub", "serve"]

logger = logging.getLogger("tether.hub")
#: websockets' own lines for the hub's sockets: the client's filters (no frame contents,
#: no credentials) plus a rate limit (a flood of refused handshakes is one line a while).
hub_wire_logger = logging.getLogger("tether.wire.hub")
for _filter in wire_logger.filters:
    hub_wire_logger.addFilter(_filter)
hub_wire_logger.addFilter(RateLimitedLog())

#: A session stale for 5 minutes is forgotten (the protocol's default).
DEFAULT_EXPIRE_AFTER = 300.0

Handler = Callable[[Session, Any], Awaitable[None] | None]
PresenceCallback = Callable[[str, Presence, Presence], object]
#: ``authenticate(request)``: a principal (a non-empty ``str``), ``None`` for HTTP 401,
#: or raise :class:`Refuse` (401 or 403); sync or async.
Authenticate = Callable[[HandshakeRequest], "str | Awaitable[str | None] | None"]

# Bytes a msg frame adds around its data, numbers at their largest.
_MSG_OVERHEAD = len(protocol.encode(Msg(seq=2**53 - 1, ack=2**53 - 1, data=0))) - 1
# Close codes after an error frame: policy (1008) for refusals, too big (1009), try again
# later (1013) for busy, protocol error (1002) for the rest.
_CLOSE_CODES = {"unauthorized": 1008, "too_big": 1009, "busy": 1013}
# Acknowledgements are written to the store lazily (a lost one only means a replay the
# client drops after a restart): at most this often.
_ACK_PERSIST_DELAY = 0.2


class _Busy(ProtocolViolation):
    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__("busy", message)
        self.retry_after = retry_after


class _HandlerFailed(Exception):
    """The handler (or the commit after it) raised: the message was not delivered."""


class _StoreStayedBusy(Exception):
    """A delivery's commit found the store busy for ``retry_after``: not delivered."""


class _Superseded(Exception):
    """The store refused a delivery's commit: another hub holds the session now, or the
    store lost data or moved to a new epoch. Not delivered; the client reconnects."""


@dataclass(slots=True)
class _Remote:
    """A session another hub holds, as that hub announced it (shared stores)."""

    node: str
    presence: Presence
    since: float


#: A send on its way to the store: its target (a session this hub holds, or the id of
#: one another hub may hold: shared stores only), the JSON text, its size in bytes (room
#: reserved at a held target), and the sender's future (``None`` inside a handler).
_Planned = tuple["Session | str", str, int, "asyncio.Future[None] | None"]


def _target_id(target: Session | str) -> str:
    return target if isinstance(target, str) else target.id


@dataclass(slots=True)
class _Delivery:
    """One client message being handled: what its commit will record."""

    session: Session
    seq: int
    sends: list[_Planned] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    open: bool = True


_current: contextvars.ContextVar[_Delivery | None] = contextvars.ContextVar(
    "tether_hub_delivery", default=None)


class _Sends:
    """Messages with room reserved at their targets, and the futures of their senders.
    Settled exactly once: they *arrive* (the commit that carries them succeeded) or are
    *released* (it failed, or never happened)."""

    def __init__(self, hub: Hub, plan: list[_Planned]) -> None:
        self.hub = hub
        self.plan = plan
        self.settled = False
        self.handed_over = False  # a cancelled caller left settling to the commit

    def arrived(self, wires: list[Wire]) -> None:
        if self.settled:
            return
        self.settled = True
        for (target, text, size, future), wire in zip(self.plan, wires, strict=True):
            if isinstance(wire, int):
                if not isinstance(target, str):
                    target._arrive(wire, text, size)
                    self.hub._update_idle(target)  # it holds a message now
                if future is not None and not future.done():
                    future.set_result(None)
                continue
            if not isinstance(target, str):
                target._unreserve(size)
            error: Exception
            if wire is Dropped.FULL:
                error = OutboxFull(f"session {_target_id(target)}: its outbox in the store "
                                   f"is full ({self.hub.limits.outbox} messages or "
                                   f"{self.hub.limits.outbox_bytes} bytes, sends from every "
                                   f"hub counted): message not accepted")
            else:
                error = LookupError(f"no session {_target_id(target)!r}: it expired or was "
                                    f"lost before the message was committed")
            self.hub._log.warning("! send to session %s dropped: %s", _target_id(target),
                                  error)
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # logged just above

    def release(self, error: BaseException) -> None:
        if self.settled:
            return
        self.settled = True
        for target, _, size, future in self.plan:
            if not isinstance(target, str):
                target._unreserve(size)
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # logged by the hub: no "never retrieved" warning


class Hub:
    """A running session server; see :func:`serve`. ``async with`` closes it."""

    def __init__(self, handler: Handler, store: SessionStore, *, owns_store: bool,
                 heartbeat: Heartbeat, limits: Limits, expire_after: float,
                 ack_delay: float, ack_every: int,
                 authenticate: Authenticate | None) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.limits = limits
        self.expire_after = expire_after
        self.ack_delay = ack_delay
        self.ack_every = ack_every
        self._handler = handler
        self._authenticate = authenticate
        self._owns_store = owns_store
        # A store whose calls never suspend (MemoryStore) is awaited directly; any other
        # commit runs as its own task, shielded, so that its outcome is never lost.
        self._immediate = getattr(store, "immediate", False) is True
        # A store many hubs share (RedisStore): sessions are claimed on resume (fencing),
        # other hubs' sends arrive through the store, presence is heard from the others.
        self._shared = getattr(store, "shared", False) is True
        self._remote: dict[str, _Remote] = {}  # sessions other hubs hold, as announced
        self._unlisten: Callable[[], None] | None = None
        self._log = CalmLog(logger)
        self._sessions: dict[str, Session] = {}
        self._presence: dict[str, Presence] = {}
        self._owners: dict[str, set[str]] = {}
        self._idle: dict[str, Session] = {}  # empty and disconnected, oldest first
        self._creating: Counter[str] = Counter()
        self._callbacks: list[PresenceCallback] = []
        self._guard = Guard(limits, connection_cap(limits.max_connections))
        # A client's socket buffer may hold one frame being written plus write_buffer.
        self._write_budget = limits.write_buffer + limits.max_frame + 1024
        self._outgoing: list[_Planned] = []
        self._acks: dict[str, int] = {}  # acknowledgements not written to the store yet
        self._drops: set[str] = set()  # sessions forgotten, not yet dropped from the store
        self._flush_wake = asyncio.Event()
        self._flush_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: Server | None = None
        self._helpers: list[asyncio.Task[None]] = []
        self._closed = False
        self._loop = asyncio.get_running_loop()

    def __repr__(self) -> str:
        port = self.port if self._server is not None else None
        return f"Hub(port={port}, epoch={self.epoch!r}, sessions={len(self._sessions)})"

    # -- public surface -------------------------------------------------------------------------

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

    @property
    def max_connections(self) -> int:
        """The connection cap in force (``limits.max_connections``, or lower to stay
        clear of the file descriptor limit)."""
        return self._guard.max_connections

    def on_presence(self, callback: PresenceCallback) -> Callable[[], None]:
        """Call ``callback(session_id, old, new)`` on every presence change; returns a
        function that unsubscribes it. A callback that raises is logged and kept."""
        if not callable(callback):
            raise TypeError(f"on_presence(callback) must be callable, got {callback!r}")
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback)

    def send(self, session_id: str, data: Any) -> asyncio.Future[None]:
        """Send ``data`` (any JSON value) to the session's client, exactly once, in order.

        Everything that could fail is checked here, before anything is committed:
        ``LookupError`` for an unknown session; ``TypeError``/``ValueError`` for data
        that is not JSON, nests deeper than the protocol's ``MAX_DEPTH`` or would make a
        frame over ``max_frame``; :class:`fsm.errors.OutboxFull` when the client's
        outbox (``limits.outbox`` messages, ``limits.outbox_bytes``) has no room (the
        room is reserved now, so the commit cannot fail for it); ``RuntimeError`` after
        :meth:`close`.

        Inside a handler the message is committed with the delivery being handled and
        goes out after it; the returned future is already done. Elsewhere it is
        committed soon, in order with other such sends (batched); the returned future
        resolves when it is committed (awaiting it is optional: a failure is logged
        either way; a busy store is retried for ``10 * limits.retry_after``, then the
        future fails with :class:`~adapters.stores.StoreBusy`).

        With a shared store (:class:`~adapters.stores.RedisStore`) ``session_id`` may be
        held by another hub: the message is committed to the session in the store and
        that hub is poked; what only the store can check fails the future instead
        (``LookupError`` for a session it does not have, ``OutboxFull`` when its outbox
        is full), and ``StoreBusy`` is raised at once while the store is unreachable.
        """
        if self._closed:
            raise RuntimeError("hub.send() after hub.close(): the hub is closed")
        target: Session | str | None = self._sessions.get(session_id)
        if target is None:
            if not self._shared:
                raise LookupError(f"no session {session_id!r}")
            given: object = session_id
            if not isinstance(given, str) or not given:
                raise LookupError(f"no session {session_id!r}")
            target = session_id  # another hub may hold it: the store decides
        delivery = _current.get()
        in_handler = delivery is not None and delivery.open
        if self._shared and not in_handler and not getattr(self.store, "available", True):
            # (inside a handler the delivery's commit answers for it: busy, replayed)
            raise StoreBusy(f"the session store is unavailable ({self.store!r}): message "
                            f"not accepted; try again later")
        text, size = self._encode(data)
        if not isinstance(target, str):
            target._reserve(size)
        future: asyncio.Future[None] = self._loop.create_future()
        if delivery is not None and delivery.open:
            delivery.sends.append((target, text, size, None))
            future.set_result(None)
        else:
            self._outgoing.append((target, text, size, future))
            self._flush_wake.set()
        return future

    async def close(self) -> None:
        """Stop: no new connections; running handlers are cancelled (their messages are
        not committed, so clients replay them to the next hub). Sends not committed yet
        fail (``RuntimeError``). Closes the store only if the hub created it."""
        if self._closed:
            return
        self._closed = True
        for helper in self._helpers:
            helper.cancel()
        if self._flush_timer is not None:
            self._flush_timer.cancel()
        if self._unlisten is not None:
            self._unlisten()
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
        if self._helpers:
            await asyncio.wait(self._helpers)
        pending, self._outgoing = self._outgoing, []
        if pending:
            self._log.error("! hub closed with %d sends not committed", len(pending))
            _Sends(self, pending).release(
                RuntimeError("the hub closed before this message was committed"))
        if self._owns_store:
            await self.store.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, t: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # -- start-up ---------------------------------------------------------------------------------

    async def _start(self, host: str, port: int, ssl: ssl_module.SSLContext | None) -> None:
        await self._load()
        calm_accept_errors()
        options: dict[str, Any] = {}
        if ssl is not None:
            options["ssl"] = ssl
        bound = cast(type[WireConnection],
                     type("HubConnection", (WireConnection,), {"hub": self}))
        self._server = await ws_serve(
            self._connection, host, port, ping_interval=None, ping_timeout=None,
            max_size=2 * self.limits.max_frame, max_queue=4, close_timeout=1.0,
            compression=None, logger=hub_wire_logger, create_connection=bound,
            open_timeout=self.limits.handshake_timeout,
            process_request=self._process_request, **options)
        self._helpers = [asyncio.create_task(self._flushing()),
                         asyncio.create_task(self._housekeeping())]
        if self._shared:
            self._helpers.append(asyncio.create_task(self._watching_the_cluster()))
        if self.max_connections < self.limits.max_connections:
            self._log.info("= connection cap %d (limits.max_connections %d, lowered for the "
                        "file descriptor limit)", self.max_connections,
                        self.limits.max_connections)
        self._log.info("= hub listening on %s:%d, epoch %s, %d sessions%s", host, self.port,
                    self.epoch, len(self._sessions),
                    ", authenticating" if self._authenticate else "")

    async def _load(self) -> None:
        """Take over the store's sessions: expire those gone while the hub was down,
        rebuild presence from their wall-clock ``last_seen``, refill their outboxes."""
        wall, now = time.time(), self._loop.time()
        bound = self.heartbeat.bound
        if self._shared:  # sessions are claimed one by one, on resume
            on_event = getattr(self.store, "on_event", None)
            if on_event is not None:
                self._unlisten = on_event(self._store_event)
            return
        expired = await self.store.expire(wall - bound - self.expire_after)
        if expired:
            self._log.info("= %d sessions expired while the hub was down", len(expired))
        for record in await self.store.sessions():
            silent = max(0.0, wall - record.last_seen)
            if silent < bound:
                watch = PresenceWatch(self.heartbeat, self.expire_after, now,
                                      last_heard=now - silent)
            else:
                watch = PresenceWatch(self.heartbeat, self.expire_after, now,
                                      phase=Phase.STALE, last_heard=now - silent,
                                      stale_since=now - (silent - bound))
            owner = f"principal {record.principal}" if record.principal is not None else ""
            session = Session(self, record, watch, await self.store.unacked(record.session_id),
                              owner)
            self._register(session)

    def _register(self, session: Session) -> None:
        self._sessions[session.id] = session
        self._presence[session.id] = session.presence
        if session._owner:
            self._owners.setdefault(session._owner, set()).add(session.id)
        self._update_idle(session)
        self._arm(session)

    # -- the trust boundary -----------------------------------------------------------------------

    async def _process_request(self, connection: ServerConnection, request: Request
                               ) -> Response | None:
        """websockets' hook on the opening handshake: ``authenticate``, or refuse."""
        ws = cast(WireConnection, connection)
        if self._authenticate is None:
            return None
        peer = ws.transport.get_extra_info("peername")
        handshake = HandshakeRequest(path=request.path, headers=request.headers,
                                     address=ws.tether_address,
                                     port=int(peer[1]) if peer else 0)
        try:
            outcome = self._authenticate(handshake)
            if inspect.isawaitable(outcome):
                outcome = await outcome
        except Refuse as refusal:
            self._log.info("! %s: refused with HTTP %d %s", ws.tether_address, refusal.status,
                        refusal.reason)
            return self._refusal(ws, refusal.status, refusal.reason)
        except Exception:
            self._log.exception("! %s: authenticate raised: refused with HTTP 500",
                             ws.tether_address)
            return ws.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "authentication failed\n")
        if outcome is None:
            self._log.info("! %s: not authenticated: refused with HTTP 401", ws.tether_address)
            return self._refusal(ws, 401, "")
        principal: object = outcome
        if not isinstance(principal, str) or not principal:
            self._log.error("! %s: authenticate returned %s, not a principal (a non-empty str) "
                         "or None: refused with HTTP 500", ws.tether_address,
                         type(outcome).__name__)
            return ws.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "authentication failed\n")
        ws.tether_principal = principal
        return None

    @staticmethod
    def _refusal(ws: WireConnection, status: int, reason: str) -> Response:
        text = reason or ("unauthorized" if status == 401 else "forbidden")
        response = ws.respond(status, text + "\n")
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="tether"'
        return response

    def _owner_of(self, channel: Channel) -> str:
        if channel.principal is not None:
            return f"principal {channel.principal}"
        return f"address {channel.address}"

    def _make_room(self, owner: str) -> None:
        """Room for one more session of ``owner``: a disconnected session that never
        delivered anything gives way (its owner's first); else ``busy``."""
        limits = self.limits
        held = len(self._owners.get(owner, ())) + self._creating[owner]
        if held >= limits.sessions_per_owner:
            victim = next((s for s in self._idle.values()
                           if s._owner == owner and s._empty), None)
            if victim is None:
                raise _Busy(f"{owner} holds {held} sessions, the cap per "
                            f"{owner.split(maxsplit=1)[0]}", limits.retry_after)
            self._evict(victim)
        if len(self._sessions) + self._creating.total() >= limits.max_sessions:
            victim = next((s for s in self._idle.values() if s._empty), None)
            if victim is None:
                raise _Busy(f"the hub holds {len(self._sessions)} sessions, its limit",
                            limits.retry_after)
            self._evict(victim)

    def _evict(self, session: Session) -> None:
        self._log.info("= session %s forgotten to make room: it never delivered anything",
                    session.id)
        old = session.presence
        self._forget(session)
        self._notify(session.id, old, Presence.GONE)

    def _update_idle(self, session: Session) -> None:
        """Keep the set of forgettable sessions, and the short expiry of empty ones."""
        empty = session._empty
        session._watch.expire_after = min(self.limits.expire_empty, self.expire_after) \
            if empty else self.expire_after
        if empty and session._channel is None and self._sessions.get(session.id) is session:
            self._idle.setdefault(session.id, session)
        else:
            self._idle.pop(session.id, None)

    # -- connections ------------------------------------------------------------------------------

    async def _connection(self, connection: ServerConnection) -> None:
        """websockets' handler: run the connection in a task the hub can cancel."""
        task = asyncio.create_task(self._serve(cast(WireConnection, connection)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise

    async def _serve(self, ws: WireConnection) -> None:
        channel = Channel(ws, drain_timeout=self.heartbeat.bound, log=self._log)
        session: Session | None = None
        try:
            try:
                session = await self._handshake(channel)
            except ProtocolViolation as violation:
                self._log.info("! %s: %s", channel.address, violation)
                await self._fail(channel, violation)
                return
            except ConnectionClosed:
                return
            except Exception:
                self._log.exception("! %s: hub error in the handshake", channel.address)
                await channel.close(1011, "hub error")
                return
            await self._run(channel, session)
        finally:
            if session is not None:
                self._detach(session, channel)
            if not channel.closing:  # cancelled: websockets closes once we return
                channel.abort()

    async def _fail(self, channel: Channel, violation: ProtocolViolation) -> None:
        retry_after = violation.retry_after if isinstance(violation, _Busy) else None
        await channel.fail(violation.code, violation.detail,
                           _CLOSE_CODES.get(violation.code, 1002),
                           fatal=bool(violation.fatal), retry_after=retry_after)

    async def _run(self, channel: Channel, session: Session) -> None:
        """Read and deliver until the connection ends; then close it as it deserves."""
        more, room = asyncio.Event(), asyncio.Event()
        reader = asyncio.create_task(self._read(channel, session, more, room))
        worker = asyncio.create_task(self._work(channel, session, more, room))
        try:
            await asyncio.wait({reader, worker}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            reader.cancel()
            worker.cancel()
            raise
        if worker.done():  # a delivery failed: the client replays it on a new connection
            reader.cancel()
            error = worker.exception()
            if isinstance(error, _HandlerFailed):
                await channel.close(1011, "handler failed")
            elif isinstance(error, _Superseded):
                await channel.close(1012, "session moved")
            elif isinstance(error, _StoreStayedBusy):
                await channel.fail("busy", f"the session store is busy: {error}", 1013,
                                   retry_after=self.limits.retry_after)
            elif error is not None:
                self._log.error("! %s: hub error", session.id, exc_info=error)
                await channel.close(1011, "hub error")
            else:
                await channel.close()
            return
        channel.reading_done = True
        more.set()  # the worker delivers what was read before, then stops
        error = reader.exception()
        if isinstance(error, ProtocolViolation):
            self._log.info("! %s: %s", session.id, error)
            await self._fail(channel, error)
        elif error is not None and not isinstance(error, ConnectionClosed):
            self._log.error("! %s: hub error", session.id, exc_info=error)
            await channel.close(1011, "hub error")
        else:
            await channel.close()
        with contextlib.suppress(Exception):
            await worker

    async def _handshake(self, channel: Channel) -> Session:
        try:
            async with asyncio.timeout(self.limits.hello_timeout):
                text = await channel.ws.recv()
        except TimeoutError:
            raise ProtocolViolation("handshake", f"no hello within "
                                                 f"{self.limits.hello_timeout} s") from None
        frame = protocol.decode(text, max_frame=self.limits.max_frame)
        if not isinstance(frame, Hello):
            raise ProtocolViolation("handshake", f"expected hello, got "
                                                 f"{type(frame).__name__.lower()}")
        self._log.debug("< %s %r", channel.address, frame)  # Hello's repr hides the token
        # The client's window (PROTOCOL.md 3, hello.limits): never more of our messages
        # unacknowledged on its wire than it can hold.
        channel.window = frame.limits.get("max_inflight") or None
        owner = self._owner_of(channel)
        if not self._guard.hello(owner, self._loop.time()):
            raise _Busy(f"more than {self.limits.hello_rate} hellos per second from {owner}",
                        self.limits.retry_after)
        resume = hello_kind(frame) == "resume"
        if resume and frame.session is not None and frame.token is not None and self._shared:
            taken = await self._take_over(channel, frame, frame.session, frame.token)
            if taken is not None:
                return taken
        elif frame.session is not None and frame.token is not None:
            session = self._sessions.get(frame.session)
            if session is not None:
                record = await self._check_token(channel, frame.session, frame.token)
                if record is not None:
                    resumed = await self._resume(channel, session, frame)
                    if resumed is not None:
                        return resumed
        return await self._open(channel)

    async def _check_token(self, channel: Channel, session_id: str, token: str
                           ) -> SessionRecord | None:
        try:
            record = await self.store.resume(session_id, token)
        except Unauthorized:
            self._log.warning("! %s: wrong token for session %s: refused", channel.address,
                           session_id)
            raise ProtocolViolation("unauthorized", "wrong token for this session") from None
        except StoreBusy:
            raise _Busy("the session store is busy", self.limits.retry_after) from None
        if record is not None and record.principal != channel.principal:
            self._log.warning("! %s: session %s belongs to another principal: refused",
                           channel.address, session_id)
            raise ProtocolViolation("unauthorized", "this session belongs to another principal")
        return record

    async def _open(self, channel: Channel) -> Session:
        owner = self._owner_of(channel)
        self._make_room(owner)
        self._creating[owner] += 1
        try:
            record, token = await self.store.create(time.time(), channel.principal)
        except StoreBusy:
            raise _Busy("the session store is busy", self.limits.retry_after) from None
        finally:
            self._creating[owner] -= 1
            if self._creating[owner] <= 0:
                del self._creating[owner]
        now = self._loop.time()
        session = Session(self, record, PresenceWatch(self.heartbeat, self.expire_after, now),
                          [], owner)
        self._register(session)
        self._attach(session, channel, sent=0)
        self._notify(session.id, Presence.GONE, Presence.PRESENT)
        channel.welcome(Welcome(session=session.id, epoch=self.epoch, resumed=False, ack=0,
                                token=token, limits=self._announced()))
        self._log.info("= %s: new session %s", channel.address, session.id)
        return session

    async def _resume(self, channel: Channel, session: Session, hello: Hello
                      ) -> Session | None:
        async with session._lock:  # wait for a delivery on an older connection to end
            if self._sessions.get(session.id) is not session:
                return None  # it expired meanwhile: the caller opens a new one
            self._check_ack(session, hello.ack)  # a bad ack changes nothing
            old = session._channel
            if old is not None:
                self._log.info("= %s: session %s moves to a new connection", channel.address,
                            session.id)
                self._unbind(session, old)
                old.abort()
            self._attach(session, channel, sent=hello.ack)
            channel.welcome(Welcome(session=session.id, epoch=self.epoch, resumed=True,
                                    ack=session.last_in, limits=self._announced()))
        self._log.info("= %s: session %s resumed, %d to replay", channel.address, session.id,
                    session.unacked)
        return session

    def _announced(self) -> dict[str, int]:
        return {"max_frame": self.limits.max_frame, "max_inflight": self.limits.max_inflight}

    def _attach(self, session: Session, channel: Channel, *, sent: int) -> None:
        session._channel = channel
        channel.session = session
        channel.sent = sent
        channel.ack_sent = session.last_in
        session._intake.attached()
        session._inbox.clear()
        session._inbox_size = 0
        self._update_idle(session)
        self._feed(session, Attached())

    def _unbind(self, session: Session, channel: Channel) -> None:
        if session._channel is not channel:
            return
        session._channel = None
        session._inbox.clear()
        session._inbox_size = 0
        session._ack_carried(session.last_in)  # nothing is owed to a gone connection
        self._update_idle(session)

    def _detach(self, session: Session, channel: Channel) -> None:
        if session._channel is not channel:
            return
        self._unbind(session, channel)
        if self._sessions.get(session.id) is session and not self._closed:
            self._feed(session, Detached())

    # -- reading ----------------------------------------------------------------------------------

    async def _read(self, channel: Channel, session: Session, more: asyncio.Event,
                    room: asyncio.Event) -> None:
        limits = self.limits
        while True:
            text = await channel.ws.recv()
            if session._channel is not channel:
                return  # taken over by a newer connection
            frame = protocol.decode(text, max_frame=limits.max_frame)
            self._log.debug("< %s %.200r", session.id, frame)
            self._feed(session, Heard())
            if isinstance(frame, ErrorFrame):
                self._log.info("< %s: client error %s: %s", session.id, frame.code, frame.message)
                return
            if not isinstance(frame, Msg | Ack | Ping | Pong):
                raise ProtocolViolation("handshake", f"unexpected "
                                                     f"{type(frame).__name__.lower()} after "
                                                     f"the handshake")
            self._check_ack(session, frame.ack)
            if isinstance(frame, Ping):
                channel.pong()
            elif isinstance(frame, Msg):
                try:
                    verdict = session._intake.receive(frame.seq, channel.ack_sent,
                                                      limits.max_inflight)
                except ProtocolViolation as violation:
                    if violation.code == "gap" and self._shared and \
                            channel.msgs_read == 0 and frame.seq > session.last_in + 1:
                        # A client resuming past what the store says it delivered: the
                        # store lost a delivery it had acknowledged (an fsync window, a
                        # lagging replica). Not the client's fault: a new epoch.
                        await self._store_lost(
                            f"session {session.id}: the client sent msg {frame.seq}, the "
                            f"store has it delivered only up to {session.last_in}")
                    raise
                if verdict is not Verdict.DELIVER:
                    self._log.debug("= %s: duplicate msg %d dropped", session.id, frame.seq)
                    if verdict is Verdict.DUPLICATE_ACK:
                        self._owe_ack(session, force=True)
                    continue
                channel.msgs_read += 1
                session._inbox.append((frame, len(text)))
                session._inbox_size += len(text)
                more.set()
                while session._inbox_size > limits.read_ahead and \
                        session._channel is channel:
                    room.clear()  # stop reading until the handler catches up
                    await room.wait()

    def _check_ack(self, session: Session, ack: int) -> None:
        session._out.check_ack(ack)
        session._acknowledged(ack)

    def _ack_to_store(self, session: Session, upto: int) -> None:
        session._store_acked = upto
        self._acks[session.id] = upto
        if self._flush_timer is None and not self._closed:
            self._flush_timer = self._loop.call_later(_ACK_PERSIST_DELAY, self._flush_due)

    def _flush_due(self) -> None:
        self._flush_timer = None
        self._flush_wake.set()

    # -- delivering -------------------------------------------------------------------------------

    async def _work(self, channel: Channel, session: Session, more: asyncio.Event,
                    room: asyncio.Event) -> None:
        """Deliver what the reader queued, one message at a time, in order."""
        while True:
            while not session._inbox:
                if channel.reading_done or session._channel is not channel:
                    return
                more.clear()
                await more.wait()
            if session._channel is not channel:
                return
            msg, size = session._inbox[0]
            async with session._lock:
                if session._channel is not channel:
                    return
                await self._deliver(session, msg)
                if session._inbox and session._inbox[0][0] is msg:  # (not cleared meanwhile)
                    session._inbox.popleft()
                    session._inbox_size -= size
                room.set()

    def _record(self, effect: Effect) -> None:
        delivery = _current.get()
        if delivery is None or not delivery.open:
            raise RuntimeError("Session.record() is only valid while a handler runs")
        if not callable(effect):
            raise TypeError(f"Session.record(effect) needs a callable, got {effect!r}")
        delivery.effects.append(effect)

    async def _deliver(self, session: Session, msg: Msg) -> None:
        """Handle ``msg``, then commit the delivery with everything it sent and recorded;
        only then is it acknowledged. Raises :class:`_HandlerFailed` or
        :class:`_StoreStayedBusy` when it was not delivered."""
        delivery = _Delivery(session, msg.seq)
        sends = _Sends(self, delivery.sends)
        token = _current.set(delivery)
        try:
            try:
                result = self._handler(session, msg.data)
                if inspect.isawaitable(result):
                    await result
            except Exception as error:
                self._log.exception("! %s: handler failed on msg %d; not delivered, the client "
                                 "will send it again", session.id, msg.seq)
                raise _HandlerFailed from error
            finally:
                delivery.open = False
                _current.reset(token)
            commit = self._commit_of(delivery.sends, session, msg.seq,
                                     effects=tuple(delivery.effects))

            def delivered() -> None:
                session._intake.delivered(msg.seq)
                session.delivered += 1
                self._update_idle(session)
                self._owe_ack(session)

            deadline = self._loop.time() + self.limits.retry_after
            pause = 0.01
            while True:
                try:
                    await self._commit(commit, sends, delivered)
                    return
                except StoreBusy as error:
                    if self._loop.time() + pause > deadline:
                        self._log.warning("! %s: msg %d not committed: %s", session.id, msg.seq,
                                       error)
                        raise _StoreStayedBusy(str(error)) from error
                    await asyncio.sleep(pause)
                    pause = min(2 * pause, 0.2)
                except CommitRefused as error:
                    self._log.warning("! %s: msg %d not committed, the store refused: %s",
                                      session.id, msg.seq, error)
                    await self._refused(error, session)
                    raise _Superseded(str(error)) from error
                except Exception as error:
                    self._log.exception("! %s: commit of msg %d failed; not delivered, the "
                                     "client will send it again", session.id, msg.seq)
                    raise _HandlerFailed from error
        finally:
            if not sends.handed_over:
                sends.release(RuntimeError(f"msg {msg.seq} of session {session.id} was not "
                                           f"delivered"))

    async def _commit(self, commit: Commit, sends: _Sends,
                      committed: Callable[[], None] | None = None) -> None:
        """One store commit. The moment it succeeds (even if our caller was cancelled
        meanwhile) the sends arrive at their sessions and ``committed`` runs: nothing
        after the store's commit can fail. If it fails, the caller decides (retry or
        release), unless the caller was cancelled: then the failure releases them."""
        if self._immediate:  # the store's coroutines never suspend: nothing to shield
            wires = await self.store.commit(commit)
            sends.arrived(wires)
            if committed is not None:
                committed()
            return
        task = asyncio.ensure_future(self.store.commit(commit))

        def settle(done: asyncio.Future[list[Wire]]) -> None:
            if done.cancelled() or done.exception() is not None:
                if sends.handed_over:
                    sends.release(RuntimeError("the commit failed"))
                return
            sends.arrived(done.result())
            if committed is not None:
                committed()

        task.add_done_callback(settle)
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                sends.handed_over = True
            raise

    def _commit_of(self, plan: list[_Planned], session: Session | None, seq: int, *,
                   effects: tuple[Effect, ...] = (),
                   acked: dict[str, int] | None = None) -> Commit:
        """The store commit of a delivery (``session``, ``seq``) or of a batch of sends,
        with the checks a shared store makes: the fencing generation, the epoch, the
        wire numbers this hub already holds (``floors``), the outbox bounds."""
        acks = dict(acked or {})
        floors: dict[str, int] = {}
        held: list[Session] = [t for t, *_ in plan if not isinstance(t, str)]
        if session is not None:
            held.append(session)
        for target in held:
            pending = self._acks.pop(target.id, None)  # written with this commit
            if pending is not None:
                acks[target.id] = max(pending, acks.get(target.id, 0))
            if self._shared:
                floors[target.id] = target._next_wire
        shared = self._shared
        return Commit(
            now=time.time(),
            inbound=(session.id, seq) if session is not None else None,
            sends=[(_target_id(t), text) for t, text, _, _ in plan], acked=acks,
            effects=effects, generation=session._generation if session is not None else None,
            epoch=self.epoch, floors=floors,
            limits=(self.limits.outbox, self.limits.outbox_bytes) if shared else None,
            commit_id=secrets.token_hex(12) if shared else None)

    async def _refused(self, error: CommitRefused, session: Session | None) -> None:
        """The store refused a commit: let go of what this hub no longer holds."""
        if isinstance(error, Fenced | Duplicate | SessionGone):
            if session is not None and self._sessions.get(session.id) is session:
                self._release(session, keep_presence=isinstance(error, Fenced | Duplicate))
            return
        if isinstance(error, StoreLost | Gap):
            await self._store_lost(str(error))
        elif isinstance(error, EpochChanged):
            self._epoch_moved(error.current)

    async def _store_lost(self, why: str) -> None:
        """The store is behind what it acknowledged: move it to a new epoch (every client
        rebuilds once) rather than resume anyone on a store that forgot."""
        self._log.error("! the session store lost data: %s; moving it to a new epoch", why)
        new_epoch = getattr(self.store, "new_epoch", None)
        if new_epoch is not None:
            try:
                epoch = await new_epoch(self.epoch)
            except StoreBusy as error:
                self._log.error("! could not move the store to a new epoch: %s", error)
                return
            self._epoch_moved(epoch)

    def _epoch_moved(self, epoch: str) -> None:
        """Every session held from an older epoch is gone: drop them (their clients
        reconnect, get a new session and rebuild)."""
        lost = [s for s in self._sessions.values() if s._epoch != epoch]
        if lost:
            self._log.warning("= the store is in epoch %s: %d sessions of the old epoch are "
                              "gone", epoch, len(lost))
        for session in lost:
            old = session.presence
            self._release(session, keep_presence=False)
            self._notify(session.id, old, Presence.GONE)
        for sid in list(self._remote):
            remote = self._remote.pop(sid)
            self._presence.pop(sid, None)
            self._notify(sid, remote.presence, Presence.GONE, local=False)

    # -- sends outside handlers, and deferred store writes ----------------------------------------

    async def _flushing(self) -> None:
        """Commit the sends made outside handlers (in order, batched), the
        acknowledgements, and the drops of forgotten sessions."""
        while True:
            await self._flush_wake.wait()
            self._flush_wake.clear()
            try:
                await self._flush()
            except Exception:  # a bug: say so, and keep committing the next ones
                self._log.exception("! the hub's commit task failed; it goes on")
                await asyncio.sleep(self.limits.retry_after)

    async def _flush(self) -> None:
        batch, self._outgoing = self._outgoing, []
        acked, self._acks = self._acks, {}
        if batch or acked:
            sends = _Sends(self, batch)
            commit = self._commit_of(batch, None, 0, acked=acked)
            pause = 0.01
            give_up = self._loop.time() + 10 * self.limits.retry_after
            try:
                while True:
                    try:
                        await self._commit(commit, sends)
                        break
                    except StoreBusy as error:
                        if self._loop.time() + pause > give_up:
                            self._log.error("! %d sends not committed: the store stayed "
                                            "busy: %s", len(batch), error)
                            for sid, upto in acked.items():  # try those again later
                                self._acks[sid] = max(upto, self._acks.get(sid, 0))
                            sends.release(error)
                            break
                        self._log.warning("! %d sends not committed yet, retrying: %s",
                                       len(batch), error)
                        await asyncio.sleep(pause)
                        pause = min(2 * pause, self.limits.retry_after)
                    except CommitRefused as error:
                        self._log.warning("! %d sends not committed, the store refused: %s",
                                          len(batch), error)
                        sends.release(error)
                        await self._refused(error, None)
                        break
                    except Exception as error:
                        self._log.exception("! %d sends could not be committed", len(batch))
                        for sid, upto in acked.items():  # try those again later
                            self._acks[sid] = max(upto, self._acks.get(sid, 0))
                        sends.release(error)
                        break
            finally:
                if not sends.handed_over:
                    sends.release(RuntimeError("the hub closed before this message was "
                                               "committed"))
        if self._drops:
            drops = sorted(self._drops)
            try:
                await self.store.drop(drops)
            except Exception as error:
                self._log.warning("! could not drop %d forgotten sessions from the store (will "
                               "retry): %s", len(drops), error)
            else:
                self._drops.difference_update(drops)

    # -- acknowledgements -------------------------------------------------------------------------

    def _owe_ack(self, session: Session, *, force: bool = False) -> None:
        channel = session._channel
        if channel is None:
            return
        owed = session._acks.owe(self._loop.time(), session.last_in, channel.ack_sent,
                                 force=force)
        if owed is True:
            channel.ack()
        elif isinstance(owed, float) and session._ack_timer is None:
            session._ack_timer = self._loop.call_at(owed, self._ack_due, session)

    def _ack_due(self, session: Session) -> None:
        session._ack_timer = None
        channel = session._channel
        if channel is not None and session._acks.due(session.last_in, channel.ack_sent):
            channel.ack()

    # -- presence ---------------------------------------------------------------------------------

    def _feed(self, session: Session, event: Event) -> None:
        """Tell the session's watch what happened; perform what it answers."""
        if self._closed:
            return
        for action in session._watch.handle(event, self._loop.time()):
            if isinstance(action, SendPing):
                if session._channel is not None:
                    session._channel.ping()
            elif isinstance(action, AbortConnection):
                channel = session._channel
                if channel is not None:
                    self._log.info("! %s: silent for %.2f s: connection aborted", session.id,
                                self._loop.time() - session._watch.last_heard)
                    self._unbind(session, channel)
                    channel.abort()
            elif isinstance(action, Announce):
                if self._sessions.get(session.id) is session:
                    self._presence[session.id] = action.new
                self._notify(session.id, action.old, action.new)
            elif isinstance(action, Forget):
                self._log.info("= session %s expired", session.id)
                self._forget(session)
                return
        self._arm(session)

    def _arm(self, session: Session) -> None:
        """Arm the presence timer for the next deadline. Lazy: a timer that is earlier
        than needed stays; it fires, finds nothing due, and re-arms."""
        if self._closed or self._sessions.get(session.id) is not session:
            return
        deadline = session._watch.next_deadline()
        if session._timer is not None:
            if session._timer_at <= deadline:
                return
            session._timer.cancel()
        session._timer_at = deadline
        session._timer = self._loop.call_at(deadline, self._deadline, session)

    def _deadline(self, session: Session) -> None:
        session._timer = None
        session._timer_at = float("inf")
        if self._closed or self._sessions.get(session.id) is not session:
            return
        if session._watch.phase is Phase.PROBING:
            # This deadline can condemn the client: first let the reader take whatever
            # is already buffered (our loop may have been stalled while it arrived).
            task = asyncio.create_task(self._deadline_after_reading(session),
                                       context=contextvars.Context())
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        else:
            self._feed(session, DeadlineReached(busy=session._busy))

    async def _deadline_after_reading(self, session: Session) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        if self._sessions.get(session.id) is session:
            self._feed(session, DeadlineReached(busy=session._busy))

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._log.error("! a hub task failed", exc_info=task.exception())

    def _forget(self, session: Session) -> None:
        """Drop a session: from memory now, from the store when it next answers (a store
        that fails cannot keep a session from expiring). A shared store drops it only
        if this hub still holds it."""
        self._release(session, keep_presence=False)
        self._drops.add(session.id)
        self._flush_wake.set()

    def _release(self, session: Session, *, keep_presence: bool) -> None:
        """Let go of a session in memory (its connection aborted); the store keeps it.
        ``keep_presence``: another hub holds it now, and tells its presence."""
        session._cancel_timers()
        channel = session._channel
        if channel is not None:
            self._unbind(session, channel)
            channel.abort()
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]
        remote = self._remote.get(session.id)
        if keep_presence and remote is not None:
            self._presence[session.id] = remote.presence
        elif not keep_presence:
            self._presence.pop(session.id, None)
        self._idle.pop(session.id, None)
        owned = self._owners.get(session._owner)
        if owned is not None:
            owned.discard(session.id)
            if not owned:
                del self._owners[session._owner]

    def _notify(self, session_id: str, old: Presence, new: Presence, *,
                local: bool = True) -> None:
        self._log.debug("= %s: %s -> %s", session_id, old.value, new.value)
        if local and self._shared:  # the other hubs hear it too
            announce = getattr(self.store, "announce", None)
            if announce is not None:
                announce(session_id, new.value)
        for callback in list(self._callbacks):
            try:
                callback(session_id, old, new)
            except Exception:
                self._log.exception("! presence callback %r raised", callback)

    async def _housekeeping(self) -> None:
        """Now and then: write when each session was last heard (for expiry across
        restarts), forget hello counts of quiet keys, retry store drops."""
        period = max(self.heartbeat.interval, min(60.0, self.expire_after / 4))
        flushed: dict[str, float] = {}
        while True:
            await asyncio.sleep(period)
            try:
                flushed = await self._housekeep(flushed)
            except Exception:
                self._log.exception("! housekeeping failed; it goes on")

    async def _housekeep(self, flushed: dict[str, float]) -> dict[str, float]:
        """One round of housekeeping; returns when each session's last-heard time was
        last written (the next round writes only what moved)."""
        now, wall = self._loop.time(), time.time()
        heard = {sid: s._watch.last_heard for sid, s in self._sessions.items()}
        seen = {sid: wall - (now - at) for sid, at in heard.items()
                if at > flushed.get(sid, float("-inf"))}
        try:
            await self.store.touch(seen)
        except Exception as error:
            self._log.warning("! could not record last-seen times (will retry): %s", error)
        else:
            flushed = {sid: at for sid, at in {**flushed, **{s: heard[s] for s in seen}}.items()
                       if sid in self._sessions}
        self._guard.forget_quiet(now)
        if self._drops:
            self._flush_wake.set()
        return flushed

    # -- the cluster (a shared store) -------------------------------------------------------------

    async def _take_over(self, channel: Channel, hello: Hello, session_id: str, token: str
                         ) -> Session | None:
        """Resume a session from a shared store, wherever it was held: claim it (the
        store raises its fencing generation and tells the hub that held it), load it,
        replay. ``None``: the store does not have it (the caller opens a new one)."""
        record = await self._check_token(channel, session_id, token)
        if record is None:
            return None
        local = self._sessions.get(session_id)
        old = self._presence.get(session_id, Presence.GONE)
        if local is not None:
            async with local._lock:  # a delivery under way on an older connection ends
                self._release(local, keep_presence=True)
        try:
            claimed = await self.store.claim(session_id, time.time())
        except StoreBusy:
            raise _Busy("the session store is busy", self.limits.retry_after) from None
        if claimed is None:
            return None
        record, outbound = claimed
        if store_forgot(hello.ack, record.next_wire):
            # The client has messages the store never sent: the store forgot them (an
            # fsync window, a failover to a lagging replica). Resuming would renumber
            # the client's stream; a new epoch makes it rebuild instead.
            await self._store_lost(f"session {session_id}: the client acknowledged "
                                   f"{hello.ack}, the store sent only up to "
                                   f"{record.next_wire - 1}")
            return None
        session = Session(self, record, PresenceWatch(self.heartbeat, self.expire_after,
                                                      self._loop.time()),
                          outbound, self._owner_of(channel))
        self._remote.pop(session_id, None)
        self._register(session)
        async with session._lock:
            self._check_ack(session, hello.ack)
            self._attach(session, channel, sent=hello.ack)
            channel.welcome(Welcome(session=session.id, epoch=self.epoch, resumed=True,
                                    ack=session.last_in, limits=self._announced()))
        if old is not Presence.PRESENT:
            self._notify(session_id, old, Presence.PRESENT)
        else:  # unchanged here, but the other hubs must learn who holds it now
            announce = getattr(self.store, "announce", None)
            if announce is not None:
                announce(session_id, Presence.PRESENT.value)
        self._log.info("= %s: session %s taken over (generation %d, from %s), %d to "
                       "replay", channel.address, session_id, record.generation,
                       "this hub" if local is not None else "the store", session.unacked)
        return session

    def _store_event(self, event: object) -> None:
        """What a shared store tells this hub (in the loop; never raises)."""
        from adapters.stores.redis import (  # noqa: PLC0415 (redis-py is optional)
            EpochMoved,
            Poked,
            PresenceHeard,
            StoreReset,
            TakenOver,
        )

        if self._closed:
            return
        if isinstance(event, Poked):
            session = self._sessions.get(event.session_id)
            if session is not None:
                self._fetch_soon(session)
        elif isinstance(event, TakenOver):
            session = self._sessions.get(event.session_id)
            if session is not None and session._generation < event.generation:
                self._log.info("= session %s was taken over by another hub", session.id)
                self._release(session, keep_presence=True)
        elif isinstance(event, PresenceHeard):
            self._heard_presence(event.node, event.session_id, event.presence)
        elif isinstance(event, EpochMoved):
            self._epoch_moved(event.epoch)
        elif isinstance(event, StoreReset):
            if self._sessions:
                self._log.warning("! %s: the %d sessions held here are reloaded from the "
                                  "store when their clients resume", event.reason,
                                  len(self._sessions))
            for session in list(self._sessions.values()):
                self._release(session, keep_presence=True)

    def _heard_presence(self, node: str, session_id: str, presence: str) -> None:
        try:
            new = Presence(presence)
        except ValueError:
            self._log.warning("! presence %r from hub %s ignored", presence, node)
            return
        if session_id in self._sessions:
            return  # held here: this hub's own watch decides
        old = self._presence.get(session_id, Presence.GONE)
        if new is Presence.GONE:
            self._remote.pop(session_id, None)
            self._presence.pop(session_id, None)
        else:
            self._remote[session_id] = _Remote(node, new, self._loop.time())
            self._presence[session_id] = new
        if new is not old:
            self._notify(session_id, old, new, local=False)

    def _fetch_soon(self, session: Session) -> None:
        """Read the session's messages committed by other hubs (one read at a time per
        session; a poke during a read makes one more read)."""
        if session._fetching:
            session._fetch_again = True
            return
        session._fetching = True
        task = asyncio.create_task(self._fetch(session), context=contextvars.Context())
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    async def _fetch(self, session: Session) -> None:
        try:
            while True:
                session._fetch_again = False
                if self._sessions.get(session.id) is not session:
                    return
                after = session._next_wire - 1
                try:
                    found = await cast(Any, self.store).unacked(session.id, after=after)
                except StoreBusy as error:
                    self._log.warning("! %s: could not read its messages (will retry): %s",
                                      session.id, error)
                    return
                for message in found:
                    session._arrive_fetched(message.wire, message.text)
                self._update_idle(session)
                if not session._fetch_again:
                    return
        finally:
            session._fetching = False

    async def _watching_the_cluster(self) -> None:
        """Now and then (shared stores): read what other hubs committed for the sessions
        held here (a lost poke only delays), mark the sessions of hubs that died stale
        and then gone, expire the store's abandoned sessions."""
        liveness = float(getattr(self.store, "liveness", self.heartbeat.interval))
        period = max(0.05, min(self.heartbeat.interval, liveness) / 2)
        rounds = 0
        while True:
            await asyncio.sleep(period)
            rounds += 1
            try:
                await self._watch_cluster(expire=rounds % 20 == 0)
            except StoreBusy as error:
                self._log.warning("! cluster watch: %s", error)
            except Exception:
                self._log.exception("! the cluster watch failed; it goes on")

    async def _watch_cluster(self, *, expire: bool) -> None:
        store = cast(Any, self.store)
        held = [sid for sid, s in self._sessions.items() if s._channel is not None]
        if held:
            heads: dict[str, int] = await store.heads(held)
            for sid, head in heads.items():
                session = self._sessions.get(sid)
                if session is not None and head > session._next_wire:
                    self._fetch_soon(session)
        now = self._loop.time()
        nodes = sorted({r.node for r in self._remote.values()})
        alive: set[str] = await store.alive(nodes) if nodes else set()
        for sid, remote in list(self._remote.items()):
            if remote.node in alive and remote.presence is not Presence.STALE:
                continue
            if remote.presence is Presence.PRESENT:
                self._log.info("= session %s: its hub %s is dead: stale", sid, remote.node)
                remote.presence, remote.since = Presence.STALE, now
                self._presence[sid] = Presence.STALE
                self._notify(sid, Presence.PRESENT, Presence.STALE, local=False)
            elif remote.presence is Presence.STALE and \
                    now - remote.since >= self.expire_after:
                del self._remote[sid]
                self._presence.pop(sid, None)
                self._notify(sid, Presence.STALE, Presence.GONE, local=False)
        if expire:
            bound = self.heartbeat.bound
            for sid in await self.store.expire(time.time() - bound - self.expire_after):
                self._log.info("= session %s expired in the store", sid)

    # -- encoding ---------------------------------------------------------------------------------

    def _encode(self, data: Any) -> tuple[str, int]:
        """The JSON text of a message and its size in bytes, or the reason it cannot be
        sent: every check a delivery needs, made before anything is committed."""
        if protocol.too_deep(data):
            raise ValueError(f"message data nests arrays and objects deeper than "
                             f"{MAX_DEPTH} levels (fsm.protocol.MAX_DEPTH, "
                             f"models/PROTOCOL.md 1): the client would refuse it")
        try:
            text = json.dumps(data, ensure_ascii=False, separators=(",", ":"),
                              allow_nan=False)
            size = len(text.encode("utf-8"))
        except RecursionError:  # pragma: no cover (MAX_DEPTH is far below the limit)
            raise ValueError("message data nests too deeply to encode") from None
        except UnicodeEncodeError as error:
            raise ValueError(f"message data is not valid UTF-8 text (a lone surrogate?): "
                             f"{error}") from None
        if size + _MSG_OVERHEAD > self.limits.max_frame:
            raise ValueError(f"a msg frame of {size + _MSG_OVERHEAD} bytes exceeds max_frame "
                             f"{self.limits.max_frame}")
        return text, size


_STORE_METHODS = ("create", "resume", "get", "sessions", "unacked", "commit", "touch", "drop",
                  "expire", "aclose")


def _check_store(store: object) -> SessionStore:
    for name in _STORE_METHODS:
        method = getattr(store, name, None)
        if method is None or not inspect.iscoroutinefunction(method):
            raise TypeError(f"serve(store=...): {type(store).__name__}.{name} must be an "
                            f"async method (the store interface is asynchronous; see "
                            f"adapters.stores.SessionStore)")
    if not isinstance(getattr(store, "epoch", None), str):
        raise TypeError(f"serve(store=...): {type(store).__name__}.epoch must be a str")
    if getattr(store, "shared", False) is True:
        for name in ("claim", "heads", "alive", "new_epoch"):
            if not inspect.iscoroutinefunction(getattr(store, name, None)):
                raise TypeError(f"serve(store=...): {type(store).__name__} is shared, so "
                                f"{name} must be an async method (see "
                                f"adapters.stores.RedisStore)")
    return store  # type: ignore[return-value]


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
    authenticate: Authenticate | None = None,
) -> Hub:
    """Start a hub on ``host:port`` (``port=0`` picks a free one: ``hub.port``).

    ``handler(session, data)`` (sync or async) gets every client message once, in order
    per session. ``store`` defaults to a fresh :class:`MemoryStore` (owned, closed with the
    hub); a store passed in stays open. ``heartbeat`` (default ``Heartbeat()``, 5 s / 5 s)
    drives probes and presence; ``limits`` the bounds (:class:`Limits`).
    ``authenticate(request)`` (sync or async) sees each opening handshake
    (:class:`HandshakeRequest`) and returns a principal (a non-empty ``str``), or
    ``None`` (HTTP 401), or raises :class:`Refuse` (401/403); without it the hub is
    anonymous and its quotas count per remote address.
    """
    if not callable(handler):
        raise TypeError(f"serve(handler=...) must be callable as handler(session, data), "
                        f"got {handler!r}")
    if not isinstance(host, str):
        raise TypeError(f"serve(host=...) must be a str, got {type(host).__name__}")
    given: object = port
    if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= 65535:
        raise ValueError(f"serve(port=...) must be an int in 0..65535 (0 picks a free one), "
                         f"got {port!r}")
    if heartbeat is not None and not isinstance(heartbeat, Heartbeat):
        raise TypeError(f"serve(heartbeat=...) must be a fsm.Heartbeat, got {heartbeat!r}")
    if limits is not None and not isinstance(limits, Limits):
        raise TypeError(f"serve(limits=...) must be an adapters.hub.Limits, got {limits!r}")
    if ssl is not None and not isinstance(ssl, ssl_module.SSLContext):
        raise TypeError(f"serve(ssl=...) must be an ssl.SSLContext, got {ssl!r}")
    if authenticate is not None and not callable(authenticate):
        raise TypeError(f"serve(authenticate=...) must be callable as authenticate(request), "
                        f"got {authenticate!r}")
    expire_after = seconds("serve(expire_after=...)", expire_after)
    ack_delay = seconds("serve(ack_delay=...)", ack_delay, allow_zero=True)
    ack_every = count("serve(ack_every=...)", ack_every)
    hub = Hub(handler, _check_store(store) if store is not None else MemoryStore(),
              owns_store=store is None, heartbeat=heartbeat or Heartbeat(),
              limits=limits or Limits(), expire_after=expire_after, ack_delay=ack_delay,
              ack_every=ack_every, authenticate=authenticate)
    try:
        await hub._start(host, port, ssl)
    except BaseException:
        await hub.close()
        raise
    return hub
