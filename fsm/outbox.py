"""A bounded outbox with sequence numbers: nothing is lost, nothing is doubled.

Every accepted message gets the next sequence number and waits in ``pending`` until the
lifecycle lets the outbox flow. Transmitted messages are either done (plain mode: once
written, the socket owns them) or move to ``inflight`` until the peer acknowledges them
(session mode; cumulative acks). On resume, ``rewind()`` puts the unacknowledged ones back
in front, in order, for replay. On close or failure, ``drain()`` hands every message that
was not delivered back to the caller. The outbox never drops a message silently.

Overflow is explicit: with ``Overflow.RAISE`` a full outbox refuses the new message
(:class:`fsm.errors.OutboxFull`, NATS' choice); with ``Overflow.HAND_BACK`` it accepts the
new message and hands back the *oldest pending* one, which the caller gets as undelivered.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fsm.errors import OutboxFull

__all__ = ["DEFAULT_LIMIT", "Envelope", "Outbox", "Overflow"]

#: Default bound: 1,000 messages. An agent produces a few messages a second; this covers
#: several minutes of outage and bounds memory to what the caller chose to send.
DEFAULT_LIMIT = 1000


class Overflow(StrEnum):
    """What a full outbox does with one more message."""

    RAISE = "raise"
    HAND_BACK = "hand_back"


@dataclass(frozen=True, slots=True)
class Envelope:
    """One message: ``seq`` orders it among all the link's messages (1, 2, 3, ...);
    ``wire`` is its number on the current session's wire, stamped when it is first
    transmitted and kept for replays within that session (``None`` until then).

    ``urgent`` marks a message a rebuild hook sent: it belongs to the session being
    rebuilt and is not carried over to a new one (the hook sends it again there).
    """

    seq: int
    payload: Any
    urgent: bool = False
    wire: int | None = None


class Outbox:
    """Pending and in-flight messages, bounded by ``limit`` together."""

    __slots__ = ("_inflight", "_next_seq", "_next_wire", "_pending", "limit", "overflow")

    def __init__(self, limit: int = DEFAULT_LIMIT, overflow: Overflow = Overflow.RAISE) -> None:
        if limit < 1:
            raise ValueError(f"outbox limit must be at least 1, got {limit}")
        self.limit = limit
        self.overflow = Overflow(overflow)
        self._pending: deque[Envelope] = deque()
        self._inflight: deque[Envelope] = deque()  # in transmission (wire) order
        self._next_seq = 1
        self._next_wire = 1

    def __repr__(self) -> str:
        return f"Outbox(limit={self.limit}, overflow={self.overflow.value!r})"

    def __len__(self) -> int:
        return len(self._pending) + len(self._inflight)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def next_wire(self) -> int:
        """The wire number the next transmitted message will get on this session."""
        return self._next_wire

    def push(self, payload: Any) -> tuple[Envelope, list[Envelope]]:
        """Accept ``payload``; return its envelope and any envelope handed back for room."""
        evicted: list[Envelope] = []
        if len(self) >= self.limit:
            if self.overflow is Overflow.RAISE or not self._pending:
                raise OutboxFull(
                    f"outbox holds {len(self)} of {self.limit} messages "
                    f"({self.inflight} awaiting acknowledgement); message not accepted"
                )
            evicted.append(self._pending.popleft())
        envelope = Envelope(self._next_seq, payload)
        self._next_seq += 1
        self._pending.append(envelope)
        return envelope, evicted

    def restore(self, next_wire: int, messages: Iterable[tuple[int, Any]]) -> None:
        """Refill an empty outbox from a durable store after a restart: ``messages`` are
        (wire number, payload) still unacknowledged, held in flight for replay; the next
        transmitted message gets ``next_wire``."""
        if len(self):
            raise ValueError(f"restore() needs an empty outbox, this one holds {len(self)}")
        for wire, payload in messages:
            self._inflight.append(Envelope(self._next_seq, payload, wire=wire))
            self._next_seq += 1
        self._next_wire = next_wire

    def push_urgent(self, payload: Any) -> Envelope:
        """Accept a rebuild hook's message for immediate transmission (in flight at once,
        stamped with the next wire number). Not bounded by ``limit``: a rebuild sends a
        handful of messages and must not fail because the outbox is full of the
        messages waiting for it to finish."""
        envelope = Envelope(self._next_seq, payload, urgent=True, wire=self._next_wire)
        self._next_seq += 1
        self._next_wire += 1
        self._inflight.append(envelope)
        return envelope

    def take(self, *, track: bool, room: int | None = None) -> list[Envelope]:
        """Remove pending messages for transmission (all of them, or at most ``room``),
        stamping wire numbers on those that have none; keep them in flight (until
        settled) if ``track``."""
        count = len(self._pending) if room is None else max(0, min(room, len(self._pending)))
        taken: list[Envelope] = []
        for _ in range(count):
            envelope = self._pending.popleft()
            stamped = envelope
            if envelope.wire is None:
                stamped = replace(envelope, wire=self._next_wire)
                self._next_wire += 1
            taken.append(stamped)
        if track:
            self._inflight.extend(taken)
        return taken

    def take_replays(self) -> list[Envelope]:
        """Remove, for retransmission, the pending messages that already carry a wire
        number (sent on this session before a drop); the rest keep waiting."""
        replays: list[Envelope] = []
        while self._pending and self._pending[0].wire is not None:
            replays.append(self._pending.popleft())
        self._inflight.extend(replays)
        return replays

    def ack(self, upto: int) -> list[Envelope]:
        """The peer has every message up to and including wire number ``upto``: forget
        them, in flight or rewound for replay (a resume's ack settles those too)."""
        acked: list[Envelope] = []
        while self._inflight and (self._inflight[0].wire or 0) <= upto:
            acked.append(self._inflight.popleft())
        while not self._inflight and self._pending and \
                self._pending[0].wire is not None and self._pending[0].wire <= upto:
            acked.append(self._pending.popleft())
        return acked

    def rewind(self) -> int:
        """Put unsettled messages back in front of the pending ones, keeping their wire
        numbers, for replay on the same session."""
        count = len(self._inflight)
        self._pending.extendleft(reversed(self._inflight))
        self._inflight.clear()
        return count

    def new_session(self) -> list[Envelope]:
        """A new session numbers its wire from 1: every held message loses its wire
        number and waits, in order; the rebuild messages of the old session are dropped
        (the rebuild sends them again) and returned."""
        held = sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
        self._inflight.clear()
        self._pending = deque(replace(e, wire=None) for e in held if not e.urgent)
        self._next_wire = 1
        return [e for e in held if e.urgent]

    def drain(self) -> list[Envelope]:
        """Remove and return every undelivered message, oldest first."""
        everything = sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
        self._inflight.clear()
        self._pending.clear()
        return everything

    def holds(self, seq: int) -> bool:
        """True while message ``seq`` is pending or unsettled."""
        return any(e.seq == seq for e in self._pending) or \
            any(e.seq == seq for e in self._inflight)

    def peek(self) -> Iterable[Envelope]:
        """Every message held, in order, without removing any (for tests and statistics)."""
        return sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
