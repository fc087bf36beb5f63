"""The sans-I/O lifecycle core: ``handle(event, now) -> actions`` and ``next_deadline()``.

Theory of operation
===================

A :class:`Lifecycle` is the whole decision-making of one link, with no I/O. The driver
(:mod:`adapters.link`) owns the socket, the event loop and the clock; the core owns every
decision. They talk in three verbs:

* ``handle(event, now)``: the driver reports a fact (:mod:`fsm.events`) that happened at
  time ``now`` (any monotonic clock, in seconds; it must never go backwards) and gets
  back the actions (:mod:`fsm.actions`) to perform, in order.
* ``next_deadline()``: when the core next needs to be woken, or ``None``. The driver
  sleeps until then and reports :class:`~fsm.events.DeadlineReached`.
* ``perform(action)``: used by table callbacks to queue an action.

Time is an input. Before handling any event, the core fires every deadline that ``now``
has passed (``SilenceNoticed``, ``ProbeUnanswered``, ``BackoffElapsed``,
``HandshakeTimedOut``), so a driver that reports late can never see a live state that
outlived its heartbeat. The one exception is a frame from the peer: it is handled
*first*, because it proves the peer alive whatever the clock says, and a driver reads
what is already buffered before it reports a deadline (a late timer is not evidence
against the peer). A heartbeat deadline noticed more than ``heartbeat.grace`` after it
passed means our own loop stalled; the core then probes afresh (``TimerFiredLate``)
instead of condemning a peer whose answer it never gave a chance to arrive.

The state is changed only by the ``transitions`` machine built from the table in
:mod:`fsm.table` (or a user's :class:`~fsm.spec.Spec`). The methods below named as
imperatives (``open_transport``, ``flush_outbox``, ...) are the table's callbacks: they
update bookkeeping and append actions. Predicates (``is_dialing``, ``gives_up``, ...) are
its conditions. A link is a *model* of a machine shared by every link of its spec and is
not registered with it, so a link costs its own fields only.

Bookkeeping the table does not show:

* ``transport``: ``none``, ``opening``, ``open`` or ``closing``. Exactly one transport may
  exist; ``open_transport`` refuses to dial while another is not released.
* ``failures``: consecutive failed attempts, the backoff exponent and what the budget
  counts. A link that stayed ONLINE for ``backoff.grace`` starts again from zero.
* the outbox (:mod:`fsm.outbox`): messages flow only in live states and stay in flight
  until settled (plain mode: ``MessagesWritten``, the transport took them; session mode:
  the peer's cumulative ack). When a transport is aborted, whatever it had not settled
  goes back in front, in order, for the next one. On CLOSED and FAILED everything
  undelivered is handed back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from transitions import EventData

from fsm.actions import (
    AbortTransport,
    Action,
    CloseTransport,
    Deliver,
    HandBack,
    NotifyStateChange,
    OpenTransport,
    RunRebuild,
    SendPing,
    StateChange,
    Transmit,
)
from fsm.backoff import Backoff
from fsm.checks import seconds
from fsm.errors import LinkClosedError, LocalProtocolError, Verdict, classify
from fsm.events import (
    BackoffElapsed,
    Connected,
    ConnectFailed,
    Crashed,
    DeadlineReached,
    Event,
    HandshakeTimedOut,
    MessageReceived,
    MessagesAcked,
    MessagesWritten,
    PongReceived,
    ProbeUnanswered,
    RebuildFailed,
    SendRequested,
    SilenceNoticed,
    TimerFiredLate,
    TransportLost,
)
from fsm.heartbeat import Heartbeat
from fsm.outbox import Outbox
from fsm.spec import DEFAULT_SPEC, Spec
from fsm.states import State, Tags

__all__ = ["DEFAULT_HANDSHAKE_TIMEOUT", "Lifecycle", "Statistics"]

#: Seconds allowed to dial, finish the handshake, and (separately) run the rebuild hooks.
#: 10 s is websockets' ``open_timeout``: generous on a LAN, short enough for liveness.
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

_FRAMES = (MessageReceived, PongReceived)
_PLAIN_REASONS = {
    "Started": "started by the user",
    "CloseRequested": "closed by the user",
    "Connected": "transport open, handshake done",
    "Rebuilt": "rebuild hooks finished; session ready",
    "TransportReleased": "old transport released; backing off before the next dial",
    "BackoffElapsed": "backoff over; dialing",
    "MessageReceived": "heard from the peer (message)",
    "PongReceived": "heard from the peer (pong)",
}
_FAILURES = (ConnectFailed, TransportLost, HandshakeTimedOut, RebuildFailed, Crashed)


class Statistics(dict[str, Any]):
    """A plain dict of counters; see :meth:`Lifecycle.statistics`."""


class Lifecycle:
    """The lifecycle of one link. See the module docstring for the theory of operation."""

    __slots__ = (
        "_actions",
        "_cause",
        "_clock_started",
        "_connected",
        "_dial_at",
        "_entered_at",
        "_epoch",
        "_excused",
        "_failures",
        "_handshake_deadline",
        "_last_heard",
        "_max_inflight",
        "_now",
        "_online_since",
        "_probe_deadline",
        "_rand",
        "_reason_text",
        "_rebuilding",
        "_rebuilt_epoch",
        "_retry_after",
        "_state_reason",
        "_time_in",
        "_transport",
        "attempts",
        "backoff",
        "classify",
        "handshake_timeout",
        "heartbeat",
        "last_error",
        "last_rtt",
        "outbox",
        "reconnects",
        "session",
        "spec",
        "state",
    )

    state: str  # assigned by the transitions machine only

    def __init__(
        self,
        *,
        rand: Callable[[], float],
        heartbeat: Heartbeat | None = None,
        backoff: Backoff | None = None,
        outbox: Outbox | None = None,
        spec: Spec = DEFAULT_SPEC,
        session: bool = False,
        handshake_timeout: float = DEFAULT_HANDSHAKE_TIMEOUT,
        classify: Callable[[BaseException], Verdict] = classify,
    ) -> None:
        seconds("handshake_timeout", handshake_timeout)
        for name, value, kind in (("heartbeat", heartbeat, Heartbeat),
                                  ("backoff", backoff, Backoff), ("outbox", outbox, Outbox),
                                  ("spec", spec, Spec)):
            if value is not None and not isinstance(value, kind):
                raise TypeError(f"{name} must be a {kind.__module__}.{kind.__name__} (or "
                                f"None for the default), got {type(value).__name__} "
                                f"{value!r}")
        self.spec = spec
        self.heartbeat = heartbeat if heartbeat is not None else Heartbeat()
        self.backoff = backoff if backoff is not None else Backoff()
        self.outbox = outbox if outbox is not None else Outbox()
        self.session = session
        self.handshake_timeout = handshake_timeout
        self.classify = classify
        self._rand = rand
        self._actions: list[Action] = []
        self._now = 0.0
        self._clock_started = False
        self._transport = "none"
        self._rebuilding = False
        self._connected = Connected()  # what the current connection's handshake said
        self._max_inflight: int | None = None  # the server's flow limit (session mode)
        self._epoch: str | None = None  # the server epoch of the current connection
        self._rebuilt_epoch: str | None = None  # the last epoch whose rebuild finished
        self._last_heard = 0.0
        self._probe_deadline: float | None = None
        self._dial_at: float | None = None
        self._handshake_deadline: float | None = None
        self._online_since: float | None = None
        self._excused = 0.0
        self._failures = 0
        self._retry_after: float | None = None
        self._cause: Event | None = None  # the event being handled
        self._reason_text: str | None = "created"  # its description, made when needed
        self._state_reason = "created"  # why the link is in its current state
        self._entered_at = 0.0
        self._time_in: dict[str, float] = {}
        self.attempts = 0
        self.reconnects = 0
        self.last_rtt: float | None = None
        self.last_error: BaseException | None = None
        spec.machine.set_state(spec.initial, model=self)

    def __repr__(self) -> str:
        return (f"Lifecycle(state={self.state!r}, heartbeat={self.heartbeat!r}, "
                f"backoff={self.backoff!r}, outbox={self.outbox!r}, session={self.session!r})")

    # -- the three verbs -------------------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Action]:
        """Report ``event`` at time ``now``; return the actions to perform, in order."""
        if self._clock_started and now < self._now:
            raise LocalProtocolError(
                f"time went backwards: handle({type(event).__name__}) at {now!r} after "
                f"{self._now!r}; pass a monotonic clock"
            )
        if not self._clock_started:
            self._clock_started, self._entered_at = True, now
        self._now = now
        if not isinstance(event, _FRAMES):
            self._fire_due_deadlines()
        if not isinstance(event, DeadlineReached):  # a declared no-op in every state:
            self._trigger(event)                     # its deadlines were fired just above
            self._fire_due_deadlines()
        actions, self._actions = self._actions, []
        return actions

    def next_deadline(self) -> float | None:
        """When the core must next be woken (absolute, on the caller's clock), or None.

        If an event raised (a refused send) after due deadlines had fired, their actions
        are still queued: the answer is then "now", so the driver collects them at once.
        """
        if self._actions:
            return self._now
        return self._next_timer()

    def _next_timer(self) -> float | None:
        if self._transport == "closing" or self.tags.final:
            return None
        if self.tags.live:
            return self._probe_deadline if self._probe_deadline is not None else \
                self.heartbeat.silence_deadline(self._last_heard)
        if self._transport in ("opening", "open"):
            return self._handshake_deadline
        return self._dial_at

    def perform(self, action: Action) -> None:
        """Queue ``action`` for the driver (for table callbacks, including users')."""
        self._actions.append(action)

    # -- reading --------------------------------------------------------------------------

    @property
    def tags(self) -> Tags:
        return self.spec.tags[self.state]

    @property
    def transport(self) -> str:
        """``none``, ``opening``, ``open`` or ``closing``."""
        return self._transport

    @property
    def last_heard(self) -> float:
        return self._last_heard

    @property
    def excused(self) -> float:
        """Seconds of silence forgiven beyond ``interval + timeout`` because our own loop
        stalled (``TimerFiredLate``); reset when the peer is heard. In a live state,
        ``now - last_heard <= heartbeat.bound + excused`` always holds."""
        return self._excused

    @property
    def reason(self) -> str:
        """Why the link is in its current state (the reason of the last change)."""
        return self._state_reason

    @property
    def epoch(self) -> str | None:
        """The server epoch of the current connection (session mode)."""
        return self._epoch

    def statistics(self, now: float | None = None) -> Statistics:
        """Counters for dashboards and tests."""
        now = self._now if now is None else now
        time_in = dict(self._time_in)
        time_in[self.state] = time_in.get(self.state, 0.0) + max(0.0, now - self._entered_at)
        return Statistics(
            state=str(self.state), reason=self._state_reason, attempts=self.attempts,
            reconnects=self.reconnects, failures=self._failures, last_rtt=self.last_rtt,
            outbox_depth=len(self.outbox), outbox_inflight=self.outbox.inflight,
            time_in_state=time_in, stall_excused=self._excused,
        )

    # -- the engine -------------------------------------------------------------------------

    def _trigger(self, event: Event) -> None:
        try:
            trigger = self.spec.machine.events[event.trigger()]
        except KeyError:
            raise LocalProtocolError(
                f"{type(event).__name__} is not an event of spec {self.spec.name!r} "
                f"(state {self.state!r}); add it with Spec.derive(events=[...])"
            ) from None
        self._cause, self._reason_text = event, None
        trigger.trigger(self, event)

    def _fire_due_deadlines(self) -> None:
        # Each firing moves or clears the deadline; the bound guards against a spec bug.
        for _ in range(8):
            deadline = self._next_timer()
            if deadline is None or deadline > self._now:
                return
            self._trigger(self._timer_event(deadline))
        raise LocalProtocolError(
            f"deadline {self._next_timer()!r} in state {self.state!r} keeps firing; "
            f"a custom transition must move or clear it"
        )

    def _timer_event(self, deadline: float) -> Event:
        if self.tags.live:
            lateness = self._now - deadline
            if lateness > self.heartbeat.grace:
                return TimerFiredLate(lateness=lateness)
            return ProbeUnanswered() if self._probe_deadline is not None else SilenceNoticed()
        if self._transport in ("opening", "open"):
            return HandshakeTimedOut()
        return BackoffElapsed()

    @property
    def _reason(self) -> str:
        """Why the event being handled happened, described only when someone asks (most
        events change nothing and need no words)."""
        if self._reason_text is None:
            self._reason_text = self._describe(self._cause) if self._cause else "created"
        return self._reason_text

    def _describe(self, event: Event) -> str:
        hb = self.heartbeat
        if isinstance(event, ProbeUnanswered):
            return (f"no frame from the peer for {self._now - self._last_heard:.3f} s "
                    f"(interval {hb.interval} s + timeout {hb.timeout} s)")
        if isinstance(event, SilenceNoticed):
            return f"peer silent for {hb.interval} s; probing"
        if isinstance(event, TimerFiredLate):
            return f"timer fired {event.lateness:.3f} s late (local loop stalled); probing afresh"
        if isinstance(event, HandshakeTimedOut):
            return f"handshake or rebuild took over {self.handshake_timeout} s"
        if isinstance(event, ConnectFailed | TransportLost | RebuildFailed | Crashed):
            return self.classify(event.error).reason
        return _PLAIN_REASONS.get(type(event).__name__) or event.describe()

    # -- table conditions -----------------------------------------------------------------

    def is_dialing(self, _: EventData) -> bool:
        return self._transport == "opening"

    def is_rebuilding(self, _: EventData) -> bool:
        return self._rebuilding

    def is_resumed(self, event_data: EventData) -> bool:
        """The server kept our session, and this epoch's rebuild already finished: the
        rebuild hooks ran exactly once for it, so they do not run again."""
        event = _event(event_data)
        return (self.session and isinstance(event, Connected) and event.resumed
                and event.epoch is not None and event.epoch == self._rebuilt_epoch)

    def holds_transport(self, _: EventData) -> bool:
        return self._transport in ("opening", "open")

    def _failures_after(self, event: Event) -> tuple[int, Verdict]:
        error: BaseException | None = getattr(event, "error", None)
        verdict = (self.classify(error) if error is not None
                   else Verdict(retry=True, reason=self._describe(event)))
        healthy = (self._online_since is not None
                   and self._now - self._online_since >= self.backoff.grace)
        if healthy and isinstance(event, TransportLost | ProbeUnanswered):
            return 0, verdict  # a loss after a healthy stretch: retry at once, from zero
        return (0 if healthy else self._failures) + 1, verdict

    def gives_up(self, event_data: EventData) -> bool:
        failures, verdict = self._failures_after(_event(event_data))
        if not verdict.retry:
            return True
        if self.backoff.exhausted(failures):
            self._reason_text = (f"{verdict.reason}; retry budget of {self.backoff.budget} "
                                 f"attempts exhausted")
            return True
        return False

    # -- table callbacks: bookkeeping and actions -------------------------------------------

    def count_failure(self, event_data: EventData) -> None:
        event = _event(event_data)
        self._failures, verdict = self._failures_after(event)
        self._retry_after = verdict.retry_after
        self.last_error = getattr(event, "error", None)
        self._online_since = None
        if isinstance(event, ConnectFailed):
            self._transport = "none"
            self._handshake_deadline = None

    def open_transport(self, _: EventData) -> None:
        if self._transport != "none":
            raise LocalProtocolError(
                f"refusing to dial in state {self.state!r}: a transport is still "
                f"{self._transport} (one transport per link)"
            )
        self._transport, self._dial_at = "opening", None
        self._handshake_deadline = self._now + self.handshake_timeout
        self.attempts += 1
        self.perform(OpenTransport(attempt=self.attempts))

    def drop_stray_transport(self, _: EventData) -> None:
        self.perform(AbortTransport(reason="a transport opened that the link did not ask for"))

    def note_connected(self, event_data: EventData) -> None:
        """Remember what ``Connected`` said, for a custom row that starts the rebuild
        later, on another event (see ``fsm/examples/authenticating.py``)."""
        event = _event(event_data)
        assert isinstance(event, Connected)
        self._connected = event

    def start_rebuild(self, event_data: EventData) -> None:
        event = _event(event_data)
        if isinstance(event, Connected):
            self._connected = event
        event = self._connected
        self._max_inflight = event.max_inflight
        self._transport, self._rebuilding = "open", True
        self._handshake_deadline = self._now + self.handshake_timeout
        self._last_heard, self._epoch = self._now, event.epoch
        if self.session and event.resumed:
            # The server kept the session but its rebuild never finished: replay what it
            # lacks of what was sent, in order and with the same numbers, then rebuild
            # again; messages never sent on it wait for the rebuild, as usual.
            self.outbox.ack(event.acked)
            replay = self.outbox.take_replays()
            if replay:
                self.perform(Transmit(tuple(replay)))
            why = f"rebuild for epoch {event.epoch} did not finish; running it again"
        else:
            self.outbox.new_session()
            why = ("new connection" if not self.session
                   else f"new session (server epoch {event.epoch}): the server lost ours")
        self.perform(RunRebuild(reason=why))

    def finish_rebuild(self, _: EventData) -> None:
        self._rebuilding, self._handshake_deadline = False, None
        self._rebuilt_epoch = self._epoch

    def resume_session(self, event_data: EventData) -> None:
        event = _event(event_data)
        assert isinstance(event, Connected)
        self._transport, self._handshake_deadline = "open", None
        self._epoch, self._max_inflight = event.epoch, event.max_inflight
        self.outbox.ack(event.acked)  # the rest is replayed as the outbox flows

    def flush_outbox(self, event_data: EventData) -> None:
        if _source(event_data) != State.WAITING:
            self._last_heard, self._probe_deadline = self._now, None
            self._online_since = self._now
            if self.attempts > 1:
                self.reconnects += 1
        self._flow()

    def _flow(self) -> None:
        """Transmit pending messages, as many as the server's ``max_inflight`` allows."""
        room = None if self._max_inflight is None else self._max_inflight - self.outbox.inflight
        envelopes = self.outbox.take(track=True, room=room)
        if envelopes:
            self.perform(Transmit(tuple(envelopes)))

    def send_probe(self, event_data: EventData) -> None:
        hb = self.heartbeat
        if isinstance(_event(event_data), TimerFiredLate):
            # Our loop stalled: give the peer a full timeout from now, and account for the
            # silence this forgives beyond the usual bound.
            self._probe_deadline = hb.probe_deadline(self._now)
            self._excused = max(self._excused,
                                self._probe_deadline - (self._last_heard + hb.bound))
        else:
            self._probe_deadline = hb.probe_deadline(hb.silence_deadline(self._last_heard))
        self.perform(SendPing())

    def note_heard(self, event_data: EventData) -> None:
        self._last_heard, self._probe_deadline, self._excused = self._now, None, 0.0
        event = _event(event_data)
        if isinstance(event, PongReceived) and event.rtt is not None:
            self.last_rtt = event.rtt

    def deliver_message(self, event_data: EventData) -> None:
        event = _event(event_data)
        assert isinstance(event, MessageReceived)
        self.perform(Deliver(event.payload))

    def accept_message(self, event_data: EventData) -> None:
        event = _event(event_data)
        assert isinstance(event, SendRequested)
        if event.urgent and self._rebuilding:
            self.perform(Transmit((self.outbox.push_urgent(event.payload),)))
            return
        _, evicted = self.outbox.push(event.payload)
        if evicted:
            self.perform(HandBack(tuple(evicted), reason=(
                f"outbox full ({self.outbox.limit} messages); oldest handed back")))
        if self.tags.live:
            self._flow()

    def refuse_message(self, _: EventData) -> None:
        raise LinkClosedError(f"cannot send: the link is {self.state} ({self._state_reason})")

    def settle_written(self, event_data: EventData) -> None:
        event = _event(event_data)
        assert isinstance(event, MessagesWritten)
        if not self.session:  # plain mode: written is as far as we can follow a message
            self.outbox.ack(event.upto)

    def settle_acked(self, event_data: EventData) -> None:
        event = _event(event_data)
        assert isinstance(event, MessagesAcked)
        if self.session:
            self.outbox.ack(event.upto)
            if self.tags.live and self.outbox.pending:
                self._flow()  # acks make room under max_inflight

    def abort_transport(self, _: EventData) -> None:
        self._transport, self._rebuilding = "closing", False
        self._probe_deadline = self._handshake_deadline = None
        # Whatever the dead transport had not settled goes back in front, in order.
        self.outbox.rewind()
        self.perform(AbortTransport(reason=self._reason))

    def note_released(self, _: EventData) -> None:
        if self._transport == "closing":
            self._transport = "none"

    def schedule_retry(self, _: EventData) -> None:
        delay = self.backoff.delay(self._failures, self._rand(), self._retry_after)
        self._dial_at, self._retry_after = self._now + delay, None

    def release_everything(self, _: EventData) -> None:
        if self._transport in ("opening", "open"):  # "closing": its abort is under way
            polite = self.state == State.CLOSED and self._transport == "open"
            self._transport = "closing"
            self.perform(CloseTransport(reason=self._reason) if polite
                         else AbortTransport(reason=self._reason))
        self._dial_at = self._probe_deadline = self._handshake_deadline = None
        self._rebuilding = False
        undelivered = self.outbox.drain()
        if undelivered:
            self.perform(HandBack(tuple(undelivered), reason=f"link {self.state}: {self._reason}"))

    def record_change(self, event_data: EventData) -> None:
        # Every external transition is announced, a reflexive one too (a failed redial
        # while recovering): listeners learn why each attempt failed, as Ably's "update".
        # Internal transitions (dest None) change nothing and are not announced.
        assert event_data.transition is not None
        if event_data.transition.dest is None:
            return
        old = _source(event_data)
        self._time_in[old] = self._time_in.get(old, 0.0) + (self._now - self._entered_at)
        self._entered_at = self._now
        self._state_reason = self._reason
        retry_in = None if self._dial_at is None else max(0.0, self._dial_at - self._now)
        change = StateChange(old=str(old), new=str(self.state), reason=self._reason,
                             at=self._now, retry_in=retry_in)
        self.perform(NotifyStateChange(change))


def _event(event_data: EventData) -> Event:
    """The tether event behind a ``transitions`` trigger (always the one positional arg)."""
    (event,) = event_data.args
    assert isinstance(event, Event)
    return event


def _source(event_data: EventData) -> str:
    assert event_data.transition is not None
    return str(event_data.transition.source)
