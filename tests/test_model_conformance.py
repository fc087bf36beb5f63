"""Conformance: the code and the model agree, step by step.

Traces are recorded from the Python implementation (the core's property tests, plain and
session mode and with a retry budget, and the link property tests on the in-memory
transport, default and AUTHENTICATING specs) with :func:`models.replay.recording`, which
wraps ``Lifecycle._trigger`` without editing any source. Each distinct step (event,
state before and after, the model's abstract variables before and after, the actions it
asked for) is replayed against the transition relation generated from the same table
(:func:`models.generate.generate`), run by spin; a step the model does not allow fails
the test, naming the step.
"""

from __future__ import annotations

import shutil

import pytest
from hypothesis import settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

from adapters.testing import LinkUnderFaults
from fsm import Backoff, Lifecycle
from fsm.examples.authenticating import AUTH_SPEC
from fsm.spec import DEFAULT_SPEC, Spec
from models.generate import generate
from models.replay import Recorder, distinct, recording, replay
from models.verify import INSTALL, SEEDED
from tests.test_core_properties import BACKOFF, HEARTBEAT, LifecycleMachine
from tests.test_link_properties import AuthenticatingUnderFaults
from tests.test_session_properties import SessionMachine

pytestmark = pytest.mark.skipif(shutil.which("spin") is None,
                                reason=f"the replay runs the model with spin: {INSTALL}")


class BudgetedLifecycleMachine(LifecycleMachine):
    """The core's property test with a retry budget, so `gives_up` rows fire too."""

    def __init__(self) -> None:
        super().__init__()
        budget = Backoff(initial=BACKOFF.initial, cap=BACKOFF.cap, grace=BACKOFF.grace,
                         budget=2)
        self.lc = Lifecycle(rand=self._rand, heartbeat=HEARTBEAT, backoff=budget)


#: (where the traces come from, the machine, examples, steps per example)
SOURCES: list[tuple[str, type[RuleBasedStateMachine], int, int]] = [
    ("core property test", LifecycleMachine, 80, 60),
    ("core property test, budget 2", BudgetedLifecycleMachine, 40, 60),
    ("session property test", SessionMachine, 80, 60),
    ("link property test, default spec", LinkUnderFaults, 15, 30),
    ("link property test, authenticating spec", AuthenticatingUnderFaults, 15, 30),
]


@pytest.fixture(scope="module")
def recorded() -> Recorder:
    with recording() as recorder:
        for name, machine, examples, steps in SOURCES:
            recorder.trace(name)
            run_state_machine_as_test(machine, settings=settings(
                max_examples=examples, stateful_step_count=steps, deadline=None,
                derandomize=True, database=None))
    return recorder


#: Each spec's traces must have at least this many steps, and distinct steps: the
#: AUTHENTICATING traces come from whole links only and vary less.
ENOUGH = {DEFAULT_SPEC.name: (5000, 200), AUTH_SPEC.name: (500, 30)}


@pytest.mark.parametrize("spec", [DEFAULT_SPEC, AUTH_SPEC], ids=lambda spec: spec.name)
def test_the_model_allows_every_recorded_step(recorded: Recorder, spec: Spec) -> None:
    steps = [step for step in recorded.steps if step.spec == spec.name]
    unique = distinct(steps)
    least, least_distinct = ENOUGH[spec.name]
    assert len(steps) >= least and len(unique) >= least_distinct, (
        f"too few steps recorded for {spec.name!r} ({len(steps)}, {len(unique)} distinct): "
        f"the replay would prove little")
    mismatches = replay(generate(spec), unique)
    assert not mismatches, "the model does not allow these steps of the code:\n" + \
        "\n".join(str(m) for m in mismatches[:10])


def test_every_kind_of_trace_was_recorded(recorded: Recorder) -> None:
    sources = {step.source.split(", trace #")[0] for step in recorded.steps}
    assert sources == {name for name, *_ in SOURCES}
    triggers = {step.trigger for step in recorded.steps}
    for trigger in ("Connected", "Rebuilt", "TransportLost", "TransportReleased",
                    "SilenceNoticed", "ProbeUnanswered", "TimerFiredLate", "BackoffElapsed",
                    "HandshakeTimedOut", "ConnectFailed", "Authenticated"):
        assert trigger in triggers, f"no {trigger} step was recorded"


@pytest.mark.parametrize("bug", [b for b in SEEDED if b.mutate is not None and not b.dead_row],
                         ids=lambda bug: bug.name)
def test_the_replay_fails_on_a_mutated_table(recorded: Recorder, bug: object) -> None:
    """The replay can fail: each seeded table mutation disagrees with some recorded
    step, and the failure names it."""
    mutate = getattr(bug, "mutate")  # noqa: B009
    steps = distinct([s for s in recorded.steps if s.spec == DEFAULT_SPEC.name])
    mismatches = replay(generate(DEFAULT_SPEC, mutate=mutate), steps)
    assert mismatches
    first = str(mismatches[0])
    assert "step " in first and " of " in first and "the model's table gives" in first
