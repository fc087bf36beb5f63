"""The hub's view of one client's liveness, as a small declarative table with no I/O.

The client's lifecycle (:mod:`fsm.lifecycle`) decides when the *server* is dead; this is
the same rule from the other end, driven by the same :class:`fsm.heartbeat.Heartbeat`
policy: after ``interval`` of silence the hub probes with a ``ping``; after ``timeout``
more without any frame the client is declared stale and its connection aborted; a
session stale for ``expire_after`` is forgotten. Time is an input (``now`` on every
event), deadlines are outputs (:meth:`PresenceWatch.next_deadline`), and what to do is
returned as actions the driver (``adapters/hub``) performs. No asyncio, no clock.

Rules
-----
1. Any frame from the client is proof of life (:class:`Heard`), not only a ``pong``.
2. A session with client messages read but not yet delivered (its handler is slow, or
   the hub stopped reading because they fill its read-ahead) is **not silent**: the
   client may have pinged behind them. The driver says so with ``busy=True``.
3. A late timer is not evidence against the client. The driver reads what is already
   buffered before it reports a deadline (as the client's driver does); and a deadline
   noticed more than ``heartbeat.grace`` after it passed means our own loop was stalled,
   so a probe that might never have been written is sent again instead of condemning.
4. Only a connected session is probed; a disconnected one stays ``present`` until it has
   been silent for ``interval + timeout`` (the client may be reconnecting), then is
   ``stale``. A resume makes a stale session present again.

Phases (what the hub knows) and the presence they show (what the application sees):

=============  ==============================================  ==========
phase          meaning                                         presence
=============  ==============================================  ==========
``LISTENING``  connected, heard within ``interval``            present
``PROBING``    connected, a ``ping`` is out                    present
``AWAY``       not connected, heard within the bound           present
``STALE``      silent beyond the bound; no connection          stale
``GONE``       stale for ``expire_after``: forgotten           gone
=============  ==============================================  ==========
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from fsm.heartbeat import Heartbeat

__all__ = [
    "TABLE",
    "AbortConnection",
    "Action",
    "Announce",
    "Attached",
    "DeadlineReached",
    "Detached",
    "Event",
    "Forget",
    "Heard",
    "Phase",
    "Presence",
    "PresenceWatch",
    "Rule",
    "SendPing",
]


class Presence(StrEnum):
    """A session's liveness as the hub shows it to the application."""

    #: Heard from within ``interval + timeout``.
    PRESENT = "present"
    #: Silent longer than that; its connection, if any, was aborted.
    STALE = "stale"
    #: Stale for ``expire_after``: forgotten. Also the "before" of a new session.
    GONE = "gone"


class Phase(StrEnum):
    LISTENING = "listening"
    PROBING = "probing"
    AWAY = "away"
    STALE = "stale"
    GONE = "gone"


PRESENCE = {Phase.LISTENING: Presence.PRESENT, Phase.PROBING: Presence.PRESENT,
            Phase.AWAY: Presence.PRESENT, Phase.STALE: Presence.STALE,
            Phase.GONE: Presence.GONE}


# -- events (past-tense facts) -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heard:
    """A frame arrived from the client."""


@dataclass(frozen=True, slots=True)
class Attached:
    """A connection was bound to the session (a new session or a resume)."""


@dataclass(frozen=True, slots=True)
class Detached:
    """The session's connection ended (closed, aborted, taken over)."""


@dataclass(frozen=True, slots=True)
class DeadlineReached:
    """The driver's timer for :meth:`PresenceWatch.next_deadline` fired. ``busy``: client
    messages are waiting to be delivered (rule 2)."""

    busy: bool = False


Event = Heard | Attached | Detached | DeadlineReached


# -- actions (imperatives) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SendPing:
    """Write a ``ping`` on the session's connection."""


@dataclass(frozen=True, slots=True)
class AbortConnection:
    """Abort the session's connection at once (no closing handshake)."""


@dataclass(frozen=True, slots=True)
class Announce:
    """The session's presence changed from ``old`` to ``new``: tell the application."""

    old: Presence
    new: Presence


@dataclass(frozen=True, slots=True)
class Forget:
    """Drop the session: from memory now, from the store as soon as it answers."""


Action = SendPing | AbortConnection | Announce | Forget


# -- the table -----------------------------------------------------------------------------------

#: Guards, by name, over (watch, event, now). ``due``: the phase's deadline has passed;
#: ``late``: it passed more than ``heartbeat.grace`` ago (our loop was stalled);
#: ``busy``: messages wait to be delivered.
GUARDS: dict[str, Callable[[PresenceWatch, Event, float], bool]] = {
    "due": lambda w, e, now: now >= w.next_deadline(),
    "late": lambda w, e, now: now - w.next_deadline() > w.heartbeat.grace,
    "busy": lambda w, e, now: isinstance(e, DeadlineReached) and e.busy,
}


@dataclass(frozen=True, slots=True)
class Rule:
    """``source`` + ``event`` [+ every guard in ``when``] -> ``dest``, doing ``do``.

    ``do`` names effects: ``heard`` (``last_heard = now``), ``probe`` (a ping goes out;
    its base time is the deadline, or ``now`` when late), ``abort``, ``forget``. Moving
    to a phase with another presence announces the change."""

    source: Phase
    event: type[Event]
    dest: Phase
    when: tuple[str, ...] = ()
    do: tuple[str, ...] = ()


L, P, A, S, G = Phase.LISTENING, Phase.PROBING, Phase.AWAY, Phase.STALE, Phase.GONE

#: Every transition; the first rule whose source, event and guards match wins. A pair
#: with no matching rule changes nothing (for instance a timer that was not due yet).
TABLE: tuple[Rule, ...] = (
    Rule(L, Heard, L, do=("heard",)),
    Rule(L, Attached, L, do=("heard",)),  # a new connection takes the session over
    Rule(L, Detached, A),
    Rule(L, DeadlineReached, L, when=("busy",), do=("heard",)),
    Rule(L, DeadlineReached, P, when=("due",), do=("probe",)),
    Rule(P, Heard, L, do=("heard",)),
    Rule(P, Attached, L, do=("heard",)),
    Rule(P, Detached, A),
    Rule(P, DeadlineReached, L, when=("busy",), do=("heard",)),
    Rule(P, DeadlineReached, P, when=("due", "late"), do=("probe",)),
    Rule(P, DeadlineReached, S, when=("due",), do=("abort",)),
    Rule(A, Attached, L, do=("heard",)),
    Rule(A, DeadlineReached, S, when=("due",)),
    Rule(S, Attached, L, do=("heard",)),
    Rule(S, DeadlineReached, G, when=("due",), do=("forget",)),
)


class PresenceWatch:
    """One session's liveness: ``handle(event, now) -> actions`` and ``next_deadline()``.

    ``expire_after`` may be changed by the driver at any time (the hub forgets sessions
    that never delivered anything sooner); it applies from the next deadline on.
    """

    __slots__ = ("expire_after", "heartbeat", "last_heard", "phase", "probe_base",
                 "stale_since")

    heartbeat: Heartbeat
    expire_after: float
    phase: Phase
    last_heard: float
    probe_base: float | None
    stale_since: float | None

    def __init__(self, heartbeat: Heartbeat, expire_after: float, now: float, *,
                 phase: Phase = Phase.AWAY, last_heard: float | None = None,
                 stale_since: float | None = None) -> None:
        if phase not in (Phase.AWAY, Phase.STALE):
            raise ValueError(f"a watch starts AWAY (a new session attaches at once) or "
                             f"STALE (loaded from a store), not {phase.value}")
        if phase is Phase.STALE and stale_since is None:
            raise ValueError("a STALE watch needs stale_since")
        self.heartbeat = heartbeat
        self.expire_after = expire_after
        self.phase = phase
        self.last_heard = now if last_heard is None else last_heard
        self.probe_base = None
        self.stale_since = stale_since

    def __repr__(self) -> str:
        return (f"PresenceWatch(phase={self.phase.value!r}, last_heard={self.last_heard!r}, "
                f"probe_base={self.probe_base!r}, stale_since={self.stale_since!r})")

    @property
    def presence(self) -> Presence:
        return PRESENCE[self.phase]

    def next_deadline(self) -> float:
        """When the driver must report :class:`DeadlineReached` (``inf``: never)."""
        heartbeat = self.heartbeat
        if self.phase is Phase.LISTENING:
            return heartbeat.silence_deadline(self.last_heard)
        if self.phase is Phase.PROBING:
            assert self.probe_base is not None
            return heartbeat.probe_deadline(self.probe_base)
        if self.phase is Phase.AWAY:
            return self.last_heard + heartbeat.bound
        if self.phase is Phase.STALE:
            assert self.stale_since is not None
            return self.stale_since + self.expire_after
        return float("inf")

    def rule_for(self, event: Event, now: float) -> Rule | None:
        """The rule the table applies to ``event`` at ``now`` (``None``: nothing)."""
        for rule in TABLE:
            if rule.source is self.phase and isinstance(event, rule.event) and \
                    all(GUARDS[guard](self, event, now) for guard in rule.when):
                return rule
        return None

    def handle(self, event: Event, now: float) -> list[Action]:
        rule = self.rule_for(event, now)
        if rule is None:
            return []
        actions: list[Action] = []
        deadline = self.next_deadline()
        if "heard" in rule.do:
            self.last_heard = now
        if rule.dest is Phase.PROBING:
            late = GUARDS["late"](self, event, now)
            self.probe_base = now if late else deadline
            actions.append(SendPing())
        else:
            self.probe_base = None
        if "abort" in rule.do:
            actions.append(AbortConnection())
        old = self.presence
        self.phase = rule.dest
        if rule.dest is Phase.STALE and old is not Presence.STALE:
            self.stale_since = now
        elif rule.dest is not Phase.STALE:
            self.stale_since = None
        if self.presence is not old:
            actions.append(Announce(old, self.presence))
        if "forget" in rule.do:
            actions.append(Forget())
        return actions
