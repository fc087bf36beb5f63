"""The bounded outbox: sequence numbers, plain and tracked takes, cumulative acks,
rewind for replay, drain on close, explicit overflow."""

from __future__ import annotations

from typing import Any

import pytest

from fsm.errors import LocalProtocolError, OutboxFull
from fsm.outbox import DEFAULT_LIMIT, Envelope, Outbox, Overflow


def seqs(envelopes: list[Envelope]) -> list[int]:
    return [e.seq for e in envelopes]


def filled(*payloads: str, limit: int = DEFAULT_LIMIT,
           overflow: Overflow = Overflow.RAISE) -> Outbox:
    outbox = Outbox(limit=limit, overflow=overflow)
    for payload in payloads:
        outbox.push(payload)
    return outbox


def test_sequence_numbers_start_at_one_and_increase() -> None:
    outbox = Outbox()
    envelopes = [outbox.push(p)[0] for p in "abc"]
    assert envelopes == [Envelope(1, "a"), Envelope(2, "b"), Envelope(3, "c")]
    assert outbox.next_seq == 4
    assert len(outbox) == outbox.pending == 3


def test_sequence_numbers_are_never_reused() -> None:
    outbox = filled("a", "b")
    outbox.take(track=False)
    outbox.drain()
    assert outbox.push("c")[0].seq == 3


def test_take_untracked_forgets() -> None:
    outbox = filled("a", "b")
    taken = outbox.take(track=False)
    assert [(e.seq, e.payload) for e in taken] == [(1, "a"), (2, "b")]
    assert len(outbox) == 0
    assert outbox.inflight == 0
    assert outbox.take(track=False) == []


def test_take_tracked_keeps_inflight() -> None:
    outbox = filled("a", "b")
    taken = outbox.take(track=True)
    assert seqs(taken) == [1, 2]
    assert (outbox.pending, outbox.inflight, len(outbox)) == (0, 2, 2)
    assert seqs(list(outbox.peek())) == [1, 2]


def test_ack_is_cumulative() -> None:
    outbox = filled("a", "b", "c", "d", "e")
    outbox.take(track=True)
    assert seqs(outbox.ack(3)) == [1, 2, 3]
    assert outbox.inflight == 2
    assert outbox.ack(2) == []  # already acknowledged: nothing more
    assert outbox.ack(0) == []
    assert seqs(outbox.ack(100)) == [4, 5]
    assert len(outbox) == 0


def test_ack_leaves_pending_alone() -> None:
    outbox = filled("a", "b")
    outbox.take(track=True)
    outbox.push("c")
    assert seqs(outbox.ack(10)) == [1, 2]
    assert outbox.pending == 1
    assert seqs(outbox.take(track=False)) == [3]


def test_rewind_puts_inflight_in_front_in_order() -> None:
    outbox = filled("a", "b", "c")
    outbox.take(track=True)
    outbox.ack(1)
    outbox.push("d")
    outbox.push("e")
    assert outbox.rewind() == 2
    assert outbox.inflight == 0
    assert seqs(outbox.take(track=True)) == [2, 3, 4, 5]


def test_rewind_with_nothing_inflight_is_a_no_op() -> None:
    outbox = filled("a")
    assert outbox.rewind() == 0
    assert seqs(outbox.take(track=False)) == [1]


def test_drain_returns_everything_in_seq_order() -> None:
    outbox = filled("a", "b")
    outbox.take(track=True)  # 1, 2 in flight
    outbox.push("c")
    outbox.push("d")  # 3, 4 pending
    drained = outbox.drain()
    assert [(e.seq, e.payload) for e in drained] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
    assert (len(outbox), outbox.pending, outbox.inflight) == (0, 0, 0)
    assert outbox.drain() == []


def test_overflow_raise_refuses_and_accepts_nothing() -> None:
    outbox = filled("a", "b", limit=2)
    with pytest.raises(OutboxFull, match=r"2 of 2 messages") as excinfo:
        outbox.push("c")
    assert isinstance(excinfo.value, LocalProtocolError)
    assert "not accepted" in str(excinfo.value)
    assert len(outbox) == 2
    assert outbox.next_seq == 3  # no number was spent on the refused message
    assert [e.payload for e in outbox.drain()] == ["a", "b"]


def test_overflow_counts_inflight_too() -> None:
    outbox = filled("a", "b", limit=2)
    outbox.take(track=True)
    with pytest.raises(OutboxFull, match=r"2 awaiting acknowledgement"):
        outbox.push("c")
    outbox.ack(1)
    assert outbox.push("c")[0].seq == 3


def test_overflow_hand_back_evicts_oldest_pending() -> None:
    outbox = filled("a", "b", limit=2, overflow=Overflow.HAND_BACK)
    envelope, evicted = outbox.push("c")
    assert envelope == Envelope(3, "c")
    assert evicted == [Envelope(1, "a")]
    assert [e.payload for e in outbox.drain()] == ["b", "c"]


def test_overflow_hand_back_never_evicts_inflight() -> None:
    outbox = filled("a", limit=2, overflow=Overflow.HAND_BACK)
    outbox.take(track=True)  # 1 in flight
    outbox.push("b")
    _, evicted = outbox.push("c")
    assert evicted == [Envelope(2, "b")]
    assert outbox.inflight == 1
    outbox.take(track=True)
    # Everything is in flight: there is no pending message to hand back, so refuse.
    with pytest.raises(OutboxFull):
        outbox.push("d")
    assert len(outbox) == 2


def test_push_below_limit_evicts_nothing() -> None:
    outbox = Outbox(limit=3, overflow=Overflow.HAND_BACK)
    assert outbox.push("a")[1] == []


@pytest.mark.parametrize("limit", [0, -1])
def test_limit_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError, match="limit"):
        Outbox(limit=limit)


def test_limit_of_one_and_overflow_from_string() -> None:
    outbox = Outbox(limit=1, overflow="hand_back")  # type: ignore[arg-type]
    assert outbox.overflow is Overflow.HAND_BACK
    outbox.push("a")
    assert outbox.push("b")[1] == [Envelope(1, "a")]


def test_unknown_overflow_policy_is_rejected() -> None:
    with pytest.raises(ValueError):
        Outbox(overflow="drop")  # type: ignore[arg-type]


def test_peek_does_not_remove() -> None:
    outbox = filled("a", "b")
    outbox.take(track=True)
    outbox.push("c")
    assert seqs(list(outbox.peek())) == [1, 2, 3]
    assert len(outbox) == 3


def test_a_resume_ack_settles_rewound_messages_too() -> None:
    """After a drop, in-flight messages are rewound to pending with their wire numbers;
    the server's welcome ack must settle those it already has (no needless replay)."""
    outbox = Outbox()
    for payload in ("a", "b", "c"):
        outbox.push(payload)
    outbox.take(track=True)  # wires 1, 2, 3
    outbox.rewind()
    assert [e.payload for e in outbox.ack(2)] == ["a", "b"]
    assert [(e.payload, e.wire) for e in outbox.take_replays()] == [("c", 3)]


def test_restore_refills_an_empty_outbox_for_replay() -> None:
    outbox = Outbox()
    outbox.restore(8, [(5, "a"), (7, "b")])  # what a durable store still held unacked
    assert [(e.payload, e.wire) for e in outbox.ack(5)] == [("a", 5)]
    outbox.push("c")
    assert [(e.payload, e.wire) for e in outbox.take(track=True)] == [("c", 8)]
    with pytest.raises(ValueError, match="needs an empty outbox"):
        outbox.restore(1, [])


# -- the bound in bytes ----------------------------------------------------------------------

def sized(limit: int = 100, max_bytes: int = 10,
          overflow: Overflow = Overflow.RAISE) -> Outbox:
    return Outbox(limit, overflow, max_bytes=max_bytes, size_of=len)


def test_bytes_bound_refuses_what_would_pass_it_and_names_the_bytes() -> None:
    box = sized()
    box.push("aaaa")
    box.push("bbbb")
    with pytest.raises(OutboxFull, match="8 bytes; 3 more would pass max_bytes 10"):
        box.push("ccc")
    box.push("cc")
    assert (len(box), box.bytes) == (3, 10)


def test_one_message_bigger_than_max_bytes_is_accepted_into_an_empty_outbox() -> None:
    box = sized()
    box.push("x" * 50)
    assert box.bytes == 50
    with pytest.raises(OutboxFull):
        box.push("y")


def test_hand_back_evicts_as_many_oldest_as_the_new_message_needs() -> None:
    box = sized(overflow=Overflow.HAND_BACK)
    for text in ("aaa", "bbb", "ccc"):
        box.push(text)
    _, evicted = box.push("dddddd")
    assert [e.payload for e in evicted] == ["aaa", "bbb"]
    assert [e.payload for e in box.peek()] == ["ccc", "dddddd"]
    assert box.bytes == 9


def test_bytes_follow_every_message_out_ack_drain_new_session() -> None:
    box = sized(max_bytes=100)
    box.push("aaaa")
    box.push("bb")
    box.take(track=True)
    box.ack(1)
    assert box.bytes == 2
    box.rewind()
    assert box.bytes == 2
    box.push_urgent("uuu")
    assert box.bytes == 5
    box.new_session()  # the urgent rebuild message is dropped
    assert box.bytes == 2
    box.take(track=False)
    assert box.bytes == 0
    box.push("zz")
    assert box.drain()[0].payload == "zz" and box.bytes == 0
    box.restore(5, [(3, "rrr")])
    assert box.bytes == 3


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"limit": 2.5}, TypeError, "outbox limit must be an int"),
    ({"limit": True}, TypeError, "outbox limit must be an int"),
    ({"limit": 0}, ValueError, "outbox limit must be an int >= 1"),
    ({"max_bytes": 0, "size_of": len}, ValueError, "max_bytes must be an int >= 1"),
    ({"max_bytes": 1.5, "size_of": len}, TypeError, "max_bytes must be an int"),
    ({"max_bytes": 10}, ValueError, "max_bytes needs size_of"),
    ({"overflow": "drop"}, ValueError, "overflow must be one of"),
])
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception],
                                 match: str) -> None:
    """Issue 7: ``outbox_limit=2.5`` was accepted silently."""
    with pytest.raises(error, match=match):
        Outbox(**kwargs)
