"""Spec validation: the default table is valid, and every check in fsm/spec.py rejects a
bad spec with a message that names the problem and says how to fix it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

from fsm import table
from fsm.errors import SpecError
from fsm.events import INPUT_EVENTS, TIMER_EVENTS, Event
from fsm.spec import DEFAULT_SPEC, Row, Spec
from fsm.states import TAG_NAMES, State, Tags

ALL_TRIGGERS = [event.trigger() for event in INPUT_EVENTS + TIMER_EVENTS]


@dataclass(frozen=True, slots=True)
class Paused(Event):
    """A custom event for the tests below."""


def paused_state(tags: list[str] | None = None) -> Row:
    return {"name": "paused", "tags": ["transport", "sends"] if tags is None else tags}


def ignore_all_but(*handled: str, extra: tuple[str, ...] = ()) -> list[str]:
    return [t for t in (*ALL_TRIGGERS, *extra) if t not in handled]


def expect_spec_error(build: Callable[[], Any], *fragments: str) -> str:
    with pytest.raises(SpecError) as excinfo:
        build()
    message = str(excinfo.value)
    assert "Fix:" in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# -- the default spec -------------------------------------------------------------------


def test_default_spec_validates() -> None:
    DEFAULT_SPEC.validate()
    assert DEFAULT_SPEC.name == "default"
    assert DEFAULT_SPEC.initial == State.IDLE
    assert DEFAULT_SPEC.state_names == [s.value for s in State]
    assert DEFAULT_SPEC.triggers == ALL_TRIGGERS


def test_default_spec_tags_match_the_design() -> None:
    tags = DEFAULT_SPEC.tags
    assert [s for s in DEFAULT_SPEC.state_names if tags[s].live] == ["online", "waiting"]
    assert [s for s in DEFAULT_SPEC.state_names if tags[s].final] == ["closed", "failed"]
    assert not tags["idle"].transport
    assert tags["stale"] == Tags(live=False, transport=True, sends=True, final=False)


def test_every_pair_has_exactly_one_kind_of_outcome() -> None:
    for state in DEFAULT_SPEC.state_names:
        for trigger in DEFAULT_SPEC.triggers:
            rows = DEFAULT_SPEC.outcomes(state, trigger)
            assert bool(rows) != DEFAULT_SPEC.is_ignored(state, trigger), (state, trigger)
            if rows:
                assert not rows[-1]["conditional"], (state, trigger)


def test_rebuilding_the_table_gives_an_equal_spec() -> None:
    again = Spec(states=tuple(table.STATES), transitions=tuple(table.TRANSITIONS),
                 ignored={s: tuple(t) for s, t in table.IGNORED.items()})
    assert again == DEFAULT_SPEC


def test_derive_with_nothing_is_valid_and_renamed() -> None:
    spec = DEFAULT_SPEC.derive(name="same")
    assert spec.name == "same"
    assert spec.rows == DEFAULT_SPEC.rows


def test_a_valid_custom_state() -> None:
    spec = DEFAULT_SPEC.derive(
        name="paused",
        states=[paused_state()],
        events=[Paused],
        transitions=[
            {"trigger": "Paused", "source": "online", "dest": "paused"},
            {"trigger": "Started", "source": "paused", "dest": "online"},
            {"trigger": "CloseRequested", "source": "paused", "dest": "closed"},
        ],
        ignore={
            "paused": ignore_all_but("Started", "CloseRequested", extra=("Paused",)),
            **{s.value: ["Paused"] for s in State if s is not State.ONLINE},
        },
    )
    assert "paused" in spec.state_names
    assert spec.tags["paused"].transport
    assert spec.outcomes("online", "Paused")[0]["dest"] == "paused"


def test_derived_rows_are_tried_first() -> None:
    spec = DEFAULT_SPEC.derive(
        name="first",
        transitions=[{"trigger": "Started", "source": "idle", "dest": "closed",
                      "conditions": "is_dialing"}],
    )
    dests = [r["dest"] for r in spec.outcomes("idle", "Started")]
    assert dests == ["closed", "connecting"]


def test_drop_removes_rows_and_ignores_of_the_pair() -> None:
    spec = DEFAULT_SPEC.derive(
        name="dropped",
        drop=[("Started", "connecting"), ("DeadlineReached", "idle")],
        transitions=[{"trigger": "Started", "source": "connecting", "dest": None},
                     {"trigger": "DeadlineReached", "source": "idle", "dest": None}],
    )
    assert not spec.is_ignored("connecting", "Started")
    assert [r["dest"] for r in spec.outcomes("connecting", "Started")] == [None]
    # Only the named pair went: DeadlineReached from other states is untouched.
    assert spec.outcomes("online", "DeadlineReached")


# -- every validation error -------------------------------------------------------------


def test_state_without_name() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="bad", states=[{"tags": []}]),
                      "has no name", "'name'")


def test_state_with_empty_name() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="bad", states=[{"name": "", "tags": []}]),
                      "has no name")


def test_duplicate_state() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(name="bad", states=[{"name": "online", "tags": ["sends"]}]),
        "'online' is declared twice", "declare each state once")


def test_missing_tags() -> None:
    message = expect_spec_error(
        lambda: DEFAULT_SPEC.derive(name="bad", states=[{"name": "paused"}]),
        "'paused' has no tags")
    for tag in TAG_NAMES:
        assert tag in message


def test_unknown_tag_suggests() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="bad", states=[paused_state(["lve"])]),
                      "unknown tag 'lve'", "did you mean 'live'?")


def test_final_with_other_tags() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(name="bad", states=[paused_state(["final", "sends"])]),
        "final state 'paused' is also tagged ['sends']")


def test_live_without_transport() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="bad", states=[paused_state(["live"])]),
                      "live state 'paused' is not tagged 'transport'")


def test_missing_builtin_state() -> None:
    # derive() always keeps the built-in states, so build the Spec directly.
    states = tuple(row for row in table.STATES if row["name"] != State.WAITING)
    expect_spec_error(
        lambda: Spec(states=states, transitions=tuple(table.TRANSITIONS), ignored={}),
        "built-in state 'waiting' is missing", "Spec.derive()")


def test_undeclared_initial_state() -> None:
    expect_spec_error(
        lambda: Spec(states=tuple(table.STATES), transitions=tuple(table.TRANSITIONS),
                     ignored=dict(DEFAULT_SPEC.ignored), initial="nowhere"),
        "initial state 'nowhere' is not declared")


def test_unknown_event_suggests() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", transitions=[{"trigger": "Conected", "source": "idle", "dest": None}]),
        "unknown event 'Conected'", "did you mean 'Connected'?", "derive(events=[...])")


def test_undeclared_source_suggests() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", transitions=[{"trigger": "Started", "source": "onlin", "dest": None}]),
        "undeclared source state 'onlin'", "did you mean 'online'?", "derive(states=[...])")


def test_undeclared_dest_suggests() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", transitions=[{"trigger": "Started", "source": "idle",
                                      "dest": "conecting", "conditions": "is_dialing"}]),
        "undeclared dest state 'conecting'", "did you mean 'connecting'?")


def test_leaving_a_final_state() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", transitions=[{"trigger": "Started", "source": "closed", "dest": "idle"}]),
        "leaves final state 'closed'", "final states are terminal")


def test_ignore_names_undeclared_state() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="bad", ignore={"paused": ["Started"]}),
                      "ignore names undeclared state 'paused'")


def test_ignore_lists_unknown_event() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="bad", ignore={"idle": ["Strated"]}),
                      "unknown event 'Strated'", "did you mean 'Started'?")


def test_ignored_and_handled() -> None:
    # Started is an explicit no-op in ONLINE; a row for it as well is contradictory.
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", transitions=[{"trigger": "Started", "source": "online", "dest": None}]),
        "Started in 'online' is both ignored and handled", "remove it from ignore")


def test_missing_outcome() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(name="bad", drop=[("DeadlineReached", "idle")]),
        "state 'idle' has no outcome for event DeadlineReached",
        "ignore={'idle': ['DeadlineReached']}")


def test_missing_outcome_for_a_new_event() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(name="bad", events=[Paused]),
        "has no outcome for event Paused")


def test_shadowed_row() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad",
            transitions=[{"trigger": "Started", "source": "idle", "dest": "closed"}]),
        "Started in 'idle'", "can never run", "drop=[('Started', 'idle')]")


def test_all_conditional_rows() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", drop=[("Started", "idle")],
            transitions=[{"trigger": "Started", "source": "idle", "dest": "connecting",
                          "conditions": "is_dialing"}]),
        "every row has conditions", "end with an unconditional row")


def test_unless_counts_as_a_condition() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", drop=[("Started", "idle")],
            transitions=[{"trigger": "Started", "source": "idle", "dest": "connecting",
                          "unless": "is_dialing"}]),
        "every row has conditions")


def test_unreachable_state() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", states=[paused_state()],
            transitions=[{"trigger": "Started", "source": "paused", "dest": "online"}],
            ignore={"paused": ignore_all_but("Started")}),
        "state 'paused' is unreachable from 'idle'", "add a transition into 'paused'")


def test_no_path_back_to_online() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", states=[paused_state()], events=[Paused],
            transitions=[{"trigger": "Paused", "source": "online", "dest": "paused"},
                         {"trigger": "CloseRequested", "source": "paused", "dest": "closed"}],
            ignore={"paused": ignore_all_but("CloseRequested", extra=("Paused",)),
                    **{s.value: ["Paused"] for s in State if s is not State.ONLINE}}),
        "state 'paused' has no path back to 'online'", "tag it 'final'")


def test_live_state_that_never_gives_up() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", drop=[("ProbeUnanswered", "waiting")],
            transitions=[{"trigger": "ProbeUnanswered", "source": "waiting", "dest": None}]),
        "live state 'waiting' probes but never gives up",
        "route ProbeUnanswered from 'waiting' to 'stale'")


def test_live_state_that_gives_up_into_another_live_state_still_never_gives_up() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", drop=[("ProbeUnanswered", "waiting")],
            transitions=[{"trigger": "ProbeUnanswered", "source": "waiting", "dest": "online"}]),
        "probes but never gives up")


def test_live_state_without_heartbeat() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(
            name="bad", drop=[("SilenceNoticed", "online")],
            transitions=[{"trigger": "SilenceNoticed", "source": "online", "dest": None}]),
        "live state 'online' has no heartbeat deadline",
        "route SilenceNoticed from 'online' to 'waiting'")


def test_the_spec_name_is_in_every_message() -> None:
    expect_spec_error(lambda: DEFAULT_SPEC.derive(name="mine", states=[{"name": "x"}]),
                      "spec 'mine'")


@pytest.mark.parametrize("missing", ["trigger", "source"])
def test_row_missing_a_key_is_a_spec_error(missing: str) -> None:
    row = {"trigger": "Started", "source": "idle", "dest": "connecting"}
    del row[missing]
    with pytest.raises(SpecError, match=rf"transition #0 .* lacks {missing}"):
        DEFAULT_SPEC.derive(name="bad", transitions=[row])


def test_row_missing_a_key_says_how_to_fix_it() -> None:
    expect_spec_error(
        lambda: DEFAULT_SPEC.derive(name="bad", transitions=[{"source": "idle", "dest": None}]),
        "lacks trigger")


def test_row_missing_dest_is_rejected() -> None:
    # The user meant DeadlineReached in IDLE to go somewhere and forgot to say where; as
    # a valid-looking internal transition it passes every other check.
    with pytest.raises(SpecError, match="lacks dest"):
        DEFAULT_SPEC.derive(
            name="bad", drop=[("DeadlineReached", "idle")],
            transitions=[{"trigger": "DeadlineReached", "source": "idle"}])
