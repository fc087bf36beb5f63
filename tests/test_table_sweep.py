"""The table sweep: every event in every state has a defined outcome.

For each of the eight states, :func:`lifecycle_in` reaches the state through real
events (the way websockets' tests build ``Protocol(state=...)``, but through the table
itself, so the bookkeeping is what the state really comes with). Then one instance of
each event is handled, and the outcome must be defined: no exception except the
documented ones, a declared state, only declared edges, and no overdue deadline left.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from fsm import Action, Backoff, Heartbeat, Lifecycle, NotifyStateChange, State
from fsm.errors import Broken, LinkClosedError, LinkCorrupt, Refused
from fsm.events import (
    INPUT_EVENTS,
    TIMER_EVENTS,
    BackoffElapsed,
    CloseRequested,
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
    Rebuilt,
    SendRequested,
    SilenceNoticed,
    Started,
    TimerFiredLate,
    TransportLost,
    TransportReleased,
)
from fsm.spec import DEFAULT_SPEC, Spec

#: One sensible instance of every event type.
SAMPLES: dict[type[Event], Callable[[], Event]] = {
    Started: Started,
    Connected: Connected,
    ConnectFailed: lambda: ConnectFailed(Broken("x")),
    Rebuilt: Rebuilt,
    RebuildFailed: lambda: RebuildFailed(RuntimeError("x")),
    MessageReceived: lambda: MessageReceived("payload"),
    PongReceived: lambda: PongReceived(rtt=0.01),
    MessagesWritten: lambda: MessagesWritten(upto=1),
    MessagesAcked: lambda: MessagesAcked(upto=1),
    TransportLost: lambda: TransportLost(Broken("x")),
    TransportReleased: TransportReleased,
    SendRequested: lambda: SendRequested("payload"),
    CloseRequested: CloseRequested,
    Crashed: lambda: Crashed(LinkCorrupt("x")),
    DeadlineReached: DeadlineReached,
    SilenceNoticed: SilenceNoticed,
    ProbeUnanswered: ProbeUnanswered,
    TimerFiredLate: lambda: TimerFiredLate(lateness=3.0),
    BackoffElapsed: BackoffElapsed,
    HandshakeTimedOut: HandshakeTimedOut,
}
EVENTS = INPUT_EVENTS + TIMER_EVENTS
STATES = [state.value for state in State]


def new_lifecycle(spec: Spec = DEFAULT_SPEC) -> Lifecycle:
    return Lifecycle(rand=lambda: 0.5, heartbeat=Heartbeat(1, 1),
                     backoff=Backoff(initial=1.0, factor=2.0, cap=8.0), spec=spec)


def lifecycle_in(state: str) -> tuple[Lifecycle, float]:
    """A link in ``state``, reached through real events; returns it and the time now."""
    lc = new_lifecycle()
    paths: dict[State, list[tuple[Event, float]]] = {
        State.IDLE: [],
        State.CONNECTING: [(Started(), 0.0)],
        State.ONLINE: [(Started(), 0.0), (Connected(), 0.25), (Rebuilt(), 0.5)],
        State.WAITING: [(Started(), 0.0), (Connected(), 0.25), (Rebuilt(), 0.5),
                        (DeadlineReached(), 1.5)],
        State.STALE: [(Started(), 0.0), (Connected(), 0.25), (Rebuilt(), 0.5),
                      (TransportLost(Broken("reset")), 0.75)],
        State.RECOVERING: [(Started(), 0.0), (Connected(), 0.25), (Rebuilt(), 0.5),
                           (TransportLost(Broken("reset")), 0.75), (TransportReleased(), 1.0)],
        State.CLOSED: [(Started(), 0.0), (CloseRequested(), 0.25)],
        State.FAILED: [(Started(), 0.0), (ConnectFailed(Refused("no", status=401)), 0.25)],
    }
    now = 0.0
    for event, now in paths[State(state)]:
        lc.handle(event, now)
    assert lc.state == state
    return lc, now


def changes(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.change.old, a.change.new) for a in actions if isinstance(a, NotifyStateChange)]


def assert_defined_outcome(lc: Lifecycle, now: float, event: Event, spec: Spec, *,
                           on_time: bool = True) -> None:
    """Handle ``event`` at ``now`` and check that the outcome is one the spec declares.

    ``on_time``: no deadline is due at ``now``, so the event meets the link in its
    current state and the outcome must be one of that (state, event) pair's rows."""
    if on_time:
        deadline = lc.next_deadline()
        assert deadline is None or deadline > now
    before, trigger = lc.state, event.trigger()
    edges = {(r["source"], r["dest"]) for r in spec.rows if r["dest"] is not None}
    try:
        actions = lc.handle(event, now)
    except LinkClosedError:
        # The one documented refusal: sending on a final link.
        assert isinstance(event, SendRequested)
        assert spec.tags[lc.state].final
        assert lc.state == before or not on_time
        return
    assert not (isinstance(event, SendRequested) and spec.tags[before].final), \
        "a send on a final link must raise LinkClosedError"
    assert lc.state in spec.state_names
    for edge in changes(actions):
        assert edge in edges, f"undeclared change {edge} on {trigger}"
    if on_time:
        rows = spec.outcomes(before, trigger)
        if spec.is_ignored(before, trigger):
            assert actions == []
            assert lc.state == before
        elif lc.state != before:
            assert (before, lc.state) in edges
            possible = {(before, r["dest"]) for r in rows if r["dest"] is not None}
            assert changes(actions)[0] in possible
        else:
            assert any(r["dest"] in (None, before) for r in rows)
    else:
        # Deadlines fired first: the path may cross several states, each step declared.
        path = changes(actions)
        assert all(a[1] == b[0] for a, b in itertools.pairwise(path))
        assert not path or (path[0][0] == before and path[-1][1] == lc.state)
    deadline = lc.next_deadline()
    assert deadline is None or deadline > now, "a due deadline was left unfired"


def test_samples_cover_every_event_type() -> None:
    assert set(SAMPLES) == set(EVENTS)
    assert all(type(make()) is cls for cls, make in SAMPLES.items())


@pytest.mark.parametrize("state", STATES)
def test_lifecycle_in_reaches_the_state_with_its_bookkeeping(state: str) -> None:
    lc, _ = lifecycle_in(state)
    tags = lc.tags
    if tags.final:
        # CLOSED from CONNECTING: the aborted transport is still being released.
        assert lc.transport in ("none", "closing")
        assert lc.next_deadline() is None
    elif not tags.transport:
        assert lc.transport == "none"
    if tags.live:
        assert lc.transport == "open"
    if state == State.STALE:
        assert lc.transport == "closing"
    if state == State.RECOVERING:
        assert lc.transport == "none"
        assert lc.next_deadline() is not None


@pytest.mark.parametrize("event_type", EVENTS, ids=[e.__name__ for e in EVENTS])
@pytest.mark.parametrize("state", STATES)
def test_every_event_in_every_state_has_a_defined_outcome(
    state: str, event_type: type[Event]
) -> None:
    lc, now = lifecycle_in(state)
    assert_defined_outcome(lc, now, SAMPLES[event_type](), DEFAULT_SPEC)


@pytest.mark.parametrize("state", STATES)
def test_late_reports_in_every_state_keep_to_declared_edges(state: str) -> None:
    # The same sweep a long time later: due deadlines fire first, through declared edges.
    # Inputs only: a driver never fakes a timer event (the core raises those itself).
    for event_type in INPUT_EVENTS:
        lc, now = lifecycle_in(state)
        assert_defined_outcome(lc, now + 60.0, SAMPLES[event_type](), DEFAULT_SPEC,
                               on_time=False)
