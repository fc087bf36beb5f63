"""One client socket: the websockets connection it rides on, and the frames it writes.

:class:`WireConnection` is websockets' :class:`ServerConnection` with three checks at the
socket level, before any byte is parsed: a socket over a connection cap is dropped on
accept; it is counted (open, half-open) until it closes; and a client whose socket
buffer keeps growing (websockets answers RFC 6455 pings by itself, unbounded, and a
client that never reads lets those answers pile up) is dropped.

:class:`Channel` writes a socket's frames from one writer task, so nothing the hub does
ever waits on a client. It holds no message: ``msg`` frames are built, when the socket
can take them, around the JSON text the session holds (string formatting: nothing to
encode again, nothing that can fail), and the control frames (``pong``, ``ping``,
``ack``) are flags: a thousand pings unanswered yet cost one ``pong`` with the latest
``ack``. What a connection can hold is therefore bounded: the socket buffer (websockets'
write limit plus one frame) and a handful of flags. A client that takes no frame for
``drain_timeout`` (the heartbeat's bound) is not reading: it is dropped, its session kept
for a resume.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, ClassVar

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from fsm import protocol
from fsm.protocol import Error as ErrorFrame
from fsm.protocol import Welcome

if TYPE_CHECKING:
    from adapters.hub.guard import CalmLog
    from adapters.hub.server import Hub
    from adapters.hub.session import Session

__all__ = ["Channel", "WireConnection"]


class WireConnection(ServerConnection):
    """websockets' server connection with the hub's socket-level checks. ``hub`` is set
    on a subclass per hub (websockets builds connections from a class)."""

    hub: ClassVar[Hub]
    tether_address: str = "?"
    tether_admitted: bool = False
    tether_half_open: bool = True
    tether_principal: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        peer = transport.get_extra_info("peername")
        self.tether_address = str(peer[0]) if peer else "?"
        refusal = self.hub._guard.admit(self.tether_address)
        if refusal is not None:
            self.hub._log.warning("! %s: connection dropped on accept: %s",
                                  self.tether_address, refusal)
            self.transport.abort()
            return
        self.tether_admitted = True

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self.tether_admitted:
            self.tether_admitted = False
            self.hub._guard.release(self.tether_address, half_open=self.tether_half_open)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.transport.get_write_buffer_size() > self.hub._write_budget:
            self.hub._log.warning("! %s: the client does not read (%d bytes unsent): "
                                  "connection dropped", self.tether_address,
                                  self.transport.get_write_buffer_size())
            self.transport.abort()

    def answered(self) -> None:
        """The hello was answered: this socket is no longer half-open."""
        if self.tether_half_open and self.tether_admitted:
            self.tether_half_open = False
            self.hub._guard.answered(self.tether_address)


class Channel:
    """The frames of one socket, written by one task (see the module docstring)."""

    def __init__(self, ws: WireConnection, drain_timeout: float, log: CalmLog) -> None:
        self.ws = ws
        self._log = log
        self.address = ws.tether_address
        self.principal = ws.tether_principal
        self.session: Session | None = None
        self.ack_sent = 0  # highest ack written on this socket: the client's view
        self.sent = 0  # highest wire number written on this socket
        self.msgs_read = 0  # client messages read on this socket (the first may gap)
        self.window: int | None = None  # the client's (hello.limits.max_inflight)
        self.closing = False
        self.reading_done = False  # the reader stopped: deliver what it read, then stop
        self._drain_timeout = drain_timeout
        self._first: str | None = None  # the welcome
        self._final: tuple[str | None, int, str] | None = None  # error text, close
        self._pong = self._ping = self._ack = False
        self._wake = asyncio.Event()
        self._writer = asyncio.create_task(self._write_loop())

    def __repr__(self) -> str:
        return f"Channel({self.address!r}, closing={self.closing})"

    # -- what to write ---------------------------------------------------------------------------

    def welcome(self, frame: Welcome) -> None:
        self._log.debug("> %s %r", self.address, frame)  # Welcome's repr hides the token
        self._first = protocol.encode(frame)
        self.ws.answered()
        self._wake.set()

    def pong(self) -> None:
        self._pong = True
        self._wake.set()

    def ping(self) -> None:
        self._ping = True
        self._wake.set()

    def ack(self) -> None:
        """A standalone ``ack`` (with the session's latest) unless another frame carries
        it first."""
        self._ack = True
        self._wake.set()

    def poke(self) -> None:
        """The session has a message to send."""
        self._wake.set()

    def _next(self) -> str | tuple[int, str] | None:
        if self._first is not None:
            text, self._first = self._first, None
            return text
        if self._final is not None:
            error, code, reason = self._final
            if error is not None:
                self._final = (None, code, reason)
                return error
            return code, reason
        session = self.session
        if session is None or session._channel is not self:
            return None
        ack = session.last_in
        message = session._message_after(self.sent)  # (the client's window applied)
        if message is not None:
            wire, text = message
            self.sent = wire
            self._written(ack)
            return protocol.msg_text(wire, ack, text)
        for kind in ("pong", "ping", "ack"):
            if getattr(self, f"_{kind}"):
                setattr(self, f"_{kind}", False)
                if kind == "ack" and not session._acks.due(ack, self.ack_sent):
                    continue  # another frame carried it already
                self._written(ack)
                return f'{{"type":"{kind}","ack":{ack}}}'
        return None

    def _written(self, ack: int) -> None:
        self.ack_sent = max(self.ack_sent, ack)
        session = self.session
        if session is not None:
            session._ack_carried(ack)

    async def _write_loop(self) -> None:
        try:
            await self._write_frames()
        except ConnectionClosed:
            pass
        except Exception:  # a bug: never a silent, stuck connection
            self._log.exception("! %s: the writer failed; connection dropped", self.address)
            self.abort()

    async def _write_frames(self) -> None:
        while True:
            item = self._next()
            if item is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if isinstance(item, tuple):
                await self.ws.close(*item)
                return
            try:
                async with asyncio.timeout(self._drain_timeout):
                    await self.ws.send(item)
            except TimeoutError:
                self._log.warning("! %s: the client took no frame for %.1f s: not "
                                  "reading; connection dropped (its session is kept)",
                                  self.address, self._drain_timeout)
                self.abort()
                return

    # -- ending ----------------------------------------------------------------------------------

    async def close(self, code: int = 1000, reason: str = "", timeout: float = 2.0) -> None:
        """Write what is due, then close; abort if that takes longer than ``timeout``."""
        if not self.closing:
            self.closing = True
            self._final = (None, code, reason)
            self._wake.set()
        await self._finish(timeout)

    async def fail(self, code: str, message: str, close_code: int, *, fatal: bool = False,
                   retry_after: float | None = None) -> None:
        """``error`` (nothing else is written after it), then close."""
        if self.closing:
            return await self._finish(2.0)
        frame = ErrorFrame(code=code, message=message, fatal=fatal, retry_after=retry_after)
        self._log.debug("> %s %r", self.address, frame)
        self.closing = True
        self._final = (protocol.encode(frame), close_code, code)
        self._wake.set()
        await self._finish(2.0)

    async def _finish(self, timeout: float) -> None:
        done, _ = await asyncio.wait({self._writer}, timeout=timeout)
        if not done:
            self.abort()

    def abort(self) -> None:
        self.closing = True
        self._writer.cancel()
        self.ws.transport.abort()
