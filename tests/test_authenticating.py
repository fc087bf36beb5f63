"""The AUTHENTICATING example extension: its flow, its failures, and that the default
invariants still hold for the derived spec."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

import fsm.examples.authenticating as example
from fsm import (
    AbortTransport,
    Action,
    Backoff,
    Envelope,
    HandBack,
    Heartbeat,
    Lifecycle,
    NotifyStateChange,
    OpenTransport,
    RunRebuild,
    State,
    StateChange,
    Transmit,
)
from fsm.errors import Broken, Closed, LinkClosedError
from fsm.events import (
    INPUT_EVENTS,
    TIMER_EVENTS,
    CloseRequested,
    Connected,
    DeadlineReached,
    Event,
    MessageReceived,
    Rebuilt,
    SendRequested,
    Started,
    TransportLost,
    TransportReleased,
)
from fsm.examples.authenticating import (
    AUTH_SPEC,
    AUTHENTICATING,
    Authenticate,
    Authenticated,
    AuthenticationRejected,
)
from fsm.spec import DEFAULT_SPEC
from tests.test_table_sweep import SAMPLES, assert_defined_outcome

TIMEOUT = 4.0
AUTH_EVENTS = (Authenticated, AuthenticationRejected)
ALL_EVENTS = INPUT_EVENTS + TIMER_EVENTS + AUTH_EVENTS
AUTH_SAMPLES: dict[type[Event], Callable[[], Event]] = {
    **SAMPLES, Authenticated: Authenticated,
    AuthenticationRejected: lambda: AuthenticationRejected("token expired")}


def make(*, session: bool = False) -> Lifecycle:
    return Lifecycle(rand=lambda: 0.5, heartbeat=Heartbeat(1, 1),
                     backoff=Backoff(initial=1.0, factor=2.0, cap=8.0),
                     spec=AUTH_SPEC, handshake_timeout=TIMEOUT, session=session)


def notify(old: str, new: str, reason: str, at: float) -> NotifyStateChange:
    return NotifyStateChange(StateChange(old=old, new=new, reason=reason, at=at))


def changes(actions: list[Action]) -> list[tuple[str, str]]:
    return [(a.change.old, a.change.new) for a in actions if isinstance(a, NotifyStateChange)]


def authenticating(lc: Lifecycle) -> None:
    """The invariants the tags promise, checked whenever the link authenticates."""
    assert lc.state == AUTHENTICATING
    assert not lc.tags.live and not lc.tags.final
    assert lc.tags.transport and lc.tags.sends
    assert lc.transport in ("opening", "open")  # holds the link's one transport
    assert lc.next_deadline() is not None  # bounded by the handshake timeout


# -- the spec -------------------------------------------------------------------------


def test_spec_validates_and_declares_the_state() -> None:
    AUTH_SPEC.validate()
    assert AUTH_SPEC.name == "authenticating"
    assert AUTH_SPEC.state_names == [*DEFAULT_SPEC.state_names, AUTHENTICATING]
    assert AUTH_SPEC.triggers[-2:] == ["Authenticated", "AuthenticationRejected"]


def test_tags_say_transport_and_sends_but_not_live() -> None:
    tags = AUTH_SPEC.tags[AUTHENTICATING]
    assert (tags.live, tags.transport, tags.sends, tags.final) == (False, True, True, False)
    # The built-in states keep their tags.
    for state in DEFAULT_SPEC.state_names:
        assert AUTH_SPEC.tags[state] == DEFAULT_SPEC.tags[state]


def test_deriving_leaves_the_default_spec_alone() -> None:
    assert AUTHENTICATING not in DEFAULT_SPEC.state_names
    assert DEFAULT_SPEC.outcomes("connecting", "Connected")[-1]["dest"] is None


def test_connected_rows_now_lead_to_authenticating() -> None:
    for source in ("connecting", "recovering"):
        dests = [r["dest"] for r in AUTH_SPEC.outcomes(source, "Connected")]
        assert dests == [None, "online", AUTHENTICATING]


def test_edges_in_and_out() -> None:
    edges = {(r["source"], r["dest"]) for r in AUTH_SPEC.rows if r["dest"] is not None}
    out_of = {dest for source, dest in edges if source == AUTHENTICATING}
    into = {source for source, dest in edges if dest == AUTHENTICATING}
    assert out_of == {"online", "failed", "stale", "closed"}
    assert into == {"connecting", "recovering"}
    # The only way online from a fresh connection is now through authentication.
    assert ("connecting", "online") in edges  # resumed sessions only
    assert all(r["conditional"] for r in AUTH_SPEC.rows
               if r["dest"] == "online" and r["source"] in ("connecting", "recovering"))


def test_vocabulary_types() -> None:
    for cls in (Authenticated, AuthenticationRejected, Authenticate):
        assert dataclasses.is_dataclass(cls)
        assert getattr(cls, "__dataclass_params__").frozen  # noqa: B009
        assert "__slots__" in cls.__dict__
    assert issubclass(Authenticated, Event)
    assert issubclass(AuthenticationRejected, Event)
    assert issubclass(Authenticate, Action)
    rejected = AuthenticationRejected("bad token")
    assert rejected.reason == "bad token"
    with pytest.raises(dataclasses.FrozenInstanceError):
        rejected.reason = "other"  # type: ignore[misc]


def test_module_docstring_is_a_tutorial() -> None:
    doc = example.__doc__ or ""
    for words in ("derive", "tags", "drop", "ignore", "emit(Authenticate())", "Fix:",
                  "tether diagram"):
        assert words in doc


# -- the flow -------------------------------------------------------------------------


def test_full_flow_authenticates_then_rebuilds_then_flushes() -> None:
    lc = make()
    assert lc.handle(Started(), 0.0) == [
        OpenTransport(attempt=1), notify("idle", "connecting", "started by the user", 0.0)]
    lc.handle(SendRequested("a"), 0.25)
    actions = lc.handle(Connected(), 0.5)
    assert actions == [
        Authenticate(),
        notify("connecting", AUTHENTICATING, "transport open, handshake done", 0.5),
    ]
    authenticating(lc)
    assert lc.next_deadline() == TIMEOUT  # the dial's deadline bounds authentication too
    # Sends wait: nothing flows to a server that does not know us yet.
    assert lc.handle(SendRequested("b"), 0.75) == []
    assert lc.handle(MessageReceived("hello"), 0.75)[0].payload == "hello"  # type: ignore[attr-defined]
    assert lc.handle(Authenticated(), 1.0) == [RunRebuild(reason="new connection")]
    authenticating(lc)
    assert lc.transport == "open"
    assert lc.next_deadline() == 1.0 + TIMEOUT  # the rebuild gets its own timeout
    assert lc.handle(Rebuilt(), 1.25) == [
        Transmit((Envelope(1, "a", wire=1), Envelope(2, "b", wire=2))),
        notify(AUTHENTICATING, "online", "rebuild hooks finished; session ready", 1.25),
    ]
    assert lc.state == State.ONLINE
    assert lc.tags.live
    assert lc.next_deadline() == 2.25  # the heartbeat runs from here


def test_rebuilt_before_authenticated_is_ignored() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    assert lc.handle(Rebuilt(), 0.5) == []
    authenticating(lc)


def test_stray_connected_while_authenticating_is_ignored() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    # The driver has one transport, and it is ours: nothing to abort.
    assert lc.handle(Connected(), 0.5) == []
    authenticating(lc)


def test_authenticated_twice_rebuilds_once() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    assert lc.handle(Authenticated(), 0.5) == [RunRebuild(reason="new connection")]
    assert lc.handle(Authenticated(), 0.75) == []
    assert lc.next_deadline() == 0.5 + TIMEOUT


def test_every_reconnect_authenticates_again() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    lc.handle(Authenticated(), 0.5)
    lc.handle(Rebuilt(), 0.75)
    lc.handle(TransportLost(Broken("reset")), 1.0)
    lc.handle(TransportReleased(), 1.25)
    dial_at = lc.next_deadline()
    assert dial_at is not None
    assert lc.handle(DeadlineReached(), dial_at) == [OpenTransport(attempt=2)]
    actions = lc.handle(Connected(), dial_at + 0.25)
    assert Authenticate() in actions
    assert changes(actions) == [("recovering", AUTHENTICATING)]
    authenticating(lc)
    lc.handle(Authenticated(), dial_at + 0.5)
    lc.handle(Rebuilt(), dial_at + 0.75)
    assert lc.state == State.ONLINE
    assert lc.reconnects == 1


def test_resumed_session_skips_authentication() -> None:
    lc = make(session=True)
    lc.handle(Started(), 0.0)
    lc.handle(Connected(epoch="E1"), 0.25)
    lc.handle(Authenticated(), 0.5)
    lc.handle(Rebuilt(), 0.75)
    assert lc.state == State.ONLINE
    lc.handle(TransportLost(Broken("reset")), 1.0)
    lc.handle(TransportReleased(), 1.0)
    deadline = lc.next_deadline()
    assert deadline is not None
    lc.handle(DeadlineReached(), deadline)
    actions = lc.handle(Connected(resumed=True, epoch="E1"), deadline + 0.25)
    assert changes(actions) == [("recovering", "online")]
    assert Authenticate() not in actions


def test_rejection_is_fatal_and_hands_back() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(SendRequested("a"), 0.25)
    lc.handle(Connected(), 0.5)
    actions = lc.handle(AuthenticationRejected("token expired"), 0.75)
    assert lc.state == State.FAILED
    assert changes(actions) == [(AUTHENTICATING, "failed")]
    assert [type(a) for a in actions] == [AbortTransport, HandBack, NotifyStateChange]
    hand_back = actions[1]
    assert isinstance(hand_back, HandBack)
    assert hand_back.envelopes == (Envelope(1, "a"),)
    assert "AuthenticationRejected" in lc.reason
    assert lc.next_deadline() is None
    with pytest.raises(LinkClosedError):
        lc.handle(SendRequested("b"), 1.0)
    # Nothing more is dialed, however long we wait.
    assert lc.handle(TransportReleased(), 1.0) == []
    assert lc.handle(DeadlineReached(), 1000.0) == []
    assert lc.transport == "none"


def test_handshake_timeout_while_authenticating_goes_stale() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.5)
    assert lc.handle(DeadlineReached(), TIMEOUT - 0.125) == []
    actions = lc.handle(DeadlineReached(), TIMEOUT)
    assert changes(actions) == [(AUTHENTICATING, "stale")]
    abort = actions[0]
    assert isinstance(abort, AbortTransport)
    assert "handshake or rebuild took over 4.0 s" in abort.reason
    assert lc.transport == "closing"
    assert lc.statistics()["failures"] == 1
    lc.handle(TransportReleased(), TIMEOUT + 0.25)
    assert lc.state == State.RECOVERING
    assert lc.next_deadline() == TIMEOUT + 0.25 + 0.5 * 2.0  # u * ceiling(1)


def test_handshake_timeout_during_the_rebuild_goes_stale() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.5)
    lc.handle(Authenticated(), 1.0)
    actions = lc.handle(DeadlineReached(), 1.0 + TIMEOUT)
    assert changes(actions) == [(AUTHENTICATING, "stale")]
    # A late Rebuilt from the aborted session changes nothing.
    assert lc.handle(Rebuilt(), 1.0 + TIMEOUT) == []
    assert lc.state == State.STALE


@pytest.mark.parametrize(
    ("error", "dest"),
    [(Broken("reset"), "stale"), (Closed("unauthorized", code=4401), "failed")],
)
def test_transport_lost_while_authenticating(error: Broken | Closed, dest: str) -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.5)
    actions = lc.handle(TransportLost(error), 0.75)
    assert changes(actions) == [(AUTHENTICATING, dest)]
    assert any(isinstance(a, AbortTransport) for a in actions)


def test_close_while_authenticating() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.5)
    lc.handle(SendRequested("a"), 0.5)
    actions = lc.handle(CloseRequested(), 0.75)
    assert [type(a) for a in actions] == [AbortTransport, HandBack, NotifyStateChange]
    assert lc.state == State.CLOSED


def test_auth_events_are_ignored_elsewhere() -> None:
    lc = make()
    assert lc.handle(Authenticated(), 0.0) == []
    assert lc.handle(AuthenticationRejected("late"), 0.0) == []
    assert lc.state == State.IDLE
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    lc.handle(Authenticated(), 0.5)
    lc.handle(Rebuilt(), 0.75)
    assert lc.handle(AuthenticationRejected("too late"), 1.0) == []
    assert lc.state == State.ONLINE


# -- the default invariants, swept over the derived spec -----------------------------


def auth_lifecycle_in(state: str) -> tuple[Lifecycle, float]:
    """A link of AUTH_SPEC in ``state``, reached through real events."""
    lc = make()
    online = [Started(), Connected(), Authenticated(), Rebuilt()]
    paths: dict[str, list[Event]] = {
        "idle": [],
        "connecting": [Started()],
        AUTHENTICATING: [Started(), Connected()],
        "online": online,
        "waiting": [*online, DeadlineReached()],
        "stale": [*online, TransportLost(Broken("reset"))],
        "recovering": [*online, TransportLost(Broken("reset")), TransportReleased()],
        "closed": [Started(), CloseRequested()],
        "failed": [Started(), Connected(), AuthenticationRejected("no")],
    }
    now = 0.0
    for event in paths[state]:
        if isinstance(event, DeadlineReached):
            deadline = lc.next_deadline()
            assert deadline is not None
            now = deadline
        lc.handle(event, now)
        now += 0.25
    assert lc.state == state
    return lc, now


@pytest.mark.parametrize("event_type", ALL_EVENTS, ids=[e.__name__ for e in ALL_EVENTS])
@pytest.mark.parametrize("state", AUTH_SPEC.state_names)
def test_every_event_in_every_state_has_a_defined_outcome(
    state: str, event_type: type[Event]
) -> None:
    lc, now = auth_lifecycle_in(state)
    assert_defined_outcome(lc, now, AUTH_SAMPLES[event_type](), AUTH_SPEC)
    if lc.state == AUTHENTICATING:
        authenticating(lc)
    if lc.tags.live:
        assert lc.transport == "open"
