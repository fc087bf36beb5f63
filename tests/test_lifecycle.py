"""The sans-I/O lifecycle core, driven through scenarios with explicit ``now`` values.

Every test feeds events at chosen times and asserts the exact actions and states. Times
are binary fractions (0.25, 0.5, ...) so deadlines compare exactly.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fsm import (
    AbortTransport,
    Action,
    Backoff,
    CloseTransport,
    Deliver,
    Envelope,
    HandBack,
    Heartbeat,
    Lifecycle,
    NotifyStateChange,
    OpenTransport,
    Outbox,
    RunRebuild,
    SendPing,
    State,
    StateChange,
    Transmit,
)
from fsm.errors import Broken, Closed, LinkClosedError, LocalProtocolError, OutboxFull, Refused
from fsm.events import (
    BackoffElapsed,
    CloseRequested,
    Connected,
    ConnectFailed,
    DeadlineReached,
    Event,
    MessageReceived,
    MessagesAcked,
    MessagesWritten,
    PongReceived,
    RebuildFailed,
    Rebuilt,
    SendRequested,
    Started,
    TransportLost,
    TransportReleased,
)
from fsm.spec import DEFAULT_SPEC

HEARTBEAT = Heartbeat(1, 1)  # interval 1 s, timeout 1 s, stall grace 0.25 s
BACKOFF = Backoff(initial=1.0, factor=2.0, cap=8.0, grace=5.0)
U = 0.5
EDGES = {(r["source"], r["dest"]) for r in DEFAULT_SPEC.rows if r["dest"] is not None}


def make(*, rand: Callable[[], float] = lambda: U, heartbeat: Heartbeat = HEARTBEAT,
         backoff: Backoff = BACKOFF, **kwargs: Any) -> Lifecycle:
    return Lifecycle(rand=rand, heartbeat=heartbeat, backoff=backoff, **kwargs)


def changes(actions: Sequence[Action]) -> list[tuple[str, str]]:
    return [(a.change.old, a.change.new) for a in actions if isinstance(a, NotifyStateChange)]


def without_changes(actions: Sequence[Action]) -> list[Action]:
    return [a for a in actions if not isinstance(a, NotifyStateChange)]


def queued(*payloads: str, first: int = 1) -> tuple[Envelope, ...]:
    """Envelopes never transmitted: no wire number yet."""
    return tuple(Envelope(first + i, p) for i, p in enumerate(payloads))


def notify(old: str, new: str, reason: str, at: float) -> NotifyStateChange:
    return NotifyStateChange(StateChange(old=old, new=new, reason=reason, at=at))


def envelopes(*payloads: str, first: int = 1, wire: int | None = None) -> tuple[Envelope, ...]:
    """Envelopes as transmitted: ``seq`` from ``first``, wire numbers from ``wire`` (by
    default the same: a first connection numbers its wire like its messages)."""
    wire = first if wire is None else wire
    return tuple(Envelope(first + i, p, wire=wire + i) for i, p in enumerate(payloads))


def go_online(lc: Lifecycle, at: float = 0.0) -> float:
    """Started, Connected, Rebuilt at ``at``, +0.25, +0.5; returns when it went online."""
    lc.handle(Started(), at)
    lc.handle(Connected(), at + 0.25)
    lc.handle(Rebuilt(), at + 0.5)
    assert lc.state == State.ONLINE
    return at + 0.5


class Clocked:
    """Feeds a lifecycle and remembers the last ``now`` (so helpers can continue)."""

    def __init__(self, lc: Lifecycle) -> None:
        self.lc = lc
        self.now = 0.0

    def __call__(self, event: Event, now: float | None = None) -> list[Action]:
        if now is not None:
            self.now = now
        return self.lc.handle(event, self.now)

    def at_deadline(self) -> list[Action]:
        deadline = self.lc.next_deadline()
        assert deadline is not None
        return self(DeadlineReached(), deadline)


# -- starting, connecting, going online -------------------------------------------------


def test_a_new_link_is_idle_with_no_deadline() -> None:
    lc = make()
    assert lc.state == State.IDLE
    assert lc.transport == "none"
    assert lc.next_deadline() is None
    assert lc.tags.sends and not lc.tags.transport


def test_start_connect_rebuild_online_flushes_queued_sends_in_order() -> None:
    lc = make()
    assert lc.handle(SendRequested("a"), 0.0) == []
    assert lc.handle(SendRequested("b"), 0.0) == []
    assert lc.handle(Started(), 0.0) == [
        OpenTransport(attempt=1),
        notify("idle", "connecting", "started by the user", 0.0),
    ]
    assert (lc.state, lc.transport) == (State.CONNECTING, "opening")
    assert lc.next_deadline() == 10.0  # the default handshake timeout
    assert lc.handle(SendRequested("c"), 0.25) == []
    assert lc.handle(Connected(), 0.5) == [RunRebuild(reason="new connection")]
    assert (lc.state, lc.transport) == (State.CONNECTING, "open")
    assert lc.next_deadline() == 10.5  # the rebuild gets its own timeout
    assert lc.handle(Rebuilt(), 0.75) == [
        Transmit(envelopes("a", "b", "c")),
        notify("connecting", "online", "rebuild hooks finished; session ready", 0.75),
    ]
    assert lc.state == State.ONLINE
    assert lc.next_deadline() == 1.75  # silence deadline: last heard + interval
    # Transmitted messages stay in flight until the transport says it took them.
    assert (lc.outbox.pending, lc.outbox.inflight) == (0, 3)
    assert lc.handle(MessagesWritten(upto=3), 0.75) == []
    assert len(lc.outbox) == 0
    # Once live, a send is transmitted at once.
    assert lc.handle(SendRequested("d"), 1.0) == [Transmit(envelopes("d", first=4))]


def test_handshake_timeout_aborts_at_exactly_the_deadline() -> None:
    lc = make(handshake_timeout=2.0)
    lc.handle(Started(), 1.0)
    assert lc.handle(DeadlineReached(), 2.75) == []
    actions = lc.handle(DeadlineReached(), 3.0)
    assert changes(actions) == [("connecting", "stale")]
    assert [type(a) for a in without_changes(actions)] == [AbortTransport]
    assert "handshake or rebuild took over 2.0 s" in actions[0].reason  # type: ignore[attr-defined]
    assert lc.transport == "closing"
    assert lc.next_deadline() is None


def test_rebuild_failure_goes_stale_and_retries() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    actions = lc.handle(RebuildFailed(RuntimeError("hook bug")), 0.5)
    assert changes(actions) == [("connecting", "stale")]
    assert any(isinstance(a, AbortTransport) for a in actions)
    assert "RuntimeError: hook bug" in lc.reason
    assert lc.last_error is not None


def test_invalid_handshake_timeout() -> None:
    with pytest.raises(ValueError, match="handshake_timeout"):
        make(handshake_timeout=0.0)


def test_unknown_event_is_a_local_protocol_error() -> None:
    from fsm.examples.authenticating import Authenticated

    lc = make()
    with pytest.raises(LocalProtocolError, match=r"Authenticated is not an event of spec"):
        lc.handle(Authenticated(), 0.0)


# -- the heartbeat ----------------------------------------------------------------------


def test_silence_sends_a_probe_at_exactly_interval() -> None:
    lc = make()
    t = go_online(lc)
    assert lc.next_deadline() == t + 1.0
    assert lc.handle(DeadlineReached(), t + 0.75) == []
    assert lc.state == State.ONLINE
    assert lc.handle(DeadlineReached(), t + 1.0) == [
        SendPing(), notify("online", "waiting", "peer silent for 1 s; probing", t + 1.0)]
    assert lc.state == State.WAITING
    assert lc.next_deadline() == t + 2.0


def test_unanswered_probe_goes_stale_at_exactly_interval_plus_timeout() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)
    assert lc.handle(DeadlineReached(), t + 1.875) == []
    assert lc.state == State.WAITING
    actions = lc.handle(DeadlineReached(), t + 2.0)
    reason = "no frame from the peer for 2.000 s (interval 1 s + timeout 1 s)"
    assert actions == [AbortTransport(reason=reason),
                       notify("waiting", "stale", reason, t + 2.0)]
    assert lc.state == State.STALE
    assert lc.transport == "closing"
    assert (t + 2.0) - lc.last_heard == HEARTBEAT.bound
    assert lc.next_deadline() is None


def test_report_within_grace_fires_both_deadlines_in_order() -> None:
    lc = make(heartbeat=Heartbeat(1, 1, stall_grace=5.0))
    t = go_online(lc)
    actions = lc.handle(DeadlineReached(), t + 2.0)
    assert changes(actions) == [("online", "waiting"), ("waiting", "stale")]
    assert [type(a) for a in without_changes(actions)] == [SendPing, AbortTransport]


@pytest.mark.parametrize("frame", [MessageReceived("hello"), PongReceived(rtt=0.125)])
def test_any_frame_returns_waiting_to_online(frame: Event) -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)
    assert lc.state == State.WAITING
    actions = lc.handle(frame, t + 1.5)
    assert lc.state == State.ONLINE
    assert changes(actions) == [("waiting", "online")]
    delivered = [a for a in actions if isinstance(a, Deliver)]
    if isinstance(frame, MessageReceived):
        assert delivered == [Deliver("hello")]
        assert actions[0] == Deliver("hello")  # delivered before the state change
    else:
        assert delivered == []
        assert lc.last_rtt == 0.125
    assert lc.last_heard == t + 1.5
    assert lc.next_deadline() == t + 2.5


def test_frames_in_online_push_the_silence_deadline() -> None:
    lc = make()
    t = go_online(lc)
    assert lc.handle(MessageReceived({"n": 1}), t + 0.75) == [Deliver({"n": 1})]
    assert lc.handle(PongReceived(), t + 1.5) == []
    assert lc.state == State.ONLINE
    assert lc.next_deadline() == t + 2.5


def test_frame_is_handled_before_overdue_deadlines() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)  # WAITING, probe deadline t + 2
    # The peer's frame was buffered while we were late: it proves the peer alive.
    actions = lc.handle(MessageReceived("late but alive"), t + 2.125)
    assert lc.state == State.ONLINE
    assert Deliver("late but alive") in actions
    assert not any(isinstance(a, AbortTransport) for a in actions)


def test_other_events_fire_overdue_deadlines_first() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)  # WAITING, probe deadline t + 2
    actions = lc.handle(SendRequested("x"), t + 2.125)
    assert lc.state == State.STALE
    assert changes(actions) == [("waiting", "stale")]
    assert not any(isinstance(a, Transmit) for a in actions)  # queued, not sent to the dead
    assert lc.outbox.pending == 1


def test_late_timer_probes_instead_of_declaring_dead() -> None:
    lc = make()
    t = go_online(lc)  # last heard t; silence deadline t + 1
    late = t + 30.0
    actions = lc.handle(DeadlineReached(), late)
    assert lc.state == State.WAITING  # not STALE: our loop stalled, not the peer
    assert [type(a) for a in without_changes(actions)] == [SendPing]
    assert changes(actions) == [("online", "waiting")]
    change = actions[-1]
    assert isinstance(change, NotifyStateChange)
    assert "timer fired 29.000 s late (local loop stalled)" in change.change.reason
    assert lc.next_deadline() == late + 1.0  # a full timeout from when we woke
    assert lc.excused > 0
    # The documented bound still holds with the excused stall added.
    assert (late + 1.0) - lc.last_heard <= HEARTBEAT.bound + lc.excused
    # If the fresh probe goes unanswered, the peer is dead after all.
    actions = lc.handle(DeadlineReached(), late + 1.0)
    assert changes(actions) == [("waiting", "stale")]


def test_late_timer_in_waiting_probes_again() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)  # probe deadline t + 2
    actions = lc.handle(DeadlineReached(), t + 20.0)
    assert actions == [SendPing()]
    assert lc.state == State.WAITING
    assert lc.next_deadline() == t + 21.0
    assert lc.handle(PongReceived(), t + 20.5) == [
        notify("waiting", "online", "heard from the peer (pong)", t + 20.5)]
    assert lc.excused == 0.0


def test_lateness_within_grace_is_not_a_stall() -> None:
    lc = make()  # grace = timeout / 4 = 0.25
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.25)  # 0.25 late: still on time
    assert lc.state == State.WAITING
    assert lc.next_deadline() == t + 2.0  # based on the silence deadline, not on now


# -- backoff ----------------------------------------------------------------------------


def test_backoff_delay_is_u_times_ceiling_and_grows() -> None:
    draws = iter([0.5, 0.25, 0.75, 0.5, 0.5])
    lc = make(rand=lambda: next(draws))
    drive = Clocked(lc)
    drive(Started(), 0.0)
    expected = []
    for failures, u in zip(range(1, 6), [0.5, 0.25, 0.75, 0.5, 0.5], strict=True):
        drive(ConnectFailed(Refused("connection refused")), drive.now + 0.5)
        assert lc.state == State.RECOVERING
        assert lc.statistics()["failures"] == failures
        delay = lc.next_deadline() - drive.now  # type: ignore[operator]
        assert delay == u * BACKOFF.ceiling(failures)
        expected.append(delay)
        assert drive(DeadlineReached(), drive.now + delay - 0.125) == []
        assert drive.at_deadline() == [OpenTransport(attempt=failures + 1)]
    assert expected == [1.0, 1.0, 6.0, 4.0, 4.0]  # ceilings 2, 4, 8 (cap), 8, 8


def test_backoff_resets_only_after_grace_online() -> None:
    lc = make(backoff=Backoff(initial=1.0, factor=2.0, cap=64.0, grace=5.0))
    drive = Clocked(lc)
    drive(Started(), 0.0)
    delays = []
    # Accept then drop, five times: each loss comes 0.5 s after going online.
    for _ in range(5):
        drive(Connected(), drive.now + 0.25)
        drive(Rebuilt(), drive.now + 0.25)
        assert lc.state == State.ONLINE
        drive(TransportLost(Closed("going away", code=1001)), drive.now + 0.5)
        drive(TransportReleased(), drive.now + 0.25)
        delays.append(lc.next_deadline() - drive.now)  # type: ignore[operator]
        drive.at_deadline()
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0]  # U * ceiling(1..5): no storm
    # Now stay healthy for the full grace period (the peer keeps talking).
    drive(Connected(), drive.now + 0.25)
    drive(Rebuilt(), drive.now + 0.25)
    online_at = drive.now
    while drive.now < online_at + 5.0:
        drive(PongReceived(), drive.now + 0.5)
    assert lc.state == State.ONLINE
    drive(TransportLost(Broken("reset")), drive.now)
    drive(TransportReleased(), drive.now + 0.25)
    assert lc.statistics()["failures"] == 0
    assert lc.next_deadline() - drive.now == U * 1.0  # type: ignore[operator]


def test_backoff_just_short_of_grace_does_not_reset() -> None:
    lc = make(backoff=Backoff(initial=1.0, factor=2.0, cap=64.0, grace=5.0))
    drive = Clocked(lc)
    drive(Started(), 0.0)
    drive(ConnectFailed(Broken("x")), 0.5)
    drive.at_deadline()
    drive(Connected(), drive.now + 0.25)
    drive(Rebuilt(), drive.now + 0.25)
    online_at = drive.now
    while drive.now < online_at + 4.5:
        drive(PongReceived(), drive.now + 0.5)
    drive(TransportLost(Broken("reset")), online_at + 4.875)
    assert lc.statistics()["failures"] == 2


def test_retry_after_delays_the_next_dial() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(ConnectFailed(Refused("busy", status=503, retry_after=7.0)), 1.0)
    assert lc.state == State.RECOVERING
    assert lc.next_deadline() == 9.0  # the hint 7 + U * ceiling(1) = 1, after the failure
    assert lc.handle(DeadlineReached(), 8.875) == []
    assert lc.handle(DeadlineReached(), 9.0) == [OpenTransport(attempt=2)]
    # The hint applies once: the next failure uses the plain backoff again.
    lc.handle(ConnectFailed(Broken("reset")), 9.5)
    assert lc.next_deadline() == 9.5 + U * BACKOFF.ceiling(2)


def test_retry_after_from_a_close_is_honoured() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(TransportLost(Closed("restarting", code=1012, retry_after=30.0)), t + 0.5)
    lc.handle(TransportReleased(), t + 0.75)
    assert lc.next_deadline() == t + 0.75 + 30.0 + U * BACKOFF.ceiling(1)


def test_fatal_refusal_fails_and_hands_back_the_outbox() -> None:
    lc = make()
    lc.handle(SendRequested("a"), 0.0)
    lc.handle(Started(), 0.0)
    lc.handle(SendRequested("b"), 0.25)
    error = Refused("handshake rejected", status=401)
    actions = lc.handle(ConnectFailed(error), 0.5)
    assert lc.state == State.FAILED
    assert "401" in lc.reason
    hand_backs = [a for a in actions if isinstance(a, HandBack)]
    assert len(hand_backs) == 1
    assert hand_backs[0].envelopes == queued("a", "b")
    assert "401" in hand_backs[0].reason
    assert changes(actions) == [("connecting", "failed")]
    assert not any(isinstance(a, AbortTransport) for a in actions)  # the dial never opened
    assert lc.transport == "none"
    assert lc.last_error is error
    assert len(lc.outbox) == 0
    assert lc.next_deadline() is None


def test_exhausted_budget_fails() -> None:
    lc = make(backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, budget=3))
    drive = Clocked(lc)
    drive(Started(), 0.0)
    for _ in range(2):
        drive(ConnectFailed(Broken("reset")), drive.now + 0.5)
        assert lc.state == State.RECOVERING
        drive.at_deadline()
    actions = drive(ConnectFailed(Broken("reset")), drive.now + 0.5)
    assert lc.state == State.FAILED
    assert changes(actions) == [("recovering", "failed")]
    assert "retry budget of 3 attempts exhausted" in lc.reason
    assert lc.attempts == 3


def test_exhausted_budget_by_heartbeat_fails_and_aborts() -> None:
    lc = make(backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, budget=1))
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)
    actions = lc.handle(DeadlineReached(), t + 2.0)
    assert lc.state == State.FAILED
    assert changes(actions) == [("waiting", "failed")]
    abort = actions[0]
    assert isinstance(abort, AbortTransport)
    assert "retry budget of 1 attempts exhausted" in abort.reason


# -- closing ----------------------------------------------------------------------------


def test_close_hands_back_queued_messages_and_aborts_the_transport() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(SendRequested("a"), 0.25)
    lc.handle(SendRequested("b"), 0.25)
    actions = lc.handle(CloseRequested(), 0.5)
    assert lc.state == State.CLOSED
    assert actions == [
        AbortTransport(reason="closed by the user"),
        HandBack(queued("a", "b"), reason="link closed: closed by the user"),
        notify("connecting", "closed", "closed by the user", 0.5),
    ]
    assert lc.transport == "closing"
    assert lc.next_deadline() is None
    assert lc.handle(TransportReleased(), 0.75) == []
    assert lc.transport == "none"


def test_close_when_idle_has_nothing_to_abort() -> None:
    lc = make()
    lc.handle(SendRequested("a"), 0.0)
    actions = lc.handle(CloseRequested(), 0.0)
    assert [type(a) for a in actions] == [HandBack, NotifyStateChange]


def test_close_when_online_closes_politely() -> None:
    lc = make()
    t = go_online(lc)
    actions = lc.handle(CloseRequested(), t)
    assert actions == [CloseTransport(reason="closed by the user"),
                       notify("online", "closed", "closed by the user", t)]
    assert lc.transport == "closing"
    assert lc.handle(TransportReleased(), t + 0.25) == []
    assert lc.transport == "none"


def test_close_hands_back_messages_not_yet_written() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(SendRequested("a"), t)
    lc.handle(SendRequested("b"), t)
    lc.handle(MessagesWritten(upto=1), t)
    actions = lc.handle(CloseRequested(), t + 0.25)
    hand_back = [a for a in actions if isinstance(a, HandBack)]
    assert [e.seq for e in hand_back[0].envelopes] == [2]


# -- plain-mode delivery: in flight until written ---------------------------------------


def test_unwritten_messages_are_replayed_on_the_next_transport_in_order() -> None:
    lc = make()
    drive = Clocked(lc)
    t = go_online(lc)
    drive(SendRequested("a"), t)
    drive(SendRequested("b"), t)
    drive(MessagesWritten(upto=1), t)  # a is settled; b died with the transport
    drive(TransportLost(Broken("reset")), t + 0.25)
    assert (lc.outbox.pending, lc.outbox.inflight) == (1, 0)  # rewound
    drive(SendRequested("c"), t + 0.25)
    drive(TransportReleased(), t + 0.5)
    drive.at_deadline()
    drive(Connected(), drive.now + 0.25)
    actions = drive(Rebuilt(), drive.now + 0.25)
    # A new connection numbers its wire from 1 again; the order is kept.
    assert actions[0] == Transmit((Envelope(2, "b", wire=1), Envelope(3, "c", wire=2)))


def test_written_does_not_settle_in_session_mode() -> None:
    lc = make(session=True)
    t = go_online(lc)
    lc.handle(SendRequested("a"), t)
    lc.handle(MessagesWritten(upto=1), t)
    assert lc.outbox.inflight == 1  # only the peer's acknowledgement settles it


@pytest.mark.parametrize("final", [State.CLOSED, State.FAILED])
def test_send_in_a_final_state_raises(final: State) -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    if final is State.CLOSED:
        lc.handle(CloseRequested(), 0.25)
    else:
        lc.handle(ConnectFailed(Refused("no", status=403)), 0.25)
    assert lc.state == final
    with pytest.raises(LinkClosedError, match=f"cannot send: the link is {final.value}"):
        lc.handle(SendRequested("late"), 0.5)
    assert lc.state == final
    assert len(lc.outbox) == 0


def test_final_states_ignore_everything_else() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(CloseRequested(), 0.25)
    for event in (Started(), CloseRequested(), Connected(), MessageReceived("x"),
                  TransportLost(Broken("x")), DeadlineReached()):
        assert lc.handle(event, 1.0) == []
        assert lc.state == State.CLOSED


# -- the clock --------------------------------------------------------------------------


def test_time_going_backwards_is_rejected() -> None:
    lc = make()
    lc.handle(Started(), 5.0)
    with pytest.raises(LocalProtocolError, match="time went backwards"):
        lc.handle(DeadlineReached(), 4.875)
    assert lc.state == State.CONNECTING
    assert lc.handle(DeadlineReached(), 5.0) == []  # the same instant is fine


def test_first_event_may_come_at_any_time() -> None:
    lc = make()
    lc.handle(Started(), 1_000_000.0)
    assert lc.next_deadline() == 1_000_010.0
    assert lc.statistics()["time_in_state"]["idle"] == 0.0


# -- session mode -----------------------------------------------------------------------


def test_resumed_session_goes_online_without_rebuild_and_replays_inflight() -> None:
    lc = make(session=True)
    drive = Clocked(lc)
    drive(Started(), 0.0)
    drive(Connected(epoch="E1"), 0.25)
    drive(Rebuilt(), 0.5)
    assert drive(SendRequested("a"), 0.75) == [Transmit(envelopes("a"))]
    assert drive(SendRequested("b"), 0.75) == [Transmit(envelopes("b", first=2))]
    assert lc.outbox.inflight == 2  # tracked until acknowledged
    lc.outbox.ack(1)
    drive(TransportLost(Broken("reset")), 1.0)
    drive(SendRequested("c"), 1.125)
    drive(TransportReleased(), 1.25)
    assert drive.at_deadline() == [OpenTransport(attempt=2)]
    actions = drive(Connected(resumed=True, epoch="E1", acked=1), drive.now + 0.25)
    assert not any(isinstance(a, RunRebuild) for a in actions)
    assert lc.state == State.ONLINE
    assert actions == [
        # replayed with its wire number, then the new one numbered after it, in order
        Transmit((Envelope(2, "b", wire=2), Envelope(3, "c", wire=3))),
        notify("recovering", "online", "transport open, handshake done", drive.now),
    ]
    assert lc.outbox.inflight == 2
    assert lc.reconnects == 1


def test_resumed_flag_is_ignored_in_plain_mode() -> None:
    lc = make(session=False)
    lc.handle(Started(), 0.0)
    assert lc.handle(Connected(resumed=True), 0.25) == [RunRebuild(reason="new connection")]
    assert lc.state == State.CONNECTING


def test_session_mode_rebuild_says_the_session_was_lost() -> None:
    lc = make(session=True)
    lc.handle(Started(), 0.0)
    assert lc.handle(Connected(resumed=False, epoch="E2"), 0.25) == [
        RunRebuild(reason="new session (server epoch E2): the server lost ours")]


def test_resume_into_an_epoch_whose_rebuild_never_finished_rebuilds_again() -> None:
    lc = make(session=True)
    drive = Clocked(lc)
    drive(Started(), 0.0)
    drive(Connected(epoch="E1"), 0.25)  # rebuild starts ...
    drive(TransportLost(Broken("reset")), 0.5)  # ... and never finishes
    drive(TransportReleased(), 0.5)
    drive.at_deadline()
    actions = drive(Connected(resumed=True, epoch="E1"), drive.now + 0.25)
    assert any(isinstance(a, RunRebuild) for a in actions)
    drive(Rebuilt(), drive.now + 0.25)
    assert lc.state == State.ONLINE
    drive(TransportLost(Broken("reset")), drive.now + 0.25)
    drive(TransportReleased(), drive.now)
    drive.at_deadline()
    actions = drive(Connected(resumed=True, epoch="E1"), drive.now + 0.25)
    assert not any(isinstance(a, RunRebuild) for a in actions)  # once per epoch
    assert lc.state == State.ONLINE


# -- one transport ----------------------------------------------------------------------


class FakeDriver:
    """Performs the core's actions like a driver would, and checks one transport."""

    def __init__(self, lc: Lifecycle, rng: random.Random) -> None:
        self.lc, self.rng = lc, rng
        self.now = 0.0
        self.transport = "none"  # none | dialing | open | closing
        self.rebuild_requested = False
        self.opened = self.closed = 0
        self.on_wire: list[int] = []  # transmitted on this transport, not yet written
        self.written: list[int] = []
        self.handed_back: list[int] = []
        self.refused: list[int] = []
        self.sent = 0

    def feed(self, event: Event) -> None:
        try:
            actions = self.lc.handle(event, self.now)
        except LinkClosedError:
            assert self.lc.tags.final
            assert isinstance(event, SendRequested)
            self.refused.append(event.payload)
            return
        for action in actions:
            self.perform(action)
        for old, new in changes(actions):
            assert (old, new) in EDGES

    def perform(self, action: Action) -> None:
        if isinstance(action, OpenTransport):
            assert self.transport == "none", f"dial while a transport is {self.transport}"
            self.transport = "dialing"
            self.opened += 1
        elif isinstance(action, AbortTransport | CloseTransport):
            if self.transport != "none":
                self.transport = "closing"
            self.on_wire = []  # lost with the transport unless reported written
        elif isinstance(action, RunRebuild):
            self.rebuild_requested = True
        elif isinstance(action, Transmit):
            assert self.transport == "open", "transmit without an open transport"
            self.on_wire += [e.seq for e in action.envelopes]
        elif isinstance(action, HandBack):
            self.handed_back += [e.seq for e in action.envelopes]

    def step(self) -> None:
        roll = self.rng.random()
        if roll < 0.15:
            self.sent += 1
            self.feed(SendRequested(self.sent))
        elif roll < 0.35:
            deadline = self.lc.next_deadline()
            self.now = max(self.now, deadline if deadline is not None else self.now) \
                + self.rng.choice([0.0, 0.0, 0.125, 3.0])
            self.feed(DeadlineReached())
        elif self.transport == "dialing":
            if self.rng.random() < 0.6:
                self.transport = "open"
                self.feed(Connected())
            else:
                self.transport = "none"
                self.closed += 1
                self.feed(ConnectFailed(Broken("refused")))
        elif self.transport == "open":
            pick = self.rng.random()
            if self.rebuild_requested and pick < 0.5:
                self.rebuild_requested = False
                self.feed(Rebuilt())
            elif pick < 0.6:
                self.feed(self.rng.choice([MessageReceived("m"), PongReceived()]))
            elif pick < 0.8 and self.on_wire:
                self.written += self.on_wire
                upto, self.on_wire = self.on_wire[-1], []
                self.feed(MessagesWritten(upto=upto))
            else:
                self.transport = "closing"
                self.on_wire = []
                self.feed(TransportLost(Broken("reset")))
        elif self.transport == "closing":
            self.transport = "none"
            self.closed += 1
            self.rebuild_requested = False
            self.feed(TransportReleased())
        self.now += 0.125


@pytest.mark.parametrize("seed", range(20))
def test_one_transport_at_a_time(seed: int) -> None:
    lc = make(backoff=Backoff(initial=0.25, factor=2.0, cap=2.0, grace=1.0))
    driver = FakeDriver(lc, random.Random(seed))
    driver.feed(Started())
    core_view = {"none": "none", "dialing": "opening", "open": "open", "closing": "closing"}
    for _ in range(400):
        driver.step()
        assert lc.transport == core_view[driver.transport]  # the core knows its transport
    driver.feed(CloseRequested())
    while driver.transport != "none":
        if driver.transport == "dialing":
            driver.transport = "closing"
        driver.step()
    assert lc.state == State.CLOSED
    assert driver.opened == driver.closed  # every opened transport was closed
    assert driver.opened == lc.attempts >= 2
    # Plain mode, nothing lost and nothing doubled: each accepted message is written by
    # exactly one transport or handed back, never both, never twice.
    accepted = [n for n in range(1, driver.sent + 1) if n not in driver.refused]
    assert sorted(driver.written + driver.handed_back) == accepted
    assert driver.refused == list(range(len(accepted) + 1, driver.sent + 1))


def test_core_refuses_a_second_dial() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(ConnectFailed(Broken("x")), 0.25)
    lc.handle(DeadlineReached(), lc.next_deadline())  # type: ignore[arg-type]
    assert lc.transport == "opening"
    with pytest.raises(LocalProtocolError, match="one transport per link"):
        lc.handle(BackoffElapsed(), lc.next_deadline() - 1.0)  # type: ignore[operator]


def test_no_dial_while_the_old_transport_is_being_released() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(TransportLost(Broken("reset")), t)
    assert lc.state == State.STALE
    # However long the driver takes to release it, the core never dials meanwhile.
    for later in (t + 1.0, t + 100.0, t + 10_000.0):
        assert not any(isinstance(a, OpenTransport)
                       for a in lc.handle(DeadlineReached(), later))
    assert lc.next_deadline() is None


# -- statistics -------------------------------------------------------------------------


def test_statistics_fields() -> None:
    lc = make()
    drive = Clocked(lc)
    drive(Started(), 0.0)
    drive(ConnectFailed(Broken("x")), 0.5)
    drive.at_deadline()  # dial at 1.5
    drive(Connected(), 1.75)
    drive(Rebuilt(), 2.0)
    drive(PongReceived(rtt=0.0625), 2.5)
    drive(TransportLost(Broken("reset")), 2.75)
    drive(SendRequested("q"), 3.0)
    stats = lc.statistics()
    assert set(stats) == {"state", "reason", "attempts", "reconnects", "failures",
                          "last_rtt", "outbox_depth", "outbox_inflight", "time_in_state",
                          "stall_excused"}
    assert stats["state"] == "stale"
    assert stats["reason"] == lc.reason
    assert stats["attempts"] == 2
    assert stats["reconnects"] == 1
    assert stats["failures"] == 2
    assert stats["last_rtt"] == 0.0625
    assert (stats["outbox_depth"], stats["outbox_inflight"]) == (1, 0)
    assert stats["stall_excused"] == 0.0
    assert stats["time_in_state"] == {"idle": 0.0, "connecting": 0.5, "recovering": 1.5,
                                      "online": 0.75, "stale": 0.25}
    # Time in the current state runs up to the ``now`` asked about.
    assert lc.statistics(now=4.0)["time_in_state"]["stale"] == 1.25
    assert sum(lc.statistics(now=4.0)["time_in_state"].values()) == 4.0


# -- regressions: bugs these tests found, since fixed in the core -----------------------


def test_reason_survives_events_that_change_nothing() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(ConnectFailed(Refused("handshake rejected", status=401)), 0.25)
    assert "401" in lc.reason
    with pytest.raises(LinkClosedError, match="401"):
        lc.handle(SendRequested("x"), 0.5)
    lc.handle(DeadlineReached(), 0.75)
    assert "401" in lc.reason


def test_reason_after_a_timer_driven_change_says_why() -> None:
    lc = make()
    t = go_online(lc)
    lc.handle(DeadlineReached(), t + 1.0)
    lc.handle(DeadlineReached(), t + 2.0)
    assert lc.state == State.STALE
    assert lc.reason.startswith("no frame from the peer")


def test_inflight_messages_of_a_lost_session_are_replayed_or_handed_back() -> None:
    lc = make(session=True)
    drive = Clocked(lc)
    go_online(lc)
    drive(SendRequested("a"), 0.5)
    drive(SendRequested("b"), 0.5)
    accounted: set[int] = set()

    def account(actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Transmit | HandBack):
                accounted.update(e.seq for e in action.envelopes)

    account(drive(TransportLost(Broken("reset")), 0.75))
    account(drive(TransportReleased(), 1.0))
    account(drive.at_deadline())
    account(drive(Connected(resumed=False), drive.now + 0.25))  # the server lost it
    account(drive(Rebuilt(), drive.now + 0.25))
    assert lc.state == State.ONLINE
    assert accounted >= {1, 2}
    assert lc.outbox.inflight == 2  # replayed on the new session, awaiting its acks


# -- regressions: bugs found in the core, now fixed ---------------------------------------


def test_stray_fatal_connect_failed_does_not_leak_the_open_transport() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    assert lc.transport == "open"
    actions = lc.handle(ConnectFailed(Refused("stale dial report", status=401)), 0.5)
    assert lc.state == State.CONNECTING or any(
        isinstance(a, AbortTransport) for a in actions)


def test_stray_connected_while_open_does_not_abort_an_unaccounted_transport() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.25)
    assert lc.transport == "open"
    actions = lc.handle(Connected(), 0.5)
    aborted = any(isinstance(a, AbortTransport) for a in actions)
    assert not aborted or lc.transport == "closing"


def test_stray_connect_failed_during_backoff_does_not_use_the_budget() -> None:
    lc = make(backoff=Backoff(initial=1.0, factor=2.0, cap=8.0, budget=2))
    lc.handle(Started(), 0.0)
    lc.handle(ConnectFailed(Broken("refused")), 0.25)  # failures 1 of 2
    assert (lc.state, lc.transport) == (State.RECOVERING, "none")
    lc.handle(ConnectFailed(Broken("refused")), 0.5)  # nothing was dialing: stray
    assert lc.state == State.RECOVERING
    assert lc.statistics()["failures"] == 1


def _collect_after_refusal(lc: Lifecycle, now: float) -> list[Action]:
    """What a driver following the contract gets after ``handle`` raised at ``now``:
    it sleeps until ``next_deadline()`` and reports ``DeadlineReached`` then."""
    deadline = lc.next_deadline()
    if deadline is None or deadline > now:
        return []
    return lc.handle(DeadlineReached(), deadline)


@pytest.mark.parametrize("case", ["failed-during-send", "dial-during-refused-send"])
def test_actions_of_deadlines_are_not_held_when_the_event_raises(case: str) -> None:
    if case == "failed-during-send":
        lc = make(backoff=Backoff(budget=1), handshake_timeout=1.0)
        lc.handle(Started(), 0.0)
        lc.handle(SendRequested("queued"), 0.25)
        # The handshake deadline (1.0) passed: the core fails the link, then refuses.
        with pytest.raises(LinkClosedError):
            lc.handle(SendRequested("late"), 1.5)
        wanted: type[Action] = AbortTransport
    else:
        lc = make(outbox=Outbox(limit=1))
        lc.handle(SendRequested("queued"), 0.0)
        lc.handle(Started(), 0.0)
        lc.handle(ConnectFailed(Broken("x")), 0.25)  # dial again at 1.25
        with pytest.raises(OutboxFull):
            lc.handle(SendRequested("one too many"), 1.5)
        wanted = OpenTransport
    assert any(isinstance(a, wanted) for a in _collect_after_refusal(lc, 1.5))


def test_session_flow_respects_the_servers_max_inflight() -> None:
    lc = make(session=True)
    lc.handle(Started(), 0.0)
    lc.handle(Connected(epoch="E1", max_inflight=2), 0.25)
    lc.handle(Rebuilt(), 0.25)
    sent = [a for n in range(5) for a in lc.handle(SendRequested(n), 0.5)
            if isinstance(a, Transmit)]
    assert [e.payload for t in sent for e in t.envelopes] == [0, 1]  # two in flight
    more = [a for a in lc.handle(MessagesAcked(upto=1), 0.75) if isinstance(a, Transmit)]
    assert [e.payload for t in more for e in t.envelopes] == [2]  # one acked: one more
    assert (lc.outbox.inflight, lc.outbox.pending) == (2, 2)


def test_state_changes_say_when_the_next_dial_is() -> None:
    lc = make()
    lc.handle(Started(), 0.0)
    actions = lc.handle(ConnectFailed(Refused("refused")), 0.5)
    change = next(a.change for a in actions if isinstance(a, NotifyStateChange))
    deadline = lc.next_deadline()
    assert deadline is not None and change.retry_in == pytest.approx(deadline - 0.5)
    again = lc.handle(DeadlineReached(), deadline)  # dials ...
    again = lc.handle(ConnectFailed(Refused("refused")), deadline + 0.1)  # ... and fails
    redial = next(a.change for a in again if isinstance(a, NotifyStateChange))
    assert (redial.old, redial.new) == ("recovering", "recovering")  # announced, with why
    assert "refused" in redial.reason and redial.retry_in is not None
