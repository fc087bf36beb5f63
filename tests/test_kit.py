"""The kit for users who extend the lifecycle (``adapters.testing``): subclass
:class:`LinkUnderFaults` or call :func:`check_spec` with your spec; the state tags decide
which invariants apply. Shown on the two example specs, and on three broken specs that it
must catch with a readable counterexample: a state that keeps the transport with nothing
watching it, a state with no way out, a callback that raises."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
from transitions import EventData

from adapters.link import Link
from adapters.testing import LinkUnderFaults, check_spec
from fsm import DEFAULT_SPEC
from fsm.actions import Action
from fsm.events import Event
from fsm.examples import paused
from fsm.examples.authenticating import AUTH_SPEC, Authenticate, Authenticated
from fsm.examples.paused import PAUSED, PAUSED_SPEC, PauseRequested, ResumeRequested
from fsm.spec import Row, Spec

pytestmark = pytest.mark.timeout(300)


class PausedUnderFaults(LinkUnderFaults):
    """The PAUSED example: the user pauses and resumes at random among the faults."""

    spec = PAUSED_SPEC
    user_events: ClassVar[tuple[Event, ...]] = (PauseRequested(), ResumeRequested())
    resume_events: ClassVar[tuple[Event, ...]] = (ResumeRequested(),)


class SessionPausedUnderFaults(PausedUnderFaults):
    session = True


TestPausedUnderFaults = PausedUnderFaults.TestCase
TestSessionPausedUnderFaults = SessionPausedUnderFaults.TestCase


async def authenticate(link: Link, action: Action) -> Event:
    await link.send("auth")
    return Authenticated()


def test_check_spec_in_one_call_on_authenticating_in_session_mode() -> None:
    check_spec(AUTH_SPEC, on_action={Authenticate: authenticate}, session=True,
               max_examples=20)


# -- three broken specs, each caught ------------------------------------------------------


def _paused_variant(name: str, state: Row, transitions: list[Row] | None = None) -> Spec:
    rows = transitions if transitions is not None else paused._TRANSITIONS
    return DEFAULT_SPEC.derive(name=name, states=[state],
                               events=[PauseRequested, ResumeRequested], transitions=rows,
                               ignore=paused._IGNORE)


PAUSE_AND_RESUME: dict[str, Any] = {
    "user_events": (PauseRequested(), ResumeRequested()),
    "resume_events": (ResumeRequested(),), "max_examples": 60,
}


def _counterexample(spec: Spec, **options: Any) -> tuple[str, str]:
    with pytest.raises(AssertionError) as caught:
        check_spec(spec, **{**PAUSE_AND_RESUME, **options})
    notes = "\n".join(getattr(caught.value, "__notes__", []))
    return str(caught.value), notes


def test_a_state_that_keeps_the_transport_unwatched_is_caught() -> None:
    """``paused`` without its ``abort_transport``: it keeps the socket open, is not live,
    so no heartbeat runs: a peer dying meanwhile is never noticed."""
    broken = _paused_variant("paused-keeps-socket",
                             {"name": PAUSED, "tags": ["transport", "sends"]})
    message, steps = _counterexample(broken)
    assert "'paused' holds an open transport and nothing watches it" in message
    assert "user_acts" in steps, steps  # the shrunk run, as steps to paste


def test_a_state_with_no_way_out_is_caught() -> None:
    """``resume`` guarded by a condition that never holds in ``paused``: the spec passes
    validation (the edge exists), but a paused link never comes back."""
    rows = [({**row, "conditions": "is_rebuilding"} if row["trigger"] == "ResumeRequested"
             else row) for row in paused._TRANSITIONS]
    rows.append({"trigger": "ResumeRequested", "source": PAUSED, "dest": None})
    broken = _paused_variant("paused-stuck", paused._STATES[0], rows)
    message, steps = _counterexample(broken)
    assert message.startswith("still paused"), message
    assert "after healing" in message and "user_acts" in steps


def _audit(event_data: EventData) -> None:
    raise RuntimeError("audit log unavailable")


def test_a_callback_that_raises_is_caught() -> None:
    state: Row = {**paused._STATES[0], "on_enter": ["abort_transport", _audit]}
    broken = _paused_variant("paused-audit", state)
    message, steps = _counterexample(broken)
    assert "raised RuntimeError('audit log unavailable')" in message, message
    assert "user_acts" in steps

