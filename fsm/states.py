"""The eight built-in states of a link, and the tags every state carries.

States are nouns or adjectives that say what the link *is*. Users add their own states
to a spec (see :mod:`fsm.spec`); those are plain strings, and built-in members compare
equal to their string values (``State.ONLINE == "online"``), so one type serves both.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

__all__ = ["TAG_NAMES", "State", "Tags"]


class State(StrEnum):
    """The lifecycle of one link (see DESIGN.md for the full table)."""

    #: Created, not started. No transport.
    IDLE = "idle"
    #: First dial, handshake and rebuild in progress. A transport is opening.
    CONNECTING = "connecting"
    #: Session up; the peer was heard from within ``heartbeat.interval``.
    ONLINE = "online"
    #: Session up, but the peer has been silent for ``interval``: a probe is out and the
    #: link waits at most ``heartbeat.timeout`` for any frame.
    WAITING = "waiting"
    #: The peer is declared dead; the transport is being aborted; nothing is sent.
    STALE = "stale"
    #: Waiting out a backoff delay, re-dialing, then resuming or rebuilding the session.
    RECOVERING = "recovering"
    #: Closed by the user; the outbox was flushed or handed back.
    CLOSED = "closed"
    #: A fatal error or an exhausted retry budget. No transport, no retries.
    FAILED = "failed"


#: The tags a spec may attach to a state; each state must say yes or no to each.
TAG_NAMES = ("live", "transport", "sends", "final")


@dataclass(frozen=True, slots=True)
class Tags:
    """What a state promises, so the invariants apply to custom states too.

    ``live``: the peer is believed alive; heartbeat deadlines run; the outbox flows.
    ``transport``: a transport may be open, opening or closing in this state.
    ``sends``: ``send()`` is accepted (transmitted or queued) rather than refused.
    ``final``: no way out; the link is done (CLOSED, FAILED).
    """

    live: bool
    transport: bool
    sends: bool
    final: bool

    @classmethod
    def from_names(cls, names: frozenset[str]) -> Tags:
        return cls(**{tag: tag in names for tag in TAG_NAMES})

    def names(self) -> list[str]:
        return [tag for tag in TAG_NAMES if getattr(self, tag)]
