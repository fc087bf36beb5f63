"""Tutorial: add an ``authenticating`` state to the lifecycle.

Many servers accept the WebSocket handshake and only then ask the client to prove who it
is (a token in the first frame, a challenge to sign). Until the server says yes, the link
is neither connecting any more nor online. This module adds that step to the built-in
lifecycle, and doubles as a guide to writing your own extension.

The flow, compared with the built-in one::

    built-in:  connecting --Connected--> (rebuild) --Rebuilt--> online
    here:      connecting --Connected--> authenticating --Authenticated--> (rebuild)
                                                        --Rebuilt--> online
               authenticating --AuthenticationRejected--> failed
               authenticating --HandshakeTimedOut / TransportLost--> stale

(The same from ``recovering``; a resumed session, ``Connected(resumed=True)``, goes
straight to ``online``: it was authenticated when it was created, and the resume token
is its credential.)

An extension is one call that returns a new, validated :class:`~fsm.spec.Spec`; the
built-in :data:`~fsm.spec.DEFAULT_SPEC` is left untouched::

    AUTH_SPEC = DEFAULT_SPEC.derive(
        name="authenticating",
        states=[...],        # new states, each with explicit tags
        events=[...],        # new Event subclasses (their class names are triggers)
        transitions=[...],   # new rows, tried before the built-in ones
        drop=[...],          # (trigger, source) pairs whose built-in rows you replace
        ignore={...},        # explicit no-ops: {state: [trigger, ...]}
    )

The sections below fill in each argument; the code at the bottom of this module is the
finished result.

Step 1: the vocabulary
----------------------
Events are facts the *driver* reports, named in the past tense, as frozen dataclasses
subclassing :class:`fsm.events.Event`; the class name is the trigger name in the table.
Actions are what the core asks the driver to do, named as imperatives, as frozen
dataclasses subclassing :class:`fsm.actions.Action`. Here: the core emits
:class:`Authenticate`, the driver performs it and reports :class:`Authenticated` or
:class:`AuthenticationRejected`.

Step 2: the state and its tags
------------------------------
Every state says which of ``live``, ``transport``, ``sends`` and ``final`` apply, so the
invariants hold for it too. ``authenticating`` holds a transport (an open socket that
must be aborted if we give up) and accepts sends (they queue in the outbox), but it is
not ``live``: nothing flows until the server knows us, and no heartbeat runs. Its
``on_enter`` callback ``emit(Authenticate())`` (:func:`fsm.spec.emit`) makes the link
perform the action each time the state is entered.

Step 3: the rows
----------------
Rows use ``transitions``' format. Conditions and callbacks may name the core's own
predicates and bookkeeping (:class:`fsm.lifecycle.Lifecycle`: ``is_dialing``,
``gives_up``, ``count_failure``, ``start_rebuild``, ...): reuse them rather than
re-implementing the bookkeeping, since they keep the transport, deadlines, failures and
outbox consistent.

* New rows are tried *before* the built-in rows for the same (state, event) pair. A new
  row cannot silently override a built-in one: if the built-in pair ends with an
  unconditional row, yours would shadow it or be shadowed, and validation fails. To take
  a pair over, ``drop`` it (all of its rows) and write the full set again. Here the
  built-in ``Connected`` rows of ``connecting`` and ``recovering`` end by starting the
  rebuild; we drop them and re-add them with the last row entering ``authenticating``.
* The core's bookkeeping treats the transport as still being opened until its handshake
  is done, and here the handshake includes authentication: the dial's handshake deadline
  (``handshake_timeout``, set when the core dialed) therefore bounds authentication too,
  and :class:`~fsm.events.HandshakeTimedOut` moves the link to ``stale``, which aborts.
  (For the same reason, a user who closes the link mid-authentication gets the
  transport aborted rather than closed politely: there is no session to close yet.)
* ``Authenticated`` runs the core's ``start_rebuild`` as an internal transition
  (``dest: None``): the transport is now open, the rebuild hooks get a fresh
  ``handshake_timeout``, and ``Rebuilt`` then goes ``online`` exactly as it does from
  ``connecting``. The built-in ``Rebuilt``/``RebuildFailed`` rows of the dialing states
  stay: they are conditional on ``is_rebuilding`` and now simply never match there.
* Failures mirror the built-in dialing rows: ``gives_up`` (fatal error or exhausted
  budget) leads to ``failed``, anything else to ``stale`` with ``count_failure``, so the
  backoff keeps growing. ``AuthenticationRejected`` is fatal: retrying with the same
  credentials would be a reconnect storm against an auth server.

Step 4: every (state, event) pair has an outcome
------------------------------------------------
The validator insists on it. Events the new state does not care about go in
``ignore={state: [...]}``, and the new events must be ignored (or handled) in every
built-in state too. Build the spec and read the error if you missed one: it names the
pair and says how to fix it, for example ``state 'authenticating' has no outcome for
event Started. Fix: add a transition for Started from 'authenticating', or list it in
ignore={'authenticating': ['Started']}.``

Step 5: the driver
------------------
Run links with ``Lifecycle(spec=AUTH_SPEC, ...)``. The driver performs
:class:`Authenticate` (send the token) and reports ``Authenticated()`` or
``AuthenticationRejected(reason)`` through ``handle()``, like any other event.
``tether diagram fsm.examples.authenticating:AUTH_SPEC`` draws the result.
"""

from __future__ import annotations

from dataclasses import dataclass

from fsm.actions import Action
from fsm.events import Event
from fsm.spec import DEFAULT_SPEC, Row, Spec, emit
from fsm.states import State

__all__ = [
    "AUTHENTICATING",
    "AUTH_SPEC",
    "Authenticate",
    "Authenticated",
    "AuthenticationRejected",
]

#: The new state's name. Custom states are plain strings.
AUTHENTICATING = "authenticating"


@dataclass(frozen=True, slots=True)
class Authenticated(Event):
    """The server accepted our credentials."""


@dataclass(frozen=True, slots=True)
class AuthenticationRejected(Event):
    """The server refused our credentials; ``reason`` says why (fatal: no retry)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Authenticate(Action):
    """Send our credentials on the fresh transport; report ``Authenticated`` or
    ``AuthenticationRejected``."""


_DIALING = [State.CONNECTING, State.RECOVERING]
_NEW_EVENTS = [Authenticated.trigger(), AuthenticationRejected.trigger()]

_STATES: list[Row] = [
    {"name": AUTHENTICATING, "tags": ["transport", "sends"],
     "on_enter": [emit(Authenticate())]},
]

_TRANSITIONS: list[Row] = [
    # -- entering: the Connected rows of the dialing states, re-written ------------------
    {"trigger": "Connected", "source": _DIALING, "dest": None, "unless": "is_dialing",
     "after": "drop_stray_transport"},
    {"trigger": "Connected", "source": _DIALING, "dest": State.ONLINE,
     "conditions": "is_resumed", "before": "resume_session"},
    {"trigger": "Connected", "source": _DIALING, "dest": AUTHENTICATING,
     "before": "note_connected"},  # start_rebuild runs later, on Authenticated
    # -- the verdict ------------------------------------------------------------------
    {"trigger": "Authenticated", "source": AUTHENTICATING, "dest": None,
     "unless": "is_rebuilding", "after": "start_rebuild"},
    {"trigger": "Authenticated", "source": AUTHENTICATING, "dest": None},
    {"trigger": "AuthenticationRejected", "source": AUTHENTICATING, "dest": State.FAILED},
    # -- then the normal rebuild ---------------------------------------------------------
    {"trigger": "Rebuilt", "source": AUTHENTICATING, "dest": State.ONLINE,
     "conditions": "is_rebuilding", "before": "finish_rebuild"},
    {"trigger": "Rebuilt", "source": AUTHENTICATING, "dest": None},
    {"trigger": "RebuildFailed", "source": AUTHENTICATING, "dest": State.FAILED,
     "conditions": ["is_rebuilding", "gives_up"], "before": "count_failure"},
    {"trigger": "RebuildFailed", "source": AUTHENTICATING, "dest": State.STALE,
     "conditions": "is_rebuilding", "before": "count_failure"},
    {"trigger": "RebuildFailed", "source": AUTHENTICATING, "dest": None},
    # -- giving up on this transport ---------------------------------------------------
    {"trigger": "HandshakeTimedOut", "source": AUTHENTICATING, "dest": State.FAILED,
     "conditions": "gives_up", "before": "count_failure"},
    {"trigger": "HandshakeTimedOut", "source": AUTHENTICATING, "dest": State.STALE,
     "before": "count_failure"},
    {"trigger": "TransportLost", "source": AUTHENTICATING, "dest": State.FAILED,
     "conditions": "gives_up", "before": "count_failure"},
    {"trigger": "TransportLost", "source": AUTHENTICATING, "dest": State.STALE,
     "before": "count_failure"},
    {"trigger": "CloseRequested", "source": AUTHENTICATING, "dest": State.CLOSED},
    {"trigger": "Crashed", "source": AUTHENTICATING, "dest": State.FAILED,
     "before": "count_failure"},  # as every active state: a corrupt link fails
    # -- everything else the state must answer -----------------------------------------
    {"trigger": "SendRequested", "source": AUTHENTICATING, "dest": None,
     "after": "accept_message"},  # queued; flows once online
    {"trigger": "MessageReceived", "source": AUTHENTICATING, "dest": None,
     "after": ["note_heard", "deliver_message"]},
    {"trigger": "PongReceived", "source": AUTHENTICATING, "dest": None,
     "after": "note_heard"},
    {"trigger": "MessagesWritten", "source": AUTHENTICATING, "dest": None,
     "after": "settle_written"},  # as in the dialing states
    {"trigger": "MessagesAcked", "source": AUTHENTICATING, "dest": None,
     "after": "settle_acked"},
    {"trigger": "DeadlineReached", "source": AUTHENTICATING, "dest": None},
]

#: Explicit no-ops. The new events mean nothing outside ``authenticating``; the
#: heartbeat and backoff timers never run in it (it is not live and dials nothing);
#: Connected and ConnectFailed cannot follow Connected (a driver has one transport, so
#: an ``AbortTransport`` for a "stray" one would abort ours: ignore, as ONLINE does);
#: nothing in it releases a transport.
_IGNORE: dict[str, list[str]] = {
    **{str(state): list(_NEW_EVENTS) for state in State},
    AUTHENTICATING: ["Started", "Connected", "ConnectFailed", "TransportReleased",
                     "SilenceNoticed", "ProbeUnanswered", "TimerFiredLate", "BackoffElapsed"],
}

#: The default lifecycle with an ``authenticating`` step after each fresh connection.
AUTH_SPEC: Spec = DEFAULT_SPEC.derive(
    name="authenticating",
    states=_STATES,
    events=[Authenticated, AuthenticationRejected],
    transitions=_TRANSITIONS,
    drop=[("Connected", State.CONNECTING), ("Connected", State.RECOVERING)],
    ignore=_IGNORE,
)
