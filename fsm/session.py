"""Session bookkeeping for ``models/PROTOCOL.md``, for both ends, with no I/O.

:class:`Receiver` is the inbound half of one direction of a session: it delivers each
``msg`` once and in order (``seq == last + 1``), drops duplicates, refuses gaps, and
decides when an acknowledgement is owed: on every outgoing frame (piggyback), or after
``ack_delay`` seconds or ``ack_every`` messages with nothing else to send (batching).

:class:`ClientSession` holds what a client keeps across connections: the session id, the
secret resume token (never in ``repr``), the epoch, and its :class:`Receiver`. The outbound
half is the lifecycle's :class:`fsm.outbox.Outbox`, which stamps wire numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fsm.protocol import DEFAULT_MAX_FRAME, Hello, Msg, ProtocolViolation, Welcome

__all__ = ["DEFAULT_ACK_DELAY", "DEFAULT_ACK_EVERY", "ClientSession", "Receiver"]

#: A standalone ack goes out at most 50 ms after the first message it covers: short next
#: to any heartbeat, long enough to ride on the next outgoing frame in a busy exchange.
DEFAULT_ACK_DELAY = 0.05
#: ... or after 32 unacknowledged messages, well inside the peer's ``max_inflight``.
DEFAULT_ACK_EVERY = 32


@dataclass(slots=True)
class Receiver:
    """Inbound sequence tracking and acknowledgement batching for one direction.

    ``ack_on_receive``: a new message makes an acknowledgement owed at once (the hub,
    which acknowledges what it committed). A client that acknowledges only what its
    application has taken sets it to false and calls :meth:`owe` when that happens, so
    the peer's window of unacknowledged messages is real end-to-end backpressure.
    Duplicates always owe one: the sender must learn to stop replaying."""

    last: int = 0
    ack_delay: float = DEFAULT_ACK_DELAY
    ack_every: int = DEFAULT_ACK_EVERY
    owed: int = 0
    owed_since: float | None = None
    duplicates: int = 0
    ack_on_receive: bool = True

    def receive(self, msg: Msg, now: float) -> bool:
        """True if ``msg`` is new and must be delivered; False for a duplicate.
        Raises :class:`ProtocolViolation` (``gap``) when messages are missing."""
        if msg.seq <= self.last:
            self.duplicates += 1
            self.owe(now)  # acknowledge again so the sender stops replaying
            return False
        if msg.seq != self.last + 1:
            raise ProtocolViolation("gap", f"expected msg seq {self.last + 1}, got {msg.seq}")
        self.last = msg.seq
        if self.ack_on_receive:
            self.owe(now)
        return True

    def owe(self, now: float) -> None:
        """One more message deserves an acknowledgement (see :meth:`ack_due`)."""
        self.owed += 1
        if self.owed_since is None:
            self.owed_since = now

    def acknowledged(self) -> int:
        """A frame carrying ``ack=last`` is going out: nothing is owed any more."""
        self.owed, self.owed_since = 0, None
        return self.last

    def ack_deadline(self) -> float | None:
        """When a standalone ``ack`` must go out if nothing else does."""
        return None if self.owed_since is None else self.owed_since + self.ack_delay

    def ack_due(self, now: float) -> bool:
        deadline = self.ack_deadline()
        return deadline is not None and (self.owed >= self.ack_every or now >= deadline)

    def reset(self) -> None:
        """A new session: the peer numbers from 1 again."""
        self.last, self.owed, self.owed_since = 0, 0, None


@dataclass(slots=True)
class ClientSession:
    """What a client remembers about its session between connections.

    ``taken``: the highest inbound ``seq`` the application has taken; it is what the
    client acknowledges (``hello.ack`` included), so the server holds, and replays on
    resume, everything the application has not read yet. ``receiver.last`` may run
    ahead of it by what waits in the client's inbound queue."""

    session_id: str | None = None
    token: str | None = field(default=None, repr=False)
    epoch: str | None = None
    receiver: Receiver = field(default_factory=lambda: Receiver(ack_on_receive=False))
    max_inflight: int | None = None
    max_frame: int = DEFAULT_MAX_FRAME  # the server's, from its last welcome
    taken: int = 0
    window: int | None = None  # ours: the most server messages we hold unacknowledged

    def hello(self) -> Hello:
        """The hello for a new connection: resume if we hold a session, else open one;
        it announces our window (``limits.max_inflight``), if we have one."""
        limits = {} if self.window is None else {"max_inflight": self.window}
        return Hello(ack=self.taken, session=self.session_id, token=self.token,
                     limits=limits)

    def take(self, seq: int, now: float) -> None:
        """The application took inbound message ``seq`` of this session: acknowledge it."""
        if seq > self.taken:
            self.taken = seq
            self.receiver.owe(now)

    def acknowledged(self) -> int:
        """The ack for a frame going out now (nothing is owed after it)."""
        self.receiver.acknowledged()
        return self.taken

    def welcomed(self, welcome: Welcome) -> None:
        """Adopt the server's answer. A new session resets the inbound numbering."""
        if welcome.resumed:
            if welcome.session != self.session_id:
                raise ProtocolViolation(
                    "handshake", f"welcome resumes session {welcome.session!r}, but we "
                                 f"asked for {self.session_id!r}")
        else:
            if not welcome.token:
                raise ProtocolViolation("malformed", "welcome for a new session lacks 'token'")
            self.session_id, self.token = welcome.session, welcome.token
            self.receiver.reset()
            self.taken = 0
        self.epoch = welcome.epoch
        self.max_inflight = welcome.limits.get("max_inflight")
        self.max_frame = welcome.limits.get("max_frame", DEFAULT_MAX_FRAME)

    def forget(self) -> None:
        """The server refused our token: start a new session next time."""
        self.session_id = self.token = None
        self.receiver.reset()
        self.taken = 0
