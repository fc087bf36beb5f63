"""The session server's decisions (``fsm/serving.py``): pure, time as an input.

One test per rule of the module docstring, the hello checks, and properties: whatever
order the store's answers (and reads from a shared store) come back in, the client is
offered every wire number once, in order, never more than its window; whatever the
client sends, a message is delivered only as the next in order, duplicates are dropped
and a gap is refused.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adapters.profiles import examples
from fsm.errors import OutboxFull
from fsm.protocol import Hello, ProtocolViolation
from fsm.serving import AckClock, Intake, Ledger, Verdict, hello_kind, store_forgot


def test_a_hello_opens_or_resumes_and_needs_both_or_neither() -> None:
    assert hello_kind(Hello(ack=0)) == "open"
    assert hello_kind(Hello(ack=3, session="s", token="t" * 22)) == "resume"
    for half in (Hello(ack=0, session="s"), Hello(ack=0, token="t" * 22)):
        with pytest.raises(ProtocolViolation) as caught:
            hello_kind(half)
        assert caught.value.code == "malformed"


def test_a_client_with_more_than_the_store_sent_proves_the_store_forgot() -> None:
    assert not store_forgot(client_ack=4, next_wire=5)  # it has 1..4, the store sent 1..4
    assert store_forgot(client_ack=5, next_wire=5)  # it has 5, the store never sent it
    assert not store_forgot(client_ack=0, next_wire=1)


def test_intake_delivers_in_order_drops_duplicates_refuses_gaps() -> None:
    intake = Intake(committed=2, read=2)
    assert intake.receive(3, acked_on_wire=2, max_inflight=10) is Verdict.DELIVER
    assert intake.receive(3, 2, 10) is Verdict.DUPLICATE  # read, not delivered yet
    assert intake.receive(2, 2, 10) is Verdict.DUPLICATE_ACK  # delivered: ack it again
    with pytest.raises(ProtocolViolation) as gap:
        intake.receive(5, 2, 10)
    assert gap.value.code == "gap"
    assert intake.duplicates == 2 and intake.committed == 2  # rule 1: nothing committed
    intake.delivered(3)
    assert intake.committed == 3
    with pytest.raises(ValueError, match="last_in is 3"):
        intake.delivered(5)


def test_intake_refuses_more_than_max_inflight_and_forgets_reads_on_a_new_connection() -> None:
    intake = Intake()
    for seq in (1, 2):
        assert intake.receive(seq, 0, 2) is Verdict.DELIVER
    with pytest.raises(ProtocolViolation) as overflow:
        intake.receive(3, 0, 2)
    assert overflow.value.code == "overflow"
    intake.delivered(1)
    intake.attached()  # 2 was read on the old connection, never delivered
    assert intake.receive(2, 1, 2) is Verdict.DELIVER


def test_ledger_releases_in_wire_order_whatever_order_the_store_answers() -> None:
    ledger = Ledger((10, 1000))
    for _ in range(3):
        ledger.reserve(1, "s")
    assert not ledger.arrive(2, "b", 1)  # held back: 1 has not arrived
    assert ledger.message_after(0, None) is None
    assert ledger.arrive(1, "a", 1)
    assert [w for w, _, _ in ledger.held] == [1, 2] and ledger.highest_wire == 2
    assert not ledger.found(2, "b")  # read again from a shared store: ignored
    assert ledger.found(3, "c")  # another hub's message, never reserved here
    assert not ledger.arrive(3, "c", 1)  # our answer for it comes later: ignored
    assert (ledger.reserved, ledger.unacked) == (0, 3)


def test_ledger_checks_acks_and_honours_the_clients_window() -> None:
    ledger = Ledger.load((10, 1000), next_wire=4, messages=[(1, "a"), (2, "b"), (3, "c")])
    with pytest.raises(ProtocolViolation) as beyond:
        ledger.check_ack(4)
    assert beyond.value.code == "ack"
    assert ledger.message_after(0, window=2) == (1, "a")
    assert ledger.message_after(2, window=2) is None  # 3 - 0 > 2: wait for an ack
    ledger.acknowledge(1)
    assert ledger.message_after(2, window=2) == (3, "c")
    ledger.acknowledge(0)  # backwards: ignored
    assert ledger.client_acked == 1 and ledger.held_bytes == 2


def test_ledger_bounds_count_and_bytes() -> None:
    ledger = Ledger((2, 10))
    ledger.reserve(6, "s")
    with pytest.raises(OutboxFull, match="session s holds 1"):
        ledger.reserve(5, "s")  # 11 bytes
    ledger.reserve(4, "s")
    with pytest.raises(OutboxFull):
        ledger.reserve(0, "s")  # a third message
    ledger.unreserve(4)
    ledger.reserve(4, "s")


def test_ack_clock_batches_and_is_carried() -> None:
    clock = AckClock(ack_delay=0.05, ack_every=3)
    assert clock.owe(1.0, committed=1, acked_on_wire=0) == 1.05  # a deadline
    assert clock.owe(1.01, committed=2, acked_on_wire=0) == 1.05  # the same one
    assert clock.owe(1.02, committed=3, acked_on_wire=0) is True  # ack_every reached
    assert clock.carried(3, committed=3) and clock.owed_since is None
    assert clock.owe(2.0, committed=3, acked_on_wire=3) is None  # nothing owed
    assert clock.owe(2.0, committed=3, acked_on_wire=3, force=True) == 2.05  # duplicate
    assert clock.due(committed=3, acked_on_wire=3)  # forced: even though carried
    assert not clock.carried(2, committed=3)


@settings(max_examples=examples(200), deadline=None)
@given(st.data())
def test_every_wire_number_reaches_the_client_once_in_order(data: st.DataObject) -> None:
    """The hub's own commits answer in any order, some messages come from another hub
    (read from the store, perhaps twice), the client acknowledges now and then; what
    the wire offers is each number once, in order, within the window."""
    count = data.draw(st.integers(1, 30))
    window = data.draw(st.none() | st.integers(1, 5))
    ours = data.draw(st.sets(st.integers(1, count)))  # the rest come from another hub
    ledger = Ledger((count, 10_000))
    for _ in ours:
        ledger.reserve(1, "s")
    events = [("arrive", w) for w in ours] + \
        [("found", w) for w in range(1, count + 1) if w not in ours] * 2
    events = data.draw(st.permutations(events))
    sent, acked, offered = 0, 0, []
    for kind, wire in events + [("drain", 0)] * (count + 1):
        if kind == "arrive":
            ledger.arrive(wire, f"m{wire}", 1)
        elif kind == "found":
            ledger.found(wire, f"m{wire}")
        while (message := ledger.message_after(sent, window)) is not None:
            assert window is None or message[0] - acked <= window
            offered.append(message[0])
            sent = message[0]
        if data.draw(st.booleans()) or kind == "drain":
            acked = sent
            ledger.check_ack(acked)
            ledger.acknowledge(acked)
    assert offered == list(range(1, count + 1))
    assert ledger.unacked == 0 and ledger.reserved == 0
