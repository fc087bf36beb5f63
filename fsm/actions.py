"""Actions: what the lifecycle asks its driver to do, as frozen dataclasses named as
imperatives. The driver performs them in order and reports the outcome as events.

An action never carries a decision the driver must re-make: ``AbortTransport`` means
abort now, not "consider aborting".
"""

from __future__ import annotations

from dataclasses import dataclass

from fsm.outbox import Envelope

__all__ = [
    "AbortTransport",
    "Action",
    "CloseTransport",
    "Deliver",
    "HandBack",
    "NotifyStateChange",
    "OpenTransport",
    "RunRebuild",
    "SendPing",
    "StateChange",
    "Transmit",
]


@dataclass(frozen=True, slots=True)
class Action:
    """Base class of every action."""


@dataclass(frozen=True, slots=True)
class OpenTransport(Action):
    """Dial the peer and run the handshake; report ``Connected`` or ``ConnectFailed``."""

    attempt: int


@dataclass(frozen=True, slots=True)
class AbortTransport(Action):
    """Drop the transport at once, without a closing handshake; report
    ``TransportReleased`` once its socket and tasks are gone."""

    reason: str


@dataclass(frozen=True, slots=True)
class CloseTransport(Action):
    """Close the transport politely (closing handshake, bounded in time); report
    ``TransportReleased`` once it is gone. Used when the user closes the link."""

    reason: str


@dataclass(frozen=True, slots=True)
class SendPing(Action):
    """Send a probe; any frame that comes back proves the peer alive."""


@dataclass(frozen=True, slots=True)
class Transmit(Action):
    """Write these messages to the transport, in this order."""

    envelopes: tuple[Envelope, ...]


@dataclass(frozen=True, slots=True)
class Deliver(Action):
    """Hand an inbound message to the application."""

    payload: object


@dataclass(frozen=True, slots=True)
class RunRebuild(Action):
    """Run the rebuild hooks on the fresh session; report ``Rebuilt`` or ``RebuildFailed``."""

    reason: str


@dataclass(frozen=True, slots=True)
class HandBack(Action):
    """These messages will not be delivered; give them back to the caller."""

    envelopes: tuple[Envelope, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class StateChange:
    """One change of state: old, new, why, and when (the ``now`` that caused it).
    ``retry_in``: seconds until the next dial, when the link is waiting out a backoff
    delay (Ably's ``retryIn``); ``None`` otherwise."""

    old: str
    new: str
    reason: str
    at: float
    retry_in: float | None = None


@dataclass(frozen=True, slots=True)
class NotifyStateChange(Action):
    """Tell the state-change listeners."""

    change: StateChange
