"""The lifecycle's transition table: every state and every transition, as data.

Rule 1: everything that changes a link's state lives in this file. The table is written
in ``transitions``' own declarative format (state dicts with ``tags`` and ``on_enter``;
transition dicts with ``trigger``, ``source``, ``dest``, ``conditions``, ``unless`` and
``after``) and built into one ``transitions.Machine`` per spec by :mod:`fsm.spec`. No
other module assigns ``Lifecycle.state``; the machine does.

Rule 2: every (state, event) pair has an outcome. A pair is either the source of at least
one row, whose last row for that pair is unconditional, or it is listed in ``IGNORED``
(an explicit no-op). :func:`fsm.spec.Spec.validate` enforces this for user specs too.

Rule 3: rows are tried in order for a (state, event) pair and the first whose conditions
hold wins, so conditional rows come before the unconditional fallback.

Reading the table: triggers are event class names (:mod:`fsm.events`), past tense;
callbacks (``after``, ``on_enter``) are :class:`fsm.lifecycle.Lifecycle` methods whose
names are imperatives and which append actions; conditions are its predicates.
``dest: None`` is an internal transition: no exit, no entry, no state change.
"""

from __future__ import annotations

from typing import Any

from fsm.states import State

__all__ = ["IGNORED", "INITIAL", "STATES", "TRANSITIONS"]

IDLE, CONNECTING, ONLINE, WAITING = State.IDLE, State.CONNECTING, State.ONLINE, State.WAITING
STALE, RECOVERING, CLOSED, FAILED = State.STALE, State.RECOVERING, State.CLOSED, State.FAILED

INITIAL: str = IDLE

#: Live states: the peer is believed alive and the outbox flows.
LIVE = [ONLINE, WAITING]
#: States where a transport is being opened or is open and not yet live.
DIALING = [CONNECTING, RECOVERING]
#: Every state that is not final.
ACTIVE = [IDLE, CONNECTING, ONLINE, WAITING, STALE, RECOVERING]

STATES: list[dict[str, Any]] = [
    {"name": IDLE, "tags": ["sends"]},
    {"name": CONNECTING, "tags": ["transport", "sends"], "on_enter": ["open_transport"]},
    {"name": ONLINE, "tags": ["live", "transport", "sends"], "on_enter": ["flush_outbox"]},
    {"name": WAITING, "tags": ["live", "transport", "sends"], "on_enter": ["send_probe"]},
    {"name": STALE, "tags": ["transport", "sends"], "on_enter": ["abort_transport"]},
    {"name": RECOVERING, "tags": ["transport", "sends"], "on_enter": ["schedule_retry"]},
    {"name": CLOSED, "tags": ["final"], "on_enter": ["release_everything"]},
    {"name": FAILED, "tags": ["final"], "on_enter": ["release_everything"]},
]

TRANSITIONS: list[dict[str, Any]] = [
    # -- the user ---------------------------------------------------------------------
    {"trigger": "Started", "source": IDLE, "dest": CONNECTING},
    {"trigger": "CloseRequested", "source": ACTIVE, "dest": CLOSED},
    {"trigger": "SendRequested", "source": ACTIVE, "dest": None, "after": "accept_message"},
    {"trigger": "SendRequested", "source": [CLOSED, FAILED], "dest": None,
     "after": "refuse_message"},
    # -- dialing and the handshake ------------------------------------------------------
    {"trigger": "Connected", "source": DIALING, "dest": None, "conditions": "holds_transport",
     "unless": "is_dialing"},
    {"trigger": "Connected", "source": DIALING, "dest": None, "unless": "is_dialing",
     "after": "drop_stray_transport"},
    {"trigger": "Connected", "source": DIALING, "dest": ONLINE, "conditions": "is_resumed",
     "before": "resume_session"},
    {"trigger": "Connected", "source": DIALING, "dest": None, "after": "start_rebuild"},
    {"trigger": "Rebuilt", "source": DIALING, "dest": ONLINE, "conditions": "is_rebuilding",
     "before": "finish_rebuild"},
    {"trigger": "Rebuilt", "source": DIALING, "dest": None},
    {"trigger": "ConnectFailed", "source": DIALING, "dest": FAILED,
     "conditions": ["is_dialing", "gives_up"], "before": "count_failure"},
    {"trigger": "ConnectFailed", "source": DIALING, "dest": RECOVERING,
     "conditions": "is_dialing", "before": "count_failure"},
    {"trigger": "ConnectFailed", "source": DIALING, "dest": None},
    {"trigger": "HandshakeTimedOut", "source": DIALING, "dest": FAILED,
     "conditions": "gives_up", "before": "count_failure"},
    {"trigger": "HandshakeTimedOut", "source": DIALING, "dest": STALE,
     "before": "count_failure"},
    {"trigger": "RebuildFailed", "source": DIALING, "dest": FAILED,
     "conditions": ["is_rebuilding", "gives_up"], "before": "count_failure"},
    {"trigger": "RebuildFailed", "source": DIALING, "dest": STALE,
     "conditions": "is_rebuilding", "before": "count_failure"},
    {"trigger": "RebuildFailed", "source": DIALING, "dest": None},
    {"trigger": "BackoffElapsed", "source": RECOVERING, "dest": None,
     "after": "open_transport"},
    # -- proof of life and the heartbeat ----------------------------------------------------
    {"trigger": "MessageReceived", "source": WAITING, "dest": ONLINE,
     "before": ["note_heard", "deliver_message"]},
    {"trigger": "MessageReceived", "source": [ONLINE, *DIALING, STALE], "dest": None,
     "after": ["note_heard", "deliver_message"]},
    {"trigger": "PongReceived", "source": WAITING, "dest": ONLINE, "before": "note_heard"},
    {"trigger": "PongReceived", "source": [ONLINE, *DIALING], "dest": None,
     "after": "note_heard"},
    {"trigger": "MessagesWritten", "source": [*LIVE, *DIALING, STALE], "dest": None,
     "after": "settle_written"},
    {"trigger": "MessagesAcked", "source": [*LIVE, *DIALING, STALE], "dest": None,
     "after": "settle_acked"},
    {"trigger": "SilenceNoticed", "source": ONLINE, "dest": WAITING},
    {"trigger": "TimerFiredLate", "source": ONLINE, "dest": WAITING},
    {"trigger": "TimerFiredLate", "source": WAITING, "dest": None, "after": "send_probe"},
    {"trigger": "ProbeUnanswered", "source": WAITING, "dest": FAILED, "conditions": "gives_up",
     "before": "count_failure"},
    {"trigger": "ProbeUnanswered", "source": WAITING, "dest": STALE, "before": "count_failure"},
    # -- losing the transport and getting it back ---------------------------------------
    {"trigger": "TransportLost", "source": [*LIVE, *DIALING], "dest": None,
     "unless": "holds_transport"},
    {"trigger": "TransportLost", "source": [*LIVE, *DIALING], "dest": FAILED,
     "conditions": "gives_up", "before": "count_failure"},
    {"trigger": "TransportLost", "source": [*LIVE, *DIALING], "dest": STALE,
     "before": "count_failure"},
    {"trigger": "TransportReleased", "source": STALE, "dest": RECOVERING,
     "before": "note_released"},
    {"trigger": "TransportReleased", "source": [CLOSED, FAILED, *DIALING], "dest": None,
     "after": "note_released"},
    # -- the driver found the core raising: nothing about this link can be trusted -------
    {"trigger": "Crashed", "source": ACTIVE, "dest": FAILED, "before": "count_failure"},
    # -- the driver's timer: the core has already fired whatever deadline was due ---------
    {"trigger": "DeadlineReached", "source": [*ACTIVE, CLOSED, FAILED], "dest": None},
]

#: Explicit no-ops: (state, event) pairs where the event changes nothing, and why.
IGNORED: dict[str, list[str]] = {
    # Nothing has been dialed yet, so nothing can come back from a transport.
    IDLE: ["Connected", "ConnectFailed", "Rebuilt", "RebuildFailed", "MessageReceived",
           "MessagesWritten", "MessagesAcked",
           "PongReceived", "TransportLost", "TransportReleased", "SilenceNoticed",
           "ProbeUnanswered", "TimerFiredLate", "BackoffElapsed", "HandshakeTimedOut"],
    CONNECTING: ["Started", "SilenceNoticed", "ProbeUnanswered", "TimerFiredLate",
                 "BackoffElapsed"],
    RECOVERING: ["Started", "SilenceNoticed", "ProbeUnanswered", "TimerFiredLate"],
    ONLINE: ["Started", "Connected", "ConnectFailed", "Rebuilt", "RebuildFailed",
             "TransportReleased", "ProbeUnanswered", "BackoffElapsed", "HandshakeTimedOut"],
    WAITING: ["Started", "Connected", "ConnectFailed", "Rebuilt", "RebuildFailed",
              "TransportReleased", "SilenceNoticed", "BackoffElapsed", "HandshakeTimedOut"],
    # The transport is being torn down: whatever it still reports is moot, except
    # data, which is delivered rather than lost.
    STALE: ["Started", "Connected", "ConnectFailed", "Rebuilt", "RebuildFailed",
            "PongReceived", "TransportLost", "SilenceNoticed", "ProbeUnanswered",
            "TimerFiredLate", "BackoffElapsed", "HandshakeTimedOut"],
    # Final: nothing moves the link any more.
    CLOSED: ["Started", "CloseRequested", "Crashed", "Connected", "ConnectFailed", "Rebuilt",
             "RebuildFailed", "MessageReceived", "MessagesWritten",
             "MessagesAcked", "PongReceived", "TransportLost",
             "SilenceNoticed", "ProbeUnanswered", "TimerFiredLate", "BackoffElapsed",
             "HandshakeTimedOut"],
    FAILED: ["Started", "CloseRequested", "Crashed", "Connected", "ConnectFailed", "Rebuilt",
             "RebuildFailed", "MessageReceived", "MessagesWritten",
             "MessagesAcked", "PongReceived", "TransportLost",
             "SilenceNoticed", "ProbeUnanswered", "TimerFiredLate", "BackoffElapsed",
             "HandshakeTimedOut"],
}
