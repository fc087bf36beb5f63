"""A small session-mode server over the in-memory transport, for tests on a virtual clock.

:class:`SessionPeer` is a :class:`~adapters.memory.MemoryServer` handler that speaks
``models/PROTOCOL.md`` the way the reference hub does, with none of its persistence: it
opens and resumes sessions (a wrong token is ``unauthorized``), delivers each client
``msg`` once and in order (duplicates dropped and acknowledged again, a gap refused),
acknowledges on every frame, answers ``ping``, and holds its own messages to the client
(:meth:`SessionPeer.send`) until they are acknowledged, replaying them on resume. When its
:class:`~adapters.memory.MemoryServer` crashes without keeping state (``server.epoch``
moves), it forgets every session and answers with a new epoch: the client rebuilds.

What it records is what the property kit checks: ``delivered[epoch]`` lists the data of
every client message it delivered in that epoch, in order; ``violations`` lists every
protocol error a client committed (a correct client commits none).

Unrealistic: no limits are announced or enforced beyond the client's window, the handler
is the recording itself, and a crash loses or keeps everything at once.
"""

from __future__ import annotations

import secrets
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from adapters.memory import MemoryServer, ServerConnection
from fsm import protocol
from fsm.errors import TransportError
from fsm.protocol import Ack, Hello, Msg, Ping, Pong, ProtocolViolation, Welcome
from fsm.protocol import Error as ErrorFrame
from fsm.session import Receiver

__all__ = ["SessionPeer"]


@dataclass
class _Session:
    token: str
    receiver: Receiver = field(default_factory=Receiver)
    unacked: list[tuple[int, str]] = field(default_factory=list)  # (wire, data JSON)
    next_wire: int = 1
    sent: int = 0  # the highest wire number transmitted on the current connection
    window: int | None = None  # the client's, from its hello
    conn: ServerConnection | None = None


class SessionPeer:
    """A session-mode server for :class:`~adapters.memory.MemoryServer`; see the module."""

    def __init__(self) -> None:
        self.server: MemoryServer | None = None
        self._epoch_seen = -1
        self.epoch = ""
        self.sessions: dict[str, _Session] = {}
        self.delivered: defaultdict[str, list[Any]] = defaultdict(list)
        self.violations: list[str] = []

    def attach(self, server: MemoryServer) -> MemoryServer:
        """Serve on ``server`` (made with ``MemoryServer(peer)``); returns it."""
        self.server = server
        return server

    def _current_epoch(self) -> None:
        assert self.server is not None, "call attach(server) first"
        if self.server.epoch != self._epoch_seen:  # a crash that lost the state
            self._epoch_seen = self.server.epoch
            self.epoch = f"e{self.server.epoch}-{secrets.token_hex(3)}"
            self.sessions.clear()

    async def send(self, session_id: str, data: Any) -> None:
        """Queue ``data`` for the client of ``session_id``: numbered, held until
        acknowledged, transmitted now if the client is connected."""
        session = self.sessions[session_id]
        text = protocol.encode_data(data)
        session.unacked.append((session.next_wire, text))
        session.next_wire += 1
        await self._flow(session)

    async def _flow(self, session: _Session) -> None:
        """Transmit what the client's window allows, in order."""
        conn = session.conn
        if conn is None or conn.closed:
            return
        for wire, text in list(session.unacked):
            if wire <= session.sent:
                continue
            if session.window is not None and wire - self._acked(session) > session.window:
                break
            session.sent = wire
            await conn.send(protocol.msg_text(wire, session.receiver.acknowledged(), text))

    @staticmethod
    def _acked(session: _Session) -> int:
        return session.unacked[0][0] - 1 if session.unacked else session.next_wire - 1

    async def __call__(self, conn: ServerConnection) -> None:
        self._current_epoch()
        session: _Session | None = None
        try:
            session = await self._handshake(conn)
            while True:
                await self._on_frame(conn, session, protocol.decode(await conn.receive()))
        except ProtocolViolation as violation:
            self.violations.append(str(violation))
            await conn.send(protocol.encode(ErrorFrame(code=violation.code,
                                                       message=violation.detail)))
            await conn.close(1002, violation.code)
        except TransportError:
            pass
        finally:
            if session is not None and session.conn is conn:
                session.conn = None

    async def _handshake(self, conn: ServerConnection) -> _Session:
        hello = protocol.decode(await conn.receive())
        if not isinstance(hello, Hello):
            raise ProtocolViolation("handshake", f"expected hello, got {hello!r}")
        window = hello.limits.get("max_inflight")
        known = self.sessions.get(hello.session or "")
        if known is not None and hello.token is not None:
            if not secrets.compare_digest(known.token, hello.token):
                raise ProtocolViolation("unauthorized", "wrong token for this session")
            old = known.conn
            known.conn, known.window = conn, window
            if old is not None:
                old.abort()
            self._trim(known, hello.ack)
            known.sent = self._acked(known)  # replay the rest, in order
            await conn.send(protocol.encode(Welcome(
                session=hello.session or "", epoch=self.epoch, resumed=True,
                ack=known.receiver.acknowledged())))
            await self._flow(known)
            return known
        session_id = secrets.token_urlsafe(9)
        session = _Session(token=secrets.token_urlsafe(18), conn=conn, window=window)
        self.sessions[session_id] = session
        await conn.send(protocol.encode(Welcome(session=session_id, epoch=self.epoch,
                                                resumed=False, ack=0, token=session.token)))
        return session

    def _trim(self, session: _Session, ack: int) -> None:
        if ack > session.next_wire - 1:
            raise ProtocolViolation("ack", f"client acknowledged {ack}, but we sent only up "
                                           f"to {session.next_wire - 1}")
        session.unacked = [(w, t) for w, t in session.unacked if w > ack]

    async def _on_frame(self, conn: ServerConnection, session: _Session,
                        frame: protocol.Frame) -> None:
        if not isinstance(frame, Msg | Ack | Ping | Pong):
            raise ProtocolViolation("handshake", f"unexpected {frame!r} after the handshake")
        self._trim(session, frame.ack)
        if isinstance(frame, Msg):
            if session.receiver.receive(frame, 0.0):
                self.delivered[self.epoch].append(frame.data)
            await conn.send(protocol.encode(Ack(ack=session.receiver.acknowledged())))
        elif isinstance(frame, Ping):
            await conn.send(protocol.encode(Pong(ack=session.receiver.acknowledged())))
        await self._flow(session)
