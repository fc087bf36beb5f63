"""Mermaid export of a spec, and the ``tether diagram`` command."""

from __future__ import annotations

import re

import pytest

from adapters import cli
from fsm.examples.authenticating import AUTH_SPEC
from fsm.mermaid import to_mermaid
from fsm.spec import DEFAULT_SPEC, Spec
from fsm.states import State

EDGE = re.compile(r"^    (\S+) --> (\S+?)(?:: (.*))?$")


def external_edges(spec: Spec) -> set[tuple[str, str]]:
    return {(r["source"], r["dest"]) for r in spec.rows if r["dest"] is not None}


def drawn_edges(text: str) -> dict[tuple[str, str], str]:
    edges: dict[tuple[str, str], str] = {}
    for line in text.splitlines():
        match = EDGE.match(line)
        if match and "[*]" not in (match[1], match[2]):
            assert (match[1], match[2]) not in edges, f"edge drawn twice: {line!r}"
            edges[match[1], match[2]] = match[3] or ""
    return edges


def test_starts_with_state_diagram_and_initial_arrow() -> None:
    text = to_mermaid(DEFAULT_SPEC)
    lines = text.splitlines()
    assert lines[0] == "stateDiagram-v2"
    assert lines[1] == "    [*] --> idle"
    assert text.endswith("\n")


def test_mentions_all_eight_states() -> None:
    text = to_mermaid(DEFAULT_SPEC)
    for state in State:
        assert re.search(rf"\b{state.value}\b", text), state
        assert f"note right of {state.value}: " in text


def test_final_states_end() -> None:
    text = to_mermaid(DEFAULT_SPEC)
    assert "    closed --> [*]" in text
    assert "    failed --> [*]" in text
    assert "    online --> [*]" not in text


def test_every_external_edge_is_drawn_and_nothing_else() -> None:
    drawn = drawn_edges(to_mermaid(DEFAULT_SPEC))
    assert set(drawn) == external_edges(DEFAULT_SPEC)
    assert ("stale", "recovering") in drawn
    assert ("recovering", "recovering") in drawn  # a reflexive row is external


def test_labels_name_triggers_and_guards() -> None:
    drawn = drawn_edges(to_mermaid(DEFAULT_SPEC))
    assert drawn["idle", "connecting"] == "Started"
    assert drawn["online", "waiting"] == "SilenceNoticed, TimerFiredLate"
    assert "ProbeUnanswered [gives_up]" in drawn["waiting", "failed"]
    assert "RebuildFailed [is_rebuilding and gives_up]" in drawn["connecting", "failed"]
    for (source, dest), label in drawn.items():
        for trigger in label.split(", "):
            name = trigger.split(" [")[0]
            assert any(r["trigger"] == name and r["source"] == source and r["dest"] == dest
                       for r in DEFAULT_SPEC.rows), (source, dest, trigger)


def test_internal_transitions_are_not_drawn() -> None:
    text = to_mermaid(DEFAULT_SPEC)
    assert "None" not in text
    # Triggers that only ever make internal transitions never appear.
    for trigger in ("DeadlineReached", "SendRequested", "BackoffElapsed"):
        assert all(r["dest"] is None for r in DEFAULT_SPEC.rows if r["trigger"] == trigger)
        assert trigger not in text
    # Internal rows of triggers that also move elsewhere are not drawn either.
    assert "holds_transport" not in text  # TransportLost [not holds_transport] is internal
    assert "MessageReceived" not in drawn_edges(text).get(("online", "online"), "")
    assert ("online", "online") not in drawn_edges(text)


def test_tags_are_annotated() -> None:
    text = to_mermaid(DEFAULT_SPEC)
    assert "    note right of online: live, transport, sends" in text
    assert "    note right of idle: sends" in text
    assert "    note right of failed: final" in text


def test_custom_spec_includes_its_states() -> None:
    text = to_mermaid(AUTH_SPEC)
    assert set(drawn_edges(text)) == external_edges(AUTH_SPEC)
    assert "    connecting --> authenticating: Connected" in text
    assert "note right of authenticating: transport, sends" in text


# -- the CLI --------------------------------------------------------------------------


def test_cli_diagram_prints_the_default_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["diagram"]) == 0
    out, err = capsys.readouterr()
    assert out == to_mermaid(DEFAULT_SPEC)
    assert out.startswith("stateDiagram-v2\n")
    assert err == ""


def test_cli_diagram_accepts_module_attribute(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["diagram", "fsm.examples.authenticating:AUTH_SPEC"]) == 0
    out, _ = capsys.readouterr()
    assert out == to_mermaid(AUTH_SPEC)
    assert "authenticating" in out


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("fsm.examples.authenticating", "expected module:attribute"),
        (":AUTH_SPEC", "expected module:attribute"),
        ("fsm.examples.authenticating:", "expected module:attribute"),
        ("no_such_module_xyz:SPEC", "cannot import 'no_such_module_xyz'"),
        ("fsm.examples.authenticating:NOPE", "is NoneType, not a fsm.Spec"),
        ("fsm.examples.authenticating:Authenticate", "is type, not a fsm.Spec"),
    ],
)
def test_cli_diagram_bad_target_is_a_clear_error(target: str, message: str) -> None:
    with pytest.raises(SystemExit) as excinfo:
        cli.main(["diagram", target])
    assert isinstance(excinfo.value.code, str)
    assert excinfo.value.code.startswith("tether diagram: ")
    assert message in excinfo.value.code
