"""The session server's protocol decisions (``models/PROTOCOL.md``), with no I/O.

The client has :mod:`fsm.lifecycle` and :mod:`fsm.session`; this is the other end, the
piece the hub (``adapters/hub``) drives, as websockets has one sans-I/O protocol per
side. Time is an input (``now``), nothing here reads a clock, touches a socket or a
store; what the hub must do is returned or raised (:class:`~fsm.protocol.ProtocolViolation`
with the protocol's error code). Presence timing is :mod:`fsm.presence`, driven by the
same heartbeat policy.

* :func:`hello_kind` and :func:`store_forgot` (rules 1-3): a ``hello`` opens or resumes;
  a client that acknowledges more than the store ever sent proves the store forgot
  (the hub then moves it to a new epoch instead of resuming).
* :class:`Intake` (rule 4): the client's messages on one session: deliver the next,
  drop duplicates (and owe an acknowledgement if they were delivered), refuse a gap or
  more than ``max_inflight`` unacknowledged.
* :class:`Ledger` (rules 3, 5 and the client's window): the server's messages the
  client has not acknowledged, each held once, released to the wire in wire order even
  when the store's answers come back out of order, bounded in count and bytes (room is
  reserved when a message is sent, so the commit cannot fail for it).
* :class:`AckClock` (rule 5): when a standalone ``ack`` is owed: at once after
  ``ack_every`` messages, else ``ack_delay`` after the first one it covers, unless a
  frame carried it first.

Rules
-----
1. Nothing is acknowledged that is not committed: :attr:`Intake.committed` moves only
   by :meth:`Intake.delivered`, which the hub calls after the store's commit returned.
2. Every wire number reaches the client once, in order: :meth:`Ledger.arrive` holds a
   message until every lower number arrived; one that arrived before is ignored.
3. An acknowledgement beyond the highest wire number released is a protocol error
   (``ack``); one that goes backwards is ignored.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from enum import Enum

from fsm.errors import OutboxFull
from fsm.protocol import Hello, ProtocolViolation

__all__ = ["AckClock", "Intake", "Ledger", "Verdict", "hello_kind", "store_forgot"]


def hello_kind(hello: Hello) -> str:
    """``"resume"`` (session and token given) or ``"open"`` (neither); a hello with
    one of them only is ``malformed``."""
    if (hello.session is None) != (hello.token is None):
        raise ProtocolViolation("malformed", "hello needs both 'session' and 'token' to "
                                             "resume, or neither")
    return "open" if hello.session is None else "resume"


def store_forgot(client_ack: int, next_wire: int) -> bool:
    """The client acknowledges ``client_ack``, the store's next wire number is
    ``next_wire``: true if the client has a message the store never sent (the store
    lost writes it had acknowledged: an fsync window, a failover to a lagging replica).
    Resuming would number new messages with wire numbers the client already has."""
    return client_ack >= next_wire


class Verdict(Enum):
    """What to do with a client ``msg`` (:meth:`Intake.receive`)."""

    #: The next in order: queue it for delivery.
    DELIVER = "deliver"
    #: Read on this connection already, not delivered yet: drop it.
    DUPLICATE = "duplicate"
    #: Delivered (committed) already: drop it, and acknowledge again so the client stops
    #: replaying it.
    DUPLICATE_ACK = "duplicate_ack"


@dataclass(slots=True)
class Intake:
    """The client's messages on one session: ``committed`` (``last_in``, the highest
    ``seq`` whose delivery the store committed) and ``read`` (the highest read on the
    current connection, queued or being delivered)."""

    committed: int = 0
    read: int = 0
    duplicates: int = 0

    def attached(self) -> None:
        """A new connection: what was read on the old one and not delivered is gone."""
        self.read = self.committed

    def receive(self, seq: int, acked_on_wire: int, max_inflight: int) -> Verdict:
        """Judge ``msg`` number ``seq``; ``acked_on_wire``: the highest acknowledgement
        written to this connection. Raises ``overflow`` or ``gap``."""
        if seq <= self.read:
            self.duplicates += 1
            return Verdict.DUPLICATE_ACK if seq <= self.committed else Verdict.DUPLICATE
        if seq - acked_on_wire > max_inflight:
            raise ProtocolViolation("overflow", f"msg {seq} while the hub acknowledged "
                                                f"{acked_on_wire}: more than max_inflight "
                                                f"{max_inflight}")
        if seq != self.read + 1:
            raise ProtocolViolation("gap", f"expected msg seq {self.read + 1}, got {seq}")
        self.read = seq
        return Verdict.DELIVER

    def delivered(self, seq: int) -> None:
        """The store committed the delivery of ``seq`` (rule 1)."""
        if seq != self.committed + 1:
            raise ValueError(f"delivered seq {seq}, but last_in is {self.committed}")
        self.committed = seq


@dataclass(slots=True)
class Ledger:
    """The server's messages to one client that it has not acknowledged: ``held``
    (``(wire, text, size)``, contiguous from the oldest), ``early`` (committed with a
    wire number above a gap: waiting for the lower ones), and room ``reserved`` for
    messages sent but not committed yet. ``limits``: ``(messages, bytes)``."""

    limits: tuple[int, int]
    next_wire: int = 1  # the next wire number to arrive, in order
    held: deque[tuple[int, str, int]] = field(default_factory=deque)
    held_bytes: int = 0
    early: dict[int, tuple[str, int]] = field(default_factory=dict)
    reserved: int = 0
    reserved_bytes: int = 0

    @classmethod
    def load(cls, limits: tuple[int, int], next_wire: int,
             messages: list[tuple[int, str]]) -> Ledger:
        """What the store holds for the session: ``next_wire`` and its unacknowledged
        messages (``(wire, text)`` in order)."""
        ledger = cls(limits, next_wire)
        for wire, text in messages:
            size = len(text.encode("utf-8"))
            ledger.held.append((wire, text, size))
            ledger.held_bytes += size
        return ledger

    @property
    def unacked(self) -> int:
        return len(self.held) + len(self.early)

    @property
    def highest_wire(self) -> int:
        """The highest wire number the client can have seen (every lower one arrived)."""
        return self.next_wire - 1

    @property
    def client_acked(self) -> int:
        """The highest wire number the client acknowledged."""
        return self.held[0][0] - 1 if self.held else self.next_wire - 1

    @property
    def pending(self) -> bool:
        """Messages reserved or committed above a gap: the session holds something."""
        return bool(self.reserved or self.early)

    def reserve(self, size: int, session_id: str) -> None:
        """Room for one more message of ``size`` bytes, or :class:`OutboxFull`."""
        most, most_bytes = self.limits
        count = len(self.held) + len(self.early) + self.reserved + 1
        taken = self.held_bytes + self.reserved_bytes + size
        if count > most or taken > most_bytes:
            raise OutboxFull(
                f"session {session_id} holds {count - 1} unacknowledged or pending messages "
                f"({taken - size} bytes); limits are {most} messages and {most_bytes} "
                f"bytes: message not accepted")
        self.reserved += 1
        self.reserved_bytes += size

    def unreserve(self, size: int) -> None:
        self.reserved -= 1
        self.reserved_bytes -= size

    def arrive(self, wire: int, text: str, size: int) -> bool:
        """The store committed a reserved message as ``wire``: hold it (rule 2). True
        if messages became ready for the wire."""
        self.unreserve(size)
        return self._place(wire, text, size)

    def found(self, wire: int, text: str) -> bool:
        """A message the hub did not reserve (another hub committed it; read from a
        shared store): hold it like one of ours (rule 2)."""
        if wire < self.next_wire or wire in self.early:
            return False
        return self._place(wire, text, len(text.encode("utf-8")))

    def _place(self, wire: int, text: str, size: int) -> bool:
        if wire < self.next_wire or wire in self.early:
            return False  # it arrived already (read from the store before its answer)
        self.early[wire] = (text, size)
        moved = False
        while self.next_wire in self.early:
            text, size = self.early.pop(self.next_wire)
            self.held.append((self.next_wire, text, size))
            self.held_bytes += size
            self.next_wire += 1
            moved = True
        return moved

    def check_ack(self, ack: int) -> None:
        """Rule 3: ``ack`` from the client must not exceed what was released."""
        if ack > self.highest_wire:
            raise ProtocolViolation("ack", f"client acknowledged {ack}, but the hub sent "
                                           f"only up to {self.highest_wire}")

    def acknowledge(self, upto: int) -> None:
        """The client has every message up to ``upto``: forget them."""
        while self.held and self.held[0][0] <= upto:
            _, _, size = self.held.popleft()
            self.held_bytes -= size

    def message_after(self, sent: int, window: int | None) -> tuple[int, str] | None:
        """The first held message above ``sent`` that the client's ``window`` (its
        ``hello.limits.max_inflight``; ``None``: no window) lets out now."""
        if not self.held:
            return None
        index = max(0, sent + 1 - self.held[0][0])
        if index >= len(self.held):
            return None
        wire, text, _ = self.held[index]
        if window is not None and wire - self.client_acked > window:
            return None  # the client's window is full: wait for its acks
        return wire, text


class AckClock:
    """When a standalone ``ack`` is owed to the client (rule 5 of the protocol):
    :meth:`owe` answers ``True`` (write one now), a deadline (write one then, unless a
    frame carries it first: :meth:`carried`), or ``None`` (nothing owed)."""

    __slots__ = ("ack_delay", "ack_every", "forced", "owed_since")

    def __init__(self, ack_delay: float, ack_every: int) -> None:
        self.ack_delay = ack_delay
        self.ack_every = ack_every
        self.owed_since: float | None = None
        self.forced = False

    def __repr__(self) -> str:
        return f"AckClock(owed_since={self.owed_since!r}, forced={self.forced!r})"

    def owe(self, now: float, committed: int, acked_on_wire: int, *,
            force: bool = False) -> bool | float | None:
        """``committed`` moved (or a duplicate came, ``force``): is an ack owed?"""
        if force:
            self.forced = True
        elif acked_on_wire >= committed:
            return None
        if self.owed_since is None:
            self.owed_since = now
        due = self.owed_since + self.ack_delay
        if committed - acked_on_wire >= self.ack_every or now >= due:
            return True
        return due

    def due(self, committed: int, acked_on_wire: int) -> bool:
        """The deadline came: write an ``ack`` unless a frame carried it meanwhile."""
        return self.forced or acked_on_wire < committed

    def carried(self, ack: int, committed: int) -> bool:
        """A frame carrying ``ack`` went out; true if nothing is owed any more."""
        if ack >= committed:
            self.owed_since = None
            self.forced = False
            return True
        return False
