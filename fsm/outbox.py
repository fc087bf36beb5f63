"""A bounded outbox with sequence numbers: nothing is lost, nothing is doubled.

Every accepted message gets the next sequence number and waits in ``pending`` until the
lifecycle lets the outbox flow. Transmitted messages are either done (plain mode: once
written, the socket owns them) or move to ``inflight`` until the peer acknowledges them
(session mode; cumulative acks). On resume, ``rewind()`` puts the unacknowledged ones back
in front, in order, for replay. On close or failure, ``drain()`` hands every message that
was not delivered back to the caller. The outbox never drops a message silently.

Overflow is explicit: with ``Overflow.RAISE`` a full outbox refuses the new message
(:class:`fsm.errors.OutboxFull`, NATS' choice); with ``Overflow.HAND_BACK`` it accepts the
new message and hands back the *oldest pending* ones, which the caller gets as
undelivered.

The bound counts messages (``limit``) and, when the caller says how to size a payload
(``size_of``), bytes (``max_bytes``): messages vary in size, and a thousand 1 MiB
messages are not a thousand chat lines. One message is always accepted into an empty
outbox, whatever its size (the transport's own frame limit is the place to refuse it).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from fsm.checks import count
from fsm.errors import OutboxFull

__all__ = ["DEFAULT_LIMIT", "DEFAULT_MAX_BYTES", "Envelope", "Outbox", "Overflow"]

#: Default bound: 1,000 messages. An agent produces a few messages a second; this covers
#: several minutes of outage and bounds memory to what the caller chose to send.
DEFAULT_LIMIT = 1000
#: ... and 16 MiB of encoded messages, whichever comes first (NATS buffers 8 MiB while
#: reconnecting; an agent's transcript of several minutes fits well inside).
DEFAULT_MAX_BYTES = 16 * 2**20


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
    """Pending and in-flight messages, bounded by ``limit`` (and ``max_bytes``) together."""

    __slots__ = ("_bytes", "_inflight", "_next_seq", "_next_wire", "_pending", "limit",
                 "max_bytes", "overflow", "size_of")

    def __init__(self, limit: int = DEFAULT_LIMIT, overflow: Overflow = Overflow.RAISE, *,
                 max_bytes: int | None = None,
                 size_of: Callable[[Any], int] | None = None) -> None:
        count("outbox limit", limit, what="messages")
        if max_bytes is not None:
            count("outbox max_bytes", max_bytes, what="bytes; None for no byte bound")
        if max_bytes is not None and size_of is None:
            raise ValueError("outbox max_bytes needs size_of, the function that sizes a "
                             "payload in bytes")
        try:
            self.overflow = Overflow(overflow)
        except ValueError:
            raise ValueError(f"overflow must be one of {[o.value for o in Overflow]}, got "
                             f"{overflow!r}") from None
        self.limit = limit
        self.max_bytes = max_bytes
        self.size_of = size_of
        self._bytes = 0
        self._pending: deque[Envelope] = deque()
        self._inflight: deque[Envelope] = deque()  # in transmission (wire) order
        self._next_seq = 1
        self._next_wire = 1

    def __repr__(self) -> str:
        return (f"Outbox(limit={self.limit}, overflow={self.overflow.value!r}, "
                f"max_bytes={self.max_bytes!r})")

    def __len__(self) -> int:
        return len(self._pending) + len(self._inflight)

    @property
    def pending(self) -> int:
        return len(self._pending)

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def bytes(self) -> int:
        """Bytes held, as ``size_of`` measures them (0 without it)."""
        return self._bytes

    def _size(self, payload: Any) -> int:
        return self.size_of(payload) if self.size_of is not None else 0

    def _full(self, size: int) -> bool:
        if not len(self):
            return False
        if len(self) >= self.limit:
            return True
        return self.max_bytes is not None and self._bytes + size > self.max_bytes

    @property
    def next_seq(self) -> int:
        return self._next_seq

    @property
    def next_wire(self) -> int:
        """The wire number the next transmitted message will get on this session."""
        return self._next_wire

    def push(self, payload: Any) -> tuple[Envelope, list[Envelope]]:
        """Accept ``payload``; return its envelope and any envelope handed back for room."""
        size = self._size(payload)
        evicted: list[Envelope] = []
        while self._full(size):
            if self.overflow is Overflow.RAISE or not self._pending:
                what = (f"{len(self)} of {self.limit} messages" if len(self) >= self.limit
                        else f"{self._bytes} bytes; {size} more would pass max_bytes "
                             f"{self.max_bytes}")
                raise OutboxFull(f"outbox holds {what} ({self.inflight} awaiting "
                                 f"acknowledgement); message not accepted")
            oldest = self._pending.popleft()
            self._bytes -= self._size(oldest.payload)
            evicted.append(oldest)
        envelope = Envelope(self._next_seq, payload)
        self._next_seq += 1
        self._bytes += size
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
            self._bytes += self._size(payload)
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
        self._bytes += self._size(payload)
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
        else:
            self._forget(taken)
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
        self._forget(acked)
        return acked

    def _forget(self, envelopes: Iterable[Envelope]) -> None:
        if self.size_of is not None:
            self._bytes -= sum(self._size(e.payload) for e in envelopes)

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
        dropped = [e for e in held if e.urgent]
        self._forget(dropped)
        return dropped

    def drain(self) -> list[Envelope]:
        """Remove and return every undelivered message, oldest first."""
        everything = sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
        self._inflight.clear()
        self._pending.clear()
        self._bytes = 0
        return everything

    def holds(self, seq: int) -> bool:
        """True while message ``seq`` is pending or unsettled."""
        return any(e.seq == seq for e in self._pending) or \
            any(e.seq == seq for e in self._inflight)

    def peek(self) -> Iterable[Envelope]:
        """Every message held, in order, without removing any (for tests and statistics)."""
        return sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
