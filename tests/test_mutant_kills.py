"""Tests written to kill survivors of ``make mutants`` (mutmut over ``fsm/``), each named."""

from __future__ import annotations

from fsm import AbortTransport, Backoff, Heartbeat, Lifecycle, Outbox, State
from fsm.errors import Broken
from fsm.events import Connected, Rebuilt, Started, TransportLost, TransportReleased


def test_a_transport_nobody_asked_for_is_aborted() -> None:
    """``drop_stray_transport`` (mutants 1-4): a ``Connected`` during the backoff (no
    dial under way) names the stray transport and aborts it."""
    lc = Lifecycle(rand=lambda: 0.5, heartbeat=Heartbeat(1.0, 1.0),
                   backoff=Backoff(initial=1.0, cap=2.0))
    lc.handle(Started(), 0.0)
    lc.handle(Connected(), 0.1)
    lc.handle(Rebuilt(), 0.2)
    lc.handle(TransportLost(Broken("reset")), 0.3)
    lc.handle(TransportReleased(), 0.4)
    assert lc.state == State.RECOVERING and lc.transport == "none"
    actions = lc.handle(Connected(), 0.5)
    assert actions == [AbortTransport(reason="a transport opened that the link did not "
                                             "ask for")]
    assert lc.state == State.RECOVERING


def test_holds_sees_pending_and_unsettled_messages() -> None:
    """``Outbox.holds`` (mutants 1, 3, 5): true for a queued message and for one in
    flight, false for one settled or never sent."""
    outbox = Outbox()
    first, _ = outbox.push("a")
    second, _ = outbox.push("b")
    outbox.take(track=True, room=1)
    assert outbox.holds(first.seq), "in flight"
    assert outbox.holds(second.seq), "pending"
    assert not outbox.holds(second.seq + 1)
    outbox.ack(1)
    assert not outbox.holds(first.seq), "settled"
