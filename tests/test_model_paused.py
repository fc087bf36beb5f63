"""The PAUSED example spec (``fsm/examples/paused.py``): the behaviour its model checks.

``tether verify fsm.examples.paused:PAUSED_SPEC`` checks it against the generic
properties; these tests walk the path a user sees, on the real core.
"""

from __future__ import annotations

from fsm import AbortTransport, Backoff, Heartbeat, Lifecycle, OpenTransport, Transmit
from fsm.events import (
    Connected,
    DeadlineReached,
    Rebuilt,
    SendRequested,
    Started,
    TransportReleased,
)
from fsm.examples.paused import PAUSED, PAUSED_SPEC, PauseRequested, ResumeRequested


def online() -> Lifecycle:
    lc = Lifecycle(rand=lambda: 0.0, heartbeat=Heartbeat(1.0, 1.0),
                   backoff=Backoff(initial=0.1, cap=1.0), spec=PAUSED_SPEC)
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.1)
    lc.handle(Rebuilt(), 0.2)
    assert lc.state == "online"
    return lc


def test_pause_drops_the_transport_and_stops_the_heartbeat() -> None:
    lc = online()
    actions = lc.handle(PauseRequested(), 0.3)
    assert lc.state == PAUSED
    assert any(isinstance(a, AbortTransport) for a in actions)
    lc.handle(TransportReleased(), 0.4)
    assert lc.transport == "none" and lc.next_deadline() is None
    assert lc.handle(DeadlineReached(), 60.0) == []  # a minute later: still nothing to do
    assert lc.state == PAUSED


def test_sends_wait_while_paused_and_flow_after_resume() -> None:
    lc = online()
    lc.handle(PauseRequested(), 0.3)
    lc.handle(TransportReleased(), 0.4)
    assert not any(isinstance(a, Transmit) for a in lc.handle(SendRequested("hi"), 0.5))
    actions = lc.handle(ResumeRequested(), 1.0)  # jitter 0: the backoff delay is over at once
    assert lc.state == "recovering"
    assert any(isinstance(a, OpenTransport) for a in actions)
    lc.handle(Connected(), 1.1)
    flowed = lc.handle(Rebuilt(), 1.2)
    assert lc.state == "online"
    assert [e.payload for a in flowed if isinstance(a, Transmit) for e in a.envelopes] == ["hi"]


def test_a_quick_resume_waits_for_the_old_transport() -> None:
    """Resumed before the aborted transport is released: no second dial until it is."""
    lc = online()
    lc.handle(PauseRequested(), 0.3)
    lc.handle(ResumeRequested(), 0.31)
    assert lc.state == "recovering" and lc.transport == "closing"
    assert lc.next_deadline() is None
    actions = lc.handle(TransportReleased(), 0.5)  # released: the (zero) delay runs out
    assert any(isinstance(a, OpenTransport) for a in actions)


def test_only_a_live_link_can_be_paused() -> None:
    lc = Lifecycle(rand=lambda: 0.5, spec=PAUSED_SPEC)
    lc.handle(Started(), 0.0)
    lc.handle(PauseRequested(), 0.1)
    assert lc.state == "connecting"
