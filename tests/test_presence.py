"""The hub's presence table (``fsm/presence.py``): pure, time as an input.

Each rule of the module docstring gets a test, and the whole (phase, event) grid is
swept: every pair has a defined outcome (a rule or "nothing"), the deadline is always
finite for a held session, and no live phase outlives the heartbeat's bound.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fsm import Heartbeat
from fsm.presence import (
    TABLE,
    AbortConnection,
    Announce,
    Attached,
    DeadlineReached,
    Detached,
    Event,
    Forget,
    Heard,
    Phase,
    Presence,
    PresenceWatch,
    SendPing,
)

HB = Heartbeat(interval=1.0, timeout=1.0)  # grace 0.25 s


def connected(now: float = 0.0, expire_after: float = 5.0) -> PresenceWatch:
    watch = PresenceWatch(HB, expire_after, now)
    assert watch.handle(Attached(), now) == []  # away -> listening: still present
    assert watch.phase is Phase.LISTENING
    return watch


def test_a_silent_client_is_probed_then_stale_then_gone() -> None:
    watch = connected()
    assert watch.next_deadline() == 1.0
    assert watch.handle(DeadlineReached(), 0.9) == []  # not due yet: nothing
    assert watch.handle(DeadlineReached(), 1.0) == [SendPing()]
    assert watch.phase is Phase.PROBING and watch.next_deadline() == 2.0
    assert watch.handle(DeadlineReached(), 2.0) == [
        AbortConnection(), Announce(Presence.PRESENT, Presence.STALE)]
    assert watch.presence is Presence.STALE and watch.stale_since == 2.0
    assert watch.next_deadline() == 7.0
    assert watch.handle(DeadlineReached(), 7.0) == [
        Announce(Presence.STALE, Presence.GONE), Forget()]
    assert watch.next_deadline() == float("inf")


def test_any_frame_is_proof_of_life() -> None:
    watch = connected()
    watch.handle(DeadlineReached(), 1.0)
    assert watch.handle(Heard(), 1.5) == []
    assert watch.phase is Phase.LISTENING and watch.next_deadline() == 2.5


def test_pending_deliveries_are_not_silence() -> None:
    """Rule 2: messages read and not yet delivered: the client may have pinged behind
    them, so the deadline counts as hearing from it."""
    watch = connected()
    watch.handle(DeadlineReached(), 1.0)
    assert watch.handle(DeadlineReached(busy=True), 2.0) == []
    assert watch.phase is Phase.LISTENING and watch.last_heard == 2.0


def test_a_late_deadline_probes_afresh_instead_of_condemning() -> None:
    """Rule 3: noticed more than grace after it passed: our loop was stalled."""
    watch = connected()
    watch.handle(DeadlineReached(), 1.0)
    assert watch.handle(DeadlineReached(), 2.3) == [SendPing()]  # 0.3 s late > 0.25
    assert watch.phase is Phase.PROBING and watch.probe_base == 2.3
    assert watch.handle(DeadlineReached(), 3.3) == [
        AbortConnection(), Announce(Presence.PRESENT, Presence.STALE)]


def test_a_late_silence_deadline_bases_the_probe_on_now() -> None:
    watch = connected()
    assert watch.handle(DeadlineReached(), 1.5) == [SendPing()]
    assert watch.probe_base == 1.5  # on time it would be the deadline itself
    on_time = connected()
    on_time.handle(DeadlineReached(), 1.1)
    assert on_time.probe_base == 1.0


def test_a_disconnected_session_stays_present_for_the_bound() -> None:
    watch = connected()
    watch.handle(Heard(), 0.5)
    assert watch.handle(Detached(), 0.6) == []
    assert watch.phase is Phase.AWAY and watch.presence is Presence.PRESENT
    assert watch.next_deadline() == 2.5  # last heard + interval + timeout
    assert watch.handle(DeadlineReached(), 2.5) == [
        Announce(Presence.PRESENT, Presence.STALE)]
    assert watch.handle(Attached(), 3.0) == [Announce(Presence.STALE, Presence.PRESENT)]
    assert (watch.phase, watch.last_heard) == (Phase.LISTENING, 3.0)


def test_expire_after_may_change_and_applies_at_once() -> None:
    watch = connected(expire_after=300.0)
    watch.handle(Detached(), 0.0)
    watch.handle(DeadlineReached(), 2.0)
    assert watch.next_deadline() == 302.0
    watch.expire_after = 10.0  # the hub learns the session never delivered anything
    assert watch.next_deadline() == 12.0


def test_a_watch_starts_away_or_stale_only() -> None:
    with pytest.raises(ValueError, match="starts AWAY"):
        PresenceWatch(HB, 1.0, 0.0, phase=Phase.LISTENING)
    with pytest.raises(ValueError, match="stale_since"):
        PresenceWatch(HB, 1.0, 0.0, phase=Phase.STALE)
    loaded = PresenceWatch(HB, 5.0, 10.0, phase=Phase.STALE, last_heard=0.0, stale_since=2.0)
    assert loaded.presence is Presence.STALE and loaded.next_deadline() == 7.0
    assert "PresenceWatch(phase='stale'" in repr(loaded)


def test_the_table_is_total_and_first_match() -> None:
    """Every (phase, event) pair either has rules or is documented as "nothing"; guards
    are known names; the table never leaves GONE."""
    from fsm.presence import GUARDS

    for rule in TABLE:
        assert all(guard in GUARDS for guard in rule.when), rule
        assert rule.source is not Phase.GONE
    events: list[Event] = [Heard(), Attached(), Detached(), DeadlineReached(),
                           DeadlineReached(busy=True)]
    for phase, event in itertools.product(Phase, events):
        matching = [r for r in TABLE if r.source is phase and isinstance(event, r.event)]
        if phase is Phase.GONE:
            assert matching == []
        # An unguarded rule, if any, is the last of its pair: nothing after it can match.
        unguarded = [i for i, r in enumerate(matching) if not r.when]
        assert unguarded in ([], [len(matching) - 1]), (phase, event)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["heard", "attach", "detach", "late", "busy"]),
                          st.floats(0.0, 3.0)), max_size=40))
def test_no_present_session_outlives_its_bound(steps: list[tuple[str, float]]) -> None:
    """Driven like the hub drives it (each timer fires at its deadline, or up to 0.2 s
    late: within grace, so never a stall), a session shown present has been heard within
    interval + timeout + that lateness, and a stale one is no longer connected."""
    watch = PresenceWatch(HB, 2.0, 0.0)
    now = 0.0
    attached = False

    def fire(at: float) -> None:
        nonlocal attached
        actions = watch.handle(DeadlineReached(), at)
        if AbortConnection() in actions:
            attached = False

    def fire_until(limit: float) -> None:
        while watch.phase is not Phase.GONE and watch.next_deadline() <= limit:
            fire(watch.next_deadline())

    for kind, gap in steps:
        if kind == "late":  # the next timer fires late (but within grace)
            deadline = watch.next_deadline()
            if deadline == float("inf"):
                break
            now = max(now, deadline + gap / 15)
            fire(now)
        else:
            fire_until(now + gap)
            now += gap
            if kind == "heard" and attached:
                watch.handle(Heard(), now)
            elif kind == "attach":
                watch.handle(Attached(), now)
                attached = True
            elif kind == "detach" and attached:
                watch.handle(Detached(), now)
                attached = False
            elif kind == "busy" and attached:
                watch.handle(DeadlineReached(busy=True), now)
        if watch.phase is Phase.GONE:
            break
        if watch.presence is Presence.PRESENT:
            assert now - watch.last_heard <= HB.bound + 0.2 + 1e-9, (watch, now)
        if watch.phase is Phase.STALE:
            assert not attached and watch.stale_since is not None
