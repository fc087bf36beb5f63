"""The generated model: it is the table (no drift), it is complete, and it refuses to
guess the meaning of a name it does not know."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest

from fsm.events import Event
from fsm.examples.authenticating import AUTH_SPEC
from fsm.examples.paused import PAUSED_SPEC
from fsm.spec import DEFAULT_SPEC, Spec
from models.generate import CHECKED_IN, MODELS, ModelError, generate, load, main
from models.meanings import BUILTIN, EventMeaning, Meaning, Meanings


@pytest.mark.parametrize(("filename", "target"), CHECKED_IN.items())
def test_the_checked_in_model_is_the_generator_output(filename: str, target: str) -> None:
    on_disk = (MODELS / filename).read_text(encoding="utf-8")
    assert generate(*load(target)).text == on_disk, (
        f"models/{filename} differs from the table of {target}: regenerate it with "
        f"`python -m models.generate` and commit the result")


def test_generate_main_rewrites_and_prints(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fsm.examples.paused:PAUSED_SPEC"]) == 0
    assert capsys.readouterr().out == generate(PAUSED_SPEC).text


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, AUTH_SPEC, PAUSED_SPEC], ids=lambda s: s.name)
def test_every_row_and_every_ignored_pair_is_one_numbered_step(spec: Spec) -> None:
    model = generate(spec)
    numbers = [int(n) for n in re.findall(r"^\s*row = (\d+)", model.text, re.M)]
    assert numbers == sorted(set(numbers)) == list(range(1, len(model.rows) + 1))
    table = {(r["trigger"], r["source"]) for r in spec.rows}
    ignored = {(t, s) for s, ts in spec.ignored.items() for t in ts}
    assert {(r.trigger, r.source) for r in model.rows.values() if not r.ignored} == table
    assert {(r.trigger, r.source) for r in model.rows.values() if r.ignored} == ignored
    assert len([r for r in model.rows.values() if not r.ignored]) == len(spec.rows)
    for number, line in model.lines.items():
        assert f"row = {number}" in model.text.splitlines()[line - 1]


def test_first_matching_row_wins_in_table_order() -> None:
    """Each row of a pair is guarded by its conditions and the negation of every earlier
    row's, as ``transitions`` tries them."""
    text = generate(DEFAULT_SPEC).text
    pair = text[text.index(":: st == S_connecting ->"):]
    pair = pair[pair.index(":: ev == E_Connected ->"):pair.index(":: ev == E_ConnectFailed")]
    guards = re.findall(r"^\s*:: (.*) ->$", pair, re.M)[1:]
    assert guards == [
        "(holds_transport) && !(is_dialing)",
        "!((holds_transport) && !(is_dialing)) && !(is_dialing)",
        "!((holds_transport) && !(is_dialing)) && !(!(is_dialing)) && (is_resumed)",
        "!((holds_transport) && !(is_dialing)) && !(!(is_dialing)) && !((is_resumed))",
    ]


def test_tags_become_the_predicates_the_properties_read() -> None:
    text = generate(PAUSED_SPEC).text
    assert "#define LIVE(s) ((s) == S_online || (s) == S_waiting)" in text
    assert "#define FINAL(s) ((s) == S_closed || (s) == S_failed)" in text
    transport = re.search(r"#define TRANSPORT\(s\) (.*)", text)
    assert transport is not None and "S_paused" not in transport.group(1)
    assert "#define PARKED(s) ((s) == S_idle || (s) == S_closed || (s) == S_failed || " \
           "(s) == S_paused)" in text


def _with_row(row: dict[str, object], *, events: tuple[type[Event], ...] = ()) -> Spec:
    """The default spec plus ``row`` (from online); new events are ignored elsewhere."""
    return DEFAULT_SPEC.derive(name="custom", events=events, transitions=[row],
                               ignore={state: [e.trigger() for e in events]
                                       for state in DEFAULT_SPEC.state_names
                                       if state != "online"})


def test_an_unknown_condition_fails_naming_it() -> None:
    spec = _with_row({"trigger": "PongReceived", "source": "online", "dest": "waiting",
                      "conditions": "is_sunny"})
    with pytest.raises(ModelError, match=r"condition 'is_sunny' used by transition #0 "
                                         r"\(PongReceived from \['online'\]\) has no model "
                                         r"meaning.*models/meanings.py"):
        generate(spec)


def test_an_unknown_callback_fails_naming_it() -> None:
    spec = _with_row({"trigger": "PongReceived", "source": "online", "dest": "waiting",
                      "conditions": "is_rebuilding", "after": "ring_a_bell"})
    with pytest.raises(ModelError, match="callback 'ring_a_bell' used by transition #0"):
        generate(spec)


@dataclass(frozen=True, slots=True)
class Sneezed(Event):
    """An event the model has no meaning for."""


def test_an_unknown_event_fails_naming_it() -> None:
    spec = DEFAULT_SPEC.derive(name="sneezy", events=[Sneezed],
                               ignore={s: ["Sneezed"] for s in DEFAULT_SPEC.state_names})
    with pytest.raises(ModelError, match="event 'Sneezed' has no model meaning"):
        generate(spec)


def test_a_users_meanings_extend_the_builtin_ones() -> None:
    spec = _with_row({"trigger": "Sneezed", "source": "online", "dest": None,
                      "after": "ring_a_bell"}, events=(Sneezed,))
    spec = spec.derive(name="custom", transitions=[
        {"trigger": "Sneezed", "source": "online", "dest": "waiting", "conditions": "is_sunny"}])
    extra = Meanings(conditions={"is_sunny": Meaning("(lh == 0)", "heard just now")},
                     callbacks={"ring_a_bell": Meaning("skip", "nothing the model needs")},
                     events={"Sneezed": EventMeaning("user", "the user sneezed")})
    text = generate(spec, BUILTIN | extra).text
    assert "#define is_sunny (lh == 0)" in text
    assert "inline ring_a_bell() {" in text
    assert "#define USER_EVENT(e) ((e) == E_Started || (e) == E_SendRequested || " \
           "(e) == E_CloseRequested || (e) == E_Sneezed)" in text


def test_emitted_actions_have_their_meaning() -> None:
    text = generate(AUTH_SPEC).text
    assert re.search(r"inline emit_Authenticate\(\) \{\n  a_custom = 1\n\}", text)
    assert "#define HAS_REPLY_OK 1" in text and "#define HAS_REPLY_FATAL 1" in text
