"""Events: facts the driver (or the core's own clock check) reports to the lifecycle.

Each event is a frozen dataclass named in the past tense. The class name is the trigger
name in the transition table (:mod:`fsm.table`), so a table row reads like the protocol:
``{"trigger": "ProbeUnanswered", "source": "waiting", "dest": "stale"}``.

Two groups:

* **Inputs** the driver feeds to :meth:`fsm.lifecycle.Lifecycle.handle`.
* **Timer events** the core raises itself when ``now`` passes :meth:`next_deadline`; the
  driver only says :class:`DeadlineReached` (or any other event) and the core works out
  which deadline it was. A driver never fakes a timer event.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from fsm.errors import TransportError

__all__ = [
    "INPUT_EVENTS",
    "TIMER_EVENTS",
    "BackoffElapsed",
    "CloseRequested",
    "ConnectFailed",
    "Connected",
    "Crashed",
    "DeadlineReached",
    "Event",
    "HandshakeTimedOut",
    "MessageReceived",
    "MessagesAcked",
    "MessagesWritten",
    "PongReceived",
    "ProbeUnanswered",
    "RebuildFailed",
    "Rebuilt",
    "SendRequested",
    "SilenceNoticed",
    "Started",
    "TimerFiredLate",
    "TransportLost",
    "TransportReleased",
]


@dataclass(frozen=True, slots=True)
class Event:
    """Base class: every event's trigger name is its class name."""

    @classmethod
    def trigger(cls) -> str:
        return cls.__name__

    def describe(self) -> str:
        """How the event reads in a state change's reason: its name and its fields."""
        details = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))
        return f"{type(self).__name__}({details})" if details else type(self).__name__


# -- inputs from the driver -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started(Event):
    """The user started the link."""


@dataclass(frozen=True, slots=True)
class Connected(Event):
    """A transport opened and its handshake finished.

    ``resumed``: the server still held our session (session mode). ``epoch``: the server's
    epoch, when the protocol has one. ``acked``: the last of our messages the server has
    (session mode), settled at once. ``max_inflight``: the most unacknowledged messages
    the server accepts (session mode); the outbox holds the rest back.
    """

    resumed: bool = False
    epoch: str | None = None
    acked: int = 0
    max_inflight: int | None = None


@dataclass(frozen=True, slots=True)
class ConnectFailed(Event):
    """Opening the transport or its handshake failed."""

    error: TransportError


@dataclass(frozen=True, slots=True)
class Rebuilt(Event):
    """The rebuild hooks finished: the server knows the agent again."""


@dataclass(frozen=True, slots=True)
class RebuildFailed(Event):
    """A rebuild hook raised; the session on this transport is not usable."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class MessageReceived(Event):
    """A data frame arrived. Any frame is proof that the peer is alive."""

    payload: Any = None


@dataclass(frozen=True, slots=True)
class PongReceived(Event):
    """The answer to a probe (or any control frame) arrived; proof of life."""

    rtt: float | None = None


@dataclass(frozen=True, slots=True)
class MessagesWritten(Event):
    """The transport accepted every message up to and including sequence ``upto``.

    In plain mode this is as far as tether can follow a message, so it settles it; in
    session mode only the peer's acknowledgement does.
    """

    upto: int = 0


@dataclass(frozen=True, slots=True)
class TransportLost(Event):
    """The transport closed or broke, or the peer broke the protocol."""

    error: TransportError


@dataclass(frozen=True, slots=True)
class TransportReleased(Event):
    """The aborted transport and its tasks are gone; a new one may be opened."""


@dataclass(frozen=True, slots=True)
class SendRequested(Event):
    """The user asked to send ``payload``. ``urgent``: a rebuild hook sent it, so it goes
    out at once on the connection being rebuilt, ahead of everything queued."""

    payload: Any = field(default=None)
    urgent: bool = False


@dataclass(frozen=True, slots=True)
class MessagesAcked(Event):
    """The peer acknowledged every message up to and including ``upto`` (session mode)."""

    upto: int = 0


@dataclass(frozen=True, slots=True)
class CloseRequested(Event):
    """The user asked to close the link."""


@dataclass(frozen=True, slots=True)
class Crashed(Event):
    """The core raised on an event the driver reported (a bug in a custom spec, an
    action handler or tether itself): the link's state can no longer be trusted, and
    the link fails with ``error`` as the reason."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class DeadlineReached(Event):
    """The driver's timer fired. The core decides which deadline it was (if any)."""


# -- timer events, raised by the core itself ----------------------------------------------


@dataclass(frozen=True, slots=True)
class SilenceNoticed(Event):
    """A live link heard nothing for ``heartbeat.interval``."""


@dataclass(frozen=True, slots=True)
class ProbeUnanswered(Event):
    """A probe got no frame back within ``heartbeat.timeout``."""


@dataclass(frozen=True, slots=True)
class TimerFiredLate(Event):
    """A heartbeat deadline was noticed long after it passed: the local event loop was
    stalled, which is no evidence against the peer. The link probes afresh."""

    lateness: float = 0.0


@dataclass(frozen=True, slots=True)
class BackoffElapsed(Event):
    """The backoff delay is over: time to dial again."""


@dataclass(frozen=True, slots=True)
class HandshakeTimedOut(Event):
    """Opening, handshaking or rebuilding took longer than ``handshake_timeout``."""


#: Events a driver may feed to ``handle()``.
INPUT_EVENTS: tuple[type[Event], ...] = (
    Started,
    Connected,
    ConnectFailed,
    Rebuilt,
    RebuildFailed,
    MessageReceived,
    PongReceived,
    MessagesWritten,
    MessagesAcked,
    TransportLost,
    TransportReleased,
    SendRequested,
    CloseRequested,
    Crashed,
    DeadlineReached,
)

#: Events the core raises when a deadline passes.
TIMER_EVENTS: tuple[type[Event], ...] = (
    SilenceNoticed,
    ProbeUnanswered,
    TimerFiredLate,
    BackoffElapsed,
    HandshakeTimedOut,
)
