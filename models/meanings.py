"""What every name in a lifecycle table means in the model, written once.

A table row names conditions (``is_dialing``), callbacks (``open_transport``) and a
trigger (an event class name). Python gives them meaning through
:class:`fsm.lifecycle.Lifecycle`; the model gives each one an abstract meaning here, in
Promela over a handful of abstract variables (:data:`CORE_DECLS`). The generator
(:mod:`models.generate`) refuses a spec that uses a name with no meaning, naming it, so a
new guard or callback can never silently go unmodelled.

The abstraction, in one paragraph: the transport is the core's own four-valued
``_transport``; time is a tick, and every deadline (heartbeat, probe, handshake, backoff)
is a small count of ticks until it is due, ``UNSET`` when it is not armed; heartbeat
``interval`` and ``timeout`` are ``INTERVAL`` and ``TIMEOUT`` ticks. The outbox, payloads,
round-trip times and reason texts do not affect which row fires and are left out of the
lifecycle model (the session model, ``session.pml``, has the outbox). The failure count
and the "healthy for ``backoff.grace``" test are kept, because ``gives_up`` reads them.

Every meaning mirrors the method of the same name in ``fsm/lifecycle.py``; the replay
test (``tests/test_model_conformance.py``) checks the two agree on recorded traces.

To model your own spec, give its new names a meaning: either add them here, or define
``MODEL_MEANINGS = Meanings(...)`` next to your spec (``tether verify`` picks it up).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "BUILTIN",
    "CORE_DECLS",
    "EMIT_PREFIX",
    "TIMER_LOGIC",
    "EventMeaning",
    "Meaning",
    "Meanings",
]

Role = Literal["user", "peer", "driver", "timer", "skipped", "reply", "crash"]


@dataclass(frozen=True)
class Meaning:
    """A condition (a Promela expression) or a callback (Promela statements), and why."""

    promela: str
    why: str


@dataclass(frozen=True)
class EventMeaning:
    """Who produces an event in the model.

    ``user``: the user's calls, injected by the environment's user at any time.
    ``peer``: a frame from the server (proof of life). ``driver``: the driver's reports
    about the transport and the hooks. ``timer``: raised by the core's own clock.
    ``skipped``: never reaches the machine (``handle()`` handles it itself).
    ``reply``: the driver's answer to an action a row emitted (``emit(...)``), given only
    while that action is outstanding on the current transport; ``fatal`` replies (a
    rejection) are never given by a healthy server, so liveness does not expect them.
    ``crash``: the driver's report that the core raised on an event (a bug in a spec's
    callback): it may come at any moment before calm and ends the link, so liveness does
    not expect recovery after it either.
    """

    role: Role
    why: str
    fatal: bool = False


@dataclass(frozen=True)
class Meanings:
    """A set of meanings; ``BUILTIN | extra`` adds a user's (theirs win on a clash)."""

    conditions: Mapping[str, Meaning] = field(default_factory=dict)
    callbacks: Mapping[str, Meaning] = field(default_factory=dict)
    events: Mapping[str, EventMeaning] = field(default_factory=dict)

    def __or__(self, other: Meanings) -> Meanings:
        return Meanings(conditions={**self.conditions, **other.conditions},
                        callbacks={**self.callbacks, **other.callbacks},
                        events={**self.events, **other.events})


#: A callback made by :func:`fsm.spec.emit` is named ``emit(<action repr>)``: it asks the
#: driver to perform an action, which the driver answers with a ``reply`` event.
EMIT_PREFIX = "emit("
EMIT_MEANING = Meaning(
    "a_custom = 1",
    "perform(action): the driver runs the user's action handler, which answers with a "
    "reply event while this transport lives")

#: The core's abstract variables. Deadlines count ticks down to 0 (due); UNSET = not armed.
CORE_DECLS = """\
#define TP_NONE    0   /* Lifecycle._transport: none */
#define TP_OPENING 1   /* opening: dial and handshake in progress */
#define TP_OPEN    2   /* open */
#define TP_CLOSING 3   /* closing: aborted, not yet released */
#define UNSET    255   /* a deadline that is not armed; an epoch that is None */

#ifndef INTERVAL
#define INTERVAL  1    /* heartbeat.interval, in ticks */
#endif
#ifndef TIMEOUT
#define TIMEOUT   1    /* heartbeat.timeout, in ticks */
#endif
#ifndef HANDSHAKE
#define HANDSHAKE 2    /* handshake_timeout, in ticks */
#endif
#ifndef BACKOFF_CAP
#define BACKOFF_CAP 1  /* backoff.cap, in ticks: a delay is any of 0..BACKOFF_CAP */
#endif
#ifndef GRACE
#define GRACE     3    /* backoff.grace, in ticks online before failures reset;
                          more than interval + timeout, so both cases occur */
#endif
#ifndef BUDGET
#define BUDGET    0    /* backoff.budget; 0 = None, retry forever (the default) */
#endif
#ifndef SESSION
#define SESSION   1    /* session mode: Connected may resume */
#endif
#define BOUND (INTERVAL + TIMEOUT)

byte st = INITIAL;       /* Lifecycle.state */
byte ev = E_NONE;        /* the event being handled; E_NONE: none */
bit  ev_fatal;           /* its error is fatal: classify(error).retry is False */
bit  ev_resumed;         /* Connected.resumed */
byte ev_epoch = UNSET;   /* Connected.epoch */
byte src;                /* the source state of the row that fired */
short row;               /* the row that fired (see the row map in the header) */
byte tp = TP_NONE;       /* Lifecycle._transport */
bit  rebuilding;         /* Lifecycle._rebuilding */
byte lh;                 /* ticks since Lifecycle._last_heard (saturates at BOUND) */
byte pd = UNSET;         /* ticks to _probe_deadline */
byte hd = UNSET;         /* ticks to _handshake_deadline */
byte da = UNSET;         /* ticks to _dial_at (a backoff delay running) */
bit  late;               /* the due timer fires late: our own loop was stalled */
bit  online_since;       /* Lifecycle._online_since is set */
byte up;                 /* ticks since then (saturates at GRACE) */
byte failures;           /* Lifecycle._failures (kept only with a budget) */
byte epoch = UNSET;      /* Lifecycle._epoch */
byte rebuilt_epoch = UNSET;  /* Lifecycle._rebuilt_epoch */
bit  c_resumed;          /* Lifecycle._connected: what Connected said */
byte c_epoch = UNSET;
bit  session = SESSION;  /* Lifecycle.session */
/* actions performed in this step, for the driver (perform_actions in env.pml) */
bit a_open; bit a_abort; bit a_close; bit a_rebuild; bit a_ping; bit a_custom;
/* property flags: set when the core does what it must never do */
bit refused_dial;        /* open_transport raised: a transport was still held */
bit no_outcome;          /* an (event, state) pair had no row and was not ignored */
bit parked = 1;          /* the user parked the link (idle, closed, paused ...) */

#define HEALTHY (online_since && up >= GRACE)
/* Lifecycle._failures_after(event): the count this failure makes */
#define FAILS_AFTER ((HEALTHY && (ev == E_TransportLost || ev == E_ProbeUnanswered)) -> 0 : \\
                     ((HEALTHY -> 0 : failures) + 1))
"""

#: The core's clock (``Lifecycle._next_timer`` and ``_timer_event``), as macros.
TIMER_LOGIC = """\
/* Lifecycle._next_timer() <= now: the core's one deadline is due */
#define DUE (!(tp == TP_CLOSING || FINAL(st)) && \\
             (LIVE(st) -> (pd != UNSET -> pd == 0 : lh >= INTERVAL) : \\
              ((tp == TP_OPENING || tp == TP_OPEN) -> hd == 0 : da == 0)))
/* Lifecycle._timer_event(deadline): which timer event that is */
#define TIMER_EVENT (LIVE(st) -> (late -> E_TimerFiredLate : \\
                                  (pd != UNSET -> E_ProbeUnanswered : E_SilenceNoticed)) : \\
                     ((tp == TP_OPENING || tp == TP_OPEN) -> E_HandshakeTimedOut : \\
                      E_BackoffElapsed))
/* a backoff delay runs: _dial_at is set */
#define BACKOFF_WAIT (da != UNSET)
"""

_CONDITIONS = {
    "is_dialing": Meaning("(tp == TP_OPENING)", "a transport is being opened"),
    "is_rebuilding": Meaning("(rebuilding)", "the rebuild hooks run on this transport"),
    "holds_transport": Meaning("(tp == TP_OPENING || tp == TP_OPEN)",
                               "a transport is opening or open"),
    "is_resumed": Meaning(
        "(session && ev == E_Connected && ev_resumed && ev_epoch != UNSET && "
        "ev_epoch == rebuilt_epoch)",
        "the server kept our session, in an epoch whose rebuild finished"),
    "gives_up": Meaning(
        "(ev_fatal || (BUDGET > 0 && FAILS_AFTER >= BUDGET))",
        "a fatal error, or this failure exhausts the retry budget"),
}

_CALLBACKS = {
    "open_transport": Meaning(
        "if\n"
        ":: tp != TP_NONE -> refused_dial = 1  /* raises LocalProtocolError */\n"
        ":: else -> tp = TP_OPENING; da = UNSET; hd = HANDSHAKE; a_open = 1\n"
        "fi",
        "dial (OpenTransport); refuses while another transport is held"),
    "drop_stray_transport": Meaning("a_abort = 1", "AbortTransport for a stray transport"),
    "note_connected": Meaning("c_resumed = ev_resumed; c_epoch = ev_epoch",
                              "remember what Connected said"),
    "start_rebuild": Meaning(
        "if\n"
        ":: ev == E_Connected -> c_resumed = ev_resumed; c_epoch = ev_epoch\n"
        ":: else\n"
        "fi;\n"
        "tp = TP_OPEN; rebuilding = 1; hd = HANDSHAKE; lh = 0; epoch = c_epoch;\n"
        "a_rebuild = 1",
        "transport open; RunRebuild with a fresh handshake deadline; last_heard = now"),
    "finish_rebuild": Meaning("rebuilding = 0; hd = UNSET; rebuilt_epoch = epoch",
                              "this epoch's rebuild finished"),
    "resume_session": Meaning("tp = TP_OPEN; hd = UNSET; epoch = ev_epoch",
                              "the server kept the session: open, no rebuild"),
    "flush_outbox": Meaning(
        "if\n"
        ":: src != S_waiting -> lh = 0; pd = UNSET; online_since = 1; up = 0\n"
        ":: else\n"
        "fi",
        "entering online afresh restarts the silence clock (the outbox flows)"),
    "send_probe": Meaning(
        "if\n"
        ":: ev == E_TimerFiredLate -> pd = TIMEOUT\n"
        ":: else -> pd = (lh >= BOUND -> 0 : BOUND - lh)\n"
        "fi;\n"
        "a_ping = 1",
        "SendPing; the probe deadline is last_heard + interval + timeout, or a full "
        "timeout from now after a stall"),
    "note_heard": Meaning("lh = 0; pd = UNSET", "proof of life: last_heard = now"),
    "deliver_message": Meaning("skip", "Deliver: payloads are not modelled"),
    "accept_message": Meaning("skip", "the outbox is not in the lifecycle model"),
    "refuse_message": Meaning("skip  /* raises LinkClosedError to the caller */",
                              "send() on a final link is refused; nothing changes"),
    "settle_written": Meaning("skip", "the outbox is not in the lifecycle model"),
    "settle_acked": Meaning("skip", "the outbox is not in the lifecycle model"),
    "count_failure": Meaning(
        "failures = (BUDGET > 0 -> (FAILS_AFTER < BUDGET -> FAILS_AFTER : BUDGET) : 0);\n"
        "online_since = 0; up = 0;\n"
        "if\n"
        ":: ev == E_ConnectFailed -> tp = TP_NONE; hd = UNSET\n"
        ":: else\n"
        "fi",
        "one more failure (from zero after a healthy stretch); a failed dial holds "
        "nothing"),
    "abort_transport": Meaning(
        "tp = TP_CLOSING; rebuilding = 0; pd = UNSET; hd = UNSET; a_abort = 1",
        "AbortTransport: the transport is closing until released"),
    "note_released": Meaning(
        "if\n"
        ":: tp == TP_CLOSING -> tp = TP_NONE\n"
        ":: else\n"
        "fi",
        "the aborted transport is gone"),
    "schedule_retry": Meaning("select(da : 0 .. BACKOFF_CAP)",
                              "a jittered backoff delay in [0, cap]"),
    "release_everything": Meaning(
        "if\n"
        ":: tp == TP_OPENING || tp == TP_OPEN ->\n"
        "   if\n"
        "   :: st == S_closed && tp == TP_OPEN -> a_close = 1\n"
        "   :: else -> a_abort = 1\n"
        "   fi;\n"
        "   tp = TP_CLOSING\n"
        ":: else\n"
        "fi;\n"
        "da = UNSET; pd = UNSET; hd = UNSET; rebuilding = 0",
        "CloseTransport (polite, CLOSED) or AbortTransport; no deadline is left"),
}

_EVENTS = {
    "Started": EventMeaning("user", "link.start()"),
    "SendRequested": EventMeaning("user", "link.send()"),
    "CloseRequested": EventMeaning("user", "link.close()"),
    "MessageReceived": EventMeaning("peer", "a data frame"),
    "PongReceived": EventMeaning("peer", "a pong (or any control frame)"),
    "Connected": EventMeaning("driver", "the dial and handshake finished"),
    "ConnectFailed": EventMeaning("driver", "the dial or handshake failed"),
    "Rebuilt": EventMeaning("driver", "the rebuild hooks returned"),
    "RebuildFailed": EventMeaning("driver", "a rebuild hook raised"),
    "TransportLost": EventMeaning("driver", "the transport broke or closed"),
    "TransportReleased": EventMeaning("driver", "the aborted transport is gone"),
    "MessagesWritten": EventMeaning("driver", "the socket took frames"),
    "MessagesAcked": EventMeaning("driver", "the peer acknowledged messages"),
    "SilenceNoticed": EventMeaning("timer", "heartbeat interval passed"),
    "ProbeUnanswered": EventMeaning("timer", "probe timeout passed"),
    "TimerFiredLate": EventMeaning("timer", "a heartbeat deadline noticed late"),
    "BackoffElapsed": EventMeaning("timer", "backoff delay over"),
    "HandshakeTimedOut": EventMeaning("timer", "handshake deadline passed"),
    "Crashed": EventMeaning(
        "crash", "the core raised on a driver's report; the driver fails the link"),
    "DeadlineReached": EventMeaning(
        "skipped", "handle() fires the due deadlines itself and never triggers it"),
    # -- fsm/examples/authenticating.py --------------------------------------------------
    "Authenticated": EventMeaning("reply", "the server accepted our credentials"),
    "AuthenticationRejected": EventMeaning(
        "reply", "the server refused our credentials", fatal=True),
    # -- fsm/examples/paused.py ------------------------------------------------------------
    "PauseRequested": EventMeaning("user", "link.pause() (the example's user call)"),
    "ResumeRequested": EventMeaning("user", "link.resume() (the example's user call)"),
}

#: The meanings of everything the built-in table and the examples use.
BUILTIN = Meanings(conditions=_CONDITIONS, callbacks=_CALLBACKS, events=_EVENTS)
