"""Example: a ``paused`` state the user parks a live link in, and resumes from.

An agent that goes idle for a long time (a human reviewing its output, a laptop lid
closed) may want to stop the heartbeat and the socket without closing the link: queued
sends are kept, nothing is handed back, and ``resume`` brings the link back online.

The flow::

    online / waiting --PauseRequested--> paused          (the transport is aborted)
    paused --ResumeRequested--> recovering --...--> online (a fresh dial: resume or
                                                            rebuild, as after any drop)

Design choices, each one the model (``models/paused.pml``) checks:

* ``paused`` is not ``live``: no heartbeat runs in it, so it must not keep a transport
  either (nothing would notice the peer dying). Its ``on_enter`` is the core's own
  ``abort_transport``, which rewinds unsettled messages for the next connection; its
  tags are ``["sends"]`` only: sends queue in the outbox, and the transport being aborted
  is gone once ``TransportReleased`` arrives, as in ``closed``.
* Only a live link can be paused; ``PauseRequested`` is ignored elsewhere. A pause while
  ``recovering`` would leave the backoff timer armed in a state that does not dial, and
  the core would report a deadline that keeps firing.
* ``ResumeRequested`` goes to ``recovering``, which waits for the old transport to be
  released before its backoff delay starts, so a quick pause and resume never holds two
  transports; from there the normal dial, resume or rebuild leads to ``online``.

Check it with ``tether verify fsm.examples.paused:PAUSED_SPEC``.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsm.events import Event
from fsm.spec import DEFAULT_SPEC, Row, Spec
from fsm.states import State

__all__ = ["PAUSED", "PAUSED_SPEC", "PauseRequested", "ResumeRequested"]

#: The new state's name.
PAUSED = "paused"


@dataclass(frozen=True, slots=True)
class PauseRequested(Event):
    """The user paused the link: stop the heartbeat and drop the transport, keep sends."""


@dataclass(frozen=True, slots=True)
class ResumeRequested(Event):
    """The user resumed a paused link: dial again."""


_LIVE = [State.ONLINE, State.WAITING]
_NEW_EVENTS = [PauseRequested.trigger(), ResumeRequested.trigger()]

_STATES: list[Row] = [
    {"name": PAUSED, "tags": ["sends"], "on_enter": ["abort_transport"]},
]

_TRANSITIONS: list[Row] = [
    {"trigger": "PauseRequested", "source": _LIVE, "dest": PAUSED},
    {"trigger": "ResumeRequested", "source": PAUSED, "dest": State.RECOVERING},
    {"trigger": "CloseRequested", "source": PAUSED, "dest": State.CLOSED},
    {"trigger": "Crashed", "source": PAUSED, "dest": State.FAILED,
     "before": "count_failure"},  # as every active state: a corrupt link fails
    {"trigger": "SendRequested", "source": PAUSED, "dest": None, "after": "accept_message"},
    {"trigger": "TransportReleased", "source": PAUSED, "dest": None, "after": "note_released"},
    # what the aborted transport still delivers is delivered rather than lost, as in stale
    {"trigger": "MessageReceived", "source": PAUSED, "dest": None,
     "after": ["note_heard", "deliver_message"]},
    {"trigger": "MessagesWritten", "source": PAUSED, "dest": None, "after": "settle_written"},
    {"trigger": "MessagesAcked", "source": PAUSED, "dest": None, "after": "settle_acked"},
    {"trigger": "DeadlineReached", "source": PAUSED, "dest": None},
]

_IGNORE: dict[str, list[str]] = {
    **{str(state): [ResumeRequested.trigger()] for state in State},
    **{str(state): [*_NEW_EVENTS] for state in State if state not in _LIVE},
    PAUSED: ["Started", "Connected", "ConnectFailed", "Rebuilt", "RebuildFailed",
             "PongReceived", "TransportLost", "SilenceNoticed", "ProbeUnanswered",
             "TimerFiredLate", "BackoffElapsed", "HandshakeTimedOut", "PauseRequested"],
}

#: The default lifecycle plus a user-controlled ``paused`` state.
PAUSED_SPEC: Spec = DEFAULT_SPEC.derive(
    name="paused",
    states=_STATES,
    events=[PauseRequested, ResumeRequested],
    transitions=_TRANSITIONS,
    ignore=_IGNORE,
)
