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
from dataclasses import dataclass
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
    """One message and its sequence number (1, 2, 3, ... per link)."""

    seq: int
    payload: Any


class Outbox:
    """Pending and in-flight messages, bounded by ``limit`` together."""

    __slots__ = ("_inflight", "_next_seq", "_pending", "limit", "overflow")

    def __init__(self, limit: int = DEFAULT_LIMIT, overflow: Overflow = Overflow.RAISE) -> None:
        if limit < 1:
            raise ValueError(f"outbox limit must be at least 1, got {limit}")
        self.limit = limit
        self.overflow = Overflow(overflow)
        self._pending: deque[Envelope] = deque()
        self._inflight: deque[Envelope] = deque()
        self._next_seq = 1

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

    def take(self, *, track: bool) -> list[Envelope]:
        """Remove every pending message for transmission; keep them in flight if ``track``."""
        taken = list(self._pending)
        self._pending.clear()
        if track:
            self._inflight.extend(taken)
        return taken

    def ack(self, upto: int) -> list[Envelope]:
        """The peer has every message up to and including ``upto``; forget them."""
        acked: list[Envelope] = []
        while self._inflight and self._inflight[0].seq <= upto:
            acked.append(self._inflight.popleft())
        return acked

    def rewind(self) -> int:
        """Put unacknowledged messages back in front of the pending ones, for replay."""
        count = len(self._inflight)
        self._pending.extendleft(reversed(self._inflight))
        self._inflight.clear()
        return count

    def drain(self) -> list[Envelope]:
        """Remove and return every undelivered message, oldest first."""
        everything = sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
        self._inflight.clear()
        self._pending.clear()
        return everything

    def peek(self) -> Iterable[Envelope]:
        """Every message held, in order, without removing any (for tests and statistics)."""
        return sorted([*self._inflight, *self._pending], key=lambda e: e.seq)
