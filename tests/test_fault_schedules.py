"""Fault schedules (``adapters/faults.py``): random schedules hold the invariants, every
fault of the vocabulary plays, and a broken link shrinks to a timeline a person can read."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, find, given, settings

from adapters.faults import KINDS, Fault, Schedule, ScheduleFailed, run_schedule, schedules
from adapters.profiles import examples
from fsm import Heartbeat

pytestmark = pytest.mark.timeout(120)


@settings(max_examples=examples(25), deadline=None)
@given(schedules())
def test_random_schedules_keep_every_invariant_plain(schedule: Schedule) -> None:
    run_schedule(schedule)


@settings(max_examples=examples(25), deadline=None)
@given(schedules())
def test_random_schedules_keep_every_invariant_session(schedule: Schedule) -> None:
    run_schedule(schedule, session=True)


@pytest.mark.parametrize("kind", KINDS)
def test_every_fault_plays_and_the_link_comes_back(kind: str) -> None:
    """Each kind is noted in the timeline when it starts; run_schedule itself fails the
    run if the link is not live again once the fault is over (unless the user closed)."""
    timeline = run_schedule(Schedule((Fault(1.0, kind, 2.5),)), session=True)
    noted = [what for t, what in timeline if t == 1.0]
    words = {"crash_kept": "crashes", "crash_lost": "crashes", "stall": "stalls",
             "close": "closes", "refuse": "refuse", "slow_handshake": "slow", "hostile":
             "hostile"}
    assert any(words.get(kind, kind) in what for what in noted), timeline


def test_an_unknown_fault_kind_is_named() -> None:
    with pytest.raises(ValueError, match="unknown fault kind 'flood'"):
        run_schedule(Schedule((Fault(0.5, "flood", 1.0),)))


class LateHeartbeat(Heartbeat):
    """A tired engineer's heartbeat: the probe waits twice the timeout."""

    def probe_deadline(self, probe_base: float) -> float:
        return probe_base + 2 * self.timeout


def test_a_broken_heartbeat_shrinks_to_a_readable_timeline() -> None:
    """Hypothesis finds a schedule that shows the bug and shrinks it: one freeze, at 0,
    as short as shows it. The message is the timeline and a test to paste."""
    late = LateHeartbeat(interval=1.0, timeout=1.0)

    def breaks(schedule: Schedule) -> bool:
        try:
            run_schedule(schedule, heartbeat=late)
        except ScheduleFailed:
            return True
        return False

    minimal = find(schedules(), breaks, settings=settings(
        max_examples=200, derandomize=True, database=None, deadline=None,
        suppress_health_check=list(HealthCheck)))
    assert minimal == Schedule((Fault(0.0, "freeze", 2.5),)), minimal
    with pytest.raises(ScheduleFailed) as caught:
        run_schedule(minimal, heartbeat=late)
    message = str(caught.value)
    print(message)
    assert message.splitlines()[0].startswith("invariant broken at t=2.0")
    assert "t=0.00 online; t=0.00 freeze; t=1.00 waiting; t=2.0" in message
    assert "run_schedule(Schedule((Fault(0.0, 'freeze', 2.5),)))" in message


def test_the_pasted_regression_runs_clean_on_the_real_heartbeat() -> None:
    timeline = run_schedule(Schedule((Fault(0.0, "freeze", 2.5),)))
    states = [what.split(" (")[0] for _, what in timeline]
    assert states[:5] == ["start", "connecting", "online", "freeze", "waiting"], states
    assert "stale" in states and states[-2:] == ["online", "closed"], states
